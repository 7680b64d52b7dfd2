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
_CHANGED = "changed_columns"

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
    """
    if not keys:
        return
    if changed is not None:
        _insert_with_changed(
            connection, table, version_id, names, keys, commands, changed
        )
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


def _insert_with_changed(
    connection: sa.Connection,
    table: sa.Table,
    version_id: int,
    names: Sequence[str],
    keys: Sequence[str],
    commands: Sequence[str],
    changed: Sequence[str | None],
) -> None:
    """:func:`insert_operations` for operations that carry changed columns
    (updates): the same single statement per backend, with one more column."""
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    target = preparer.format_table(table)
    columns = ", ".join(preparer.quote(name) for name in (*_COLUMNS, _CHANGED))
    if dialect.name == "postgresql" and dialect.paramstyle in ("pyformat", "format"):
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) "
            "SELECT %s, n, k, c, w FROM "
            "unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
            "AS t(n, k, c, w)",
            (version_id, list(names), list(keys), list(commands), list(changed)),
        )
    elif dialect.name == "mysql" and _has_json_table(dialect):
        document = ",".join(
            f'[{_json(n)},{_json(k)},"{c}",{_json(w)}]'
            for n, k, c, w in zip(names, keys, commands, changed, strict=True)
        )
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) SELECT %s, j.n, j.k, j.c, j.w "
            "FROM JSON_TABLE(%s, '$[*]' COLUMNS ("
            "n VARCHAR(255) PATH '$[0]', k LONGTEXT PATH '$[1]', "
            "c VARCHAR(1) PATH '$[2]', w LONGTEXT PATH '$[3]')) AS j",
            (version_id, f"[{document}]"),
        )
    elif dialect.paramstyle in ("qmark", "format"):
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) VALUES ({', '.join([mark] * 5)})",
            list(
                zip(
                    [version_id] * len(keys),
                    names,
                    keys,
                    commands,
                    changed,
                    strict=True,
                )
            ),
        )
    else:
        connection.execute(
            table.insert(),
            [
                {
                    "version_id": version_id,
                    "table_name": n,
                    "row_key": k,
                    "command": c,
                    _CHANGED: w,
                }
                for n, k, c, w in zip(names, keys, commands, changed, strict=True)
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
        insert_operations(
            connection, operations, version_id, names, keys, commands, changed
        )
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
        arrays: list[Any] = [list(names), list(keys), list(commands)]
        fields: tuple[str, ...] = _COLUMNS
        if changed is not None:
            arrays.append(list(changed))
            fields = (*_COLUMNS, _CHANGED)
        columns = ", ".join(preparer.quote(name) for name in fields)
        letters = "nkcw"[: len(arrays)]
        return int(
            connection.exec_driver_sql(
                f"WITH v AS (INSERT INTO {target} ({names_sql}) VALUES ({marks}) "
                f"RETURNING id), o AS (INSERT INTO {ops} ({columns}) "
                f"SELECT v.id, {', '.join('t.' + x for x in letters)} FROM v, "
                f"unnest({', '.join(['%s::text[]'] * len(arrays))}) "
                f"AS t({', '.join(letters)})) "
                "SELECT id FROM v",
                (*params, *arrays),
            ).scalar_one()
        )
    result = connection.exec_driver_sql(
        f"INSERT INTO {target} ({names_sql}) VALUES ({marks})", tuple(params)
    )
    version_id = int(result.lastrowid)
    insert_operations(
        connection, operations, version_id, names, keys, commands, changed
    )
    return version_id
