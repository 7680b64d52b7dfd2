"""Serving changes to nodes: paged pulls and the streamed full repair.

A pull page holds at most ``limit`` logged operations after the node's
version, compressed to one per row, with the rows' *current* payloads read
from the live tables. Pages are cut by ``(version, operation id)``, so a node
far behind resumes exactly where the last page ended (``cursor``), and any
server process can serve the next page. An insert or update whose row is gone
by the time the page is served is sent as a delete: the payload is always the
row's latest state, and a later page repeats nothing that matters.

Compression keeps two facts a node needs about integer keys: a row added
and removed within the page is sent as a delete (the key was taken), and a
row deleted and added again is sent as a delete and an insert (a new row
under an old key), not as an update.

The node's own versions are left out: it already has those changes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..tracking import (
    DELETE,
    INSERT,
    UPDATE,
    LogTables,
    TrackedTable,
    compress,
    decode_key,
    encode_key,
)
from ..tracking.tables import current_version
from .codec import ColumnCodec, key_from_log, stores_time_zones, table_codecs
from .messages import PROTOCOL_VERSION, validate
from .push import KEY_BATCH, batches, key_filter
from .schema import TrackedSchema
from .trim import check_not_trimmed


@dataclass(frozen=True)
class _LoggedOperation:
    table_name: str
    row_key: str
    command: str


def pull(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    message: Any,
    *,
    page_size: int,
) -> dict[str, Any]:
    """One page of the changes after the node's version.

    :param page_size: the most operations a page may hold; a request's
        ``limit`` can only lower it.
    :return: ``{"operations", "payloads", "until", "version", "cursor"}``.
    """
    request = validate(message, "PullRequest")
    since: int = request["since"]
    limit = min(request.get("limit", page_size), page_size)
    after = _parse_cursor(request.get("cursor"), since)
    check_not_trimmed(session, tables, since, "last pulled version")
    current = current_version(session, tables)
    if since > current:
        raise ValidationError(
            f"since {since} is newer than the server's latest version "
            f"{current}; the node must repair from this server."
        )

    versions, operations = tables.versions, tables.operations
    query = (
        sa.select(
            versions.c.number,
            operations.c.id,
            operations.c.table_name,
            operations.c.row_key,
            operations.c.command,
        )
        .join(versions, versions.c.id == operations.c.version_id)
        .where(
            _after(versions.c.number, operations.c.id, since, after),
            versions.c.number <= current,
            sa.or_(versions.c.node_id.is_(None), versions.c.node_id != node_id),
        )
        .order_by(versions.c.number, operations.c.id)
        .limit(limit + 1)
    )
    rows = session.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if more:
        last_number, last_id = rows[-1][0], rows[-1][1]
        # The last version may continue on the next page.
        until = max(since, last_number - 1)
        cursor: str | None = f"{last_number}:{last_id}"
    else:
        until, cursor = current, None

    aware = stores_time_zones(session.get_bind(clause=operations).dialect)
    served = [
        _LoggedOperation(table_name, row_key, command)
        for _, _, table_name, row_key, command in rows
        if schema.get(table_name) is not None
    ]
    # A row added and removed within the page is still sent, as a delete:
    # its key was taken, and a node that gave the key to a row of its own
    # meanwhile must re-key that row (see the merge).
    logged = compress(served, report_vanished=True)
    wire_ops, payloads = _with_payloads(
        session, schema, logged, _replaced(schema, served), aware
    )
    session.execute(
        sa.update(tables.nodes)
        .where(tables.nodes.c.id == node_id)
        .values(
            last_pulled_version=until,
            last_seen_at=datetime.datetime.now(datetime.timezone.utc),
        )
    )
    session.commit()
    return {
        "operations": wire_ops,
        "payloads": payloads,
        "until": until,
        "version": current,
        "cursor": cursor,
    }


def _parse_cursor(cursor: str | None, since: int) -> tuple[int, int] | None:
    if cursor is None:
        return None
    number, _, op_id = cursor.partition(":")
    position = int(number), int(op_id)
    if position[0] <= since:
        raise ValidationError("cursor points before since; start the pull again.")
    return position


def _after(
    number: sa.ColumnElement[Any],
    op_id: sa.ColumnElement[Any],
    since: int,
    after: tuple[int, int] | None,
) -> sa.ColumnElement[bool]:
    """Operations after version ``since``, or after the cursor's operation."""
    if after is None:
        return number > since
    return sa.or_(number > after[0], sa.and_(number == after[0], op_id > after[1]))


