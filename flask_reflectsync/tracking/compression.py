"""Compression of operation sequences.

Payloads are read from the live table when changes are served, so for each
row only two facts matter: did it exist before the sequence, and does it
exist after it. That gives four outcomes:

========================  ======================  ==========
existed before            exists after            compressed
========================  ======================  ==========
no (starts with insert)   no (ends with delete)   nothing
no                        yes                     insert
yes (starts with u or d)  no                      delete
yes                       yes                     update
========================  ======================  ==========

So insert + updates -> insert, insert + ... + delete -> nothing,
update + update -> update, update + delete -> delete, and delete + insert
(a row replaced under the same key) -> update.

An update also carries the columns it changed (see :mod:`.columns`): the
updates of a row compress to the union of their columns, and a sequence
with an insert or a delete in it to a whole row.

A node pushing its own log may drop a row it inserted and deleted again:
nobody else ever saw the key. A server serving a pull may not: another node
may have given that key to a new row of its own while offline, and must
learn that the key was taken (see :doc:`/conflicts`). Pulls therefore
compress with ``report_vanished=True``, which turns insert + ... + delete
into a delete, and, for tables with one integer key column, keep a row
deleted and inserted again apart from an update (:data:`REPLACED`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from .columns import ColumnSet, decode_columns, union
from .tables import DELETE, INSERT, UPDATE

#: What :func:`compressed_commands` reports for a row deleted and then
#: inserted again (in the tables it is asked to watch): a new row under an
#: old key, which a reader must treat as a delete followed by an insert.
REPLACED = "r"


class Operation(Protocol):
    """Anything with a row identity and a command (``"i"``, ``"u"``, ``"d"``)."""

    @property
    def table_name(self) -> str: ...

    @property
    def row_key(self) -> Hashable: ...

    @property
    def command(self) -> str: ...


Op = TypeVar("Op", bound=Operation)


def compress(operations: Iterable[Op], *, report_vanished: bool = False) -> list[Op]:
    """Reduce a sequence of operations to at most one per row.

    :param operations: operations in the order they happened. Each must be a
        dataclass instance (or have a ``_replace`` method, like a named tuple)
        so its command can be changed.
    :param report_vanished: a row inserted and deleted again within the
        sequence comes out as a delete instead of nothing.
    :return: one operation per ``(table_name, row_key)`` whose change survives,
        in the order each row was first touched. Each result is the row's last
        operation with its command set to the compressed one, and, for
        operations with a ``columns`` field, the union of the columns of the
        row's updates when all its operations were updates (``None``, every
        column, when an insert or a delete is among them).
    """
    first: dict[tuple[str, Hashable], str] = {}
    last: dict[tuple[str, Hashable], Op] = {}
    # The union of the columns of a row's updates, for rows whose every
    # operation so far is an update (see tracking.columns).
    changed: dict[tuple[str, Hashable], ColumnSet] = {}
    mixed: set[tuple[str, Hashable]] = set()
    for op in operations:
        ident = (op.table_name, op.row_key)
        if ident not in first:
            first[ident] = op.command
        last[ident] = op
        if op.command != UPDATE:
            mixed.add(ident)
        elif ident not in mixed:
            columns = getattr(op, "columns", None)
            changed[ident] = (
                union(changed[ident], columns) if ident in changed else columns
            )

    result: list[Op] = []
    for ident, first_command in first.items():
        op = last[ident]
        outcome = _outcome(first_command, op.command, report_vanished)
        if outcome is None:
            continue
        columns = changed.get(ident) if ident not in mixed else None
        if op.command != outcome or getattr(op, "columns", None) != columns:
            op = _with(op, outcome, columns)
        result.append(op)
    return result


def compressed_commands(
    tables: Sequence[str],
    keys: Sequence[str],
    commands: Sequence[str],
    *,
    report_vanished: bool = False,
    watch_replaced: Collection[str] = (),
) -> dict[str, dict[str, str]]:
    """:func:`compress` for operations given column by column, without an
    object per operation (a pull page compresses thousands).

    :param tables: the table name of each operation, in the order they
        happened.
    :param keys: the key text of each operation.
    :param commands: the command of each operation.
    :param report_vanished: as for :func:`compress`.
    :param watch_replaced: tables in which a row deleted and inserted again
        comes out as :data:`REPLACED` instead of an update (or an insert,
        when the page also holds the first row's insert).
    :return: by table name, then key text, each row's compressed command; rows
        whose changes cancel out are left out. Rows come in the order they
        were first touched.
    """
    by_table: dict[str, tuple[list[str], list[str]]] = {}
    if len(set(tables)) == 1:
        by_table[tables[0]] = (list(keys), list(commands))
    else:
        for table_name, row_key, command in zip(tables, keys, commands, strict=True):
            found = by_table.get(table_name)
            if found is None:
                found = by_table[table_name] = ([], [])
            found[0].append(row_key)
            found[1].append(command)
    result: dict[str, dict[str, str]] = {}
    for table_name, (texts, logged) in by_table.items():
        # Keys in the order first touched, each with its last command.
        last = dict(zip(texts, logged, strict=True))
        if len(last) < len(texts):  # some row changed more than once
            first = dict(zip(reversed(texts), reversed(logged), strict=True))
            outcomes = {
                key: _outcome(first[key], c, report_vanished) for key, c in last.items()
            }
            if table_name in watch_replaced:
                # Also a row inserted, deleted and inserted again: a node
                # that had the first row (its own insert) must hear that
                # the row under the key is another one.
                for key in _replaced(texts, logged):
                    if outcomes[key] in (UPDATE, INSERT):
                        outcomes[key] = REPLACED
            last = {key: c for key, c in outcomes.items() if c is not None}
        if last:
            result[table_name] = last
    return result


def changed_columns(
    tables: Sequence[str],
    keys: Sequence[str],
    commands: Sequence[str],
    columns: Sequence[str | None],
) -> dict[str, dict[str, ColumnSet]]:
    """The columns changed by the rows whose every operation is an update,
    given column by column like :func:`compressed_commands`.

    :param columns: the logged column set of each operation (its text, see
        :func:`~.columns.encode_columns`).
    :return: by table name, then key text, the union of the row's update
        columns; rows with an insert or a delete among their operations are
        left out (their compressed change is a whole row).
    """
    result: dict[str, dict[str, ColumnSet]] = {}
    mixed: set[tuple[str, str]] = set()
    decoded: dict[str | None, ColumnSet] = {}
    for table_name, row_key, command, text in zip(
        tables, keys, commands, columns, strict=True
    ):
        if command != UPDATE:
            mixed.add((table_name, row_key))
            continue
        if text not in decoded:
            decoded[text] = decode_columns(text)
        found = decoded[text]
        by_key = result.setdefault(table_name, {})
        by_key[row_key] = union(by_key[row_key], found) if row_key in by_key else found
    for table_name, row_key in mixed:
        result.get(table_name, {}).pop(row_key, None)
    return result


def _replaced(texts: Sequence[str], commands: Sequence[str]) -> set[str]:
    """The keys inserted after being deleted."""
    deleted: set[str] = set()
    replaced: set[str] = set()
    for key, command in zip(texts, commands, strict=True):
        if command == DELETE:
            deleted.add(key)
        elif command == INSERT and key in deleted:
            replaced.add(key)
    return replaced


def _outcome(
    first_command: str, last_command: str, report_vanished: bool = False
) -> str | None:
    """The compressed command of a row's first and last commands (see the
    table above), ``None`` when nothing survives (unless ``report_vanished``:
    then a delete)."""
    existed = first_command != INSERT
    exists = last_command != DELETE
    if existed and exists:
        return UPDATE
    if exists:
        return INSERT
    if existed or report_vanished:
        return DELETE
    return None


def _with(op: Op, command: str, columns: ColumnSet) -> Op:
    changes: dict[str, Any] = {"command": command}
    if hasattr(op, "columns"):
        changes["columns"] = columns
    if dataclasses.is_dataclass(op) and not isinstance(op, type):
        return dataclasses.replace(op, **changes)
    replace = getattr(op, "_replace", None)
    if replace is None:
        raise TypeError(f"cannot change the command of {op!r}")
    new: Op = replace(**changes)
    return new
