"""What the server's database changes in the rows a push writes (step 3b of
:mod:`.push`).

A trigger that upper-cases a name, a server default, a generated column or
an ``onupdate`` value changes a pushed row on its way into the server's
table. Other nodes get the row as it is stored; the pushing node, whose
own versions a pull skips, would keep what it sent for good. So for the
tables where the database can change a written row, the server reads the
pushed rows before and after writing them, and logs the columns whose
stored value differs from what the node sent (or, for columns a patch did
not send, from what the server had) as an update *by the server* in the
push's version (:func:`~flask_reflectsync.tracking.columns.written_by_server`).
The pushing node hears of them on its next pull, as of any other writer's
change; nobody else is told twice, because the push's operations already
cover those rows.

Tables where nothing can change a written row cost nothing here but one
catalog query per push for triggers (on PostgreSQL a subquery of the push's
first statement, :func:`trigger_probe`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..rows import read_rows, row_key
from ..tracking import UPDATE
from ..tracking.capture import record_operations
from .push_decode import _TableChanges

#: Rows by table name, then key, each by column name in JSON form.
Snapshot = dict[str, dict[tuple[Any, ...], dict[str, Any]]]


def rewriting_tables(
    session: Session,
    changes: Mapping[str, _TableChanges],
    triggered: set[sa.Table] | None = None,
) -> list[str]:
    """The pushed tables with written rows whose database may change them:
    a column with a server default, a server or Python ``onupdate``, a
    computed value, or a trigger on the table.

    :param triggered: the tables with a trigger, when the caller read them
        already (see :func:`trigger_probe`); otherwise they are looked up.
    """
    written = [name for name, target in changes.items() if target.written]
    found = [name for name in written if _generates(changes[name].info.table)]
    others = [name for name in written if name not in found]
    if others:
        if triggered is None:
            triggered = _with_triggers(
                session, [changes[n].info.table for n in others]
            )
        found += [name for name in others if changes[name].info.table in triggered]
    return found


#: Which of some tables have an enabled trigger, as JSON ``[[schema, name]]``
#: (PostgreSQL): the catalog query of :func:`_with_triggers`, as a subquery.
_PG_TRIGGERS = (
    "SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname)), '[]') "
    "FROM pg_trigger AS t "
    "JOIN pg_class AS c ON c.oid = t.tgrelid "
    "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' "
    "AND c.relname = ANY(:trigger_names) "
    "AND (n.nspname = current_schema() OR n.nspname <> 'pg_catalog')"
)


def trigger_probe(
    dialect: sa.Dialect, tables: Sequence[sa.Table]
) -> list[sa.ColumnElement[Any]] | None:
    """Columns that, added to a query the caller sends anyway, tell which
    of ``tables`` have a trigger (PostgreSQL; ``None`` elsewhere): a push
    reads them with its first statement instead of two round trips of its
    own. Read the answer with :func:`probed_triggers`."""
    if dialect.name != "postgresql" or not tables:
        return None
    names = sorted({table.name for table in tables})
    found = (
        sa.text(_PG_TRIGGERS)
        .bindparams(trigger_names=names)
        .columns(sa.column("found"))
        .scalar_subquery()
    )
    return [found.label("triggers_found"), sa.func.current_schema().label("schema")]


def probed_triggers(row: Any, tables: Sequence[sa.Table]) -> set[sa.Table] | None:
    """The tables among ``tables`` with a trigger, from a row that carried
    :func:`trigger_probe`'s columns (``None``: it carried none, and they
    are to be looked up)."""
    if "triggers_found" not in row._fields:
        return None
    found = {(schema, name) for schema, name in row.triggers_found or ()}
    current = row.schema
    return {t for t in tables if (t.schema or current, t.name) in found}


def _generates(table: sa.Table) -> bool:
    return any(
        column.server_default is not None
        or column.server_onupdate is not None
        or column.onupdate is not None
        or column.computed is not None
        for column in table.columns
    )


def _with_triggers(session: Session, tables: Sequence[sa.Table]) -> set[sa.Table]:
    """Which of ``tables`` have a trigger (enabled ones, on PostgreSQL)."""
    connection = session.connection(bind_arguments={"clause": tables[0]})
    dialect = connection.dialect.name
    names = sorted({table.name for table in tables})
    if dialect == "postgresql":
        query = sa.text(
            "SELECT c.relname, n.nspname FROM pg_trigger AS t "
            "JOIN pg_class AS c ON c.oid = t.tgrelid "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' "
            "AND c.relname = ANY(:names) "
            "AND (n.nspname = current_schema() OR n.nspname <> 'pg_catalog')"
        )
        found = {
            (name, schema)
            for name, schema in connection.execute(query, {"names": names})
        }
        current = connection.execute(sa.text("SELECT current_schema()")).scalar()
        return {t for t in tables if (t.name, t.schema or current) in found}
    if dialect in ("mysql", "mariadb"):
        query = sa.text(
            "SELECT DISTINCT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE "
            "FROM information_schema.TRIGGERS "
            "WHERE EVENT_OBJECT_TABLE IN :names"
        ).bindparams(sa.bindparam("names", expanding=True))
        current = connection.execute(sa.text("SELECT DATABASE()")).scalar()
        found = {
            (name, schema)
            for schema, name in connection.execute(query, {"names": names})
        }
        return {t for t in tables if (t.name, t.schema or current) in found}
    if dialect == "sqlite":
        query = sa.text("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger'")
        lowered = {str(name).lower() for (name,) in connection.execute(query)}
        return {t for t in tables if t.name.lower() in lowered}
    return set(tables)  # unknown backend: assume the worst, read back


def snapshot(
    session: Session, changes: Mapping[str, _TableChanges], names: Sequence[str]
) -> Snapshot:
    """The server's rows that the push updates (patches and whole rows), in
    JSON form, before it writes them."""
    taken: Snapshot = {}
    for name in names:
        target = changes[name]
        keys = [op.row_key for op in target.updates]
        taken[name] = _read(session, target, keys)
    return taken


def record_database_changes(
    session: Session,
    changes: Mapping[str, _TableChanges],
    names: Sequence[str],
    before: Snapshot,
) -> None:
    """Log, as updates by the server, the columns the database changed in
    the rows the push wrote (see the module's docstring)."""
    for name in names:
        target = changes[name]
        keys = [op.row_key for op in target.written]
        after = _read(session, target, keys)
        earlier = before.get(name, {})
        changed_keys: list[tuple[Any, ...]] = []
        changed_columns: list[frozenset[str]] = []
        for key in keys:
            stored = after.get(key)
            if stored is None:
                continue
            sent = target.rows.get(key, {})
            had = earlier.get(key, {})
            differ = frozenset(
                column
                for column, value in stored.items()
                if (
                    value != target.codecs[column].to_json(sent[column])
                    if column in sent
                    else column in had and value != had[column]
                )
            )
            if differ:
                changed_keys.append(key)
                changed_columns.append(differ)
        if changed_keys:
            record_operations(
                session,
                target.info,
                changed_keys,
                UPDATE,
                changed_columns,
                by_server=True,
            )


def _read(
    session: Session, target: _TableChanges, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    if not keys:
        return {}
    info = target.info
    connection = session.connection(bind_arguments={"clause": info.table})
    codecs = target.codecs
    return {
        # Only the columns that travel (target.codecs): what the database
        # does to a column kept out of sync is nobody's news.
        row_key(info, row): {
            c: codecs[c].to_json(v) for c, v in row.items() if c in codecs
        }
        for row in read_rows(connection, info, keys)
    }
