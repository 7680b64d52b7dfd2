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

_COLUMNS = ("version_id", "table_name", "row_key", "command")

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
) -> None:
    """Insert operations into the operations ``table`` for one version row.

    The operations come as three parallel sequences, in order.

    :param connection: the session's connection, inside its transaction.
    :param table: ``reflectsync_operations``.
    :param version_id: the ``reflectsync_versions.id`` they belong to.
    :param names: the table name of each operation.
    :param keys: the encoded primary key of each operation.
    :param commands: the command of each operation.
    """
    if not keys:
        return
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    target = preparer.format_table(table)
    columns = ", ".join(preparer.quote(name) for name in _COLUMNS)
    if dialect.name == "postgresql" and dialect.paramstyle in ("pyformat", "format"):
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) "
            "SELECT %s, n, k, c FROM unnest(%s::text[], %s::text[], %s::text[]) "
            "AS t(n, k, c)",
            (version_id, list(names), list(keys), list(commands)),
        )
    elif dialect.name == "mysql" and _has_json_table(dialect):
        # One JSON document instead of 4 x N parameters: the driver escapes a
        # single string, and no per-row tuple is built.
        document = ",".join(
            f'[{_json(n)},{_json(k)},"{c}"]'
            for n, k, c in zip(names, keys, commands, strict=True)
        )
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) SELECT %s, j.n, j.k, j.c "
            "FROM JSON_TABLE(%s, '$[*]' COLUMNS ("
            "n VARCHAR(255) PATH '$[0]', k LONGTEXT PATH '$[1]', "
            "c VARCHAR(1) PATH '$[2]')) AS j",
            (version_id, f"[{document}]"),
        )
    elif dialect.paramstyle in ("qmark", "format"):
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) VALUES ({mark}, {mark}, {mark}, {mark})",
            list(zip([version_id] * len(keys), names, keys, commands, strict=True)),
        )
    else:
        connection.execute(
            table.insert(),
            [
                {"version_id": version_id, "table_name": n, "row_key": k, "command": c}
                for n, k, c in zip(names, keys, commands, strict=True)
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
) -> int:
    """Insert a transaction's ``reflectsync_versions`` row, with its first
    operations (which may be none), and return the row's id.

    On PostgreSQL both go in one statement (the version row's insert is a
    common table expression the operations select from); elsewhere the
    version row is one plain statement and the operations another. The
    statements are written for the driver directly: compiling them through
    SQLAlchemy would cost more than the round trip they save.

    :param values: the version row's columns, by column key.
    """
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    target = preparer.format_table(versions)
    names_sql = ", ".join(preparer.quote(versions.c[name].name) for name in values)
    params = list(values.values())
    if dialect.paramstyle not in ("pyformat", "format") or dialect.name not in (
        "postgresql",
        "mysql",
    ):
        result = connection.execute(versions.insert().values(**values))
        assert result.inserted_primary_key is not None
        (version_id,) = result.inserted_primary_key
        insert_operations(connection, operations, version_id, names, keys, commands)
        return int(version_id)
    marks = ", ".join(["%s"] * len(params))
    if dialect.name == "postgresql":
        if not keys:
            return int(
                connection.exec_driver_sql(
                    f"INSERT INTO {target} ({names_sql}) VALUES ({marks}) RETURNING id",
                    tuple(params),
                ).scalar_one()
            )
        ops = preparer.format_table(operations)
        columns = ", ".join(preparer.quote(name) for name in _COLUMNS)
        return int(
            connection.exec_driver_sql(
                f"WITH v AS (INSERT INTO {target} ({names_sql}) VALUES ({marks}) "
                f"RETURNING id), o AS (INSERT INTO {ops} ({columns}) "
                "SELECT v.id, t.n, t.k, t.c FROM v, "
                "unnest(%s::text[], %s::text[], %s::text[]) AS t(n, k, c)) "
                "SELECT id FROM v",
                (*params, list(names), list(keys), list(commands)),
            ).scalar_one()
        )
    result = connection.exec_driver_sql(
        f"INSERT INTO {target} ({names_sql}) VALUES ({marks})", tuple(params)
    )
    version_id = int(result.lastrowid)
    insert_operations(connection, operations, version_id, names, keys, commands)
    return version_id
