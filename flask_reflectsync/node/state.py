"""The node's state row (who it is, how far it has pulled, the push in
flight) and its write transactions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .tables import NODE_LOG, NODE_STATE, STATE_ROW


@dataclass
class State:
    """The node's state row, read."""

    server_url: str | None
    node_id: int | None
    node_name: str | None
    secret: str | None
    last_version: int
    pull_cursor: str | None
    push_id: str | None
    push_versions: list[int]
    push_message: str | None
    #: The tracked tables synchronised so far (``None``: a file of an
    #: earlier release, which did not keep them).
    synced_tables: frozenset[str] | None = None

    @property
    def has_synced(self) -> bool:
        """Whether the node has pulled (or begun to, or been repaired)."""
        return self.last_version != 0 or self.pull_cursor is not None


def read_state(connection: sa.Connection) -> State:
    """The node's state row, read on ``connection``."""
    row = connection.execute(
        sa.select(NODE_STATE).where(NODE_STATE.c.id == STATE_ROW)
    ).one()
    return State(
        server_url=row.server_url,
        node_id=row.node_id,
        node_name=row.node_name,
        secret=row.secret,
        last_version=int(row.last_version or 0),
        pull_cursor=row.pull_cursor,
        push_id=row.push_id,
        push_versions=json.loads(row.push_versions or "[]"),
        push_message=row.push_message,
        synced_tables=(
            None
            if row.synced_tables is None
            else frozenset(json.loads(row.synced_tables))
        ),
    )


def set_state(connection: sa.Connection, **values: Any) -> None:
    """Set columns of the node's state row."""
    connection.execute(
        sa.update(NODE_STATE).where(NODE_STATE.c.id == STATE_ROW).values(**values)
    )


def record_synced(connection: sa.Connection, names: Iterable[str]) -> None:
    """Add ``names`` to the tables the node has synchronised, in
    ``connection``'s transaction (with the write that synchronised them).
    On a file that kept no list yet, ``names`` starts it: give them all."""
    known = read_state(connection).synced_tables or frozenset()
    merged = known | set(names)
    if merged != known or not known:
        set_state(connection, synced_tables=json.dumps(sorted(merged)))


@contextmanager
def begin(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A write transaction on the node's database, logging nothing."""
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            # Rows may point at parents restored later in the transaction.
            connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        yield connection


def pending_operations(connection: sa.Connection) -> int:
    """How many logged operations wait to be pushed (before compression)."""
    versions, operations = NODE_LOG.versions, NODE_LOG.operations
    return int(
        connection.execute(
            sa.select(sa.func.count())
            .select_from(operations)
            .join(versions, versions.c.id == operations.c.version_id)
            .where(versions.c.number.is_(None))
        ).scalar()
        or 0
    )
