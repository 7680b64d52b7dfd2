"""The node's push: the queue's versions taken for a push id, the message
built from them (one operation per row, with the rows' current values), the
server's answer acknowledged and the conflicts it decided read back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import signals
from ..errors import ProtocolMismatchError, PushRejectedError
from ..rows import batches, read_rows, row_key
from ..tracking import DELETE, INSERT, UPDATE, compress, decode_key
from ..tracking.columns import decode_columns
from ..wire.codec import (
    DECODE_ERRORS,
    key_codecs,
    key_from_log,
    stores_time_zones,
    synced_codecs,
)
from ..wire.messages import PROTOCOL_VERSION
from ..wire.operations import LoggedOperation
from . import schema as _schema
from .conflicts import Conflict
from .merge import separate_replaced_rows
from .results import PushResult
from .set_aside import rejoin_changed
from .state import State
from .tables import NODE_BASES, NODE_KEYS, NODE_LOG, NODE_SET_ASIDE

if TYPE_CHECKING:
    from .client import SyncClient


#: Version rows read per query.
_BATCH = 500


def start_push(client: SyncClient) -> bool:
    versions = NODE_LOG.versions
    with client._begin() as connection:
        # A new row under a deleted row's key is pushed as a new row.
        schema = client._schema_on(connection)
        # A set-aside row the app changed again goes with this push.
        rejoin_changed(connection, NODE_LOG, NODE_SET_ASIDE)
        separate_replaced_rows(connection, schema, NODE_LOG, NODE_KEYS)
        ids = list(
            connection.execute(
                sa.select(versions.c.id)
                .where(versions.c.number.is_(None))
                .order_by(versions.c.id)
            ).scalars()
        )
        if not ids:
            return False
        client._set_state(
            connection, push_id=uuid.uuid4().hex, push_versions=json.dumps(ids)
        )
        return True


def send_push(client: SyncClient) -> PushResult:
    state = client._state()
    assert state.push_id is not None
    if state.push_message is not None:
        message = json.loads(state.push_message)
        # Stored by an earlier release with its schema: the identity is
        # the node's as it is now, added at each send.
        message.pop("schema", None)
        message.pop("schema_digest", None)
    else:
        message = push_message(client, state)
        with client._begin() as connection:
            client._set_state(connection, push_message=json.dumps(message))
    if not message["operations"]:
        acknowledge(client, state.push_versions)
        return PushResult(state.push_id, None, 0)
    try:
        answer = _schema.sending(
            client,
            lambda fields: client._call(
                "POST", "/push", message={**message, **fields}
            ),
        )
    except PushRejectedError as error:
        with client._begin() as connection:
            send_whole(client, connection, error.conflicts)
            client._set_state(
                connection, push_id=None, push_versions=None, push_message=None
            )
        raise
    acknowledge(client, state.push_versions)
    conflicts = server_conflicts(client, answer.get("resolved") or [])
    for conflict in conflicts:
        signals.conflict_resolved.send(client, conflict=conflict)
    return PushResult(state.push_id, answer["version"], answer["operations"], conflicts)


def send_whole(
    client: SyncClient, connection: sa.Connection, refused: Sequence[Any]
) -> None:
    """Queue as whole rows the updates the server refused as patches
    because it lacks their rows (``"needs_row"``): sent whole, they bring
    the row back (see :ref:`stale-pushes`)."""
    operations, versions = NODE_LOG.operations, NODE_LOG.versions
    queued = sa.select(versions.c.id).where(versions.c.number.is_(None))
    aware = stores_time_zones(client.engine.dialect)
    for entry in refused:
        if not (isinstance(entry, dict) and entry.get("needs_row")):
            continue
        info = client.schema.tables.get(str(entry.get("table")))
        if info is None:
            continue
        codecs_ = synced_codecs(info, aware_storage=aware)
        try:
            key = tuple(
                codecs_[c.name].to_db(v, info.name)
                for c, v in zip(info.pk_columns, entry["key"], strict=True)
            )
        except (*DECODE_ERRORS, KeyError, ValueError, TypeError):
            continue
        connection.execute(
            sa.update(operations)
            .where(
                operations.c.table_name == info.name,
                operations.c.row_key == info.encode_key(key),
                operations.c.version_id.in_(queued.scalar_subquery()),
            )
            .values(changed_columns=None)
        )


def only_whole_rows_needed(error: PushRejectedError) -> bool:
    """Whether the server refused a push only because it lacks the rows of
    some patches (which :func:`send_whole` queued whole since)."""
    conflicts = error.conflicts
    return bool(conflicts) and all(
        isinstance(c, dict) and c.get("needs_row") for c in conflicts
    )


def server_conflicts(client: SyncClient, resolved: Sequence[Any]) -> list[Conflict]:
    """The conflicts the server decided, read on one connection."""
    if not resolved:
        return []
    with client.engine.connect() as connection:
        return [
            conflict
            for entry in resolved
            if (conflict := server_conflict(client, connection, entry)) is not None
        ]


def server_conflict(
    client: SyncClient, connection: sa.Connection, entry: Any
) -> Conflict | None:
    """One entry of a push answer's ``resolved`` list as a :class:`Conflict`
    (``local`` is the node's row as it is now)."""
    info = client.schema.tables.get(entry.get("table"))
    if info is None:
        return None
    aware = stores_time_zones(client.engine.dialect)
    codecs_ = synced_codecs(info, aware_storage=aware)
    pk = [codecs_[c.name] for c in info.pk_columns]
    where = f"{info.name} conflict"
    try:
        wire = zip(pk, entry["key"], strict=True)
        key = tuple(c.to_db(v, where) for c, v in wire)
        server = entry.get("server")
        if server is not None:
            server = {
                name: codecs_[name].to_db(value, where)
                for name, value in server.items()
                if name in codecs_
            }
    except (*DECODE_ERRORS, KeyError, ValueError):
        raise ProtocolMismatchError(
            f"The server described a conflict of {info.name} that does "
            "not fit the node's table; the server and node schemas differ."
        ) from None
    return Conflict(
        kind=entry["kind"],
        model=info.model,
        table=info.name,
        key=key,
        local=next(iter(read_rows(connection, info, [key])), None),
        server=server,
        columns=tuple(entry.get("columns") or ()),
        resolution=entry["resolution"],
    )


def push_message(client: SyncClient, state: State) -> dict[str, Any]:
    schema = client.schema
    operations = NODE_LOG.operations
    aware = stores_time_zones(client.engine.dialect)
    wire_ops: list[dict[str, Any]] = []
    payloads: dict[str, Any] = {}
    patches: dict[str, list[dict[str, Any]]] = {}
    with client.engine.connect() as connection:
        logged: list[tuple[int, int, str, str, str, str | None]] = []
        for batch in batches(state.push_versions, _BATCH):
            logged += [
                (row[0], row[1], row[2], row[3], row[4], row[5])
                for row in connection.execute(
                    sa.select(
                        operations.c.version_id,
                        operations.c.id,
                        operations.c.table_name,
                        operations.c.row_key,
                        operations.c.command,
                        operations.c.changed_columns,
                    ).where(operations.c.version_id.in_(batch))
                )
            ]
        logged.sort()
        ops = compress(
            LoggedOperation(table, key, command, decode_columns(changed))
            for _, _, table, key, command, changed in logged
            if table in schema.tables
        )
        by_table: dict[str, list[LoggedOperation]] = {}
        for op in ops:
            by_table.setdefault(op.table_name, []).append(op)
        for name, items in by_table.items():
            info = schema.tables[name]
            codecs_ = list(synced_codecs(info, aware_storage=aware).values())
            pk_codecs = key_codecs(info, codecs_)
            typed = {
                op.row_key: key_from_log(decode_key(op.row_key), pk_codecs)
                for op in items
            }
            wanted = [typed[op.row_key] for op in items if op.command != DELETE]
            current = {
                row_key(info, found): found
                for found in read_rows(connection, info, wanted)
            }
            rows = []
            # Updates of known columns travel as those columns, in one block
            # per set of columns.
            blocks: dict[tuple[str, ...], list[list[Any]]] = {}
            key_names = [c.name for c in info.pk_columns]
            by_name = {c.name: c for c in codecs_}
            for op in items:
                key = typed[op.row_key]
                command = op.command
                if command != DELETE:
                    found = current.get(key)
                    if found is None:  # deleted since: a later push says so
                        if command == INSERT:
                            continue
                        command = DELETE
                    elif command == UPDATE and op.columns is not None:
                        sent = tuple(
                            key_names
                            + sorted(
                                c
                                for c in op.columns
                                if c in by_name and c not in key_names
                            )
                        )
                        if len(sent) == len(key_names):
                            continue  # only columns the node does not sync
                        blocks.setdefault(sent, []).append(
                            [by_name[c].to_json(found[c]) for c in sent]
                        )
                    else:
                        rows.append([c.to_json(found[c.name]) for c in codecs_])
                wire_ops.append(
                    {
                        "table": name,
                        "key": [
                            c.to_json(v) for c, v in zip(pk_codecs, key, strict=True)
                        ],
                        "command": command,
                    }
                )
            if rows:
                payloads[name] = {
                    "columns": [c.name for c in codecs_],
                    "rows": rows,
                }
            if blocks:
                patches[name] = [
                    {"columns": list(columns), "rows": block}
                    for columns, block in blocks.items()
                ]
    message: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "push_id": state.push_id,
        "last_version": state.last_version,
        "operations": wire_ops,
        "payloads": payloads,
    }
    if patches:
        message["patches"] = patches
    # The server decides a stale push's direct conflicts as the merge
    # would, for the tables whose strategy is built in.
    named = {
        name: client.resolutions.named(schema.tables[name].model)
        for name in by_table
    }
    strategies = {name: found for name, found in named.items() if found}
    if strategies:
        message["resolutions"] = strategies
    return message


def acknowledge(client: SyncClient, version_ids: Sequence[int]) -> None:
    versions, operations = NODE_LOG.versions, NODE_LOG.operations
    with client._begin() as connection:
        for batch in batches(list(version_ids), _BATCH):
            connection.execute(
                sa.delete(operations).where(operations.c.version_id.in_(batch))
            )
            connection.execute(sa.delete(versions).where(versions.c.id.in_(batch)))
            connection.execute(
                sa.delete(NODE_BASES).where(NODE_BASES.c.version_id.in_(batch))
            )
        client._set_state(
            connection, push_id=None, push_versions=None, push_message=None
        )


def settle_push(client: SyncClient) -> None:
    """Resend a push whose answer was lost, before anything is merged:
    merging must know whether those operations reached the server."""
    if client._state().push_id is None:
        return
    try:
        send_push(client)
    except PushRejectedError:
        pass  # not applied, and the push id is dropped: the ops stay queued
