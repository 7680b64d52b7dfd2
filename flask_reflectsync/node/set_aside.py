"""Changes a node sets aside: queued operations the server refused for good
(framework-free, node side).

A value the server cannot store (a string longer than its ``String(n)``, an
integer beyond its column type, a NUL in text, a key in the server's own
part of the key space) is refused with 422, and sending the same push again
can never succeed. Rather than hold the rest of the queue hostage, the node
moves that row's queued change out of the queue into
``reflectsync_node_set_aside``, with the server's reason and the row as it
was, and pushes the rest. Rows whose queued insert or update points at a
set-aside insert go with it (the server would refuse them as dangling).

A later local change of the row (the app fixed it) puts the entry back into
the queue, compressed with the new change, for the next push.

The change is never dropped silently: :meth:`SyncClient.set_aside()
<flask_reflectsync.client.SyncClient.set_aside>` lists what waits, and each
entry is either retried (queued again, after the app fixed the row) or
discarded (the node takes the server's copy of the row back).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..tracking import DELETE, INSERT, UPDATE, LogTables, compress
from .merge import LocalQueue, MergeSchema, row_key, select_rows


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


@dataclass(frozen=True)
class SetAside:
    """One change the server refused for good, kept out of the queue.

    :param id: its number, for
        :meth:`~flask_reflectsync.client.SyncClient.retry_set_aside` and
        :meth:`~flask_reflectsync.client.SyncClient.discard_set_aside`.
    :param table: the table name.
    :param key: the row's primary key (typed values, key-column order).
    :param command: the queued change: ``"i"``, ``"u"`` or ``"d"``.
    :param reason: the server's sentence (or which set-aside row it needed).
    :param row: the row as it was when set aside (JSON values), ``None`` for
        a delete.
    :param set_aside_at: when.
    """

    id: int
    table: str
    key: tuple[Any, ...]
    command: str
    reason: str
    row: dict[str, Any] | None
    set_aside_at: datetime.datetime


#: Turns a local row into its JSON form (the client's codecs).
RowEncoder = Callable[[str, dict[str, Any]], dict[str, Any]]


def set_aside_row(
    connection: sa.Connection,
    log: LogTables,
    table: sa.Table,
    schema: MergeSchema,
    name: str,
    key: tuple[Any, ...],
    reason: str,
    encode: RowEncoder,
) -> int:
    """Move the queued change of one row, and of the rows that need it, out
    of the queue, in ``connection``'s transaction (no push may be in flight).

    :param table: the set-aside table.
    :param name: the refused row's table.
    :param key: its typed key.
    :param reason: why.
    :param encode: how to store the local row.
    :return: how many rows were set aside.
    """
    queue = LocalQueue(connection, log)
    pending = [(name, key, reason)]
    done: set[tuple[str, tuple[Any, ...]]] = set()
    now = datetime.datetime.now(datetime.timezone.utc)
    while pending:
        name, key, why = pending.pop()
        if (name, key) in done:
            continue
        done.add((name, key))
        info = schema.tables[name]
        text = info.encode_key(key)
        command = queue.get(name, text)
        if command is None:
            continue
        found = next(iter(select_rows(connection, info, _is_key(info, key))), None)
        queue.drop(name, text)
        connection.execute(
            sa.insert(table).values(
                table_name=name,
                row_key=text,
                command=command,
                reason=why,
                row=None if found is None else json.dumps(encode(name, found)),
                set_aside_at=now,
            )
        )
        if command == INSERT:
            for ref in schema.referenced_by.get(name, ()):
                child = ref.child
                condition = sa.and_(
                    *[
                        child.table.c[c] == v
                        for c, v in zip(ref.child_columns, key, strict=True)
                    ]
                )
                for row in select_rows(connection, child, condition):
                    pending.append(
                        (
                            child.name,
                            row_key(child, row),
                            f"It points at {name} {list(key)}, whose insert was "
                            "set aside.",
                        )
                    )
    return len(done)


def rejoin_changed(connection: sa.Connection, log: LogTables, table: sa.Table) -> int:
    """Put set-aside changes whose rows the app changed again back into the
    queue, compressed with the new changes (the app fixed the row: it goes
    with the next push, and is set aside again if still refused). Run before
    a push takes the queue, with no push in flight.

    :return: how many set-aside entries rejoined the queue.
    """
    entries = list(connection.execute(sa.select(table)))
    if not entries:
        return 0
    queue = LocalQueue(connection, log)
    rejoined = 0
    for entry in entries:
        queued = queue.get(entry.table_name, entry.row_key)
        if queued is None:
            continue
        ops = [_Op(entry.table_name, entry.row_key, c) for c in (entry.command, queued)]
        merged = compress(ops)
        if merged:
            queue.set(entry.table_name, entry.row_key, merged[0].command)
        else:
            queue.drop(entry.table_name, entry.row_key)
        connection.execute(sa.delete(table).where(table.c.id == entry.id))
        rejoined += 1
    return rejoined


@dataclass(frozen=True)
class _Op:
    table_name: str
    row_key: str
    command: str


def _is_key(info: Any, key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    return sa.and_(*[c == v for c, v in zip(info.pk_columns, key, strict=True)])


def requeue_command(command: str, exists: bool) -> str | None:
    """The change to queue again for a set-aside ``command`` whose row does
    (or no longer does) exist locally; ``None``: nothing to send."""
    if exists:
        return INSERT if command == INSERT else UPDATE
    return None if command == INSERT else DELETE
