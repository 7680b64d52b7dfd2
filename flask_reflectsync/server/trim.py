"""Trimming the operations log: drop what every node has already pulled.

The log grows with every change. Operations at or below the *safe
watermark* (the lowest version any node that pins it has pulled: not revoked,
not retired, not inactive, see :mod:`~flask_reflectsync.server.fleet`) will
never be served again, so they can go, and so can their
``reflectsync_versions`` rows but one per node: the node's latest push. A
node keeps one push id at a time and starts a new push only once the
previous one is acknowledged, so only its latest push can ever be retried,
and that row keeps the retry exactly-once.

The version trimmed through is remembered (row 2 of
``reflectsync_version_counter``). A pull or push from a node that is further
behind than that is answered 410: its missing changes are gone from the log,
and it must repair from a full copy.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..errors import GoneError
from ..tracking.tables import (
    TRIMMED_ROW,
    LogTables,
    counter_value,
    current_version,
)
from .fleet import pins_trim
from .nodes import nodes_table
from .settings import ServerSettings
from .stale import RULINGS


def trimmed_through(
    connection: sa.Connection | sa.orm.Session, tables: LogTables
) -> int:
    """The highest version whose operations were trimmed (0 if none)."""
    return counter_value(connection, tables, TRIMMED_ROW)


def safe_watermark(
    connection: sa.Connection,
    tables: LogTables,
    settings: ServerSettings | None = None,
) -> int:
    """The lowest version any node that pins the watermark has pulled up to
    (see :func:`~flask_reflectsync.server.fleet.pins_trim`); with no such
    node, the current version.

    :param settings: for ``REFLECTSYNC_NODE_INACTIVE_DAYS``; without them,
        inactive nodes pin the watermark too.
    """
    nodes = nodes_table(tables)
    lowest = connection.execute(
        sa.select(sa.func.min(nodes.c.last_pulled_version)).where(
            pins_trim(tables, settings or ServerSettings(None))
        )
    ).scalar()
    if lowest is not None:
        return int(lowest)
    return current_version(connection, tables)


def nodes_behind(
    connection: sa.Connection,
    tables: LogTables,
    version: int,
    settings: ServerSettings | None = None,
) -> int:
    """How many nodes that pin the watermark have not pulled up to
    ``version``."""
    nodes = nodes_table(tables)
    return int(
        connection.execute(
            sa.select(sa.func.count()).where(
                nodes.c.last_pulled_version < version,
                pins_trim(tables, settings or ServerSettings(None)),
            )
        ).scalar()
        or 0
    )


def trim(connection: sa.Connection, tables: LogTables, through: int) -> int:
    """Delete the operations of every version up to ``through``, and those
    versions' rows but each node's latest push (see the module docstring).

    Runs in the caller's transaction; never moves the trimmed mark backwards.

    :return: how many operations were deleted.
    """
    versions, operations, counter = tables.versions, tables.operations, tables.counter
    done = trimmed_through(connection, tables)
    if through <= done:
        return 0
    deleted = connection.execute(
        operations.delete().where(
            operations.c.version_id.in_(
                sa.select(versions.c.id).where(versions.c.number <= through)
            )
        )
    ).rowcount
    _trim_versions(connection, tables, through)
    if (
        connection.execute(
            counter.update().where(counter.c.id == TRIMMED_ROW).values(value=through)
        ).rowcount
        == 0
    ):
        connection.execute(counter.insert().values(id=TRIMMED_ROW, value=through))
    return int(deleted or 0)


def _trim_versions(connection: sa.Connection, tables: LogTables, through: int) -> int:
    versions = tables.versions
    # Read first, not as a subquery of the DELETE: MySQL refuses a DELETE
    # that selects from its own table. One number per node that ever pushed.
    kept = [
        number
        for (number,) in connection.execute(
            sa.select(sa.func.max(versions.c.number))
            .where(versions.c.push_id.is_not(None))
            .group_by(versions.c.node_id)
        )
        if number is not None
    ]
    condition = versions.c.number <= through
    if kept:
        condition = sa.and_(condition, versions.c.number.not_in(kept))
    # The rulings of those pushes go with them (their foreign key cascades,
    # but SQLite enforces foreign keys only when asked to).
    rulings = tables.versions.metadata.tables.get(RULINGS)
    if rulings is not None:
        connection.execute(
            rulings.delete().where(
                rulings.c.version_id.in_(sa.select(versions.c.id).where(condition))
            )
        )
    return int(connection.execute(versions.delete().where(condition)).rowcount or 0)


def versions_kept(connection: sa.Connection, tables: LogTables) -> int:
    """How many ``reflectsync_versions`` rows the server holds."""
    return int(
        connection.execute(
            sa.select(sa.func.count()).select_from(tables.versions)
        ).scalar()
        or 0
    )


def check_not_trimmed(
    session: sa.Connection | sa.orm.Session,
    tables: LogTables,
    since: int,
    what: str,
    *,
    done: int | None = None,
) -> None:
    """Refuse a node whose ``since`` version lies in the trimmed part of the log.

    :param done: the version trimmed through, if the caller has read it
        already (see :func:`trimmed_through`); read here otherwise.
    :raises GoneError: (410) telling the node to repair.
    """
    if done is None:
        done = trimmed_through(session, tables)
    if since < done:
        raise GoneError(
            f"The server trimmed its log through version {done} and this node's "
            f"{what} is {since}: the changes in between are gone. Repair the "
            "node from the server (client.repair() or `reflectsync-node repair`).",
            code="log.trimmed",
        )
