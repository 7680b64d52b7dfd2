"""SQLite: identities are names; each attached database is a schema.

``main`` and every ``ATTACH``-ed database are schemas (``temp`` is not). A
table's identity is its name, a column's identity its name. The fingerprint
of a schema's tables is SQLite's own ``schema_version`` cookie, which SQLite
bumps on every change to the schema.

``ALTER TABLE ... RENAME TO`` keeps the table's b-tree (its root page), so a
table that disappeared and one that appeared with the same root page and the
same columns (some possibly renamed) are reported as a rename, and a column
that went and one that came at the same place with the same type as a
column renamed (see :mod:`.diff`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from .snapshot import (
    TABLE,
    VIEW,
    ColumnSnapshot,
    ForeignKey,
    SchemaSnapshot,
    TableSnapshot,
    UniqueConstraint,
    UnversionedReader,
    rows_by_table,
)

_OBJECTS = (
    "FROM {schema}.sqlite_schema m WHERE m.type IN ('table', 'view')"
    " AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)
_ONE = " AND m.name = :table"


class SQLiteReader(UnversionedReader):
    """:class:`~.snapshot.CatalogReader` for SQLite."""

    dialect = "sqlite"

    #: Identities are names: columns are paired as renamed by their shape.
    identity_by_name = True
    #: The root page is handed to the next table created after a drop.
    rename_hints_are_ids = False

    def schemas_fingerprint(self, connection: sa.Connection) -> str:
        return ",".join(schema.name for schema in self.read_schemas(connection))

    def read_schemas(self, connection: sa.Connection) -> list[SchemaSnapshot]:
        rows = connection.exec_driver_sql("PRAGMA database_list").all()
        names = sorted(row[1] for row in rows if row[1] != "temp")
        return [SchemaSnapshot(oid=name, name=name) for name in names]

    def tables_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        if not self._present(connection, schema):
            return None
        quoted = _quote(connection, schema.name)
        version = connection.exec_driver_sql(f"PRAGMA {quoted}.schema_version")
        return str(version.scalar_one())

    def lock(self, connection: sa.Connection) -> None:
        # End whatever implicit transaction reads opened, then take SQLite's
        # write lock with a statement that writes nothing: from here until the
        # commit no other connection can change the catalog, and our reads
        # start after the previous holder's commit.
        connection.commit()
        connection.exec_driver_sql(
            "UPDATE reflectsync_catalog_probes SET scope = scope WHERE 0"
        )

    def unlock(self, connection: sa.Connection) -> None:
        """Nothing to do: the write lock ended with the commit."""

    def _present(self, connection: sa.Connection, schema: SchemaSnapshot) -> bool:
        return any(found.name == schema.name for found in self.read_schemas(connection))

    def _read(
        self, connection: sa.Connection, schema: SchemaSnapshot, name: str | None
    ) -> list[TableSnapshot]:
        objects = _OBJECTS.format(schema=_quote(connection, schema.name))
        where = objects + (_ONE if name is not None else "")
        params: dict[str, Any] = {"schema": schema.name, "table": name}

        tables = connection.execute(
            sa.text(f"SELECT m.name, m.type, m.rootpage {where} ORDER BY m.name"),
            params,
        ).all()
        columns = rows_by_table(
            connection,
            'SELECT m.name AS tbl, p.cid, p.name, p.type, p."notnull",'
            " p.dflt_value, p.pk, p.hidden"
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_table_xinfo(m.name, :schema) p"
            " ORDER BY m.name, p.cid",
            params,
        )
        foreign = rows_by_table(
            connection,
            'SELECT m.name AS tbl, f.id, f.seq, f."table" AS referred,'
            ' f."from" AS source, f."to" AS target, f.on_update, f.on_delete'
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_foreign_key_list(m.name, :schema) f"
            " ORDER BY m.name, f.id, f.seq",
            params,
        )
        unique = rows_by_table(
            connection,
            "SELECT m.name AS tbl, il.name AS idx, ii.seqno, ii.name AS col"
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_index_list(m.name, :schema) il"
            " JOIN pragma_index_info(il.name, :schema) ii"
            " WHERE il.\"unique\" = 1 AND il.origin = 'u'"
            " ORDER BY m.name, il.name, ii.seqno",
            params,
        )

        primary_keys = {
            tbl: tuple(r.name for r in sorted(rows, key=lambda r: r.pk) if r.pk)
            for tbl, rows in columns.items()
        }
        return [
            TableSnapshot(
                oid=table.name,
                name=table.name,
                kind=VIEW if table.type == "view" else TABLE,
                comment=None,
                columns=tuple(
                    ColumnSnapshot(
                        oid=row.name,
                        name=row.name,
                        position=position,
                        type=row.type,
                        nullable=not row.notnull,
                        default=row.dflt_value,
                    )
                    for position, row in enumerate(
                        (r for r in columns[table.name] if r.hidden != 1), start=1
                    )
                ),
                primary_key=primary_keys.get(table.name, ()),
                foreign_keys=_foreign_keys(foreign[table.name], primary_keys),
                unique_constraints=_uniques(unique[table.name]),
                rename_hint=str(table.rootpage) if table.rootpage else None,
            )
            for table in tables
        ]


def _quote(connection: sa.Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote_identifier(name)


def _action(value: str | None) -> str | None:
    return None if value in (None, "", "NO ACTION") else value


def _foreign_keys(
    rows: list[Any], primary_keys: dict[str, tuple[str, ...]]
) -> tuple[ForeignKey, ...]:
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.id].append(row)
    keys = []
    for parts in grouped.values():
        first = parts[0]
        referred = tuple(part.target for part in parts)
        if any(column is None for column in referred):
            # "REFERENCES parent" without columns means the parent's key.
            referred = primary_keys.get(first.referred, ())
        keys.append(
            ForeignKey(
                name=None,
                columns=tuple(part.source for part in parts),
                referred_schema=None,
                referred_table=first.referred,
                referred_columns=referred,
                on_update=_action(first.on_update),
                on_delete=_action(first.on_delete),
            )
        )
    return tuple(sorted(keys, key=lambda key: (key.columns, key.referred_table)))


def _uniques(rows: list[Any]) -> tuple[UniqueConstraint, ...]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        grouped[row.idx].append(row.col)
    constraints = [
        UniqueConstraint(
            # SQLite names the index behind an inline UNIQUE itself; that name
            # is not the constraint's and changes when the table is rebuilt.
            name=None if index.startswith("sqlite_autoindex_") else index,
            columns=tuple(names),
        )
        for index, names in grouped.items()
    ]
    return tuple(sorted(constraints, key=lambda u: (u.columns, u.name or "")))
