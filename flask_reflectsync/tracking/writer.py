"""Writing a flush's operations in one statement, at driver speed.

Capture must cost one extra statement per flush, not a round trip per row,
and its Python overhead per row must stay small next to the ORM's own insert.
So the rows go straight to the driver, bypassing SQLAlchemy's per-parameter
processing (every value is already a plain ``int`` or ``str``):

* PostgreSQL: one ``INSERT ... SELECT FROM unnest(arrays)`` statement;
* SQLite and MySQL/MariaDB: the driver's ``executemany`` with positional
  tuples (PyMySQL rewrites it into multi-row inserts);
* any other backend: a Core executemany.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

#: One operation as written: (table name, encoded key, command).
OperationRow = tuple[str, str, str]

_COLUMNS = ("version_id", "table_name", "row_key", "command")


def insert_operations(
    connection: sa.Connection,
    table: sa.Table,
    version_id: int,
    rows: Sequence[OperationRow],
) -> None:
    """Insert ``rows`` into the operations ``table`` for one version row.

    :param connection: the session's connection, inside its transaction.
    :param table: ``reflectsync_operations``.
    :param version_id: the ``reflectsync_versions.id`` they belong to.
    :param rows: the operations, in order.
    """
    if not rows:
        return
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    target = preparer.format_table(table)
    columns = ", ".join(preparer.quote(name) for name in _COLUMNS)
    if dialect.name == "postgresql" and dialect.paramstyle in ("pyformat", "format"):
        names, keys, commands = zip(*rows, strict=True)
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) "
            "SELECT %s, n, k, c FROM unnest(%s::text[], %s::text[], %s::text[]) "
            "AS t(n, k, c)",
            (version_id, list(names), list(keys), list(commands)),
        )
    elif dialect.paramstyle in ("qmark", "format"):
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        connection.exec_driver_sql(
            f"INSERT INTO {target} ({columns}) VALUES ({mark}, {mark}, {mark}, {mark})",
            [(version_id, name, key, command) for name, key, command in rows],
        )
    else:
        connection.execute(
            table.insert(),
            [
                {"version_id": version_id, "table_name": n, "row_key": k, "command": c}
                for n, k, c in rows
            ],
        )
