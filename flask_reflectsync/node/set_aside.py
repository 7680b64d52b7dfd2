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
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import (
    InvalidValueError,
    ProtocolMismatchError,
    SchemaRefusedError,
    SyncError,
)
from ..rows import key_filter, read_rows, row_key, select_rows, write_rows
from ..tracking import (
    DELETE,
    INSERT,
    UPDATE,
    LogTables,
    TrackedTable,
    compress,
    decode_key,
)
from ..wire.codec import DECODE_ERRORS, key_from_log, stores_time_zones, table_codecs
from ..wire.operations import LoggedOperation
from . import query as _query
from .merge import MergeSchema
from .queue import LocalQueue
from .tables import NODE_LOG, NODE_SET_ASIDE

_log = logging.getLogger("flask_reflectsync.client")


if TYPE_CHECKING:
    from .client import SyncClient


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
            for child, child_key in children_of(connection, schema, name, key):
                pending.append(
                    (
                        child,
                        child_key,
                        f"It points at {name} {list(key)}, whose insert was "
                        "set aside.",
                    )
                )
    return len(done)


def children_of(
    connection: sa.Connection, schema: MergeSchema, name: str, key: tuple[Any, ...]
) -> list[tuple[str, tuple[Any, ...]]]:
    """The local rows whose foreign keys point at row ``key`` of ``name``:
    (table, key) pairs."""
    found = []
    for ref in schema.referenced_by.get(name, ()):
        child = ref.child
        condition = sa.and_(
            *[
                child.table.c[c] == v
                for c, v in zip(ref.child_columns, key, strict=True)
            ]
        )
        for row in select_rows(connection, child, condition):
            found.append((child.name, row_key(child, row)))
    return found


def row_encoder(client: SyncClient) -> RowEncoder:
    """How the node stores a local row of any tracked table in the
    set-aside table (wire form, by column name)."""
    aware = stores_time_zones(client.engine.dialect)

    def encode(name: str, row: dict[str, Any]) -> dict[str, Any]:
        codecs_ = table_codecs(client.schema.tables[name].table, aware_storage=aware)
        return {c: codecs_[c].to_json(v) for c, v in row.items() if c in codecs_}

    return encode


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
        ops = [
            LoggedOperation(entry.table_name, entry.row_key, c)
            for c in (entry.command, queued)
        ]
        merged = compress(ops)
        if merged:
            queue.set(entry.table_name, entry.row_key, merged[0].command)
        else:
            queue.drop(entry.table_name, entry.row_key)
        connection.execute(sa.delete(table).where(table.c.id == entry.id))
        rejoined += 1
    return rejoined


def _is_key(info: Any, key: tuple[Any, ...]) -> sa.ColumnElement[bool]:
    return sa.and_(*[c == v for c, v in zip(info.pk_columns, key, strict=True)])


def requeue_command(command: str, exists: bool) -> str | None:
    """The change to queue again for a set-aside ``command`` whose row does
    (or no longer does) exist locally; ``None``: nothing to send."""
    if exists:
        return INSERT if command == INSERT else UPDATE
    return None if command == INSERT else DELETE


# -- the client's side ---------------------------------------------------------


def set_aside_refused(client: SyncClient, error: InvalidValueError) -> None:
    set_aside_key(client, error.table, error.key, error.message, error)


def set_aside_rows(client: SyncClient, error: SchemaRefusedError) -> None:
    """Set aside every row a schema refusal lists, in one transaction, each
    with its own reason (see :doc:`/schema-changes`)."""
    encode = row_encoder(client)
    named = []
    for entry in error.rows:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), list):
            continue
        info = client.schema.tables.get(str(entry.get("table")))
        key = typed_key(client, info, entry["key"]) if info is not None else None
        if info is None or key is None:
            raise ProtocolMismatchError(
                f"The server refused {entry.get('table')} {entry['key']}, a row "
                f"this node does not have: {error.message}"
            ) from error
        named.append((info, key, str(entry.get("reason") or error.message)))
    if not named:
        raise ProtocolMismatchError(
            f"The server refused rows of the push without naming them: {error.message}"
        ) from error
    moved = 0
    with client._begin() as connection:
        for info, key, reason in named:
            moved += set_aside_row(
                connection,
                NODE_LOG,
                NODE_SET_ASIDE,
                client.schema,
                info.name,
                key,
                reason,
                encode,
            )
        if not moved:  # nothing queued for them: the server and node disagree
            raise ProtocolMismatchError(
                f"The server refused rows this node has not queued: {error.message}"
            ) from error
        client._set_state(
            connection, push_id=None, push_versions=None, push_message=None
        )
    for info, key, reason in named:
        _log.warning(
            "The server's schema cannot take %s %s (%s); it is set aside, the "
            "rest of the queue is pushed.",
            info.name,
            list(key),
            reason,
        )


