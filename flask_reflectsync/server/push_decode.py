"""Decoding a push message, and checking it before anything is written.

Every table, column, key and value of a push is checked against the tracked
models and what their column types can store, and inserted integer keys
against the key space (step 1 of :mod:`.push`). The result, by table, is a
:class:`_TableChanges`: the decoded rows and the compressed operations that
:mod:`.push_apply` writes and :mod:`.push_conflicts` checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidKeyError, InvalidValueError, ValidationError
from ..tracking import DELETE, INSERT, TrackedTable, compress
from ..tracking.keys import encode_key
from ..wire.codec import DECODE_ERRORS, UNSTORABLE_TEXT, ColumnCodec, synced_codecs
from ..wire.operations import TypedOperation
from .schema import TrackedSchema, excluded_column

#: How many keys go into one ``IN (...)`` list.
KEY_BATCH = 1000


#: One operation of a push, decoded (``row_key`` is the typed key).
PushedOperation = TypedOperation


@dataclass
class _TableChanges:
    info: TrackedTable
    codecs: dict[str, ColumnCodec]
    #: The columns of the whole rows (``payloads``).
    columns: list[str] = field(default_factory=list)
    #: By key, the row's values: a whole row, or for a patch only the key
    #: and the columns the node changed.
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    #: The keys whose row is a patch (``patches``): an update of some columns.
    patched: set[tuple[Any, ...]] = field(default_factory=set)
    inserts: list[PushedOperation] = field(default_factory=list)
    updates: list[PushedOperation] = field(default_factory=list)
    deletes: list[PushedOperation] = field(default_factory=list)
    #: Updates of rows the server no longer has: restores (see
    #: :func:`.push_apply._find_restores`), inserted again and logged as updates.
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
            self.patched.discard(key)

    def pushed_columns(self, key: tuple[Any, ...]) -> frozenset[str] | None:
        """The columns a patch writes (the key left out); ``None`` for a
        whole row."""
        if key not in self.patched:
            return None
        pk = {c.name for c in self.info.pk_columns}
        return frozenset(c for c in self.rows[key] if c not in pk)

    def drop_columns(self, key: tuple[Any, ...], columns: Iterable[str]) -> bool:
        """Leave ``columns`` out of a patch (the server's side won them);
        ``False`` when nothing is left to write, and the row's operation is
        then left out too."""
        row = self.rows[key]
        for column in columns:
            row.pop(column, None)
        if self.pushed_columns(key):
            return True
        self.discard({key})
        return False

    @property
    def written(self) -> list[PushedOperation]:
        """The operations that write a row (inserts, updates, restores)."""
        return self.inserts + self.updates + self.restores

    def wire_key(self, key: Sequence[Any]) -> list[Any]:
        pk = self.info.pk_columns
        return [self.codecs[c.name].to_json(v) for c, v in zip(pk, key, strict=True)]


#: Rows and operations decoded at a time: what is decoded of a large push
#: beside its message at any moment.
DECODE_CHUNK = 5000


def _decode(
    request: Mapping[str, Any],
    schema: TrackedSchema,
    *,
    aware: bool,
    consume: bool = False,
) -> dict[str, _TableChanges]:
    """Decode and check a validated push message, by table.

    :param consume: take the message apart while decoding it (its rows and
        operations are replaced by ``None`` once decoded), so that a large
        push is not held twice, as JSON and decoded; for a message nobody
        reads again.
    """
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
            found = _TableChanges(info, synced_codecs(info, aware_storage=aware))
            changes[name] = found
        return found

    for name, payload in (request.get("payloads") or {}).items():
        target = table_changes(name, f"payloads.{name}")
        target.columns = _decode_rows(target, f"payloads.{name}", payload, consume)
    for name, blocks in (request.get("patches") or {}).items():
        target = table_changes(name, f"patches.{name}")
        for number, block in enumerate(blocks):
            where = f"patches.{name}[{number}]"
            before = set(target.rows)
            _decode_rows(target, where, block, consume)
            target.patched |= set(target.rows) - before

    operations: list[PushedOperation] = []
    sent: list[Any] = request["operations"]
    for index, item in enumerate(sent):
        where = f"operations[{index}]"
        target = table_changes(item["table"], where)
        key = _decode_key(target, item["key"], where)
        operations.append(PushedOperation(item["table"], key, item["command"]))
        if consume and index % DECODE_CHUNK == DECODE_CHUNK - 1:
            _forget(sent, index + 1 - DECODE_CHUNK, index + 1)
    if consume:
        sent.clear()

    for op in compress(operations):
        target = changes[op.table_name]
        if op.command == DELETE:
            target.deletes.append(op)
        elif op.row_key not in target.rows:
            raise ValidationError(
                f"The {'insert' if op.command == INSERT else 'update'} of "
                f"{op.table_name} {encode_key(op.row_key)} has no row in payloads."
            )
        elif op.command == INSERT and op.row_key in target.patched:
            raise ValidationError(
                f"The insert of {op.table_name} {encode_key(op.row_key)} has its "
                "row in patches; an insert sends a whole row in payloads."
            )
        else:
            (target.inserts if op.command == INSERT else target.updates).append(op)

    for name, target in changes.items():
        used = {op.row_key for op in target.inserts + target.updates}
        unused = [k for k in target.rows if k not in used]
        if unused:
            place = "patches" if unused[0] in target.patched else "payloads"
            raise ValidationError(
                f"{place}.{name} has a row for {encode_key(unused[0])} but no "
                "insert or "
                "update of it."
            )
    return changes


def _decode_rows(
    target: _TableChanges, where: str, payload: Mapping[str, Any], consume: bool
) -> list[str]:
    """Decode one block of rows (``payloads.<table>`` or one of
    ``patches.<table>``) into ``target.rows``, :data:`DECODE_CHUNK` rows at
    a time; return its columns. ``consume``: see :func:`_decode`."""
    name = target.info.name
    columns: list[str] = payload["columns"]
    for column in columns:
        if column in target.info.excluded:
            raise excluded_column(name, column, where)
        if column not in target.codecs:
            raise ValidationError(
                f"{where}: unknown column {column!r} in table {name!r}."
            )
    if len(set(columns)) != len(columns):
        raise ValidationError(f"{where}: a column is named twice.")
    missing = [c.name for c in target.info.pk_columns if c.name not in columns]
    if missing:
        raise ValidationError(
            f"{where}: the primary key column(s) {', '.join(missing)} "
            "must be sent."
        )
    codecs = [target.codecs[c] for c in columns]
    rows: list[list[Any]] = payload["rows"]
    for start in range(0, len(rows), DECODE_CHUNK):
        end = start + DECODE_CHUNK
        _decode_row_chunk(target, where, columns, codecs, rows[start:end], start)
        if consume:
            _forget(rows, start, end)
    if consume:
        rows.clear()
    return columns


def _forget(items: list[Any], start: int, end: int) -> None:
    """Free ``items[start:end]`` (decoded), keeping the list's length."""
    end = min(end, len(items))
    items[start:end] = [None] * (end - start)


def _decode_row_chunk(
    target: _TableChanges,
    where: str,
    columns: Sequence[str],
    codecs: Sequence[ColumnCodec],
    rows: Sequence[Sequence[Any]],
    offset: int,
) -> None:
    """Decode and check ``rows`` (``payload["rows"][offset:...]``) into
    ``target.rows``."""
    name = target.info.name
    decoders = [codec.decode for codec in codecs]
    positions = [columns.index(c.name) for c in target.info.pk_columns]
    width = len(columns)
    decoded_rows: list[list[Any]] = []
    for number, values in enumerate(rows, offset):
        if len(values) != width:
            raise ValidationError(
                f"{where}.rows[{number}] has {len(values)} values for "
                f"{width} columns."
            )
        try:
            decoded = [
                None if value is None else decode(value)
                for decode, value in zip(decoders, values, strict=True)
            ]
        except DECODE_ERRORS:
            # Again, slowly, for a message naming the value and the column.
            at = f"{name} {_wire_key(values, positions)}"
            for codec, value in zip(codecs, values, strict=True):
                try:
                    codec.to_db(value, at)
                except ValidationError as error:
                    invalid = _invalid(error.message, target, values, positions, codec)
                    raise invalid from None
            raise
        decoded_rows.append(decoded)
    _check_storable(target, codecs, rows, decoded_rows, positions)
    for number, decoded in enumerate(decoded_rows, offset):
        row_key = tuple([decoded[p] for p in positions])
        if row_key in target.rows:
            raise ValidationError(
                f"{where}.rows[{number}]: a second row for key "
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
