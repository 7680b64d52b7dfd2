"""Applying a node's push: validate everything, then write it in one transaction.

The order of work, and why:

1. The message is checked against the schema, then every table, column,
   key and value against the tracked models and what their column types
   can store, and inserted integer keys against the key space, before any
   write. A bad push leaves the database exactly as it was.
2. A push id already stored in ``reflectsync_versions.push_id`` is answered
   from there if its content digest matches: a retry after a lost answer
   applies nothing; other content under that id is refused.
3. PostgreSQL sequences are raised past the inserted keys, then rows are
   written through the app's session, one executemany per table and kind
   (inserts parents first, then updates, then deletes children first), so
   the tracking listeners log them into one new version that records the
   node, the push id and its digest.
4. The version counter row is locked, and only then the log is searched for
   versions the node has not seen that touched the same rows (see
   :func:`find_conflicts`). Taking the lock after the writes keeps the lock
   order of every other writer (rows first, counter at commit), so pushes do
   not deadlock with the app; holding it makes "check, then commit" atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ..errors import (
    InvalidKeyError,
    InvalidValueError,
    PushIdReusedError,
    PushRejectedError,
    ServiceBusyError,
    UniqueConstraintError,
    ValidationError,
)
from ..rows import batches, key_filter, key_reference, unique_column_sets
from ..tracking import DELETE, INSERT, UPDATE, LogTables, TrackedTable, compress
from ..tracking.capture import VERSION_ROW_VALUES, ensure_version, record_operations
from ..tracking.keys import encode_key
from ..tracking.tables import VERSION_ROW, current_version
from ..wire.codec import (
    DECODE_ERRORS,
    UNSTORABLE_TEXT,
    ColumnCodec,
    stores_time_zones,
    table_codecs,
)
from ..wire.messages import validate
from ..wire.operations import TypedOperation
from .schema import TrackedSchema
from .stale import (
    StaleRow,
    rule,
    ruling_entry,
    stale_rows,
    store_rulings,
    stored_rulings,
)
from .trim import check_not_trimmed

#: How many keys go into one ``IN (...)`` list.
KEY_BATCH = 1000
#: How many rows in conflict an error lists.
MAX_LISTED = 50


#: One operation of a push, decoded (``row_key`` is the typed key).
PushedOperation = TypedOperation


@dataclass
class _TableChanges:
    info: TrackedTable
    codecs: dict[str, ColumnCodec]
    columns: list[str] = field(default_factory=list)
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    inserts: list[PushedOperation] = field(default_factory=list)
    updates: list[PushedOperation] = field(default_factory=list)
    deletes: list[PushedOperation] = field(default_factory=list)
    #: Updates of rows the server no longer has: restores (see
    #: :func:`_find_restores`), inserted again and logged as updates.
    restores: list[PushedOperation] = field(default_factory=list)

    @property
    def operations(self) -> list[PushedOperation]:
        """Every operation of the table."""
        return self.written + self.deletes

    def discard(self, keys: set[tuple[Any, ...]]) -> None:
        """Leave the operations of ``keys`` out (the server's side won)."""
        self.updates = [op for op in self.updates if op.row_key not in keys]
        self.restores = [op for op in self.restores if op.row_key not in keys]
        self.deletes = [op for op in self.deletes if op.row_key not in keys]
        for key in keys:
            self.rows.pop(key, None)

    @property
    def written(self) -> list[PushedOperation]:
        """The operations that write a row (inserts, updates, restores)."""
        return self.inserts + self.updates + self.restores

    def wire_key(self, key: Sequence[Any]) -> list[Any]:
        pk = self.info.pk_columns
        return [self.codecs[c.name].to_json(v) for c, v in zip(pk, key, strict=True)]


@dataclass(frozen=True)
class PushOutcome:
    """What :func:`push` did.

    :param answer: ``{"push_id", "version", "operations"}``, the same for
        every retry of the push id.
    :param applied: whether this call wrote the push (``False`` for a retry
        of a push already applied, and for a push that changes nothing).
    """

    answer: dict[str, Any]
    applied: bool


def stored_push_id(node_id: int, push_id: str) -> str:
    """Push ids are chosen by nodes, so they are stored per node."""
    return f"{node_id}:{push_id}"


#: How many times a push that met a deadlock or lock timeout is tried in all
#: before the node is answered 503 (each try starts from nothing written).
BUSY_TRIES = 4


def push(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    message: Any,
) -> PushOutcome:
    """Apply one push atomically and exactly once.

    A deadlock or lock timeout (MariaDB picks a victim among concurrent
    pushes) rolls everything back; the push is then tried again here, after
    a short random pause, up to :data:`BUSY_TRIES` times, so the node sees a
    503 only when the database stays busy.
    """
    for attempt in range(1, BUSY_TRIES + 1):
        try:
            return _push_once(session, tables, schema, node_id, message)
        except ServiceBusyError:
            if attempt == BUSY_TRIES:
                raise
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _push_once(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    message: Any,
) -> PushOutcome:
    """One try of :func:`push`.

    :param session: the app's tracked session, with no transaction begun.
    :param tables: the log tables.
    :param schema: the tracked tables the server accepts.
    :param node_id: the authenticated node.
    :param message: the decoded request body.
    :return: the answer and whether this call applied the push.
    :raises ValidationError: (4xx) for a malformed push; nothing written.
    :raises PushRejectedError: (409) for a conflict or a constraint
        violation; nothing written.
    """
    request = validate(message, "PushRequest")
    push_id: str = request["push_id"]
    stored = stored_push_id(node_id, push_id)
    digest = content_digest(request)
    dialect = session.get_bind(clause=tables.versions).dialect
    if dialect.name != "sqlite":
        # Later reads must see what other transactions committed meanwhile,
        # in particular after the counter lock (MySQL defaults to snapshots).
        session.connection(
            bind_arguments={"clause": tables.versions},
            execution_options={"isolation_level": "READ COMMITTED"},
        )
    answer = _answer_for(session, tables, stored, push_id, digest)
    if answer is not None:
        session.rollback()
        return PushOutcome(answer, applied=False)

    changes = _decode(request, schema, aware=stores_time_zones(dialect))
    check_key_space(changes)
    last_version: int = request["last_version"]
    strategies: Mapping[str, str] = request.get("resolutions") or {}
    if not any(c.inserts or c.updates or c.deletes for c in changes.values()):
        session.rollback()
        return PushOutcome(
            {"push_id": push_id, "version": None, "operations": 0}, applied=False
        )

    try:
        _check_version(session, tables, last_version)
        _find_restores(session, changes)
        ruled, resolved = _rule_stale_rows(
            session, tables, changes, node_id, last_version, strategies
        )
        session.info[VERSION_ROW_VALUES] = {
            "node_id": node_id,
            "push_id": stored,
            "push_digest": digest,
        }
        # Before the rows are written: see _advance_sequences.
        _advance_sequences(session, changes)
        _apply(session, schema, changes)
        # Recorded even when its operations changed nothing (deletes of rows
        # already gone): the push id must stay, for retries to be answered,
        # with the same rulings.
        store_rulings(session, tables, ensure_version(session), resolved)
        _lock_counter(session, tables)
        conflicts = find_conflicts(
            session, tables, changes, node_id, last_version, ruled
        )
        if conflicts:
            raise _conflict_error(conflicts)
        broken = broken_references(session, schema, changes)
        if broken:
            raise PushRejectedError(
                f"The push leaves {len(broken)} row(s) pointing at rows the "
                "server does not have (a parent deleted on one side while "
                "referenced on the other); pull, merge and push again.",
                broken[:MAX_LISTED],
            )
        session.commit()
    except (sa.exc.IntegrityError, StaleDataError) as error:
        session.rollback()
        answer = _answer_for(session, tables, stored, push_id, digest)
        if answer is not None:  # the same push, retried concurrently, won
            session.rollback()
            return PushOutcome(answer, applied=False)
        raise _explain_integrity_error(
            session, tables, changes, node_id, last_version, error
        ) from None
    except sa.exc.OperationalError:
        session.rollback()
        raise ServiceBusyError(
            "The database is busy (lock timeout or deadlock); nothing was "
            "written. Send the same push again."
        ) from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.info.pop(VERSION_ROW_VALUES, None)

    answer = _answer_for(session, tables, stored, push_id, digest)
    session.rollback()
    assert answer is not None
    return PushOutcome(answer, applied=True)


def content_digest(request: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a push's operations and payloads in canonical JSON
    (sorted keys, no spaces): what a retry of the push id must repeat. The
    protocol version, push id and ``last_version`` are left out."""
    canonical = json.dumps(
        [request["operations"], request.get("payloads") or {}],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _answer_for(
    session: Session, tables: LogTables, stored: str, push_id: str, digest: str
) -> dict[str, Any] | None:
    """The answer already given to this push id, or ``None``.

    :raises PushIdReusedError: if the id was applied with other content
        (versions from before digests were stored match any content).
    """
    versions, operations = tables.versions, tables.operations
    row = session.execute(
        sa.select(versions.c.id, versions.c.number, versions.c.push_digest).where(
            versions.c.push_id == stored
        )
    ).first()
    if row is None:
        return None
    if row.push_digest is not None and row.push_digest != digest:
        session.rollback()
        raise PushIdReusedError(
            f"Push id {push_id!r} was already applied (version {row.number}) "
            "with other operations or rows; a retry must send exactly what "
            "the first attempt sent, and new changes need a new push id.",
            push_id=push_id,
        )
    count = session.execute(
        sa.select(sa.func.count())
        .select_from(operations)
        .where(operations.c.version_id == row.id)
    ).scalar()
    answer: dict[str, Any] = {
        "push_id": push_id,
        "version": row.number,
        "operations": count,
    }
    resolved = stored_rulings(session, tables, row.id)
    if resolved:
        answer["resolved"] = resolved
    return answer


# -- decoding ---------------------------------------------------------------------


def _decode(
    request: Mapping[str, Any], schema: TrackedSchema, *, aware: bool
) -> dict[str, _TableChanges]:
    changes: dict[str, _TableChanges] = {}

    def table_changes(name: str, where: str) -> _TableChanges:
        found = changes.get(name)
        if found is None:
            info = schema.get(name)
            if info is None:
                raise ValidationError(
                    f"{where}: unknown table {name!r}; the server accepts "
                    f"{', '.join(sorted(schema.tables)) or 'no tables'}."
                )
            found = _TableChanges(info, table_codecs(info.table, aware_storage=aware))
            changes[name] = found
        return found

    for name, payload in (request.get("payloads") or {}).items():
        _decode_rows(table_changes(name, f"payloads.{name}"), name, payload)

    operations: list[PushedOperation] = []
    for index, item in enumerate(request["operations"]):
        where = f"operations[{index}]"
        target = table_changes(item["table"], where)
        key = _decode_key(target, item["key"], where)
        operations.append(PushedOperation(item["table"], key, item["command"]))

    for op in compress(operations):
        target = changes[op.table_name]
        if op.command == DELETE:
            target.deletes.append(op)
        elif op.row_key not in target.rows:
            raise ValidationError(
                f"The {'insert' if op.command == INSERT else 'update'} of "
                f"{op.table_name} {encode_key(op.row_key)} has no row in payloads."
            )
        else:
            (target.inserts if op.command == INSERT else target.updates).append(op)

    for name, target in changes.items():
        used = {op.row_key for op in target.inserts + target.updates}
        unused = [k for k in target.rows if k not in used]
        if unused:
            raise ValidationError(
                f"payloads.{name} has a row for {encode_key(unused[0])} but no "
                "insert or "
                "update of it."
            )
    return changes


def _decode_rows(target: _TableChanges, name: str, payload: Mapping[str, Any]) -> None:
    columns: list[str] = payload["columns"]
    for column in columns:
        if column not in target.codecs:
            raise ValidationError(
                f"payloads.{name}: unknown column {column!r} in table {name!r}."
            )
    if len(set(columns)) != len(columns):
        raise ValidationError(f"payloads.{name}: a column is named twice.")
    missing = [c.name for c in target.info.pk_columns if c.name not in columns]
    if missing:
        raise ValidationError(
            f"payloads.{name}: the primary key column(s) {', '.join(missing)} "
            "must be sent."
        )
    target.columns = columns
    codecs = [target.codecs[c] for c in columns]
    decoders = [codec.decode for codec in codecs]
    positions = [columns.index(c.name) for c in target.info.pk_columns]
    width = len(columns)
    rows: list[list[Any]] = payload["rows"]
    decoded_rows: list[list[Any]] = []
    for number, values in enumerate(rows):
        if len(values) != width:
            raise ValidationError(
                f"payloads.{name}.rows[{number}] has {len(values)} values for "
                f"{width} columns."
            )
        try:
            decoded = [
                None if value is None else decode(value)
                for decode, value in zip(decoders, values, strict=True)
            ]
        except DECODE_ERRORS:
            # Again, slowly, for a message naming the value and the column.
            where = f"{name} {_wire_key(values, positions)}"
            for codec, value in zip(codecs, values, strict=True):
                try:
                    codec.to_db(value, where)
                except ValidationError as error:
                    invalid = _invalid(error.message, target, values, positions, codec)
                    raise invalid from None
            raise
        decoded_rows.append(decoded)
    _check_storable(target, codecs, rows, decoded_rows, positions)
    for number, decoded in enumerate(decoded_rows):
        row_key = tuple([decoded[p] for p in positions])
        if row_key in target.rows:
            raise ValidationError(
                f"payloads.{name}.rows[{number}]: a second row for key "
                f"{encode_key(row_key)}."
            )
        target.rows[row_key] = dict(zip(columns, decoded, strict=True))


def _check_storable(
    target: _TableChanges,
    codecs: Sequence[ColumnCodec],
    rows: Sequence[Sequence[Any]],
    decoded_rows: Sequence[Sequence[Any]],
    positions: Sequence[int],
) -> None:
    """Refuse the first value the server's columns cannot store, column by
    column: a few C-speed passes per column instead of a check per value."""
    for index, codec in enumerate(codecs):
        column = [row[index] for row in decoded_rows]
        if column_fits(codec, column):
            continue
        for values, decoded in zip(rows, decoded_rows, strict=True):
            problem = codec.problem(decoded[index])
            if problem is not None:
                raise _invalid(
                    f"{target.info.name} {_wire_key(values, positions)}: column "
                    f"{codec.name!r} {problem}.",
                    target,
                    values,
                    positions,
                    codec,
                )


def column_fits(codec: ColumnCodec, column: list[Any]) -> bool:
    """Whether every decoded value of ``column`` fits ``codec``'s column
    (``False`` may be answered for a column that fits, never the reverse:
    :meth:`ColumnCodec.problem` then names the value)."""
    present = [v for v in column if v is not None]
    if len(present) < len(column) and not codec.nullable:
        return False
    if not present:
        return True
    if codec.int_range is not None:
        low, high = codec.int_range
        return bool(low <= min(present) and max(present) <= high)
    if codec.is_text:
        longest = codec.max_length
        if longest is not None and max(map(len, present)) > longest:
            return False
        return UNSTORABLE_TEXT.search("".join(present)) is None
    if codec.integer_digits is not None:
        return all(v.adjusted() < codec.integer_digits for v in present)
    return True


def _wire_key(values: Sequence[Any], positions: Sequence[int]) -> str:
    return encode_key([values[p] for p in positions])


def _invalid(
    message: str,
    target: _TableChanges,
    values: Sequence[Any],
    positions: Sequence[int],
    codec: ColumnCodec,
) -> InvalidValueError:
    return InvalidValueError(
        message,
        table=target.info.name,
        key=[values[p] for p in positions],
        column=codec.name,
    )


def _decode_key(
    target: _TableChanges, values: list[Any], where: str
) -> tuple[Any, ...]:
    pk = target.info.pk_columns
    if len(values) != len(pk):
        raise ValidationError(
            f"{where}: table {target.info.name!r} has a key of {len(pk)} "
            f"column(s), got {len(values)} value(s)."
        )
    key = []
    positions = range(len(pk))
    for column, value in zip(pk, values, strict=True):
        codec = target.codecs[column.name]
        if value is None:
            message = f"{where}: a key value cannot be null."
            raise _invalid(message, target, values, positions, codec)
        try:
            decoded = codec.to_db(value, where)
        except ValidationError as error:
            raise _invalid(error.message, target, values, positions, codec) from None
        problem = codec.problem(decoded)
        if problem is not None:
            message = f"{where}: column {codec.name!r} {problem}."
            raise _invalid(message, target, values, positions, codec)
        key.append(decoded)
    return tuple(key)


# -- applying ---------------------------------------------------------------------


def _check_version(session: Session, tables: LogTables, last_version: int) -> None:
    # Conflicts are found in the log after last_version: it must still be there.
    check_not_trimmed(session, tables, last_version, "last pulled version")
    current = current_version(session, tables)
    if last_version > current:
        raise ValidationError(
            f"last_version {last_version} is newer than the server's latest "
            f"version {current}; the node must repair from this server."
        )


def _find_restores(session: Session, changes: Mapping[str, _TableChanges]) -> None:
    """Move the updates of rows the server lacks to ``restores``.

    A node that kept its copy of a row the server deleted (an update/delete
    or dependency conflict decided for the node) pushes it as an update of
    the old key: the same row returns. The server inserts it again and logs
    an update, so a second node restoring the same row meets an update of
    it, not a new row to re-key beside it. An update of a row deleted in a
    version the node has not pulled is still refused, by the conflict check
    (the delete is in the log after the node's last version).
    """
    for target in changes.values():
        wanted = {op.row_key for op in target.updates}
        if not wanted:
            continue
        missing = wanted - set(existing_keys(session, target.info, wanted))
        if missing:
            target.restores = [op for op in target.updates if op.row_key in missing]
            target.updates = [op for op in target.updates if op.row_key not in missing]


def existing_keys(
    session: Session, info: TrackedTable, keys: Iterable[tuple[Any, ...]]
) -> Iterator[tuple[Any, ...]]:
    """Which of ``keys`` exist in ``info``'s table, with batched IN queries."""
    pk = list(info.pk_columns)
    for batch in batches(list(keys), KEY_BATCH):
        query = sa.select(*pk).where(key_filter(pk, batch))
        for row in session.execute(query):
            yield tuple(row)




def _apply(
    session: Session, schema: TrackedSchema, changes: Mapping[str, _TableChanges]
) -> None:
    ordered = schema.in_dependency_order(changes)
    early = _write_givers_first(session, ordered, changes)
    for name in ordered:  # parents first: restored parents too
        target = changes[name]
        if target.restores:
            _restore(session, target)
        if target.inserts:
            _insert(session, target)
    for name in ordered:
        target = changes[name]
        done = early.get(name, set())
        _update(
            session, target, [op for op in target.updates if op.row_key not in done]
        )
    for name in reversed(ordered):
        target = changes[name]
        done = early.get(name, set())
        _delete(
            session, target, [op for op in target.deletes if op.row_key not in done]
        )


def _update(
    session: Session, target: _TableChanges, updates: Sequence[PushedOperation]
) -> None:
    if not updates:
        return
    # ORM "bulk UPDATE by primary key": the tracking listener reads the keys
    # from the parameters and logs one update per row.
    mapper = target.info.mapper
    attrs = {
        c.name: mapper.get_property_by_column(c).key for c in target.info.table.columns
    }
    session.execute(
        sa.update(mapper.class_),
        [{attrs[c]: v for c, v in target.rows[op.row_key].items()} for op in updates],
    )


def _delete(
    session: Session, target: _TableChanges, deletes: Sequence[PushedOperation]
) -> None:
    mapper = target.info.mapper
    pk = list(target.info.pk_columns)
    for batch in batches([op.row_key for op in deletes], KEY_BATCH):
        session.execute(
            sa.delete(mapper.class_).where(key_filter(pk, batch)),
            execution_options={"synchronize_session": False},
        )


def _write_givers_first(
    session: Session, ordered: Sequence[str], changes: Mapping[str, _TableChanges]
) -> dict[str, set[tuple[Any, ...]]]:
    """Write first the updates and deletes of rows that give a unique value
    up to another row of the push.

    The node wrote its changes in an order its database accepted: a survey
    deleted (or its code changed) and a new one taking the code. Applied as
    inserts, then updates, then deletes, the new row would meet the old one
    on the unique constraint, and the push would be refused for good. The
    givers go first, in a savepoint; if that breaks a foreign key (a giver
    pointing at a row the push inserts), the savepoint is rolled back and
    the push is applied in the usual order.

    :return: by table, the keys already written.
    """
    givers = {name: _givers(session, changes[name]) for name in ordered}
    givers = {name: keys for name, keys in givers.items() if keys}
    if not givers:
        return {}
    try:
        with session.begin_nested():
            for name in ordered:
                target, keys = changes[name], givers.get(name, set())
                _update(
                    session, target, [op for op in target.updates if op.row_key in keys]
                )
            for name in reversed(ordered):
                target, keys = changes[name], givers.get(name, set())
                _delete(
                    session, target, [op for op in target.deletes if op.row_key in keys]
                )
    except sa.exc.IntegrityError:
        return {}
    return givers


def _givers(session: Session, target: _TableChanges) -> set[tuple[Any, ...]]:
    """The pushed updates and deletes of ``target`` whose rows hold, on the
    server now, a unique value another written row of the push takes."""
    info = target.info
    pk = tuple(c.name for c in info.pk_columns)
    sets = unique_column_sets(info.table, primary_key=False)
    leaving = [op.row_key for op in target.updates + target.deletes]
    if not sets or not leaving or not target.written:
        return set()
    wanted: dict[tuple[str, ...], dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    for columns in sets:
        taken = wanted.setdefault(columns, {})
        for op in target.written:
            row = target.rows.get(op.row_key) or {}
            values = tuple(row.get(c) for c in columns)
            if all(c in row for c in columns) and None not in values:
                taken[values] = op.row_key
    names = sorted({c for columns in sets for c in columns})
    selected = [info.table.c[c] for c in (*pk, *names)]
    givers: set[tuple[Any, ...]] = set()
    for batch in batches(leaving, KEY_BATCH):
        query = sa.select(*selected).where(key_filter(list(info.pk_columns), batch))
        for values in session.execute(query):
            row = dict(zip((*pk, *names), values, strict=True))
            key = tuple(row[c] for c in pk)
            for columns in sets:
                taker = wanted[columns].get(tuple(row[c] for c in columns))
                if taker is not None and taker != key:
                    givers.add(key)
    return givers


def _insert(session: Session, target: _TableChanges) -> None:
    table = target.info.table
    rows = [target.rows[op.row_key] for op in target.inserts]
    if not _insert_with_arrays(session, target, rows):
        session.execute(sa.insert(table), _by_column_key(table, rows))


def _by_column_key(table: sa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows keyed by column name, re-keyed by ``Column.key`` for Core."""
    keys = {c.name: c.key for c in table.columns if c.name != c.key}
    if not keys:
        return rows
    return [{keys.get(c, c): v for c, v in row.items()} for row in rows]


def _restore(session: Session, target: _TableChanges) -> None:
    """Insert restored rows on the session's connection, where the listeners
    do not log them as inserts, and log them as updates."""
    table = target.info.table
    keys = [op.row_key for op in target.restores]
    connection = session.connection(bind_arguments={"clause": table})
    rows = _by_column_key(table, [target.rows[key] for key in keys])
    connection.execute(sa.insert(table), rows)
    record_operations(session, target.info, keys, UPDATE)


# Column types whose Python values psycopg sends as a typed array as they are.
_ARRAY_SAFE = (
    sa.Integer,
    sa.String,
    sa.Float,
    sa.Numeric,
    sa.Boolean,
    sa.Date,
    sa.DateTime,
    sa.Time,
    sa.Uuid,
    sa.LargeBinary,
)


def _insert_with_arrays(
    session: Session, target: _TableChanges, rows: list[dict[str, Any]]
) -> bool:
    """Insert ``rows`` with one ``INSERT ... SELECT FROM unnest(arrays)`` on
    PostgreSQL: a single statement instead of one per row, several times
    faster for large pushes. The operations are logged explicitly (the
    listeners do not see driver-level statements). Returns ``False`` when the
    fast path does not apply (other backends, column types psycopg cannot
    send as plain arrays, such as JSON, enums or collated strings).
    """
    table = target.info.table
    connection = session.connection(bind_arguments={"clause": table})
    dialect = connection.dialect
    if dialect.name != "postgresql":
        return False
    columns = [table.c[name] for name in target.columns]
    sent = set(target.columns)
    if any(c.default is not None for c in table.columns if c.name not in sent):
        return False  # Python-side defaults are applied by SQLAlchemy's path
    for column in columns:
        kind = column.type
        if not isinstance(kind, _ARRAY_SAFE) or isinstance(kind, sa.Enum):
            return False
        if getattr(kind, "collation", None):
            return False
    preparer = dialect.identifier_preparer
    casts = ", ".join(
        f"%s::{column.type.compile(dialect=dialect)}[]" for column in columns
    )
    names = ", ".join(preparer.quote(column.name) for column in columns)
    arrays = tuple([row.get(column.name) for row in rows] for column in columns)
    connection.exec_driver_sql(
        f"INSERT INTO {preparer.format_table(table)} ({names}) "
        f"SELECT * FROM unnest({casts})",
        arrays,
    )
    record_operations(
        session, target.info, [op.row_key for op in target.inserts], INSERT
    )
    return True


#: Raises a column's sequence (serial or identity) to ``:key``, where the
#: role may (``UPDATE`` on the sequence), the key is within the sequence's
#: bounds and the sequence is not already past it; nothing for a column
#: without a sequence. Answers whether the role lacked the privilege.
_ADVANCE_SEQUENCE = sa.text(
    "SELECT NOT has_sequence_privilege(q.seq, 'UPDATE') AS refused, "
    "CASE WHEN has_sequence_privilege(q.seq, 'UPDATE') "
    "AND :key BETWEEN s.seqmin AND s.seqmax "
    "AND COALESCE(pg_sequence_last_value(q.seq::regclass), 0) < :key "
    "THEN setval(q.seq, :key) END AS advanced "
    "FROM (SELECT pg_get_serial_sequence(:table, :column) AS seq) AS q "
    "JOIN pg_sequence AS s ON s.seqrelid = q.seq::regclass"
)

#: Serialises the pushes that raise one sequence, until they commit: the
#: check and the ``setval`` of :data:`_ADVANCE_SEQUENCE` are two steps, and
#: two pushes between them could move the sequence back. (The first number
#: names this lock's kind among the app's advisory locks.)
_LOCK_SEQUENCE = sa.text(
    "SELECT pg_advisory_xact_lock(1920295280, "
    "pg_get_serial_sequence(:table, :column)::regclass::oid::int)"
)


def lock_sequence(
    session: Session, params: Mapping[str, Any], bind: dict[str, Any]
) -> None:
    """Take :data:`_LOCK_SEQUENCE` for one key column's sequence."""
    session.execute(_LOCK_SEQUENCE, params, bind_arguments=bind)


log = logging.getLogger("flask_reflectsync")

#: Tables whose sequence the role may not update, warned about once.
_refused_sequences: set[str] = set()


def _advance_sequences(session: Session, changes: Mapping[str, _TableChanges]) -> None:
    """Move PostgreSQL sequences past the integer keys the push inserts,
    before the rows are written.

    Nodes choose their keys, and an explicit key does not advance the
    column's sequence: the server's own app, adding a row afterwards, would
    be given a pushed key and fail. (MySQL and SQLite advance by themselves.)
    Raised first, the sequence never hands the app a key this push is
    writing: raised after the writes, an app insert meanwhile drew such a
    key, waited for the push's row and failed when it committed. A lock per
    sequence, held until commit, keeps concurrent pushes from moving it
    back (tables in name order, so two pushes cannot wait on each other).
    ``setval`` is not undone by a rollback, which only leaves a gap. A role
    without ``UPDATE`` on the sequence is warned about once per table, and
    the push goes on.
    """
    for name in sorted(changes):
        target = changes[name]
        info = target.info
        if not (target.inserts and info.single_integer_key):
            continue
        dialect = session.get_bind(clause=info.table).dialect
        if dialect.name != "postgresql":
            continue
        table = dialect.identifier_preparer.format_table(info.table)
        params = {"table": table, "column": info.pk_columns[0].name}
        bind = {"clause": info.table}
        lock_sequence(session, params, bind)
        key = max(op.row_key[0] for op in target.inserts)
        refused = session.execute(
            _ADVANCE_SEQUENCE, {**params, "key": key}, bind_arguments=bind
        ).scalar()
        if refused and table not in _refused_sequences:
            _refused_sequences.add(table)
            log.warning(
                "The database role may not update the key sequence of %s: rows "
                "the server's app adds there may be given keys nodes pushed. "
                "GRANT UPDATE ON SEQUENCE to the role.",
                table,
            )


#: A pushed integer key must lie below the top 1/1024th of its column
#: type's range (2,097,152 keys of an ``Integer``): that part is kept for
#: the server's own sequence. See :ref:`the key space <key-space>`.
KEY_SPACE_RESERVE_SHIFT = 10


def key_ceiling(codec: ColumnCodec) -> int | None:
    """The largest key a push may insert into ``codec``'s column, or
    ``None`` for a column that is not an integer."""
    if codec.int_range is None:
        return None
    high = codec.int_range[1]
    return high - max((high + 1) >> KEY_SPACE_RESERVE_SHIFT, 1)


def check_key_space(changes: Mapping[str, _TableChanges]) -> None:
    """Refuse inserts whose integer key would exhaust the column's key space.

    Only keys the database hands out itself count (a single integer key
    column with a sequence or autoincrement): a pushed key advances the
    sequence, so a node's key near the type's maximum would leave the
    server's app, and every node's next key, without room.

    :raises InvalidKeyError: (422) naming the table and the first such key.
    """
    for target in changes.values():
        info = target.info
        if not (target.inserts and info.single_integer_key):
            continue
        column = info.pk_columns[0]
        if info.table.autoincrement_column is not column:
            continue
        codec = target.codecs[column.name]
        ceiling = key_ceiling(codec)
        if ceiling is None:
            continue
        key = max(op.row_key[0] for op in target.inserts)
        if key > ceiling:
            raise InvalidKeyError(
                f"{info.name} [{key}]: key {key} lies in the top of the key space "
                f"of column {column.name!r}, kept for the server's own keys; "
                f"give the row a key of at most {ceiling}.",
                table=info.name,
                key=target.wire_key((key,)),
                column=column.name,
            )


def _lock_counter(session: Session, tables: LogTables) -> None:
    counter = tables.counter
    session.execute(
        sa.select(counter.c.value)
        .where(counter.c.id == VERSION_ROW)
        .with_for_update()
    )


# -- conflicts ----------------------------------------------------------------------


def find_conflicts(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    ruled: Mapping[tuple[str, tuple[Any, ...]], int] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the push that another writer changed after ``last_version``
    (see :func:`.stale.stale_rows`), but for those ``ruled`` on at the
    version they still have.

    :param ruled: the stale rows the server decided itself (see
        :func:`_rule_stale_rows`), with the version each was decided at; a
        row changed again since is a conflict after all.
    """
    ruled = ruled or {}
    return [
        {"table": name, "key": changes[name].wire_key(key), "version": row.version}
        for (name, key), row in _stale(session, tables, changes, node_id, last_version)
        if ruled.get((name, key)) != row.version
    ]


def _stale(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
) -> list[tuple[tuple[str, Any], StaleRow]]:
    keys = {
        name: {encode_key(op.row_key): op.row_key for op in target.operations}
        for name, target in changes.items()
        if target.operations
    }
    found = stale_rows(session, tables, keys, node_id, last_version)
    return [((name, key), row) for (name, key), row in found.items()]


def _rule_stale_rows(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    strategies: Mapping[str, str],
) -> tuple[dict[tuple[str, tuple[Any, ...]], int], list[dict[str, Any]]]:
    """Decide the direct conflicts of a stale push by the node's strategies
    (see :mod:`.stale`), before writing: operations the server's side wins
    are taken out of ``changes``.

    :return: the rows ruled on, with the version each was decided at, and
        the answer's ``resolved`` entries.
    """
    ruled: dict[tuple[str, tuple[Any, ...]], int] = {}
    entries: list[dict[str, Any]] = []
    if not strategies:
        return ruled, entries
    candidates = [
        (name, key, row)
        for (name, key), row in _stale(session, tables, changes, node_id, last_version)
        if name in strategies
    ]
    by_table: dict[str, list[tuple[tuple[Any, ...], StaleRow]]] = {}
    for name, key, row in candidates:
        by_table.setdefault(name, []).append((key, row))
    for name, rows in by_table.items():
        target = changes[name]
        current = _server_rows(session, target, [key for key, _ in rows])
        inserts = {op.row_key for op in target.inserts}
        deletes = {op.row_key for op in target.deletes}
        discarded: set[tuple[Any, ...]] = set()
        for key, row in rows:
            if key in inserts:
                continue  # a key taken on both sides: the node re-keys
            if row.inserted and key in current and target.info.single_integer_key:
                continue  # a new row under the key: the node re-keys its own
            command = DELETE if key in deletes else UPDATE
            ruling = rule(strategies[name], command, key in current)
            if not ruling.apply:
                discarded.add(key)
            ruled[(name, key)] = row.version
            entries.append(
                ruling_entry(name, target.wire_key(key), ruling, current.get(key))
            )
        if discarded:
            target.discard(discarded)
    return ruled, entries


def _server_rows(
    session: Session, target: _TableChanges, keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The server's current rows among ``keys``, in their JSON form."""
    info = target.info
    pk = list(info.pk_columns)
    columns = list(info.table.columns)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for batch in batches(keys, KEY_BATCH):
        query = sa.select(*columns).where(key_filter(pk, batch))
        for values in session.execute(query):
            row = dict(zip((c.name for c in columns), values, strict=True))
            key = tuple(row[c.name] for c in pk)
            found[key] = {
                name: target.codecs[name].to_json(value) for name, value in row.items()
            }
    return found


def broken_references(
    session: Session, schema: TrackedSchema, changes: Mapping[str, _TableChanges]
) -> list[dict[str, Any]]:
    """Foreign keys between tracked tables that the push leaves dangling.

    Checked by the server itself, after the push's writes and under the
    counter lock, because SQLite (without ``PRAGMA foreign_keys``) would
    accept them silently: a written row pointing at a missing tracked
    parent, and a deleted row that tracked rows still point at.
    """
    found: list[dict[str, Any]] = []
    by_table = {info.table: info for info in schema.tables.values()}
    for name, target in changes.items():
        table = target.info.table
        written = [target.rows[op.row_key] for op in target.written]
        for constraint in table.foreign_key_constraints:
            parent = by_table.get(constraint.referred_table)
            if parent is None or not written:
                continue
            columns = [e.parent.name for e in constraint.elements]
            if not set(columns) <= set(target.columns):
                continue
            wanted = {
                tuple(row[c] for c in columns)
                for row in written
                if all(row[c] is not None for c in columns)
            }
            targets = [e.column for e in constraint.elements]
            present: set[tuple[Any, ...]] = set()
            for batch in batches(list(wanted), KEY_BATCH):
                query = sa.select(*targets).where(key_filter(targets, batch))
                present |= {tuple(row) for row in session.execute(query)}
            found += [
                {"table": name, "references": parent.name, "missing": list(values)}
                for values in wanted - present
            ]
    for name, target in changes.items():
        deleted = [op.row_key for op in target.deletes]
        if not deleted:
            continue
        for child in schema.tables.values():
            for constraint in child.table.foreign_key_constraints:
                if constraint.referred_table is not target.info.table:
                    continue
                pointing = key_reference(constraint, target.info)
                if pointing is None:
                    continue
                for batch in batches(deleted, KEY_BATCH):
                    query = sa.select(*pointing).where(key_filter(pointing, batch))
                    for row in session.execute(query.distinct()):
                        found.append(
                            {
                                "table": name,
                                "key": target.wire_key(tuple(row)),
                                "referenced_by": child.name,
                            }
                        )
    return found


def _conflict_error(conflicts: list[dict[str, Any]]) -> PushRejectedError:
    return PushRejectedError(
        f"The server changed {len(conflicts)} of the pushed row(s) in versions "
        "the node has not pulled; pull, merge and push again.",
        conflicts[:MAX_LISTED],
    )


def _explain_integrity_error(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    error: Exception,
) -> PushRejectedError:
    try:
        conflicts = find_conflicts(session, tables, changes, node_id, last_version)
        if conflicts:
            return _conflict_error(conflicts)
        entries = unique_violations(session, changes)
    finally:
        session.rollback()
    if entries:
        first = entries[0]
        return UniqueConstraintError(
            f"The push breaks a unique constraint: {first['table']} "
            f"{first['key']} on ({', '.join(first['columns'])}); "
            f"{len(entries)} row(s) in all.",
            entries[:MAX_LISTED],
        )
    if isinstance(error, StaleDataError):
        return PushRejectedError(
            "The push updates rows that no longer exist on the server; pull, "
            "merge and push again."
        )
    detail = str(getattr(error, "orig", error)).strip().splitlines()[0]
    return PushRejectedError(
        f"The database refused the push ({detail}); nothing was written."
    )


def unique_violations(
    session: Session, changes: Mapping[str, _TableChanges]
) -> list[dict[str, Any]]:
    """Pushed rows that collide on a unique constraint, with each other or
    with rows already in the database."""
    entries: list[dict[str, Any]] = []
    for name, target in changes.items():
        written = target.written
        if not written:
            continue
        # Updates cannot break the key; inserts and restores can.
        updated = {op.row_key for op in target.updates}
        pk_names = tuple(c.name for c in target.info.pk_columns)
        for columns in unique_column_sets(target.info.table, primary_key=True):
            if not set(columns) <= set(target.columns):
                continue
            is_pk = columns == pk_names
            holders: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            probe = [op for op in written if not is_pk or op.row_key not in updated]
            for op in probe:
                values = tuple(target.rows[op.row_key][c] for c in columns)
                if None in values:
                    continue
                if values in holders:
                    entries.append(_entry(target, name, op.row_key, columns, None))
                holders.setdefault(values, op.row_key)
            table = target.info.table
            selected = [table.c[c] for c in columns]
            pk = list(target.info.pk_columns)
            for batch in batches(list(holders), KEY_BATCH):
                query = sa.select(*pk, *selected).where(key_filter(selected, batch))
                for row in session.execute(query):
                    existing = tuple(row[: len(pk)])
                    values = tuple(row[len(pk) :])
                    pushed_key = holders.get(values)
                    if pushed_key is not None and (is_pk or pushed_key != existing):
                        entries.append(
                            _entry(target, name, pushed_key, columns, existing)
                        )
    return entries


def _entry(
    target: _TableChanges,
    name: str,
    key: tuple[Any, ...],
    columns: tuple[str, ...],
    existing: tuple[Any, ...] | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "table": name,
        "key": target.wire_key(key),
        "columns": list(columns),
    }
    if existing is not None:
        entry["existing_key"] = target.wire_key(existing)
    return entry

