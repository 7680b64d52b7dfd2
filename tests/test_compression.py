"""Compression of operation sequences: a pure function, checked against the
state it produces."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_reflectsync.tracking import compress, compressed_commands
from flask_reflectsync.tracking.compression import REPLACED, changed_columns


@dataclass(frozen=True)
class Op:
    table_name: str
    row_key: int
    command: str
    value: int = 0


def _commands(ops: list[Op]) -> list[tuple[int, str]]:
    return [(op.row_key, op.command) for op in ops]


def test_insert_then_updates_is_an_insert() -> None:
    ops = [Op("t", 1, "i", 1), Op("t", 1, "u", 2), Op("t", 1, "u", 3)]
    assert compress(ops) == [Op("t", 1, "i", 3)]


def test_insert_then_delete_is_nothing() -> None:
    assert compress([Op("t", 1, "i"), Op("t", 1, "u"), Op("t", 1, "d")]) == []


def test_insert_then_delete_is_reported_as_a_delete_for_pulls() -> None:
    """A pull must tell nodes that a key was taken, even if the row is gone."""
    ops = [Op("t", 1, "i"), Op("t", 1, "u"), Op("t", 1, "d"), Op("t", 2, "i", 7)]
    assert _commands(compress(ops, report_vanished=True)) == [(1, "d"), (2, "i")]


def test_update_then_update_is_an_update() -> None:
    assert _commands(compress([Op("t", 1, "u"), Op("t", 1, "u")])) == [(1, "u")]


def test_update_then_delete_is_a_delete() -> None:
    assert _commands(compress([Op("t", 1, "u"), Op("t", 1, "d")])) == [(1, "d")]


def test_delete_then_insert_is_an_update() -> None:
    assert _commands(compress([Op("t", 1, "d"), Op("t", 1, "i", 5)])) == [(1, "u")]


def test_rows_keep_the_order_they_were_first_touched() -> None:
    ops = [Op("t", 2, "i"), Op("t", 1, "i"), Op("t", 2, "u"), Op("s", 2, "d")]
    result = compress(ops)
    assert [(op.table_name, op.row_key, op.command) for op in result] == [
        ("t", 2, "i"),
        ("t", 1, "i"),
        ("s", 2, "d"),
    ]


def test_named_tuples_work_too() -> None:
    from typing import NamedTuple

    class Row(NamedTuple):
        table_name: str
        row_key: str
        command: str

    assert compress([Row("t", "[1]", "d"), Row("t", "[1]", "i")]) == [
        Row("t", "[1]", "u")
    ]


# -- property: the compressed sequence produces the same final state ----------

State = dict[tuple[str, int], int]


@st.composite
def histories(draw: st.DrawFn) -> tuple[State, list[Op]]:
    """A valid history: inserts only of absent rows, updates and deletes only
    of present ones, starting from a random initial state."""
    keys = [(t, k) for t in ("a", "b") for k in range(4)]
    initial: State = {
        key: draw(st.integers(0, 9)) for key in keys if draw(st.booleans())
    }
    state = dict(initial)
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 30))):
        table, key = draw(st.sampled_from(keys))
        value = draw(st.integers(0, 99))
        if (table, key) in state:
            command = draw(st.sampled_from("ud"))
        else:
            command = "i"
        ops.append(Op(table, key, command, value))
        if command == "d":
            del state[(table, key)]
        else:
            state[(table, key)] = value
    return initial, ops


def apply(state: State, ops: list[Op]) -> State:
    """Apply operations strictly: a replica refuses impossible ones."""
    result = dict(state)
    for op in ops:
        key = (op.table_name, op.row_key)
        if op.command == "i":
            assert key not in result, f"insert of existing {key}"
            result[key] = op.value
        elif op.command == "u":
            assert key in result, f"update of missing {key}"
            result[key] = op.value
        else:
            assert key in result, f"delete of missing {key}"
            del result[key]
    return result


@given(histories())
def test_compressed_history_reaches_the_same_state(
    history: tuple[State, list[Op]],
) -> None:
    initial, ops = history
    compressed = compress(ops)
    assert apply(initial, compressed) == apply(initial, ops)
    # and it is never longer, with at most one operation per row
    assert len(compressed) <= len(ops)
    idents = [(op.table_name, op.row_key) for op in compressed]
    assert len(idents) == len(set(idents))


@given(histories())
def test_compressed_commands_agree_with_compress(
    history: tuple[State, list[Op]],
) -> None:
    _, ops = history
    expected: dict[str, dict[str, str]] = {}
    for op in compress(ops):
        expected.setdefault(op.table_name, {})[str(op.row_key)] = op.command
    columns = (
        [op.table_name for op in ops],
        [str(op.row_key) for op in ops],
        [op.command for op in ops],
    )
    found = compressed_commands(*columns)
    assert found == expected
    # rows in the order they were first touched, as compress keeps them
    assert {t: list(rows) for t, rows in found.items()} == {
        t: list(rows) for t, rows in expected.items()
    }

    # as pulls ask: vanished rows reported, replaced rows marked in table "a"
    reported: dict[str, dict[str, str]] = {}
    for op in compress(ops, report_vanished=True):
        reported.setdefault(op.table_name, {})[str(op.row_key)] = op.command
    marked = compressed_commands(*columns, report_vanished=True, watch_replaced={"a"})
    for table, rows in reported.items():
        for key, command in rows.items():
            history = [
                o.command for o in ops if (o.table_name, str(o.row_key)) == (table, key)
            ]
            again = "d" in history and "i" in history[history.index("d") :]
            # a row replaced under its key; the page's first insert may be
            # of the old row (an insert, deleted, inserted again)
            if table == "a" and command in ("u", "i") and again:
                command = REPLACED
            assert marked[table][key] == command, (table, key, history)
    assert {t: len(r) for t, r in marked.items()} == {
        t: len(r) for t, r in reported.items()
    }


# -- column sets ---------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnOp:
    table_name: str
    row_key: int
    command: str
    columns: frozenset[str] | None = None


def _cols(*names: str) -> frozenset[str]:
    return frozenset(names)


def test_updates_compress_to_the_union_of_their_columns() -> None:
    ops = [ColumnOp("t", 1, "u", _cols("count")), ColumnOp("t", 1, "u", _cols("note"))]
    assert compress(ops) == [ColumnOp("t", 1, "u", _cols("count", "note"))]


def test_an_update_of_unknown_columns_makes_the_whole_row() -> None:
    ops = [ColumnOp("t", 1, "u", _cols("count")), ColumnOp("t", 1, "u", None)]
    assert compress(ops) == [ColumnOp("t", 1, "u", None)]


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (["i", "u"], ("i", None)),  # a new row travels whole
        (["d", "i"], ("u", None)),  # a row replaced under its key: whole
        (["u", "d"], ("d", None)),
        (["u", "d", "i", "u"], ("u", None)),
    ],
)
def test_a_sequence_with_an_insert_or_a_delete_is_a_whole_row(
    commands: list[str], expected: tuple[str, None]
) -> None:
    ops = [ColumnOp("t", 1, c, _cols("note") if c == "u" else None) for c in commands]
    (result,) = compress(ops)
    assert (result.command, result.columns) == expected


def test_changed_columns_column_by_column() -> None:
    result = changed_columns(
        ["t", "t", "t", "t", "s"],
        ["[1]", "[1]", "[2]", "[2]", "[1]"],
        ["u", "u", "i", "u", "u"],
        ['["a"]', '["b"]', None, '["a"]', None],
    )
    assert result == {"t": {"[1]": _cols("a", "b")}, "s": {"[1]": None}}
