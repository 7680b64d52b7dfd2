"""The extension's own tables, defined on the application's metadata.

They live on ``db.metadata`` so that ``db.create_all()`` creates them and
Alembic / Flask-Migrate autogenerate sees them. All names start with
``reflectsync_``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

PREFIX = "reflectsync_"

#: Operation commands as stored in ``reflectsync_operations.command``.
INSERT = "i"
UPDATE = "u"
DELETE = "d"
COMMANDS = (INSERT, UPDATE, DELETE)


@dataclass(frozen=True)
class LogTables:
    """The tables of one operations log.

    :param nodes: registered offline nodes.
    :param versions: one row per committed transaction that touched tracked
        rows. ``id`` is assigned when the transaction first logs an operation;
        ``number`` is the version, assigned just before commit under a lock.
    :param operations: one row per insert, update or delete of a tracked row.
    :param counter: a single row holding the last version number handed out;
        its row lock serialises version assignment until commit.
    """

    nodes: sa.Table
    versions: sa.Table
    operations: sa.Table
    counter: sa.Table


def define_tables(metadata: sa.MetaData) -> LogTables:
    """Define the log tables on ``metadata``, or return them if already there.

    :param metadata: usually ``db.metadata``.
    """
    existing = metadata.tables.get(PREFIX + "operations")
    if existing is not None:
        return LogTables(
            nodes=metadata.tables[PREFIX + "nodes"],
            versions=metadata.tables[PREFIX + "versions"],
            operations=existing,
            counter=metadata.tables[PREFIX + "version_counter"],
        )

    nodes = sa.Table(
        PREFIX + "nodes",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, default=""),
        # Never the secret itself: a keyed digest of it (see the protocol docs).
        sa.Column("secret_digest", sa.String(128), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_pulled_version", sa.BigInteger, nullable=False, default=0),
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
        # NULL while the transaction is in flight; set under the counter lock
        # right before COMMIT, so numbers become visible in commit order.
        sa.Column("number", sa.BigInteger, nullable=True, unique=True),
        sa.Column(
            "node_id",
            sa.Integer,
            sa.ForeignKey(nodes.c.id, ondelete="SET NULL"),
            nullable=True,
        ),
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
        sa.Column(
            "version_id",
            sa.BigInteger,
            sa.ForeignKey(versions.c.id, ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("table_name", sa.String(255), nullable=False),
        # The primary key as canonical JSON (see tracking.keys).
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("command", sa.String(1), nullable=False),
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
        nodes=nodes, versions=versions, operations=operations, counter=counter
    )


#: The row of ``reflectsync_version_counter`` that holds the last version.
VERSION_ROW = 1


def current_version(
    connection: sa.Connection | sa.orm.Session, tables: LogTables
) -> int:
    """The latest committed version number (0 before the first)."""
    counter = tables.counter
    value = connection.execute(
        sa.select(counter.c.value).where(counter.c.id == VERSION_ROW)
    ).scalar()
    return int(value or 0)


def _insert_counter_row(
    target: sa.Table, connection: sa.Connection, **kw: object
) -> None:
    connection.execute(target.insert().values(id=VERSION_ROW, value=0))
