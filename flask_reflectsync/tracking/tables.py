"""The extension's own tables, defined on the application's metadata.

They live on ``db.metadata`` so that ``db.create_all()`` creates them and
Alembic / Flask-Migrate autogenerate sees them. All names start with
``reflectsync_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

PREFIX = "reflectsync_"
#: The server's table of registered nodes (see :mod:`flask_reflectsync.server`).
NODES = PREFIX + "nodes"

#: Operation commands as stored in ``reflectsync_operations.command``.
INSERT = "i"
UPDATE = "u"
DELETE = "d"
COMMANDS = (INSERT, UPDATE, DELETE)


@dataclass(frozen=True)
class LogTables:
    """The tables of one operations log.

    :param versions: one row per committed transaction that touched tracked
        rows. ``id`` is assigned when the transaction first logs an operation;
        ``number`` is the version, assigned under the counter lock: after
        commit on PostgreSQL and MySQL, just before it on SQLite (see
        :mod:`.numbering`).
    :param operations: one row per insert, update or delete of a tracked row.
    :param counter: a single row holding the last version number handed out;
        its row lock serialises version numbering.
    :param nodes: the server's registered offline nodes
        (``reflectsync_nodes``, defined by
        :func:`flask_reflectsync.server.nodes.define_server_log`); ``None`` in
        a node's own log, which has no such table.
    """

    versions: sa.Table
    operations: sa.Table
    counter: sa.Table
    nodes: sa.Table | None = None


def define_tables(
    metadata: sa.MetaData, *, nodes: sa.Table | None = None
) -> LogTables:
    """Define the log tables on ``metadata``, or return them if already there.

    :param metadata: usually ``db.metadata``.
    :param nodes: the server's table of registered nodes, which
        ``reflectsync_versions.node_id`` then references (the server defines
        it, see :func:`flask_reflectsync.server.nodes.define_server_log`); a
        node's log has none.
    """
    existing = metadata.tables.get(PREFIX + "operations")
    if existing is not None:
        return LogTables(
            versions=metadata.tables[PREFIX + "versions"],
            operations=existing,
            counter=metadata.tables[PREFIX + "version_counter"],
            nodes=nodes if nodes is not None else metadata.tables.get(NODES),
        )

    node_reference = (
        [sa.ForeignKey(nodes.c.id, ondelete="SET NULL")] if nodes is not None else []
    )
    versions = sa.Table(
        PREFIX + "versions",
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        # NULL until numbered under the counter lock (after COMMIT on
        # PostgreSQL and MySQL, right before it on SQLite; see numbering.py),
        # so a reader never sees a later number before an earlier one.
        sa.Column("number", sa.BigInteger, nullable=True, unique=True),
        sa.Column("node_id", sa.Integer, *node_reference, nullable=True),
        # The node-chosen id of the push that created this version, so a retried
        # push is answered from here and applied once.
        sa.Column("push_id", sa.String(64), nullable=True, unique=True),
        # SHA-256 (hex) of the push's operations and payloads: a retry must
        # carry the same, another push under a used id is refused.
        sa.Column("push_digest", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    operations = sa.Table(
        PREFIX + "operations",
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        # The version row's id. No foreign key: its check cost every logged
        # row a lookup of the version row, and every path that deletes
        # versions (a node's acknowledged pushes and repair, the server's
        # trim) deletes their operations first, explicitly.
        sa.Column("version_id", sa.BigInteger, nullable=False),
        sa.Column("table_name", sa.String(255), nullable=False),
        # The primary key as canonical JSON (see tracking.keys).
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("command", sa.String(1), nullable=False),
        # For an update: the names of the columns it changed, as a JSON list
        # (see tracking.columns); NULL for inserts and deletes, and for an
        # update whose columns are unknown (all of them count as changed).
        sa.Column("changed_columns", sa.Text, nullable=True),
        # The server's log only: the row's share before and after the
        # operation (see server.scopes; "" for no row, NULL for a table
        # without a scope rule), which pulls route by.
        *_scope_columns(server=nodes is not None),
        sa.CheckConstraint(
            "command IN ('i', 'u', 'd')", name=PREFIX + "operations_command"
        ),
        # Pulls read operations by version, in order, and resume inside a
        # large version by id: one index serves both.
        sa.Index(PREFIX + "operations_version", "version_id", "id"),
    )
    counter = sa.Table(
        PREFIX + "version_counter",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    sa.event.listen(counter, "after_create", _insert_counter_row)
    return LogTables(
        versions=versions, operations=operations, counter=counter, nodes=nodes
    )


#: The server log's share tags of an operation (see server.scopes), and
#: the tag of "no row" (before an insert, after a delete).
SCOPE_BEFORE, SCOPE_AFTER = "scope_before", "scope_after"
NO_ROW = ""


def _scope_columns(*, server: bool) -> list[Any]:
    if not server:
        return []
    # Pulls look the tags up with ``IN``, which never matches NULL: where
    # the backend has partial indexes, the operations of tables without a
    # scope rule (NULL tags, the app's usual write) add no index entries.
    return [
        sa.Column(SCOPE_BEFORE, sa.String(255), nullable=True),
        sa.Column(SCOPE_AFTER, sa.String(255), nullable=True),
        *(
            sa.Index(
                PREFIX + "operations_" + name,
                name,
                postgresql_where=sa.column(name).is_not(None),
                sqlite_where=sa.column(name).is_not(None),
            )
            for name in (SCOPE_BEFORE, SCOPE_AFTER)
        ),
    ]


#: The rows of ``reflectsync_version_counter``, by id: the last version
#: handed out, and (on a server that trimmed its log) the version trimmed
#: through.
VERSION_ROW = 1
TRIMMED_ROW = 2


def counter_value(
    connection: sa.Connection | sa.orm.Session, tables: LogTables, row: int
) -> int:
    """The value of counter row ``row`` (0 when the row is missing)."""
    counter = tables.counter
    value = connection.execute(
        sa.select(counter.c.value).where(counter.c.id == row)
    ).scalar()
    return int(value or 0)


def current_version(
    connection: sa.Connection | sa.orm.Session, tables: LogTables
) -> int:
    """The latest committed version number (0 before the first)."""
    return counter_value(connection, tables, VERSION_ROW)


def _insert_counter_row(
    target: sa.Table, connection: sa.Connection, **kw: object
) -> None:
    connection.execute(target.insert().values(id=VERSION_ROW, value=0))
