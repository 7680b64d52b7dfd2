"""Keep the catalog true to the database and announce what changed.

:class:`Catalog` is the whole reflection feature without Flask: give it an
engine, the catalog tables and a signal sender. Every read goes through a
cheap probe first; only a level whose fingerprint changed is read in full,
diffed against what the catalog remembers, written back and announced.

Refreshes are serialised across processes by the reader's lock (an advisory
lock, ``GET_LOCK`` or SQLite's write lock) and re-probe once they hold it, so
two workers noticing the same change apply it, and signal it, once. Signals
are sent after the commit, so receivers see the catalog as it now is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa

from .. import signals
from ..errors import GoneError, NotFoundError
from . import event_trigger
from .changes import (
    Change,
    SchemaCreated,
    SchemaDropped,
    SchemaRenamed,
    TableAltered,
    TableCreated,
    TableDropped,
    TableRenamed,
)
from .diff import Changed, Created, Dropped, diff_schemas, diff_tables
from .models import (
    CatalogColumn,
    CatalogSchema,
    CatalogTable,
    CatalogTables,
    as_utc,
)
from .snapshot import (
    CatalogReader,
    ColumnSnapshot,
    ForeignKey,
    LiveTable,
    SchemaSnapshot,
    TableSnapshot,
    UniqueConstraint,
    decode_columns,
    reader_for,
)
from .writer import insert_columns, insert_tables

SCHEMAS_SCOPE = "schemas"
_JSON_ATTRIBUTES = ("primary_key", "foreign_keys", "unique_constraints")


def _tables_scope(schema_id: int) -> str:
    return f"tables:{schema_id}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


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

    # -- public -----------------------------------------------------------------

    def reflect(self, *, force: bool = False) -> list[Change]:
        """Bring the whole catalog up to date now and announce the changes.

        :param force: read every level in full even if its probe says nothing
            changed.
        :returns: the changes, in the order their signals were sent.
        """
        with self.engine.connect() as connection:
            changes = self._refresh_schemas(connection, force=force, records=True)
            for schema in self._schemas(connection, include_deleted=False):
                changes += self._refresh_tables(connection, schema, force=force,
                                                records=True)
        self._send(changes)
        return changes

    def list_schemas(self, *, include_deleted: bool = False) -> list[CatalogSchema]:
        """The schemas, refreshed if the probe says they changed.

        :param include_deleted: also list dropped schemas.
        """
        with self.engine.connect() as connection:
            changes = self._refresh_schemas(connection, force=False)
            schemas = self._schemas(connection, include_deleted=include_deleted)
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
            schema = self._schema(connection, schema_id)
            changes = self._refresh_tables(connection, schema, force=False)
            schema = self._schema(connection, schema_id, allow_deleted=True)
            tables = self._tables(
                connection,
                sa.and_(
                    self.t.tables.c.schema_id == schema_id,
                    sa.true() if include_deleted else sa.not_(self.t.tables.c.deleted),
                ),
                with_columns=False,
            )
        self._send(changes)
        if schema.deleted:
            raise GoneError(_gone_schema(schema))
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
        t = self.t.tables
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(t.c.schema_id, t.c.oid, t.c.digest, t.c.deleted,
                          t.c.columns_written).where(t.c.id == table_id)
            ).first()
            if row is None:
                raise NotFoundError(f"There is no table with id {table_id}.")
            schema = self._schema(connection, row.schema_id, allow_deleted=True)
            if not row.deleted and not schema.deleted:
                live = self.reader.read_table(
                    connection, _schema_snapshot(schema), row.oid
                )
                if live is None or live.digest() != row.digest:
                    changes = self._refresh_tables(connection, schema, force=True)
                self._ensure_columns(connection, table_id)
            table = self._table(connection, table_id)
            successor = self._successor(connection, table) if table.deleted else None
        self._send(changes)
        if table.deleted:
            raise GoneError(_gone_table(table, successor))
        return table

    # -- probing and locking ----------------------------------------------------

    def _probe(self, connection: sa.Connection, scope: str) -> str | None:
        probes = self.t.probes
        found = connection.execute(
            sa.select(probes.c.fingerprint).where(probes.c.scope == scope)
        )
        return found.scalar_one_or_none()

    def _store_probe(
        self, connection: sa.Connection, scope: str, fingerprint: str, now: datetime
    ) -> None:
        probes = self.t.probes
        values = {"fingerprint": fingerprint, "checked_at": now}
        updated = connection.execute(
            probes.update().where(probes.c.scope == scope).values(**values)
        )
        if updated.rowcount == 0:
            connection.execute(probes.insert().values(scope=scope, **values))

    @contextmanager
    def _locked(self, connection: sa.Connection) -> Iterator[None]:
        self.reader.lock(connection)
        try:
            yield
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            self.reader.unlock(connection)

    def _ddl_epoch(self, connection: sa.Connection) -> str | None:
        """The DDL epoch kept by the event trigger, or ``None`` without it."""
        return event_trigger.current_epoch(connection, self.t.probes)

    def _as_probe(self, epoch: str | None, fingerprint: str) -> str:
        # With the event trigger installed, every catalog change bumps the
        # epoch in the DDL's own transaction: "same epoch" is then a complete
        # and much cheaper answer to "did anything change?".
        return f"ddl:{epoch}" if epoch is not None else fingerprint

    def _schemas_probe(self, connection: sa.Connection) -> str:
        epoch = self._ddl_epoch(connection)
        if epoch is not None:
            return self._as_probe(epoch, "")
        return self.reader.schemas_fingerprint(connection)

    def _refresh_schemas(
        self, connection: sa.Connection, *, force: bool, records: bool = False
    ) -> list[Change]:
        stored = self._probe(connection, SCHEMAS_SCOPE)
        # Never compared: no need to ask whether anything changed.
        if not force and stored is not None:
            if self._schemas_probe(connection) == stored:
                return []
        with self._locked(connection):
            return self._sync_schemas(connection, force=force, records=records)

    def _refresh_tables(
        self,
        connection: sa.Connection,
        schema: CatalogSchema,
        *,
        force: bool,
        records: bool = False,
    ) -> list[Change]:
        stored = self._probe(connection, _tables_scope(schema.id))
        live: str | None = None
        # Never compared (a cold listing): no need to ask whether anything
        # changed; the refresh computes the fingerprint it stores.
        if not force and stored is not None:
            epoch = self._ddl_epoch(connection)
            live = (
                self._as_probe(epoch, "")
                if epoch is not None
                else self.reader.tables_fingerprint(
                    connection, _schema_snapshot(schema)
                )
            )
            if live is not None and live == stored:
                return []
        with self._locked(connection):
            return self._sync_tables(connection, schema.id, force=force,
                                     records=records, probe=live)

    def _send(self, changes: Iterable[Change]) -> None:
        for change in changes:
            change.send(self.sender)

    # -- schemas ----------------------------------------------------------------

    def _sync_schemas(
        self, connection: sa.Connection, *, force: bool, records: bool = False
    ) -> list[Change]:
        """Compare and write the schema level; the lock is held.

        :param records: return every change even without receivers.
        """
        s = self.t.schemas
        now = _now()
        # The epoch is read before the catalog: a change committing in between
        # leaves a newer epoch behind, so the next probe looks again.
        epoch = self._ddl_epoch(connection)
        fingerprint = self._as_probe(epoch, self.reader.schemas_fingerprint(connection))
        if not force and fingerprint == self._probe(connection, SCHEMAS_SCOPE):
            return []  # another process did it while we waited for the lock
        live = self.reader.read_schemas(connection)
        old = {
            row.id: SchemaSnapshot(oid=row.oid, name=row.name, comment=row.comment)
            for row in connection.execute(sa.select(s).where(sa.not_(s.c.deleted)))
        }
        created: list[int] = []
        renamed: list[tuple[int, str, str]] = []
        dropped: list[int] = []
        for difference in diff_schemas(old, live):
            if isinstance(difference, Created):
                new = difference.new
                inserted = connection.execute(
                    s.insert().values(oid=new.oid, name=new.name, comment=new.comment,
                                      last_synced=now, deleted=False)
                )
                created.append(_inserted_id(inserted))
            elif isinstance(difference, Changed):
                new = difference.new
                connection.execute(
                    s.update().where(s.c.id == difference.catalog_id)
                    .values(name=new.name, comment=new.comment)
                )
                if difference.renamed:
                    renamed.append((difference.catalog_id, difference.old.name,
                                    new.name))
            elif isinstance(difference, Dropped):
                dropped.append(difference.catalog_id)
        connection.execute(
            s.update().where(sa.not_(s.c.deleted)).values(last_synced=now)
        )
        table_drops: list[Change] = []
        if dropped:
            connection.execute(
                s.update().where(s.c.id.in_(dropped)).values(deleted=True)
            )
            t = self.t.tables
            lost = [
                row.id
                for row in connection.execute(
                    sa.select(t.c.id).where(
                        t.c.schema_id.in_(dropped), sa.not_(t.c.deleted)
                    )
                )
            ]
            table_drops = self._drop_tables(connection, lost, now, records=records)
        self._store_probe(connection, SCHEMAS_SCOPE, fingerprint, now)

        by_id = {
            schema.id: schema
            for schema in self._schemas(connection, include_deleted=True)
        }
        changes: list[Change] = [SchemaCreated(by_id[i]) for i in created]
        changes += [SchemaRenamed(by_id[i], old, new) for i, old, new in renamed]
        changes += table_drops
        changes += [SchemaDropped(by_id[i]) for i in dropped]
        return changes

    def _schemas(
        self, connection: sa.Connection, *, include_deleted: bool
    ) -> list[CatalogSchema]:
        s = self.t.schemas
        query = sa.select(s).order_by(s.c.name, s.c.id)
        if not include_deleted:
            query = query.where(sa.not_(s.c.deleted))
        return [_catalog_schema(row) for row in connection.execute(query)]

    def _schema(
        self, connection: sa.Connection, schema_id: int, *, allow_deleted: bool = False
    ) -> CatalogSchema:
        s = self.t.schemas
        row = connection.execute(sa.select(s).where(s.c.id == schema_id)).first()
        if row is None:
            raise NotFoundError(f"There is no schema with id {schema_id}.")
        schema = _catalog_schema(row)
        if schema.deleted and not allow_deleted:
            raise GoneError(_gone_schema(schema))
        return schema

    # -- tables -----------------------------------------------------------------

    def _sync_tables(
        self,
        connection: sa.Connection,
        schema_id: int,
        *,
        force: bool,
        records: bool = False,
        probe: str | None = None,
    ) -> list[Change]:
        """Compare and write one schema's tables; the lock is held.

        :param records: return every change even when its signal has no
            receivers (announcing a table loads it with its columns, which
            for thousands of new tables would be most of a cold listing's
            cost, for records nobody reads).
        :param probe: the probe taken before the lock, if any. It is no newer
            than what is read below, so storing it can at worst make the next
            listing compare again; computing it again would double the cost
            of the probe for every listing that finds a change.
        """
        schema = self._schema(connection, schema_id, allow_deleted=True)
        if schema.deleted:
            return []
        snapshot = _schema_snapshot(schema)
        scope = _tables_scope(schema.id)
        if probe is not None:
            fingerprint = probe
        else:
            epoch = self._ddl_epoch(connection)
            if epoch is not None:
                # The read below tells whether the schema is still there.
                fingerprint = self._as_probe(epoch, "")
            else:
                present = self.reader.tables_fingerprint(connection, snapshot)
                if present is None:
                    return self._sync_schemas(connection, force=True,
                                              records=records)
                fingerprint = present
        if not force and fingerprint == self._probe(connection, scope):
            return []
        t = self.t.tables
        stored = connection.execute(
            sa.select(t.c.id, t.c.oid, t.c.name, t.c.digest, t.c.version).where(
                t.c.schema_id == schema.id, sa.not_(t.c.deleted)
            )
        ).all()
        found = self._live_tables(connection, snapshot, stored, force=force)
        if found is None:
            return self._sync_schemas(connection, force=True, records=records)
        live_tables, settled = found
        now = _now()

        live = {
            table.oid: table for table in live_tables if not self._excluded(table.name)
        }
        digests = {oid: table.digest() for oid, table in live.items()}
        unchanged = settled | {
            row.oid for row in stored if digests.get(row.oid) == row.digest
        }
        # Described again but unchanged: remember the new version.
        self._store_versions(
            connection,
            [
                (row.id, live[row.oid].version)
                for row in stored
                if row.oid in live and digests[row.oid] == row.digest
                and live[row.oid].version != row.version
            ],
        )
        stale = [row for row in stored if row.oid not in unchanged]
        old, written = self._snapshots(connection, [row.id for row in stale])
        # Only a table that may be one the catalog knows (same identity, or a
        # rename hint to pair it by) is decoded and compared; the others are
        # new and go in as the reader encoded them.
        known = {row.oid for row in stale}
        arriving = [table for oid, table in live.items() if oid not in unchanged]
        compared = [t_ for t_ in arriving if t_.oid in known or t_.rename_hint]

        created_oids = {t_.oid for t_ in arriving} - {t_.oid for t_ in compared}
        renamed: list[tuple[int, str, str]] = []
        altered: list[Changed[TableSnapshot]] = []
        dropped: list[int] = []
        for difference in diff_tables(old, [t_.snapshot() for t_ in compared]):
            if isinstance(difference, Created):
                created_oids.add(difference.new.oid)
            elif isinstance(difference, Changed):
                self._update_table(
                    connection, difference.catalog_id, live[difference.new.oid],
                    difference.new, digests[difference.new.oid], now,
                    columns_written=difference.catalog_id in written,
                )
                if difference.renamed:
                    renamed.append((difference.catalog_id, difference.old.name,
                                    difference.new.name))
                if difference.altered:
                    altered.append(difference)
            elif isinstance(difference, Dropped):
                dropped.append(difference.catalog_id)
        created = [table for table in arriving if table.oid in created_oids]
        # Announcing a table loads it with its columns, which may first have
        # to be written: only for the signals somebody receives. New tables
        # to announce get their column rows straight from what was read.
        announce_created = records or bool(signals.table_created.receivers)
        ids = insert_tables(connection, t, schema.id, created, digests, now,
                            columns_written=announce_created)
        created_ids = [ids[table.oid] for table in created]
        if announce_created:
            insert_columns(
                connection, self.t.columns,
                [
                    (ids[table.oid], decode_columns(table.columns),
                     json.loads(table.primary_key))
                    for table in created
                ],
                now,
            )
        else:
            created_ids = []
        table_drops = self._drop_tables(connection, dropped, now, records=records)
        self._store_probe(connection, scope, fingerprint, now)

        if not records and not signals.table_renamed.receivers:
            renamed = []
        if not records and not signals.table_altered.receivers:
            altered = []
        return self._announced(connection, created_ids, renamed, altered) + table_drops

    def _live_tables(
        self,
        connection: sa.Connection,
        snapshot: SchemaSnapshot,
        stored: Sequence[Any],
        *,
        force: bool,
    ) -> tuple[list[LiveTable], set[str]] | None:
        """The live tables to compare, and the oids of stored tables known to
        be unchanged without reading them; ``None`` if the schema is gone."""
        if not (self.reader.versioned and stored and not force):
            everything = self.reader.read_tables(connection, snapshot)
            return None if everything is None else (everything, set())
        found = self._settled_tables(connection, snapshot, stored)
        if found is None:
            return None
        settled, wanted = found
        if not wanted:
            return [], settled
        described = self.reader.read_tables(connection, snapshot, sorted(wanted))
        return None if described is None else (described, settled)

    def _announced(
        self,
        connection: sa.Connection,
        created_ids: list[int],
        renamed: list[tuple[int, str, str]],
        altered: list[Changed[TableSnapshot]],
    ) -> list[Change]:
        """The records of created, renamed and altered tables, each loaded
        with its columns (written first if need be)."""
        announced = created_ids + [i for i, _, _ in renamed] + [
            d.catalog_id for d in altered
        ]
        self._write_columns(connection, announced)
        loaded = {
            table.id: table
            for table in self._tables(connection, self.t.tables.c.id.in_(announced),
                                      with_columns=True)
        }
        changes: list[Change] = [TableCreated(loaded[i]) for i in created_ids]
        changes += [TableRenamed(loaded[i], old, new) for i, old, new in renamed]
        changes += [
            TableAltered(loaded[d.catalog_id], d.columns, d.attributes)
            for d in altered
        ]
        return changes

    def _excluded(self, name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in self.exclude)

    def _settled_tables(
        self,
        connection: sa.Connection,
        schema: SchemaSnapshot,
        stored: Sequence[Any],
    ) -> tuple[set[str], set[str]] | None:
        """Which stored tables are certainly unchanged, and which live tables
        must be described, from the tables' versions; ``None`` if the schema
        is gone.

        A version covers the catalog rows of the table itself. What a foreign
        key shows of *another* table (its name, its schema's name, the
        referred columns' names) is covered by describing again every table
        with a foreign key to a table whose version changed, and every table
        with a foreign key to another schema. (A referred table that went
        took the foreign key with it, which changed the referring table's
        own rows.)
        """
        versions = self.reader.read_versions(connection, schema)
        if versions is None:
            return None
        versions = {
            oid: found for oid, found in versions.items()
            if not self._excluded(found[0])
        }
        by_oid = {row.oid: row for row in stored}
        wanted = {
            oid
            for oid, (name, version) in versions.items()
            if oid not in by_oid or by_oid[oid].version != version
        }
        changed = [oid for oid in wanted if oid in by_oid]
        wanted |= self.reader.read_dependents(connection, schema, changed)
        settled = {row.oid for row in stored if row.oid in versions} - wanted
        return settled, wanted

    def _store_versions(
        self, connection: sa.Connection, versions: Sequence[tuple[int, str | None]]
    ) -> None:
        if not versions:
            return
        t = self.t.tables
        connection.execute(
            t.update().where(t.c.id == sa.bindparam("table_id"))
            .values(version=sa.bindparam("new_version")),
            [{"table_id": i, "new_version": v} for i, v in versions],
        )

    def _ensure_columns(self, connection: sa.Connection, table_id: int) -> None:
        """Give a live table's stored columns their catalog rows if they have
        none yet. The caller has just checked that the stored columns are the
        live ones (or refreshed them)."""
        t = self.t.tables
        pending = connection.execute(
            sa.select(t.c.id).where(
                t.c.id == table_id, sa.not_(t.c.columns_written),
                sa.not_(t.c.deleted),
            )
        ).first()
        if pending is not None:
            with self._locked(connection):
                self._write_columns(connection, [table_id])

    def _write_columns(
        self, connection: sa.Connection, table_ids: Sequence[int]
    ) -> None:
        """Write the column rows of those of these tables that have none yet,
        from the columns stored with them; the lock is held.

        The rows get their table's ``last_synced``: they say what was seen
        then.
        """
        t = self.t.tables
        for start in range(0, len(table_ids), 500):
            chunk = table_ids[start:start + 500]
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

    def _update_table(
        self,
        connection: sa.Connection,
        table_id: int,
        live: LiveTable,
        table: TableSnapshot,
        digest: str,
        now: datetime,
        *,
        columns_written: bool,
    ) -> None:
        t, c = self.t.tables, self.t.columns
        connection.execute(
            t.update()
            .where(t.c.id == table_id)
            .values(**_table_values(live, table, digest, now))
        )
        if not columns_written:
            return  # written from columns_json when first needed
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
            column_id = existing.pop(column.oid, None)
            if column_id is None:
                added.add(column.oid)
            else:
                connection.execute(
                    c.update().where(c.c.id == column_id)
                    .values(_column_values(table_id, column, table, now))
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

    def _drop_tables(
        self,
        connection: sa.Connection,
        table_ids: list[int],
        now: datetime,
        *,
        records: bool,
    ) -> list[Change]:
        if not table_ids:
            return []
        t = self.t.tables
        connection.execute(
            t.update().where(t.c.id.in_(table_ids))
            .values(deleted=True, last_synced=now)
        )
        if not records and not signals.table_dropped.receivers:
            return []
        # The payload carries the table's last known columns.
        self._write_columns(connection, table_ids)
        return [
            TableDropped(table)
            for table in self._tables(connection, t.c.id.in_(table_ids),
                                      with_columns=True)
        ]

    def _snapshots(
        self, connection: sa.Connection, table_ids: Sequence[int]
    ) -> tuple[dict[int, TableSnapshot], set[int]]:
        """What the catalog remembers of these tables, as snapshots, and which
        of them have their column rows written."""
        if not table_ids:
            return {}, set()
        t = self.t.tables
        snapshots: dict[int, TableSnapshot] = {}
        written: set[int] = set()
        for start in range(0, len(table_ids), 500):
            for row in connection.execute(
                sa.select(t).where(t.c.id.in_(table_ids[start:start + 500]))
            ):
                snapshots[row.id] = _stored_snapshot(row)
                if row.columns_written:
                    written.add(row.id)
        return snapshots, written

    def _table(self, connection: sa.Connection, table_id: int) -> CatalogTable:
        found = self._tables(connection, self.t.tables.c.id == table_id,
                             with_columns=True)
        if not found:
            raise NotFoundError(f"There is no table with id {table_id}.")
        return found[0]

    def _successor(
        self, connection: sa.Connection, table: CatalogTable
    ) -> CatalogTable | None:
        """A live table with the dropped table's name in the same schema."""
        t = self.t.tables
        found = self._tables(
            connection,
            sa.and_(t.c.schema_id == table.schema_id, t.c.name == table.name,
                    sa.not_(t.c.deleted)),
            with_columns=False,
        )
        return found[0] if found else None

    def _tables(
        self,
        connection: sa.Connection,
        where: sa.ColumnElement[bool],
        *,
        with_columns: bool,
    ) -> list[CatalogTable]:
        t, s, c = self.t.tables, self.t.schemas, self.t.columns
        # The JSON attributes come as text and are decoded in one call: a
        # listing of thousands of tables spent more on decoding them one by
        # one than on the query.
        rows = connection.execute(
            sa.select(
                t.c.id, t.c.schema_id, t.c.oid, t.c.name, t.c.kind, t.c.comment,
                t.c.last_synced, t.c.deleted, s.c.name.label("schema_name"),
                *(sa.cast(t.c[name], sa.Text).label(name) for name in _JSON_ATTRIBUTES),
            )
            .join(s, s.c.id == t.c.schema_id)
            .where(where)
            .order_by(t.c.name, t.c.id)
        ).all()
        decoded = json.loads(
            "[" + ",".join(",".join(row[-3:]) for row in rows) + "]"
        )
        compared = self._compared_at(
            connection, {row.schema_id for row in rows if not row.deleted}
        )
        columns: dict[int, list[CatalogColumn]] = {}
        if with_columns and rows:
            ids = [row.id for row in rows]
            schema_of = {row.id: row.schema_id for row in rows}
            for start in range(0, len(ids), 500):
                for column in connection.execute(
                    sa.select(c)
                    .where(c.c.table_id.in_(ids[start:start + 500]),
                           sa.not_(c.c.deleted))
                    .order_by(c.c.table_id, c.c.position)
                ):
                    floor = compared.get(schema_of[column.table_id])
                    columns.setdefault(column.table_id, []).append(
                        _catalog_column(column, floor)
                    )
        return [
            _catalog_table(
                row,
                decoded[3 * i: 3 * i + 3],
                tuple(columns.get(row.id, ())) if with_columns else None,
                None if row.deleted else compared.get(row.schema_id),
            )
            for i, row in enumerate(rows)
        ]

    def _compared_at(
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
        scopes = {_tables_scope(i): i for i in schema_ids}
        return {
            scopes[scope]: as_utc(checked_at)
            for scope, checked_at in connection.execute(
                sa.select(probes.c.scope, probes.c.checked_at).where(
                    probes.c.scope.in_(list(scopes))
                )
            )
        }


# -- conversions ----------------------------------------------------------------


def _inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _schema_snapshot(schema: CatalogSchema) -> SchemaSnapshot:
    return SchemaSnapshot(oid=schema.oid, name=schema.name, comment=schema.comment)


def _catalog_schema(row: Any) -> CatalogSchema:
    return CatalogSchema(
        id=row.id,
        oid=row.oid,
        name=row.name,
        comment=row.comment,
        last_synced=as_utc(row.last_synced),
        deleted=bool(row.deleted),
    )


def _synced(stored: datetime, compared: datetime | None) -> datetime:
    stored = as_utc(stored)
    return stored if compared is None or compared <= stored else compared


def _catalog_column(row: Any, compared: datetime | None = None) -> CatalogColumn:
    return CatalogColumn(
        id=row.id,
        oid=row.oid,
        name=row.name,
        position=row.position,
        type=row.type,
        nullable=bool(row.nullable),
        default=row.default,
        primary_key=bool(row.primary_key),
        comment=row.comment,
        last_synced=_synced(row.last_synced, compared),
        deleted=bool(row.deleted),
    )


def _catalog_table(
    row: Any,
    attributes: list[Any],
    columns: tuple[CatalogColumn, ...] | None,
    compared: datetime | None = None,
) -> CatalogTable:
    primary_key, foreign_keys, unique_constraints = attributes
    return CatalogTable(
        id=row.id,
        schema_id=row.schema_id,
        schema_name=row.schema_name,
        oid=row.oid,
        name=row.name,
        kind=row.kind,
        comment=row.comment,
        primary_key=tuple(primary_key),
        foreign_keys=tuple(foreign_keys),
        unique_constraints=tuple(unique_constraints),
        last_synced=_synced(row.last_synced, compared),
        deleted=bool(row.deleted),
        columns=columns,
    )


def _table_values(
    live: LiveTable, table: TableSnapshot, digest: str, now: datetime
) -> dict[str, Any]:
    return {
        "oid": table.oid,
        "name": table.name,
        "kind": table.kind,
        "comment": table.comment,
        "primary_key": list(table.primary_key),
        "foreign_keys": [key.to_dict() for key in table.foreign_keys],
        "unique_constraints": [u.to_dict() for u in table.unique_constraints],
        "digest": digest,
        "columns_json": live.columns,
        "version": live.version,
        "rename_hint": table.rename_hint,
        "last_synced": now,
        "deleted": False,
    }


def _column_values(
    table_id: int, column: ColumnSnapshot, table: TableSnapshot, now: datetime
) -> dict[str, Any]:
    return {
        "table_id": table_id,
        "oid": column.oid,
        "name": column.name,
        "position": column.position,
        "type": column.type,
        "nullable": column.nullable,
        "default": column.default,
        "primary_key": column.name in table.primary_key,
        "comment": column.comment,
        "last_synced": now,
        "deleted": False,
    }


def _stored_snapshot(row: Any) -> TableSnapshot:
    """A catalog table row as the snapshot it was stored from."""
    return TableSnapshot(
        oid=row.oid,
        name=row.name,
        kind=row.kind,
        comment=row.comment,
        columns=decode_columns(row.columns_json),
        primary_key=tuple(row.primary_key),
        foreign_keys=tuple(ForeignKey.from_dict(key) for key in row.foreign_keys),
        unique_constraints=tuple(
            UniqueConstraint.from_dict(u) for u in row.unique_constraints
        ),
        rename_hint=row.rename_hint,
    )


def _gone_schema(schema: CatalogSchema) -> str:
    return (
        f"Schema {schema.name!r} (id {schema.id}) has been dropped from the "
        "database; list the schemas again to see what exists now."
    )


def _gone_table(table: CatalogTable, successor: CatalogTable | None) -> str:
    message = (
        f"Table {table.schema_name}.{table.name} (id {table.id}) has been dropped "
        "from the database"
    )
    if successor is not None:
        return (
            f"{message}; the table now named {successor.name!r} is a different "
            f"object with id {successor.id}."
        )
    return f"{message}; list the schema's tables again to see what exists now."
