"""The stored catalog: the rows of ``reflectsync_catalog_*`` read as records
and written from snapshots.

:class:`CatalogStore` runs every statement on the catalog tables and nothing
else: it never reads the live system catalog and never sends a signal (see
:mod:`.refresh` for the refresh, :mod:`.catalog` for the public entry
points). Writes happen inside the caller's transaction, under the refresh
lock.

Column rows are a copy of the ``columns_json`` a table row keeps, written
when the table is first needed with its columns (:meth:`write_columns`);
from then on ``columns_written`` is set and a refresh keeps them current
(:meth:`update_table`).

The module is a little over 500 lines because it is every statement on the
catalog tables in one place; the bulk inserts are in :mod:`.writer`, the
row conversions in :mod:`.rows`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..errors import GoneError, NotFoundError
from .models import CatalogColumn, CatalogSchema, CatalogTable, CatalogTables, as_utc
from .rows import (
    JSON_ATTRIBUTES,
    catalog_column,
    catalog_schema,
    catalog_table,
    gone_schema,
    stored_snapshot,
    table_values,
)
from .snapshot import LiveTable, SchemaSnapshot, TableSnapshot, decode_columns
from .writer import (
    chunks,
    column_values,
    insert_columns,
    insert_live_columns,
    insert_tables,
)

#: The probe scope of the schema level.
SCHEMAS_SCOPE = "schemas"


def tables_scope(schema_id: int) -> str:
    """The probe scope of one schema's tables."""
    return f"tables:{schema_id}"