def set_aside_key(
    client: SyncClient,
    table: str,
    wire_key: Sequence[Any],
    reason: str,
    error: SyncError,
) -> None:
    info = client.schema.tables.get(table)
    key = typed_key(client, info, wire_key) if info is not None else None
    if info is None or key is None:
        raise ProtocolMismatchError(
            f"The server refused a value of {table} {list(wire_key)}, a row "
            f"this node does not have: {reason}"
        ) from error
    encode = row_encoder(client)
    with client._begin() as connection:
        moved = set_aside_row(
            connection,
            NODE_LOG,
            NODE_SET_ASIDE,
            client.schema,
            info.name,
            key,
            reason,
            encode,
        )
        if not moved:  # nothing queued for it: the server and node disagree
            raise ProtocolMismatchError(
                f"The server refused {info.name} {list(key)}, which this "
                f"node has not queued: {reason}"
            ) from error
        client._set_state(
            connection, push_id=None, push_versions=None, push_message=None
        )
    _log.warning(
        "The server refused %s %s for good (%s); it is set aside, the rest "
        "of the queue is pushed.",
        info.name,
        list(key),
        reason,
    )


def typed_key(
    client: SyncClient, info: TrackedTable, wire: Sequence[Any]
) -> tuple[Any, ...] | None:
    codecs_ = table_codecs(
        info.table, aware_storage=stores_time_zones(client.engine.dialect)
    )
    pk = [codecs_[c.name] for c in info.pk_columns]
    try:
        return tuple(
            c.to_db(v, f"{info.name} key") for c, v in zip(pk, wire, strict=True)
        )
    except (*DECODE_ERRORS, TypeError, ValueError):
        return None


def entries(client: SyncClient) -> list[SetAside]:
    """What :meth:`SyncClient.set_aside` does."""
    client._prepare()
    table = NODE_SET_ASIDE
    found: list[SetAside] = []
    with client.engine.connect() as connection:
        rows = connection.execute(sa.select(table).order_by(table.c.id)).all()
    for row in rows:
        info = client.schema.tables.get(row.table_name)
        key = (
            _logged_key(info, row.row_key)
            if info is not None
            else tuple(decode_key(row.row_key))
        )
        found.append(
            SetAside(
                id=row.id,
                table=row.table_name,
                key=key,
                command=row.command,
                reason=row.reason,
                row=None if row.row is None else json.loads(row.row),
                set_aside_at=row.set_aside_at,
            )
        )
    return found


def retry(client: SyncClient, ids: Iterable[int] | None = None) -> int:
    """What :meth:`SyncClient.retry_set_aside` does."""
    with client._lock, client._begin() as connection:
        entries = chosen(client, connection, ids)
        queue = LocalQueue(connection, NODE_LOG)
        for entry in entries:
            info = client.schema.tables.get(entry.table_name)
            if info is not None:
                typed = _logged_key(info, entry.row_key)
                exists = bool(list(read_rows(connection, info, [typed])))
                if not exists and entry.row is not None and entry.command != DELETE:
                    kept = json.loads(entry.row)
                    stored = table_codecs(
                        info.table,
                        aware_storage=stores_time_zones(client.engine.dialect),
                    )
                    # Decoded without the server's limits: the value the
                    # server refused is the one the app is to fix.
                    row = {
                        name: None if value is None else stored[name].decode(value)
                        for name, value in kept.items()
                        if name in stored
                    }
                    write_rows(connection, info, [row], [])
                    exists = True
                command = requeue_command(entry.command, exists)
                if command is not None:
                    queue.append(entry.table_name, entry.row_key, command)
            connection.execute(
                sa.delete(NODE_SET_ASIDE).where(NODE_SET_ASIDE.c.id == entry.id)
            )
        return len(entries)


def discard(client: SyncClient, ids: Iterable[int] | None = None) -> int:
    """What :meth:`SyncClient.discard_set_aside` does."""
    with client._lock:
        chosen = [e for e in client.set_aside() if ids is None or e.id in set(ids)]
        # Read the server's rows first: no HTTP inside a write transaction.
        server: dict[int, dict[str, Any] | None] = {}
        for entry in chosen:
            if entry.table in client.schema.tables:
                rows = _query.fetch(client, entry.table, [entry.key])
                server[entry.id] = rows.get(entry.key)
        with client._begin() as connection:
            for entry in chosen:
                info = client.schema.tables.get(entry.table)
                if info is not None:
                    found = server.get(entry.id)
                    local = list(read_rows(connection, info, [entry.key]))
                    if found is None:
                        connection.execute(
                            sa.delete(info.table).where(
                                key_filter(info.pk_columns, [entry.key])
                            )
                        )
                    elif local:
                        write_rows(connection, info, [], [found])
                    else:
                        write_rows(connection, info, [found], [])
                connection.execute(
                    sa.delete(NODE_SET_ASIDE).where(NODE_SET_ASIDE.c.id == entry.id)
                )
        return len(chosen)


def chosen(
    client: SyncClient, connection: sa.Connection, ids: Iterable[int] | None
) -> list[Any]:
    query = sa.select(NODE_SET_ASIDE).order_by(NODE_SET_ASIDE.c.id)
    if ids is not None:
        query = query.where(NODE_SET_ASIDE.c.id.in_(list(ids)))
    return list(connection.execute(query))


def _logged_key(info: TrackedTable, text: str) -> tuple[Any, ...]:
    """The typed key of a row from its text in the node's log."""
    codecs_ = table_codecs(info.table, aware_storage=True)
    return key_from_log(decode_key(text), [codecs_[c.name] for c in info.pk_columns])