def _replaced(
    schema: TrackedSchema, served: list[_LoggedOperation]
) -> set[tuple[str, str]]:
    """Rows of integer-key tables deleted and then inserted again within the
    page: a new row under an old key.

    Compressed, they would read as an update of the old row, and a node that
    changed the old row offline would overwrite the new one. They are sent
    as a delete followed by an insert, so that the node's change meets the
    delete (and, if it wins, comes back under a new key).
    """
    deleted: set[tuple[str, str]] = set()
    replaced: set[tuple[str, str]] = set()
    for op in served:
        ident = (op.table_name, op.row_key)
        if op.command == DELETE:
            deleted.add(ident)
        elif op.command == INSERT and ident in deleted:
            info = schema.tables[op.table_name]
            if info.integer_key and len(info.pk_columns) == 1:
                replaced.add(ident)
    return replaced


def _with_payloads(
    session: Session,
    schema: TrackedSchema,
    logged: list[_LoggedOperation],
    replaced: set[tuple[str, str]],
    aware: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    by_table: dict[str, list[_LoggedOperation]] = {}
    for op in logged:
        by_table.setdefault(op.table_name, []).append(op)

    current_rows: dict[tuple[str, str], list[Any]] = {}
    payloads: dict[str, Any] = {}
    codecs_by_table: dict[str, list[ColumnCodec]] = {}
    for name, ops in by_table.items():
        info = schema.tables[name]
        codecs = list(table_codecs(info.table, aware_storage=aware).values())
        codecs_by_table[name] = codecs
        pk_codecs = _pk_codecs(info, codecs)
        wanted = [
            key_from_log(decode_key(op.row_key), pk_codecs)
            for op in ops
            if op.command != DELETE
        ]
        rows = []
        pk = list(info.pk_columns)
        positions = [list(info.table.columns).index(c) for c in pk]
        for batch in batches(wanted, KEY_BATCH):
            query = sa.select(info.table).where(key_filter(pk, batch))
            for row in session.execute(query):
                encoded = [c.to_json(v) for c, v in zip(codecs, row, strict=True)]
                key_text = encode_key([row[p] for p in positions])
                current_rows[(name, key_text)] = encoded
                rows.append(encoded)
        if rows:
            payloads[name] = {"columns": [c.name for c in codecs], "rows": rows}

    wire_ops = []
    for op in logged:
        info = schema.tables[op.table_name]
        codecs = codecs_by_table[op.table_name]
        pk_codecs = _pk_codecs(info, codecs)
        key = key_from_log(decode_key(op.row_key), pk_codecs)
        command = op.command
        if command != DELETE and (op.table_name, op.row_key) not in current_rows:
            command = DELETE  # the row is gone since
        wire_key = [c.to_json(v) for c, v in zip(pk_codecs, key, strict=True)]
        table = op.table_name
        if command == UPDATE and (table, op.row_key) in replaced:
            wire_ops.append({"table": table, "key": wire_key, "command": DELETE})
            command = INSERT
        wire_ops.append({"table": table, "key": wire_key, "command": command})
    return wire_ops, payloads


def _pk_codecs(info: TrackedTable, codecs: list[ColumnCodec]) -> list[ColumnCodec]:
    columns = list(info.table.columns)
    return [codecs[columns.index(c)] for c in info.pk_columns]


# -- repair -----------------------------------------------------------------------


def repair_stream(
    engine: sa.Engine,
    tables: LogTables,
    schema: TrackedSchema,
    *,
    chunk_rows: int,
) -> Iterator[str]:
    """The full content of every tracked table, as JSON text in pieces.

    The version is read first and each table is read with a server-side
    cursor ``chunk_rows`` rows at a time, so memory stays flat however large
    the tables are. Rows committed after the version was read may already be
    included; a node that pulls from that version afterwards converges,
    because pulls carry current payloads.

    :return: an iterator of text pieces making up one JSON object,
        ``{"ok": true, "protocol": 1, "version": N, "tables": {name:
        {"columns": [...], "rows": [[...], ...]}}}``.
    """
    with engine.connect() as connection:
        version = current_version(connection, tables)
        aware = stores_time_zones(connection.dialect)
        yield (
            f'{{"ok":true,"protocol":{PROTOCOL_VERSION},"version":{version},"tables":{{'
        )
        for number, (name, info) in enumerate(schema.tables.items()):
            codecs = list(table_codecs(info.table, aware_storage=aware).values())
            columns = json.dumps([c.name for c in codecs])
            separator = "," if number else ""
            yield f'{separator}{json.dumps(name)}:{{"columns":{columns},"rows":['
            query = sa.select(info.table).order_by(*info.pk_columns)
            result = connection.execution_options(yield_per=chunk_rows).execute(query)
            first = True
            for partition in result.partitions():
                piece = ",".join(
                    json.dumps([c.to_json(v) for c, v in zip(codecs, row, strict=True)])
                    for row in partition
                )
                yield piece if first else "," + piece
                first = False
            yield "]}"
        yield "}}"
