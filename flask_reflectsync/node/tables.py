"""The node's own tables, on a private metadata (never the app's): its
operations log (the push queue), its state row, the key high water and key
blocks, and the set-aside changes. Only these: the server's tables
(``reflectsync_nodes``, key reservations, settings) are defined in
:mod:`flask_reflectsync.server` and never created in a node's file.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from ..tracking import define_tables

#: The id of the node's one state row.
STATE_ROW = 1


def define_high_water_table(metadata: sa.MetaData) -> sa.Table:
    """The node-private table keeping, per table, the highest integer key the
    node has ever seen (inserted, pulled, repaired or re-keyed to)."""
    return sa.Table(
        "reflectsync_node_keys",
        metadata,
        sa.Column("table_name", sa.String(200), primary_key=True),
        sa.Column("high_water", sa.BigInteger, nullable=False, default=0),
    )


def define_set_aside_table(metadata: sa.MetaData) -> sa.Table:
    """The node's table of set-aside changes, on ``metadata``."""
    return sa.Table(
        "reflectsync_node_set_aside",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("row_key", sa.Text, nullable=False),
        sa.Column("command", sa.String(1), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        # The row as it was when set aside, in its JSON wire form.
        sa.Column("row", sa.Text, nullable=True),
        sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=False),
    )


#: The node's own tables live on a private metadata, never the app's.
NODE_METADATA = sa.MetaData()
NODE_LOG = define_tables(NODE_METADATA)
#: One row (``id = 1``): who the node is and how far it has synchronised.
NODE_STATE = sa.Table(
    "reflectsync_node_state",
    NODE_METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("server_url", sa.String(2000), nullable=True),
    sa.Column("node_id", sa.Integer, nullable=True),
    sa.Column("node_name", sa.String(200), nullable=True),
    # The node must be able to sign requests, so it keeps its secret.
    sa.Column("secret", sa.String(200), nullable=True),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_version", sa.BigInteger, nullable=False, default=0),
    # Where an unfinished pull stopped inside the version after last_version
    # (the server's page cursor): the next pull resumes there instead of
    # serving that version's first pages again.
    sa.Column("pull_cursor", sa.String(64), nullable=True),
    # The push in flight: its id and the version rows it covers (JSON list),
    # kept until the server acknowledges it.
    sa.Column("push_id", sa.String(64), nullable=True),
    sa.Column("push_versions", sa.Text, nullable=True),
    # The push message as first sent: a retry must send the same (the server
    # refuses a push id it applied with other content).
    sa.Column("push_message", sa.Text, nullable=True),
    # The tracked tables the node has synchronised (JSON list): a tracked
    # table it never has (created later by the app, on a file that has
    # pulled already) gets the server's rows fetched before its next push or
    # pull (see catch_up.py). NULL in files of earlier releases.
    sa.Column("synced_tables", sa.Text, nullable=True),
)

#: Per tracked table with an integer key, the highest key the node has ever
#: seen: new rows get keys above it (see :doc:`/conflicts`).
NODE_KEYS = define_high_water_table(NODE_METADATA)
#: Changes the server refused for good, out of the queue (see set_aside.py).
NODE_SET_ASIDE = define_set_aside_table(NODE_METADATA)
#: Per table, the block of keys the server reserved for this node: new rows
#: take ``next_key`` up to ``last_key`` first (see :doc:`/conflicts`).
NODE_KEY_BLOCKS = sa.Table(
    "reflectsync_node_key_blocks",
    NODE_METADATA,
    sa.Column("table_name", sa.String(200), primary_key=True),
    sa.Column("next_key", sa.BigInteger, nullable=False),
    sa.Column("last_key", sa.BigInteger, nullable=False),
)
#: The values a queued update replaced: per logged update of the node's own
#: sessions, the columns it changed as they were before (JSON wire form).
#: A row's *base* (its columns' last-synced values) is read from the
#: earliest of its queued ones (see :mod:`.bases`). Nodes only: the server
#: keeps none.
NODE_BASES = sa.Table(
    "reflectsync_node_bases",
    NODE_METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version_id", sa.BigInteger, nullable=False),
    sa.Column("table_name", sa.String(255), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("base_values", sa.Text, nullable=False),
    sa.Index("reflectsync_node_bases_row", "table_name", "row_key"),
)
#: A node asks for a new block of keys when fewer than this are left.
KEY_BLOCK_LOW = 250


def _add_missing_column(connection: sa.Connection, table: sa.Table, name: str) -> None:
    """Add a nullable text column that node files made by an older release
    lack (``push_message`` and ``synced_tables`` of the state,
    ``changed_columns`` of the log)."""
    columns = sa.inspect(connection).get_columns(table.name)
    if name not in {column["name"] for column in columns}:
        connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} TEXT")


def create_node_tables(engine: sa.Engine) -> None:
    """Create the node's tables that are missing (and the columns older node
    files lack), and the state row."""
    NODE_METADATA.create_all(engine, checkfirst=True)
    with engine.begin() as connection:
        _add_missing_column(connection, NODE_STATE, "push_message")
        _add_missing_column(connection, NODE_STATE, "synced_tables")
        _add_missing_column(connection, NODE_LOG.operations, "changed_columns")
        found = connection.execute(
            sa.select(NODE_STATE.c.id).where(NODE_STATE.c.id == STATE_ROW)
        ).first()
        if found is None:
            connection.execute(
                sa.insert(NODE_STATE).values(id=STATE_ROW, last_version=0)
            )


def create_private_file(engine: sa.Engine) -> None:
    """Create the node's SQLite file readable by its owner only (0600), if
    it does not exist yet: it holds the node's data and, unless the client
    is given ``secret=``, the secret that signs its requests. SQLite gives
    its journal and WAL files the database file's permissions."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return  # in memory, or a URI filename: SQLite's to interpret
    if url.query.get("mode") == "memory" or os.path.exists(path):
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # created meanwhile by someone else: theirs to protect
    except OSError:
        return  # no such folder, no right: SQLite's own error will say so
    os.close(descriptor)
