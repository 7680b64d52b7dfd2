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

A node pushing its own log may drop a row it inserted and deleted again:
nobody else ever saw the key. A server serving a pull may not: another node
may have given that key to a new row of its own while offline, and must
learn that the key was taken (see :doc:`/conflicts`). Pulls therefore
compress with ``report_vanished=True``, which turns insert + ... + delete
into a delete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable
from typing import Protocol, TypeVar

from .tables import DELETE, INSERT, UPDATE


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
        operation with its command set to the compressed one.
    """
    first: dict[tuple[str, Hashable], str] = {}
    last: dict[tuple[str, Hashable], Op] = {}
    for op in operations:
        ident = (op.table_name, op.row_key)
        if ident not in first:
            first[ident] = op.command
        last[ident] = op

    result: list[Op] = []
    for ident, first_command in first.items():
        op = last[ident]
        existed = first_command != INSERT
        exists = op.command != DELETE
        if existed and exists:
            command = UPDATE
        elif exists:
            command = INSERT
        elif existed or report_vanished:
            command = DELETE
        else:
            continue
        result.append(op if op.command == command else _with_command(op, command))
    return result


def _with_command(op: Op, command: str) -> Op:
    if dataclasses.is_dataclass(op) and not isinstance(op, type):
        return dataclasses.replace(op, command=command)
    replace = getattr(op, "_replace", None)
    if replace is None:
        raise TypeError(f"cannot change the command of {op!r}")
    new: Op = replace(command=command)
    return new
