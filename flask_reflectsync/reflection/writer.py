"""Writing new catalog tables and columns in as few statements as possible.

A cold listing of a large schema writes a catalog row per table; sending
them as an executemany of one dict per row made the write most of its cost.
On PostgreSQL each level goes to the driver as one statement,
``INSERT ... SELECT FROM unnest(...) RETURNING``, with one parameter per
catalog column: a single delimited text split by ``string_to_array`` where
the values allow it (see :func:`_joined`), else an array. The JSON texts the
catalog query built go back as they are. Other backends use a Core
executemany (and, for the table ids, one lookup by oid).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from .snapshot import ColumnSnapshot, LiveTable, decode_columns

T = TypeVar("T")

#: How many ids go into one ``IN`` list.
CHUNK = 500

_TABLE_COLUMNS = (
    ("oid", "text"),
    ("name", "text"),
    ("kind", "text"),
    ("comment", "text"),
    ("primary_key", "json"),
    ("foreign_keys", "json"),
    ("unique_constraints", "json"),
    ("digest", "text"),
    ("columns_json", "text"),
    ("rename_hint", "text"),
    ("version", "text"),
    ("check_constraints", "json"),
    ("indexes", "json"),
    ("definition", "text"),
    ("triggers", "json"),
    ("privileges", "json"),
)
_COLUMN_COLUMNS = (
    ("table_id", "int"),
    ("oid", "text"),
    ("name", "text"),
    ("position", "int"),
    ("type", "text"),
    ("nullable", "bool"),
    ("default", "text"),
    ("primary_key", "bool"),
    ("comment", "text"),
)


def _unnest_arrays(dialect: sa.Dialect) -> bool:
    return dialect.name == "postgresql" and dialect.paramstyle == "pyformat"


def _unnest_insert(
    connection: sa.Connection,
    table: sa.Table,
    fixed: dict[str, Any],
    columns: Sequence[tuple[str, str]],
    arrays: Sequence[list[Any]],
    returning: str = "",
) -> sa.CursorResult[Any]:
    """``INSERT INTO table (fixed..., columns...) SELECT %s..., a, b, ...
    FROM unnest(%s::type[], ...)``: one statement, one array per column."""
    preparer = connection.dialect.identifier_preparer
    names = [*fixed, *(name for name, _ in columns)]
    aliases = [f"c{i}" for i in range(len(columns))]
    selected = [
        f"%s::{_cast(table, name)}" for name in fixed
    ] + [
        f"{alias}::{'json' if kind == 'json' else _cast(table, name)}"
        for alias, (name, kind) in zip(aliases, columns, strict=True)
    ]
    unnested: list[str] = []
    params: list[Any] = list(fixed.values())
    for (_, kind), values in zip(columns, arrays, strict=True):
        element = "text" if kind == "json" else kind
        joined = _joined(values)
        if joined is None:
            unnested.append(f"%s::{element}[]")
            params.append(values)
        else:
            unnested.append(f"string_to_array(%s, chr(30), chr(31))::{element}[]")
            params.append(joined)
    statement = (
        f"INSERT INTO {preparer.format_table(table)} "
        f"({', '.join(preparer.quote(name) for name in names)}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(unnested)}) "
        f"AS u({', '.join(aliases)}){returning}"
    )
    return connection.exec_driver_sql(statement, tuple(params))


def _joined(values: list[Any]) -> str | None:
    """``values`` as one text for ``string_to_array(text, chr(30), chr(31))``
    (record separator between values, unit separator for NULL), or ``None``
    when a value contains either character or the text would be empty.

    psycopg sends a list as an array literal it quotes and escapes element by
    element; for the kilobytes of JSON a table row carries that took longer
    than the insert itself. One string goes as it is.
    """
    texts = [
        "\x1f" if value is None else ("t" if value else "f")
        if isinstance(value, bool) else str(value)
        for value in values
    ]
    joined = "\x1e".join(texts)
    nulls = sum(1 for value in values if value is None)
    if (
        not joined
        or joined.count("\x1e") != len(values) - 1
        or joined.count("\x1f") != nulls
        or (len(values) == 1 and nulls == 0 and texts[0] == "")
    ):
        return None
    return joined


def _cast(table: sa.Table, name: str) -> str:
    # What the catalog column is on PostgreSQL, for explicit casts.
    type_ = table.c[name].type
    if isinstance(type_, sa.DateTime):
        return "timestamptz"
    if isinstance(type_, sa.Boolean):
        return "boolean"
    if isinstance(type_, sa.Integer):
        return "integer"
    return "text"


def insert_tables(
    connection: sa.Connection,
    table: sa.Table,
    schema_id: int,
    tables: Sequence[LiveTable],
    digests: dict[str, str],
    now: datetime,
    *,
    columns_written: bool = False,
) -> dict[str, int]:
    """Insert catalog rows for new live tables of one schema, without their
    column rows (see :class:`~.models.CatalogTables`).

    :param connection: inside the refresh's transaction.
    :param table: ``reflectsync_catalog_tables``.
    :param schema_id: catalog id of their schema.
    :param tables: the tables to insert (their oids are unique).
    :param digests: each table's digest, by oid.
    :param now: their ``last_synced``.
    :param columns_written: whether the caller writes their column rows in
        the same transaction.
    :returns: the new catalog ids by oid.
    """
    if not tables:
        return {}
    if _unnest_arrays(connection.dialect):
        arrays: list[list[Any]] = [
            [t.oid for t in tables],
            [t.name for t in tables],
            [t.kind for t in tables],
            [t.comment for t in tables],
            [t.primary_key for t in tables],
            [t.foreign_keys for t in tables],
            [t.unique_constraints for t in tables],
            [digests[t.oid] for t in tables],
            [t.columns for t in tables],
            [t.rename_hint for t in tables],
            [t.version for t in tables],
            [t.check_constraints for t in tables],
            [t.indexes for t in tables],
            [t.definition for t in tables],
            [t.triggers for t in tables],
            [t.privileges for t in tables],
        ]
        result = _unnest_insert(
            connection,
            table,
            {"schema_id": schema_id, "last_synced": now, "deleted": False,
             "columns_written": columns_written},
            _TABLE_COLUMNS,
            arrays,
            returning=" RETURNING oid, id",
        )
        rows: Sequence[Any] = result.all()
        return {str(oid): int(id_) for oid, id_ in rows}
    connection.execute(
        table.insert(),
        [
            {
                "schema_id": schema_id,
                "oid": t.oid,
                "name": t.name,
                "kind": t.kind,
                "comment": t.comment,
                "primary_key": json.loads(t.primary_key),
                "foreign_keys": json.loads(t.foreign_keys),
                "unique_constraints": json.loads(t.unique_constraints),
                "digest": digests[t.oid],
                "columns_json": t.columns,
                "columns_written": columns_written,
                "rename_hint": t.rename_hint,
                "version": t.version,
                "check_constraints": json.loads(t.check_constraints),
                "indexes": json.loads(t.indexes),
                "definition": t.definition,
                "triggers": json.loads(t.triggers),
                "privileges": json.loads(t.privileges),
                "last_synced": now,
                "deleted": False,
            }
            for t in tables
        ],
    )
    ids: dict[str, int] = {}
    for chunk in chunks([t.oid for t in tables]):
        for oid, id_ in connection.execute(
            sa.select(table.c.oid, table.c.id).where(
                table.c.schema_id == schema_id,
                sa.not_(table.c.deleted),
                table.c.oid.in_(chunk),
            )
        ):
            ids[oid] = id_
    return ids


def insert_columns(
    connection: sa.Connection,
    table: sa.Table,
    owners: Sequence[tuple[int, Sequence[ColumnSnapshot], Sequence[str]]],
    now: datetime,
    *,
    only: set[str] | None = None,
) -> None:
    """Insert catalog rows for the live columns of tables.

    :param connection: inside the refresh's transaction.
    :param table: ``reflectsync_catalog_columns``.
    :param owners: ``(catalog table id, columns, primary key names)``.
    :param now: their ``last_synced``.
    :param only: insert only the columns with these oids (all by default).
    """
    if _unnest_arrays(connection.dialect):
        arrays: list[list[Any]] = [[] for _ in _COLUMN_COLUMNS]
        (ids, oids, names, positions, types, nullables, defaults, keys,
         comments) = arrays
        for table_id, columns, primary_key in owners:
            for column in columns:
                if only is not None and column.oid not in only:
                    continue
                ids.append(table_id)
                oids.append(column.oid)
                names.append(column.name)
                positions.append(column.position)
                types.append(column.type)
                nullables.append(column.nullable)
                defaults.append(column.default)
                keys.append(column.name in primary_key)
                comments.append(column.comment)
        if ids:
            _unnest_insert(
                connection,
                table,
                {"last_synced": now, "deleted": False},
                _COLUMN_COLUMNS,
                arrays,
            )
        return
    rows = [
        column_values(table_id, column, primary_key, now)
        for table_id, columns, primary_key in owners
        for column in columns
        if only is None or column.oid in only
    ]
    if rows:
        connection.execute(table.insert(), rows)


def insert_live_columns(
    connection: sa.Connection,
    table: sa.Table,
    tables: Sequence[tuple[int, LiveTable]],
    now: datetime,
) -> None:
    """Insert catalog rows for the columns of live tables as the reader
    encoded them.

    :param table: ``reflectsync_catalog_columns``.
    :param tables: ``(catalog table id, live table)``.
    :param now: their ``last_synced``.
    """
    insert_columns(
        connection,
        table,
        [
            (table_id, decode_columns(live.columns), json.loads(live.primary_key))
            for table_id, live in tables
        ],
        now,
    )


def column_values(
    table_id: int, column: ColumnSnapshot, primary_key: Sequence[str], now: datetime
) -> dict[str, Any]:
    """The values of the catalog row of a live column.

    :param table_id: catalog id of its table.
    :param primary_key: its table's primary key column names.
    :param now: its ``last_synced``.
    """
    return {
        "table_id": table_id,
        "oid": column.oid,
        "name": column.name,
        "position": column.position,
        "type": column.type,
        "nullable": column.nullable,
        "default": column.default,
        "primary_key": column.name in primary_key,
        "comment": column.comment,
        "last_synced": now,
        "deleted": False,
    }


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``: an ``IN`` list or a statement each,
    short enough for every backend's parameter limit.

    :param items: anything sliceable.
    :param size: the slice length.
    """
    for start in range(0, len(items), size):
        yield items[start : start + size]
