"""Reading and writing rows of tracked tables by key, shared by the server's
handlers and the node: key filters, batched reads, executemany writes,
upserts and the tables' unique column sets.

Framework-free; imports neither :mod:`flask_reflectsync.server` nor
:mod:`flask_reflectsync.node`, and :mod:`flask_reflectsync.tracking` only for
types (capture uses :func:`key_filter`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

if TYPE_CHECKING:
    from .tracking import TrackedTable


_Built = TypeVar("_Built")

#: Statements built once per process, by the table they are about, then key.
_built: weakref.WeakKeyDictionary[sa.Table, dict[Hashable, Any]] = (
    weakref.WeakKeyDictionary()
)


def built_once(table: sa.Table, key: Hashable, build: Callable[[], _Built]) -> _Built:
    """``build()``, called once per process for ``table`` and ``key``: for a
    statement of the hot paths (a small push sends ten), whose construction
    costs more CPU than executing it once built (values go in bound
    parameters). Kept while ``table`` lives; two threads racing build it
    twice, harmlessly."""
    per_table = _built.get(table)
    if per_table is None:
        per_table = _built.setdefault(table, {})
    found = per_table.get(key)
    if found is None:
        found = per_table[key] = build()
    return found


def row_key(info: TrackedTable, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The primary key of a row given by column name."""
    return tuple(row[c.name] for c in info.pk_columns)


def key_filter(
    columns: Sequence[sa.Column[Any]],
    keys: Sequence[tuple[Any, ...]],
    *,
    inline: bool = False,
) -> sa.ColumnElement[bool]:
    """``columns IN keys`` for one column or several (a primary key, or the
    columns of a foreign key).

    :param inline: render the values into the SQL (``literal_execute``), so
        no backend's limit on the number of bound parameters applies however
        many keys there are (capture restricts a bulk statement this way);
        otherwise the caller batches the keys (see :func:`batches`).
    """
    if len(columns) == 1:
        values: Any = [k[0] for k in keys]
        if inline:
            values = sa.bindparam(
                "reflectsync_keys", values, expanding=True, literal_execute=True
            )
        return columns[0].in_(values)
    listed: Any = list(keys)
    if inline:
        listed = sa.bindparam(
            "reflectsync_keys", listed, expanding=True, literal_execute=True
        )
    return sa.tuple_(*columns).in_(listed)


def key_reference(
    constraint: sa.ForeignKeyConstraint, parent: TrackedTable
) -> tuple[sa.Column[Any], ...] | None:
    """The child's columns of a foreign key to ``parent``'s primary key, in
    the key's column order; ``None`` when the foreign key points at another
    unique key of ``parent`` (such references are not followed)."""
    pk_names = [c.name for c in parent.pk_columns]
    referred = [e.column.name for e in constraint.elements]
    if sorted(referred) != sorted(pk_names):
        return None
    return tuple(constraint.elements[referred.index(n)].parent for n in pk_names)


def select_rows(
    connection: sa.Connection, info: TrackedTable, condition: Any
) -> list[dict[str, Any]]:
    """Rows of ``info``'s table matching ``condition``, by column name."""
    names = [c.name for c in info.table.columns]
    return [
        dict(zip(names, row, strict=True))
        for row in connection.execute(sa.select(info.table).where(condition))
    ]


