"""Serving changes to nodes: paged pulls and the streamed full repair.

A pull page holds at most ``limit`` logged operations after the node's
version, compressed to one per row, with the rows' *current* payloads read
from the live tables. Per table, the page carries those rows column-wise
(column names once, one array of values per column and one command letter
per row) and the keys of the deleted rows: a row's key travels once. Pages are cut by
``(version, operation id)``, so a node far behind resumes exactly where the
last page ended (``cursor``), and any server process can serve the next page.
An insert or update whose row is gone by the time the page is served is sent
as a delete: the payload is always the row's latest state, and a later page
repeats nothing that matters.

The node's own versions are left out: it already has those changes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..tracking import (
    DELETE,
    LogTables,
    TrackedTable,
    compressed_commands,
    decode_key,
    encode_key,
)
from ..tracking.tables import current_version
from .codec import ColumnCodec, key_from_log, stores_time_zones, table_codecs
from .messages import PROTOCOL_VERSION, validate
from .push import KEY_BATCH, batches, key_filter
from .schema import TrackedSchema
from .trim import check_not_trimmed


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
    :return: ``{"changes", "until", "version", "cursor"}``; ``changes`` holds,
        by table name, ``{"columns", "values", "commands", "deleted"}`` (see
        :doc:`/protocol`).
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
    commands = compressed_commands((row[2], row[3], row[4]) for row in rows)
    changes: dict[str, Any] = {}
    for name, keyed in commands.items():
        info = schema.get(name)
        part = None if info is None else _table_changes(session, info, keyed, aware)
        if part is not None:
            changes[name] = part
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
        "changes": changes,
        "until": until,
        "version": current,
        "cursor": cursor,
    }


def change_count(page: Mapping[str, Any]) -> int:
    """How many rows a pull page changes (written and deleted)."""
    return sum(
        len(table["commands"]) + len(table["deleted"][0])
        for table in page["changes"].values()
    )


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


def _table_changes(
    session: Session,
    info: TrackedTable,
    commands: Mapping[str, str],
    aware: bool,
) -> dict[str, Any] | None:
    """One table's part of a page, in wire form: the current rows of the keys
    inserted or updated, column by column, with their commands, and the
    deleted keys (a row gone since is sent as a delete). ``None`` when
    nothing is left.

    :param commands: compressed commands by logged key text.
    """
    codecs = list(table_codecs(info.table, aware_storage=aware).values())
    pk_codecs = _pk_codecs(info, codecs)
    columns = list(info.table.columns)
    positions = [columns.index(c) for c in info.pk_columns]
    integer = info.integer_key and len(positions) == 1
    # Each row is identified by its integer key, or else by its logged text
    # (the database's rows are encoded the same way to be matched). No tuple
    # per row where it can be helped: the garbage collector scans every
    # container allocated, and a page allocates them by the thousand.
    wanted: dict[Any, str] = {}
    typed: dict[str, tuple[Any, ...]] = {}
    gone: list[Any] = []
    for text, command in commands.items():
        ident: Any = _integer_key(text) if integer else None
        if ident is None:
            ident = text
            typed[text] = key_from_log(decode_key(text), pk_codecs)
        if command == DELETE:
            gone.append(ident)
        else:
            wanted[ident] = command

    single = len(positions) == 1
    keys = [
        (typed[i][0] if single else typed[i]) if i in typed else i for i in wanted
    ]
    rows = _current_rows(session, info, keys)
    if integer:
        idents: list[Any] = [row[positions[0]] for row in rows]
    else:
        idents = [encode_key([row[p] for p in positions]) for row in rows]
    if any(ident not in wanted for ident in idents):
        # A row matched without being asked for (a case-insensitive
        # collation): leave it out.
        kept = [(r, i) for r, i in zip(rows, idents, strict=True) if i in wanted]
        rows, idents = [r for r, _ in kept], [i for _, i in kept]
    found = set(idents)
    gone += [ident for ident in wanted if ident not in found]

    values = [list(column) for column in zip(*rows, strict=True)]
    values = values or [[] for _ in codecs]
    for i, codec in enumerate(codecs):
        if not codec.json_as_is:
            encode = codec.encode
            values[i] = [None if v is None else encode(v) for v in values[i]]
    deleted: list[list[Any]] = [[] for _ in positions]
    for ident in gone:
        key = typed[ident] if ident in typed else (ident,)
        for column, codec, value in zip(deleted, pk_codecs, key, strict=True):
            column.append(codec.to_json(value))
    if not rows and not gone:
        return None
    return {
        "columns": [c.name for c in codecs],
        "values": values,
        "commands": "".join([wanted[ident] for ident in idents]),
        "deleted": deleted,
    }


def _integer_key(text: str) -> int | None:
    """The value of a logged one-integer key (``"[7]"``), or ``None``."""
    if text[:1] != "[" or text[-1:] != "]":
        return None
    try:
        return int(text[1:-1])
    except ValueError:
        return None


#: Key column types PostgreSQL compares with ``= ANY(array)`` as they are.
_ARRAY_KEYS = (sa.Integer, sa.String, sa.Uuid, sa.Date)


def _current_rows(
    session: Session, info: TrackedTable, keys: Sequence[Any]
) -> list[sa.Row[Any]]:
    """The live rows among ``keys`` (values for a one-column key, tuples
    otherwise): one ``= ANY(array)`` query on PostgreSQL for a one-column
    key, batched ``IN`` queries elsewhere."""
    if not keys:
        return []
    pk = list(info.pk_columns)
    dialect = session.get_bind(clause=info.table).dialect
    kind = pk[0].type
    if (
        dialect.name == "postgresql"
        and len(pk) == 1
        and isinstance(kind, _ARRAY_KEYS)
        and not isinstance(kind, sa.Enum)
        and not getattr(kind, "collation", None)
    ):
        array = postgresql.ARRAY(kind)
        param = sa.bindparam("keys", list(keys), type_=array)
        query = sa.select(info.table).where(pk[0] == sa.any_(sa.cast(param, array)))
        return list(session.execute(query).all())
    found: list[sa.Row[Any]] = []
    for batch in batches(keys, KEY_BATCH):
        condition: sa.ColumnElement[bool] = (
            pk[0].in_(batch) if len(pk) == 1 else key_filter(pk, batch)
        )
        found += session.execute(sa.select(info.table).where(condition)).all()
    return found


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
