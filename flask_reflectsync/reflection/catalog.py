"""Keep the catalog true to the database and announce what changed.

:class:`Catalog` is the whole reflection feature without Flask: give it an
engine, the catalog tables and a signal sender. Every read goes through a
cheap probe first; only a level whose fingerprint changed is read in full,
diffed against what the catalog remembers, written back and announced (see
:mod:`.refresh`). Signals are sent after the commit, so receivers see the
catalog as it now is. The catalog rows themselves are read and written by
:mod:`.store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ..errors import GoneError
from .changes import (
    Change,
    ObjectAltered,
    ObjectCreated,
    ObjectDropped,
    ObjectRenamed,
    announce,
)
from .models import CatalogObject, CatalogSchema, CatalogTable, CatalogTables
from .objects import (
    ObjectStore,
    catalog_object,
    check_live,
    fingerprint,
    objects_scope,
    read_live,
)
from .refresh import Refresh
from .rows import gone_schema, gone_table, schema_snapshot
from .snapshot import CatalogReader, reader_for
from .store import CatalogStore


class Catalog:
    """The reflection catalog of one database.

    :param engine: the database to reflect; the catalog tables live there too.
    :param tables: the catalog tables (:func:`.models.define_catalog_tables`).
    :param sender: the sender of every signal (the Flask app).
    :param exclude: :func:`fnmatch.fnmatchcase` patterns of table names the
        catalog ignores.
    :param reader: the catalog reader; chosen from the engine's dialect by
        default.
    """

    def __init__(
        self,
        engine: sa.Engine,
        tables: CatalogTables,
        *,
        sender: Any = None,
        exclude: Sequence[str] = (),
        reader: CatalogReader | None = None,
    ) -> None:
        self.engine = engine
        self.t = tables
        self.sender = sender
        self.exclude = tuple(exclude)
        self.reader = reader or reader_for(engine.dialect.name)
        self.store = CatalogStore(tables)
        self.refresh = Refresh(self.store, self.reader, self.exclude)
        self.objects = ObjectStore(tables) if tables.objects is not None else None

    def reflect(self, *, force: bool = False) -> list[Change]:
        """Bring the whole catalog up to date now and announce the changes.

        :param force: read every level in full even if its probe says nothing
            changed.
        :returns: the changes, in the order their signals were sent.
        """
        with self.engine.connect() as connection:
            changes = self.refresh.schemas(connection, force=force, all_changes=True)
            for schema in self.store.schemas(connection, include_deleted=False):
                changes += self.refresh.tables(connection, schema, force=force,
                                               all_changes=True)
                changes += self._refresh_objects(connection, schema, force=force)
        self._send(changes)
        return changes

    def list_objects(
        self, schema_id: int, *, include_deleted: bool = False
    ) -> list[CatalogObject]:
        """The enum and domain types and sequences of a schema, refreshed if
        their probe says they changed.

        :param schema_id: catalog id of the schema.
        :param include_deleted: also list dropped objects.
        :raises NotFoundError: if the catalog never had this schema.
        :raises GoneError: if the schema has been dropped.
        """
        with self.engine.connect() as connection:
            schema = self.store.schema(connection, schema_id)
            changes = self._refresh_objects(connection, schema, force=False)
            found = (
                [] if self.objects is None
                else self.objects.of_schema(connection, schema,
                                            include_deleted=include_deleted)
            )
        self._send(changes)
        return found

    def get_object(self, object_id: int) -> CatalogObject:
        """One schema-level object, its schema's objects refreshed first if
        their probe says they changed.

        :raises NotFoundError: if the catalog never had it.
        :raises GoneError: if it (or its schema) has been dropped.
        """
        from ..errors import NotFoundError

        if self.objects is None:
            raise NotFoundError(f"There is no object with id {object_id}.")
        changes: list[Change] = []
        with self.engine.connect() as connection:
            row, _ = self.objects.one(connection, object_id)
            schema = self.store.schema(connection, row.schema_id, allow_deleted=True)
            if not row.deleted and not schema.deleted:
                changes = self._refresh_objects(connection, schema, force=False)
                row, _ = self.objects.one(connection, object_id)
        self._send(changes)
        check_live(row)
        if schema.deleted:
            raise GoneError(gone_schema(schema))
        return catalog_object(row, row.schema_name)

    def _refresh_objects(
        self, connection: sa.Connection, schema: CatalogSchema, *, force: bool
    ) -> list[Change]:
        """Refresh one schema's objects if their probe changed (or
        ``force``); the committed changes, to be announced."""
        if self.objects is None:
            return []
        scope = objects_scope(schema.id)
        snapshot = schema_snapshot(schema)
        live = fingerprint(self.reader, connection, snapshot)
        if live is None:
            return []  # the schema is gone: its refresh says so
        if not force and live == self.store.probe(connection, scope):
            return []
        with self.refresh.locked(connection):
            live = fingerprint(self.reader, connection, snapshot)
            if live is None or (
                not force and live == self.store.probe(connection, scope)
            ):
                return []
            found = read_live(self.reader, connection, snapshot)
            if found is None:
                return []
            # The extension's own tables' sequences are its own too.
            found = [item for item in found if not self.refresh.excluded(item.name)]
            now = datetime.now(timezone.utc)
            written = self.objects.write(connection, schema.id, found, now)
            self.store.store_probe(connection, scope, live, now)
            loaded = self.objects.by_ids(connection, written.ids(), schema.name)
            changes: list[Change] = [ObjectCreated(loaded[i]) for i in written.created]
            changes += [ObjectRenamed(loaded[i], old, new)
                        for i, old, new in written.renamed]
            changes += [ObjectAltered(loaded[i], fields)
                        for i, fields in written.altered]
            changes += [ObjectDropped(loaded[i]) for i in written.dropped]
        return changes

    def list_schemas(self, *, include_deleted: bool = False) -> list[CatalogSchema]:
        """The schemas, refreshed if the probe says they changed.

        :param include_deleted: also list dropped schemas.
        """
        with self.engine.connect() as connection:
            changes = self.refresh.schemas(connection, force=False)
            schemas = self.store.schemas(connection, include_deleted=include_deleted)
        self._send(changes)
        return schemas

    def list_tables(
        self, schema_id: int, *, include_deleted: bool = False
    ) -> list[CatalogTable]:
        """The tables of a schema (without columns), refreshed if the probe
        says they changed.

        :param schema_id: catalog id of the schema.
        :param include_deleted: also list dropped tables.
        :raises NotFoundError: if the catalog never had this schema.
        :raises GoneError: if the schema has been dropped.
        """
        with self.engine.connect() as connection:
            schema = self.store.schema(connection, schema_id)
            changes = self.refresh.tables(connection, schema, force=False)
            schema = self.store.schema(connection, schema_id, allow_deleted=True)
            tables = self.store.tables_of(connection, schema_id,
                                          include_deleted=include_deleted)
        self._send(changes)
        if schema.deleted:
            raise GoneError(gone_schema(schema))
        return tables

    def get_table(self, table_id: int) -> CatalogTable:
        """A table with its columns, from the catalog.

        The cached table is served when the database still has it exactly so
        (one small query checks); otherwise its schema is refreshed first.

        :param table_id: catalog id of the table.
        :raises NotFoundError: if the catalog never had this table.
        :raises GoneError: if the table (or its schema) has been dropped.
        """
        changes: list[Change] = []
        with self.engine.connect() as connection:
            row = self.store.table_state(connection, table_id)
            schema = self.store.schema(connection, row.schema_id, allow_deleted=True)
            if not row.deleted and not schema.deleted:
                live = self.reader.read_table(
                    connection, schema_snapshot(schema), row.oid
                )
                if live is None or live.digest() != row.digest:
                    changes = self.refresh.tables(connection, schema, force=True)
                self._ensure_columns(connection, table_id)
            table = self.store.table(connection, table_id)
            successor = (
                self.store.successor(connection, table) if table.deleted else None
            )
        self._send(changes)
        if table.deleted:
            raise GoneError(gone_table(table, successor))
        return table

    def _ensure_columns(self, connection: sa.Connection, table_id: int) -> None:
        """Give a live table's stored columns their catalog rows if they have
        none yet. The caller has just checked that the stored columns are the
        live ones (or refreshed them)."""
        if self.store.columns_pending(connection, table_id):
            with self.refresh.locked(connection):
                self.store.write_columns(connection, [table_id])

    def _send(self, changes: Iterable[Change]) -> None:
        announce(changes, self.sender)
