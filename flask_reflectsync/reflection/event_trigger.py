"""Optional PostgreSQL event trigger: instant, cheap change detection.

Without it, every listing asks PostgreSQL for a fingerprint of the listed
level (the row versions of the catalog rows that describe it). With it, a
``ddl_command_end`` and a ``sql_drop`` event trigger bump a *DDL epoch* kept
in the ``ddl`` row of ``reflectsync_catalog_probes``, in the DDL's own
transaction, and send ``NOTIFY reflectsync_ddl``. A listing then only reads
that one row: the same epoch as at the last comparison means nothing
changed anywhere in the database; a new epoch sends it to the full
comparison, as before.

Installing needs a role allowed to create event triggers (a superuser, or
the database owner on PostgreSQL 17+ with the right grants). The trigger
function never fails the DDL it fires for: if the catalog tables are gone it
does nothing. Because the epoch row is updated by every DDL statement,
concurrent DDL transactions in the database queue behind each other on it
until they commit; DDL is rare, but know it.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..errors import ConfigurationError

FUNCTION = "reflectsync_ddl_bump"
TRIGGERS = ("reflectsync_ddl_end", "reflectsync_ddl_drop")
#: The channel a ``LISTEN`` can wait on to hear of DDL at once.
CHANNEL = "reflectsync_ddl"
DDL_SCOPE = "ddl"


def _check(connection: sa.Connection) -> None:
    if connection.dialect.name != "postgresql":
        raise ConfigurationError(
            "Event triggers exist only on PostgreSQL; on "
            f"{connection.dialect.name} the catalog probe alone detects changes."
        )


def _qualified_names(connection: sa.Connection, probes: sa.Table) -> tuple[str, str]:
    """The schema-qualified, quoted names of the probes table and the trigger
    function (which lives in the same schema)."""
    preparer = connection.dialect.identifier_preparer
    schema = (
        probes.schema or connection.execute(sa.text("SELECT current_schema()")).scalar()
    )
    prefix = preparer.quote_identifier(str(schema))
    return f"{prefix}.{preparer.quote(probes.name)}", f"{prefix}.{FUNCTION}"


def install(connection: sa.Connection, probes: sa.Table) -> None:
    """Create the function and the event triggers, and start the epoch.

    Idempotent. Runs in the caller's transaction.

    :param connection: a connection whose role may create event triggers.
    :param probes: the ``reflectsync_catalog_probes`` table.
    :raises ConfigurationError: on another backend, or when the role may not
        create event triggers.
    """
    _check(connection)
    table, function = _qualified_names(connection, probes)
    connection.exec_driver_sql(
        f"""
        CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger
        LANGUAGE plpgsql AS $body$
        BEGIN
            UPDATE {table}
               SET fingerprint = (fingerprint::bigint + 1)::text,
                   checked_at = now()
             WHERE scope = '{DDL_SCOPE}';
            PERFORM pg_notify('{CHANNEL}', '');
        EXCEPTION WHEN undefined_table OR invalid_text_representation THEN
            -- the catalog is gone (drop_all): never fail the DDL itself
            NULL;
        END
        $body$
        """
    )
    existing = set(
        connection.execute(
            sa.text(
                "SELECT evtname FROM pg_event_trigger WHERE evtname IN :names"
            ).bindparams(sa.bindparam("names", expanding=True)),
            {"names": list(TRIGGERS)},
        ).scalars()
    )
    for name, event in zip(TRIGGERS, ("ddl_command_end", "sql_drop"), strict=True):
        if name not in existing:
            try:
                with connection.begin_nested():
                    connection.exec_driver_sql(
                        f"CREATE EVENT TRIGGER {name} ON {event} "
                        f"EXECUTE FUNCTION {function}()"
                    )
            except sa.exc.ProgrammingError as error:
                raise ConfigurationError(
                    "This database role may not create event triggers (PostgreSQL "
                    "requires a superuser); install it as one, or rely on the "
                    "probe alone."
                ) from error
    present = connection.execute(
        sa.select(probes.c.scope).where(probes.c.scope == DDL_SCOPE)
    ).first()
    if present is None:
        connection.execute(
            probes.insert().values(
                scope=DDL_SCOPE, fingerprint="0", checked_at=sa.func.now()
            )
        )


def uninstall(connection: sa.Connection, probes: sa.Table) -> None:
    """Drop the event triggers and the function, and forget the epoch.

    Listings go back to the fingerprint probe. Idempotent.
    """
    _check(connection)
    for name in TRIGGERS:
        connection.exec_driver_sql(f"DROP EVENT TRIGGER IF EXISTS {name}")
    _, function = _qualified_names(connection, probes)
    connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function}()")
    connection.execute(probes.delete().where(probes.c.scope == DDL_SCOPE))


def is_installed(connection: sa.Connection) -> bool:
    """Whether both event triggers exist in this database."""
    if connection.dialect.name != "postgresql":
        return False
    count = connection.execute(
        sa.text(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname IN :names"
        ).bindparams(sa.bindparam("names", expanding=True)),
        {"names": list(TRIGGERS)},
    ).scalar()
    return count == len(TRIGGERS)


def current_epoch(connection: sa.Connection, probes: sa.Table) -> str | None:
    """The DDL epoch, or ``None`` unless both triggers are installed and enabled.

    The triggers are checked on every call, in the same query: an epoch left
    behind by triggers dropped or disabled by hand must not stop the catalog
    from seeing changes.
    """
    if connection.dialect.name != "postgresql":
        return None
    query = sa.select(probes.c.fingerprint).where(
        probes.c.scope == DDL_SCOPE,
        sa.text(
            "(SELECT count(*) FROM pg_event_trigger "
            "WHERE evtname IN :names AND evtenabled <> 'D') = :expected"
        ).bindparams(
            sa.bindparam("names", list(TRIGGERS), expanding=True),
            sa.bindparam("expected", len(TRIGGERS)),
        ),
    )
    found: str | None = connection.execute(query).scalar_one_or_none()
    return found