class CatalogStore:
    """Reads and writes the catalog tables.

    :param tables: the catalog tables (:func:`.models.define_catalog_tables`).
    """

    def __init__(self, tables: CatalogTables) -> None:
        self.t = tables

    # -- probes -----------------------------------------------------------------

    def probe(self, connection: sa.Connection, scope: str) -> str | None:
        """The fingerprint stored for ``scope``; ``None`` if it was never
        compared."""
        probes = self.t.probes
        found = connection.execute(
            sa.select(probes.c.fingerprint).where(probes.c.scope == scope)
        )
        return found.scalar_one_or_none()

    def store_probe(
        self, connection: sa.Connection, scope: str, fingerprint: str, now: datetime
    ) -> None:
        """Remember ``fingerprint`` as what ``scope`` looked like at ``now``."""
        probes = self.t.probes
        values = {"fingerprint": fingerprint, "checked_at": now}
        updated = connection.execute(
            probes.update().where(probes.c.scope == scope).values(**values)
        )
        if updated.rowcount == 0:
            connection.execute(probes.insert().values(scope=scope, **values))

    def compared_at(
        self, connection: sa.Connection, schema_ids: set[int]
    ) -> dict[int, datetime]:
        """When each schema's tables were last compared in full.

        A refresh writes ``last_synced`` only on the rows it changes and
        records the time of the comparison once, on the schema's probe row;
        a live table or column was last synced at the later of the two.
        """
        if not schema_ids:
            return {}
        probes = self.t.probes
        scopes = {tables_scope(i): i for i in schema_ids}
        return {
            scopes[scope]: as_utc(checked_at)
            for scope, checked_at in connection.execute(
                sa.select(probes.c.scope, probes.c.checked_at).where(
                    probes.c.scope.in_(list(scopes))
                )
            )
        }

    # -- schemas ----------------------------------------------------------------

    def schemas(
        self, connection: sa.Connection, *, include_deleted: bool
    ) -> list[CatalogSchema]:
        """Every schema, by name."""
        s = self.t.schemas
        query = sa.select(s).order_by(s.c.name, s.c.id)
        if not include_deleted:
            query = query.where(sa.not_(s.c.deleted))
        return [catalog_schema(row) for row in connection.execute(query)]

    def schema(
        self, connection: sa.Connection, schema_id: int, *, allow_deleted: bool = False
    ) -> CatalogSchema:
        """One schema by id.

        :raises NotFoundError: if the catalog never had it.
        :raises GoneError: if it was dropped, unless ``allow_deleted``.
        """
        s = self.t.schemas
        row = connection.execute(sa.select(s).where(s.c.id == schema_id)).first()
        if row is None:
            raise NotFoundError(f"There is no schema with id {schema_id}.")
        schema = catalog_schema(row)
        if schema.deleted and not allow_deleted:
            raise GoneError(gone_schema(schema))
        return schema

    def live_schemas(self, connection: sa.Connection) -> dict[int, SchemaSnapshot]:
        """The live schemas as the snapshots they were stored from, by id."""
        s = self.t.schemas
        return {
            row.id: SchemaSnapshot(oid=row.oid, name=row.name, comment=row.comment)
            for row in connection.execute(sa.select(s).where(sa.not_(s.c.deleted)))
        }

    def insert_schema(
        self, connection: sa.Connection, new: SchemaSnapshot, now: datetime
    ) -> int:
        """Add a schema; its catalog id."""
        inserted = connection.execute(
            self.t.schemas.insert().values(
                oid=new.oid, name=new.name, comment=new.comment,
                last_synced=now, deleted=False,
            )
        )
        key = inserted.inserted_primary_key
        assert key is not None
        return int(key[0])

    def update_schema(
        self, connection: sa.Connection, schema_id: int, new: SchemaSnapshot
    ) -> None:
        """Store a schema's new name and comment."""
        s = self.t.schemas
        connection.execute(
            s.update().where(s.c.id == schema_id)
            .values(name=new.name, comment=new.comment)
        )

    def mark_schemas_synced(self, connection: sa.Connection, now: datetime) -> None:
        """Every live schema was compared at ``now``."""
        s = self.t.schemas
        connection.execute(
            s.update().where(sa.not_(s.c.deleted)).values(last_synced=now)
        )

    def drop_schemas(
        self, connection: sa.Connection, schema_ids: list[int]
    ) -> list[int]:
        """Mark schemas dropped; the ids of their live tables, which went
        with them (the caller drops those)."""
        if not schema_ids:
            return []
        s, t = self.t.schemas, self.t.tables
        connection.execute(
            s.update().where(s.c.id.in_(schema_ids)).values(deleted=True)
        )
        return [
            row.id
            for row in connection.execute(
                sa.select(t.c.id).where(
                    t.c.schema_id.in_(schema_ids), sa.not_(t.c.deleted)
                )
            )
        ]

    # -- reading tables ---------------------------------------------------------

    def tables(
        self,
        connection: sa.Connection,
        where: sa.ColumnElement[bool],
        *,
        with_columns: bool,
    ) -> list[CatalogTable]:
        """The tables ``where`` selects, by name, with their column records
        (only those already written) or as summaries."""
        t, s, c = self.t.tables, self.t.schemas, self.t.columns
        # The JSON attributes come as text and are decoded in one call: a
        # listing of thousands of tables spent more on decoding them one by
        # one than on the query.
        width = len(JSON_ATTRIBUTES)
        rows = connection.execute(
            sa.select(
                t.c.id, t.c.schema_id, t.c.oid, t.c.name, t.c.kind, t.c.comment,
                t.c.last_synced, t.c.deleted, s.c.name.label("schema_name"),
                t.c.definition,
                *(sa.func.coalesce(sa.cast(t.c[name], sa.Text), "null").label(name)
                  for name in JSON_ATTRIBUTES),
            )
            .join(s, s.c.id == t.c.schema_id)
            .where(where)
            .order_by(t.c.name, t.c.id)
        ).all()
        decoded = json.loads(
            "[" + ",".join(",".join(row[-width:]) for row in rows) + "]"
        )
        compared = self.compared_at(
            connection, {row.schema_id for row in rows if not row.deleted}
        )
        columns: dict[int, list[CatalogColumn]] = {}
        if with_columns and rows:
            schema_of = {row.id: row.schema_id for row in rows}
            for chunk in chunks([row.id for row in rows]):
                for column in connection.execute(
                    sa.select(c)
                    .where(c.c.table_id.in_(chunk), sa.not_(c.c.deleted))
                    .order_by(c.c.table_id, c.c.position)
                ):
                    floor = compared.get(schema_of[column.table_id])
                    columns.setdefault(column.table_id, []).append(
                        catalog_column(column, floor)
                    )
        return [
            catalog_table(
                row,
                decoded[width * i: width * i + width],
                tuple(columns.get(row.id, ())) if with_columns else None,
                None if row.deleted else compared.get(row.schema_id),
            )
            for i, row in enumerate(rows)
        ]

    def tables_of(
        self, connection: sa.Connection, schema_id: int, *, include_deleted: bool
    ) -> list[CatalogTable]:
        """A schema's tables, as summaries."""
        t = self.t.tables
        return self.tables(
            connection,
            sa.and_(
                t.c.schema_id == schema_id,
                sa.true() if include_deleted else sa.not_(t.c.deleted),
            ),
            with_columns=False,
        )

    def tables_by_id(
        self, connection: sa.Connection, table_ids: Sequence[int]
    ) -> dict[int, CatalogTable]:
        """These tables with their columns, by id."""
        if not table_ids:
            return {}
        found = self.tables(
            connection, self.t.tables.c.id.in_(list(table_ids)), with_columns=True
        )
        return {table.id: table for table in found}

    def table(self, connection: sa.Connection, table_id: int) -> CatalogTable:
        """One table with its columns.

        :raises NotFoundError: if the catalog never had it.
        """
        found = self.tables(connection, self.t.tables.c.id == table_id,
                            with_columns=True)
        if not found:
            raise NotFoundError(f"There is no table with id {table_id}.")
        return found[0]

    def table_state(self, connection: sa.Connection, table_id: int) -> Any:
        """What telling a cached table from a changed one takes: the row's
        ``schema_id``, ``oid``, ``digest`` and ``deleted``.

        :raises NotFoundError: if the catalog never had the table.
        """
        t = self.t.tables
        row = connection.execute(
            sa.select(t.c.schema_id, t.c.oid, t.c.digest, t.c.deleted)
            .where(t.c.id == table_id)
        ).first()
        if row is None:
            raise NotFoundError(f"There is no table with id {table_id}.")
        return row

    def successor(
        self, connection: sa.Connection, table: CatalogTable
    ) -> CatalogTable | None:
        """A live table with the dropped table's name in the same schema."""
        t = self.t.tables
        found = self.tables(
            connection,
            sa.and_(t.c.schema_id == table.schema_id, t.c.name == table.name,
                    sa.not_(t.c.deleted)),
            with_columns=False,
        )
        return found[0] if found else None

    def live_table_rows(self, connection: sa.Connection, schema_id: int) -> list[Any]:
        """A schema's live tables as a refresh first compares them: ``id``,
        ``oid``, ``name``, ``digest``, ``version`` and ``rename_hint``."""
        t = self.t.tables
        return list(connection.execute(
            sa.select(t.c.id, t.c.oid, t.c.name, t.c.digest, t.c.version,
                      t.c.rename_hint).where(
                t.c.schema_id == schema_id, sa.not_(t.c.deleted)
            )
        ).all())

    def snapshots(
        self, connection: sa.Connection, table_ids: Sequence[int]
    ) -> tuple[dict[int, TableSnapshot], set[int]]:
        """What the catalog remembers of these tables, as snapshots, and which
        of them have their column rows written."""
        t = self.t.tables
        snapshots: dict[int, TableSnapshot] = {}
        written: set[int] = set()
        for chunk in chunks(table_ids):
            for row in connection.execute(sa.select(t).where(t.c.id.in_(chunk))):
                snapshots[row.id] = stored_snapshot(row)
                if row.columns_written:
                    written.add(row.id)
        return snapshots, written

    def columns_pending(self, connection: sa.Connection, table_id: int) -> bool:
        """Whether a live table's column rows are still to be written."""
        t = self.t.tables
        return connection.execute(
            sa.select(t.c.id).where(
                t.c.id == table_id, sa.not_(t.c.columns_written),
                sa.not_(t.c.deleted),
            )
        ).first() is not None

    # -- writing tables ---------------------------------------------------------

    def insert_tables(
        self,
        connection: sa.Connection,
        schema_id: int,
        tables: Sequence[LiveTable],
        digests: dict[str, str],
        now: datetime,
        *,
        with_columns: bool,
    ) -> dict[str, int]:
        """Add new tables of a schema; their catalog ids by oid.

        :param with_columns: also write their column rows (else they are
            written when first needed, see :meth:`write_columns`).
        """
        ids = insert_tables(connection, self.t.tables, schema_id, tables, digests,
                            now, columns_written=with_columns)
        if with_columns:
            insert_live_columns(
                connection, self.t.columns,
                [(ids[table.oid], table) for table in tables], now,
            )
        return ids

    def write_new_columns(
        self,
        connection: sa.Connection,
        tables: Sequence[tuple[int, LiveTable]],
        now: datetime,
    ) -> None:
        """Write the column rows of tables just inserted without them, from
        the live tables they were inserted from (as :meth:`write_columns`
        would from their rows, without reading them back).

        :param tables: ``(catalog id, live table)``.
        :param now: their ``last_synced``.
        """
        if not tables:
            return
        insert_live_columns(connection, self.t.columns, tables, now)
        t = self.t.tables
        for chunk in chunks([table_id for table_id, _ in tables]):
            connection.execute(
                t.update().where(t.c.id.in_(chunk)).values(columns_written=True)
            )


    def update_table(
        self,
        connection: sa.Connection,
        table_id: int,
        live: LiveTable,
        table: TableSnapshot,
        digest: str,
        now: datetime,
        *,
        columns_written: bool,
        renamed_columns: dict[str, str] | None = None,
    ) -> None:
        """Store a known table as it is now, with its column rows: kept
        (same column identity, or renamed) and updated, added, or marked
        dropped; all written from ``table`` if it had none yet.

        :param columns_written: whether the table has column rows.
        :param renamed_columns: ``{new oid: old oid}`` of the columns paired
            as renamed where identities are names: each keeps its row (and
            its catalog id) under its new identity.
        """
        renames = renamed_columns or {}
        t, c = self.t.tables, self.t.columns
        values = table_values(live, table, digest, now)
        if not columns_written:
            connection.execute(
                t.update().where(t.c.id == table_id)
                .values(**values, columns_written=True)
            )
            insert_columns(connection, c, [(table_id, table.columns,
                                            table.primary_key)], now)
            return
        connection.execute(t.update().where(t.c.id == table_id).values(**values))
        existing = {
            row.oid: row.id
            for row in connection.execute(
                sa.select(c.c.id, c.c.oid).where(
                    c.c.table_id == table_id, sa.not_(c.c.deleted)
                )
            )
        }
        added: set[str] = set()
        for column in table.columns:
            column_id = existing.pop(renames.get(column.oid, column.oid), None)
            if column_id is None:
                added.add(column.oid)
            else:
                connection.execute(
                    c.update().where(c.c.id == column_id)
                    .values(column_values(table_id, column, table.primary_key, now))
                )
        if added:
            insert_columns(
                connection, c, [(table_id, table.columns, table.primary_key)], now,
                only=added,
            )
        if existing:
            connection.execute(
                c.update().where(c.c.id.in_(list(existing.values())))
                .values(deleted=True, last_synced=now)
            )

    def drop_tables(
        self, connection: sa.Connection, table_ids: list[int], now: datetime
    ) -> None:
        """Mark tables dropped at ``now``, keeping their last columns as
        column rows."""
        if not table_ids:
            return
        t = self.t.tables
        connection.execute(
            t.update().where(t.c.id.in_(table_ids))
            .values(deleted=True, last_synced=now)
        )
        self.write_columns(connection, table_ids)

    def store_versions(
        self,
        connection: sa.Connection,
        versions: Sequence[tuple[int, str | None, str | None]],
    ) -> None:
        """Remember new versions and rename hints of tables found unchanged
        otherwise.

        :param versions: ``(catalog id, version, rename hint)``.
        """
        if not versions:
            return
        t = self.t.tables
        connection.execute(
            t.update().where(t.c.id == sa.bindparam("table_id"))
            .values(version=sa.bindparam("new_version"),
                    rename_hint=sa.bindparam("new_hint")),
            [{"table_id": i, "new_version": v, "new_hint": h}
             for i, v, h in versions],
        )

    def write_columns(
        self, connection: sa.Connection, table_ids: Sequence[int]
    ) -> None:
        """Write the column rows of those of these tables that have none yet,
        from the columns stored with them; the refresh lock is held.

        The rows get their table's ``last_synced``: they say what was seen
        then.
        """
        t = self.t.tables
        for chunk in chunks(table_ids):
            rows = connection.execute(
                sa.select(t.c.id, t.c.columns_json, t.c.primary_key,
                          t.c.last_synced).where(
                    t.c.id.in_(chunk), sa.not_(t.c.columns_written)
                )
            ).all()
            by_time: dict[datetime, list[Any]] = {}
            for row in rows:
                by_time.setdefault(row.last_synced, []).append(row)
            for synced, group in by_time.items():
                insert_columns(
                    connection,
                    self.t.columns,
                    [
                        (row.id, decode_columns(row.columns_json),
                         tuple(row.primary_key))
                        for row in group
                    ],
                    synced,
                )
            if rows:
                connection.execute(
                    t.update().where(t.c.id.in_([row.id for row in rows]))
                    .values(columns_written=True)
                )
