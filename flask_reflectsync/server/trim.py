"""Trimming the operations log: drop what every node has already pulled.

The log grows with every change. Operations at or below the *safe
watermark* (the lowest version any registered node has pulled) will never be
served again, so they can go. The ``reflectsync_versions`` rows stay: they
carry the push ids that keep pushes exactly-once.

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
from .nodes import nodes_table


def trimmed_through(
    connection: sa.Connection | sa.orm.Session, tables: LogTables
) -> int:
    """The highest version whose operations were trimmed (0 if none)."""
    return counter_value(connection, tables, TRIMMED_ROW)


def safe_watermark(connection: sa.Connection, tables: LogTables) -> int:
    """The lowest version any registered node has pulled up to; with no node,
    the current version."""
    nodes = nodes_table(tables)
    lowest = connection.execute(
        sa.select(sa.func.min(nodes.c.last_pulled_version))
    ).scalar()
    if lowest is not None:
        return int(lowest)
    return current_version(connection, tables)


def nodes_behind(connection: sa.Connection, tables: LogTables, version: int) -> int:
    """How many nodes have not pulled up to ``version``."""
    nodes = nodes_table(tables)
    return int(
        connection.execute(
            sa.select(sa.func.count()).where(nodes.c.last_pulled_version < version)
        ).scalar()
        or 0
    )


def trim(connection: sa.Connection, tables: LogTables, through: int) -> int:
    """Delete the operations of every version up to ``through``.

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
    if (
        connection.execute(
            counter.update().where(counter.c.id == TRIMMED_ROW).values(value=through)
        ).rowcount
        == 0
    ):
        connection.execute(counter.insert().values(id=TRIMMED_ROW, value=through))
    return int(deleted or 0)


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