def read_rows(
    connection: sa.Connection, info: TrackedTable, keys: Sequence[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """The local rows among ``keys``, by column name."""
    found: list[dict[str, Any]] = []
    for batch in batches(list(keys), 500):
        found += select_rows(connection, info, key_filter(info.pk_columns, batch))
    return found


def write_rows(
    connection: sa.Connection,
    info: TrackedTable,
    inserts: Sequence[Mapping[str, Any]],
    updates: Sequence[Mapping[str, Any]],
) -> None:
    """Insert and update rows given by column name, one executemany each.

    Updates that move a unique value from one row to another are ordered so
    that the row giving the value up is written first (SQLite and MySQL check
    a unique constraint after each row); values swapped in a cycle are still
    refused by the database.
    """
    table = info.table
    if updates and unique_column_sets(table, primary_key=False):
        updates = _in_unique_order(connection, info, updates)
    if updates:
        pk_names = {c.name for c in info.pk_columns}
        by_columns: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for row in updates:
            by_columns.setdefault(tuple(row), []).append(row)
        for columns, rows in by_columns.items():
            statement = (
                sa.update(table)
                .where(*[c == sa.bindparam("pk_" + c.name) for c in info.pk_columns])
                .values(
                    {
                        table.c[n].key: sa.bindparam("v_" + n)
                        for n in columns
                        if n not in pk_names
                    }
                )
            )
            params = [
                {
                    **{"pk_" + n: r[n] for n in pk_names},
                    **{"v_" + n: r[n] for n in columns if n not in pk_names},
                }
                for r in rows
            ]
            if any(n not in pk_names for n in columns):
                connection.execute(statement, params)
    if inserts:
        keys = {c.name: c.key for c in table.columns}
        connection.execute(
            sa.insert(table), [{keys[n]: v for n, v in r.items()} for r in inserts]
        )


def _in_unique_order(
    connection: sa.Connection, info: TrackedTable, updates: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """``updates`` with every row that takes a unique value another updated
    row holds now placed after that row (a stable topological order; rows in
    a cycle keep their place)."""
    by_key = {row_key(info, row): row for row in updates}
    current = {row_key(info, r): r for r in read_rows(connection, info, list(by_key))}
    after: dict[tuple[Any, ...], set[tuple[Any, ...]]] = {k: set() for k in by_key}
    for columns in unique_column_sets(info.table, primary_key=False):
        if not all(c in row for row in updates for c in columns):
            continue
        holders: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for key, old in current.items():
            values = tuple(old.get(c) for c in columns)
            if None not in values:
                holders[values] = key
        for key, row in by_key.items():
            holder = holders.get(tuple(row[c] for c in columns))
            if holder is not None and holder != key:
                after[key].add(holder)  # the holder gives the value up first
    if not any(after.values()):
        return list(updates)
    ordered: list[Mapping[str, Any]] = []
    placed: set[tuple[Any, ...]] = set()
    waiting = list(by_key)
    while waiting:
        ready = [k for k in waiting if after[k] <= placed]
        if not ready:  # a cycle: written as they come, the database decides
            ready = waiting
        for key in ready:
            ordered.append(by_key[key])
            placed.add(key)
        waiting = [k for k in waiting if k not in placed]
    return ordered


#: The databases :func:`upsert_columns` writes to.
UPSERT_DIALECTS = ("sqlite", "postgresql")


def upsert_columns(
    connection: sa.Connection,
    info: TrackedTable,
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
) -> None:
    """Insert rows given column-wise, overwriting the local rows with the
    same keys: one ``INSERT ... ON CONFLICT (key) DO UPDATE`` executemany, on
    SQLite and PostgreSQL (:data:`UPSERT_DIALECTS`).

    :param columns: the column names.
    :param values: per column, the values of every row.
    """
    table = info.table
    dialect = connection.dialect
    insert: Any = sqlite.insert if dialect.name == "sqlite" else postgresql.insert
    pk_names = {c.name for c in info.pk_columns}
    keys = {c.name: c.key for c in table.columns}
    statement = insert(table)
    changed = {
        keys[n]: statement.excluded[keys[n]] for n in columns if n not in pk_names
    }
    if changed:
        statement = statement.on_conflict_do_update(
            index_elements=list(info.pk_columns), set_=changed
        )
    else:
        statement = statement.on_conflict_do_nothing(
            index_elements=list(info.pk_columns)
        )
    if dialect.name == "sqlite" and _execute_on_driver(
        connection, statement, columns, values
    ):
        return
    names = [keys[n] for n in columns]
    rows = zip(*values, strict=True)
    connection.execute(statement, [dict(zip(names, row, strict=True)) for row in rows])


def _execute_on_driver(
    connection: sa.Connection,
    statement: Any,
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
) -> bool:
    """Run an insert of rows given column-wise as one driver-level
    executemany, with each column type's bind processing applied here a
    column at a time: SQLAlchemy's per-row parameter handling costs more than
    SQLite's own executemany. Returns ``False``, and runs
    nothing, when the statement needs more than the rows' values
    (Python-side defaults)."""
    table = statement.table
    dialect = connection.dialect
    if any(
        c.onupdate is not None or (c.default is not None and c.name not in columns)
        for c in table.columns
    ):
        return False
    keys = {c.name: c.key for c in table.columns}
    position = {keys[n]: i for i, n in enumerate(columns)}
    compiled = statement.compile(dialect=dialect, column_keys=list(position))
    order = list(compiled.positiontup or ())
    if len(order) != len(columns) or any(k not in position for k in order):
        return False
    ordered = []
    for key in order:
        column = values[position[key]]
        process = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
        ordered.append(column if process is None else list(map(process, column)))
    # The driver's cursor of the same connection (so the same transaction)
    # takes the rows as an iterator: no list of thousands of tuples.
    cursor = connection.connection.cursor()
    try:
        rows: Any = zip(*ordered, strict=True)  # sqlite3 takes any iterable
        cursor.executemany(compiled.string, rows)
    finally:
        cursor.close()
    return True


def unique_column_sets(
    table: sa.Table, *, primary_key: bool
) -> list[tuple[str, ...]]:
    """The column sets of the table's unique constraints and indexes, each
    once.

    :param primary_key: whether the primary key is one of them (first): the
        server checks a push against every unique rule, the key included;
        the node's merge looks for unique conflicts beside the key, which it
        settles as key conflicts.
    """
    pk = tuple(c.name for c in table.primary_key.columns)
    sets: list[tuple[str, ...]] = [pk] if primary_key else []
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            sets.append(tuple(c.name for c in constraint.columns))
    for index in table.indexes:
        if index.unique:
            sets.append(tuple(c.name for c in index.columns))
    for column in table.columns:
        if column.unique:
            sets.append((column.name,))
    if primary_key:
        return list(dict.fromkeys(sets))
    return [s for s in dict.fromkeys(sets) if s and s != pk]


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
