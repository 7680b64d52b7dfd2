"""Writing a flush's operations in one statement, at driver speed.

Capture must cost one extra statement per flush, not a round trip per row,
and its Python overhead per row must stay small next to the ORM's own insert.
So the rows go straight to the driver, bypassing SQLAlchemy's per-parameter
processing (every value is already a plain ``int`` or ``str``):

* PostgreSQL: one ``INSERT ... SELECT FROM unnest(arrays)`` statement;
* MySQL 8 / MariaDB 10.6+: one ``INSERT ... SELECT FROM JSON_TABLE(doc)``
  statement with the operations as one JSON document;
* SQLite (and older MySQL): the driver's ``executemany`` with positional
  tuples (PyMySQL rewrites it into multi-row inserts);
* any other backend: a Core executemany.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ..rows import built_once

_CHANGED = "changed_columns"
_SCOPE_BEFORE, _SCOPE_AFTER = "scope_before", "scope_after"

_json = json.JSONEncoder(ensure_ascii=False).encode


def _has_json_table(dialect: sa.Dialect) -> bool:
    # JSON_TABLE: MariaDB 10.6+, MySQL 8.0.4+.
    version = getattr(dialect, "server_version_info", None) or ()
    if getattr(dialect, "is_mariadb", False):
        return tuple(version[:2]) >= (10, 6)
    return tuple(version[:3]) >= (8, 0, 4)


def insert_operations(
    connection: sa.Connection,
    table: sa.Table,
    version_id: int,
    names: Sequence[str],
    keys: Sequence[str],
    commands: Sequence[str],
    changed: Sequence[str | None] | None = None,
    scopes: tuple[Sequence[str | None], Sequence[str | None]] | None = None,
) -> None:
    """Insert operations into the operations ``table`` for one version row.

    The operations come as parallel sequences, in order.

    :param connection: the session's connection, inside its transaction.
    :param table: ``reflectsync_operations``.
    :param version_id: the ``reflectsync_versions.id`` they belong to.
    :param names: the table name of each operation.
    :param keys: the encoded primary key of each operation.
    :param commands: the command of each operation.
    :param changed: the changed columns of each operation, as the log's
        text (see :mod:`.columns`), or ``None`` when no operation has any
        (inserts and deletes): the statement then leaves the column out.
    :param scopes: the server's share tags of each operation, before and
        after (see :mod:`flask_reflectsync.server.scopes`), or ``None`` when
        no operation has any.
    """
    if not keys:
        return
    columns: dict[str, Sequence[str | None]] = {
        "table_name": names,
        "row_key": keys,
        "command": commands,
    }
    if changed is not None:
        columns[_CHANGED] = changed
    if scopes is not None:
        columns[_SCOPE_BEFORE], columns[_SCOPE_AFTER] = scopes
    _insert(connection, table, version_id, columns)


#: The JSON_TABLE type of each column of an operation.
_JSON_TYPES = {
    "table_name": "VARCHAR(255)",
    "row_key": "LONGTEXT",
    "command": "VARCHAR(1)",
    _CHANGED: "LONGTEXT",
    _SCOPE_BEFORE: "VARCHAR(255)",
    _SCOPE_AFTER: "VARCHAR(255)",
}


def _insert(
    connection: sa.Connection,
    table: sa.Table,
    version_id: int,
    columns: Mapping[str, Sequence[str | None]],
) -> None:
    """One statement per backend for the operations given column by column
    (every value a ``str`` or ``None``)."""
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    target = preparer.format_table(table)
    names = list(columns)
    listed = ", ".join(preparer.quote(name) for name in ("version_id", *names))
    values = list(columns.values())
    count = len(values[0])
    if dialect.name == "postgresql" and dialect.paramstyle in ("pyformat", "format"):
        aliases = [f"c{n}" for n in range(len(names))]
        arrays = ", ".join(["%s::text[]"] * len(names))
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({listed}) "
            f"SELECT %s, {', '.join(aliases)} FROM unnest({arrays}) "
            f"AS t({', '.join(aliases)})",
            (version_id, *[list(v) for v in values]),
        )
    elif dialect.name == "mysql" and _has_json_table(dialect):
        # One JSON document instead of N x columns parameters: the driver
        # escapes a single string, and no per-row tuple is built.
        document = ",".join(
            "[" + ",".join(map(_json, row)) + "]" for row in zip(*values, strict=True)
        )
        paths = ", ".join(
            f"c{n} {_JSON_TYPES[name]} PATH '$[{n}]'" for n, name in enumerate(names)
        )
        selected = ", ".join(f"j.c{n}" for n in range(len(names)))
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({listed}) SELECT %s, {selected} "
            f"FROM JSON_TABLE(%s, '$[*]' COLUMNS ({paths})) AS j",
            (version_id, f"[{document}]"),
        )
    elif dialect.paramstyle in ("qmark", "format"):
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        marks = ", ".join([mark] * (len(names) + 1))
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({listed}) VALUES ({marks})",
            list(zip([version_id] * count, *values, strict=True)),
        )
    else:
        connection.execute(
            table.insert(),
            [
                {"version_id": version_id, **dict(zip(names, row, strict=True))}
                for row in zip(*values, strict=True)
            ],
        )


def insert_version(
    connection: sa.Connection,
    versions: sa.Table,
    operations: sa.Table,
    values: Mapping[str, Any],
    names: Sequence[str],
    keys: Sequence[str],
    commands: Sequence[str],
    changed: Sequence[str | None] | None = None,
    scopes: tuple[Sequence[str | None], Sequence[str | None]] | None = None,
) -> int:
    """Insert a transaction's ``reflectsync_versions`` row, with its first
    operations (which may be none), and return the row's id.

    On PostgreSQL both go in one statement (the version row's insert is a
    common table expression the operations select from); elsewhere the
    version row is one plain statement and the operations another. The
    statements are written for the driver directly: compiling them through
    SQLAlchemy would cost more than the round trip they save.

    :param values: the version row's columns, by column key.
    :param changed: as for :func:`insert_operations`.
    :param scopes: as for :func:`insert_operations`.
    """
    dialect = connection.dialect
    params = list(values.values())
    if dialect.paramstyle not in ("pyformat", "format") or dialect.name not in (
        "postgresql",
        "mysql",
    ):
        result = connection.execute(versions.insert().values(**values))
        assert result.inserted_primary_key is not None
        (version_id,) = result.inserted_primary_key
        insert_operations(
            connection, operations, version_id, names, keys, commands, changed, scopes
        )
        return int(version_id)
    if dialect.name == "postgresql":
        columns: list[Sequence[str | None]] = [names, keys, commands]
        fields: tuple[str, ...] = ("table_name", "row_key", "command")
        if changed is not None:
            columns.append(changed)
            fields += (_CHANGED,)
        if scopes is not None:
            columns += [scopes[0], scopes[1]]
            fields += (_SCOPE_BEFORE, _SCOPE_AFTER)
        # The usual small transaction logs one operation: its values go as
        # plain parameters, which costs the driver (and the server) less
        # than dumping and unnesting one-element arrays.
        shape = "none" if not keys else "one" if len(keys) == 1 else "many"
        statement = built_once(
            versions,
            ("insert_version", dialect.name, tuple(values), fields, shape),
            lambda: _postgresql_version_sql(
                dialect, versions, operations, tuple(values), fields, shape
            ),
        )
        if shape == "one":
            row: tuple[Any, ...] = tuple(column[0] for column in columns)
        elif shape == "many":
            row = tuple(list(column) for column in columns)
        else:
            row = ()
        return int(
            connection.exec_driver_sql(statement, (*params, *row)).scalar_one()
        )
    statement = built_once(
        versions,
        ("insert_version", dialect.name, tuple(values)),
        lambda: _plain_version_sql(dialect, versions, tuple(values)),
    )
    result = connection.exec_driver_sql(statement, tuple(params))
    version_id = int(result.lastrowid)
    insert_operations(
        connection, operations, version_id, names, keys, commands, changed, scopes
    )
    return version_id


def _plain_version_sql(
    dialect: sa.Dialect, versions: sa.Table, value_names: tuple[str, ...]
) -> str:
    """``INSERT`` of a version row with ``value_names``' columns, for the
    driver (``%s`` parameters)."""
    preparer = dialect.identifier_preparer
    listed = ", ".join(preparer.quote(versions.c[name].name) for name in value_names)
    marks = ", ".join(["%s"] * len(value_names))
    return f"INSERT INTO {preparer.format_table(versions)} ({listed}) VALUES ({marks})"


def _postgresql_version_sql(
    dialect: sa.Dialect,
    versions: sa.Table,
    operations: sa.Table,
    value_names: tuple[str, ...],
    fields: tuple[str, ...],
    shape: str,
) -> str:
    """The one PostgreSQL statement inserting a version row and its first
    operations (``shape``: ``"none"``, ``"one"``, given as plain
    parameters, or ``"many"``, as one text array per field), returning the
    version row's id."""
    version = _plain_version_sql(dialect, versions, value_names)
    if shape == "none":
        return f"{version} RETURNING id"
    preparer = dialect.identifier_preparer
    listed = ", ".join(preparer.quote(name) for name in ("version_id", *fields))
    if shape == "one":
        selected = "v.id, " + ", ".join(["%s"] * len(fields)) + " FROM v"
    else:
        letters = [f"c{n}" for n in range(len(fields))]
        selected = (
            f"v.id, {', '.join('t.' + x for x in letters)} FROM v, "
            f"unnest({', '.join(['%s::text[]'] * len(fields))}) "
            f"AS t({', '.join(letters)})"
        )
    return (
        f"WITH v AS ({version} RETURNING id), "
        f"o AS (INSERT INTO {preparer.format_table(operations)} ({listed}) "
        f"SELECT {selected}) SELECT id FROM v"
    )
