"""The refresh: probe the live database, read what changed, diff it against
the stored catalog, write the differences and describe them as changes.

A refresh runs in two steps that do not know about each other:

1. :meth:`Refresh.schemas` / :meth:`Refresh.tables` compare and write. What
   they write depends on the database and the catalog only, never on who
   listens to the signals: every table a refresh changes (renamed, altered,
   dropped, or created in a schema compared before) gets its column rows
   written with it. Only the first comparison of a schema's tables (a cold
   listing, which finds every table at once) leaves the new tables' column
   rows to be written when first needed: for thousands of tables they were
   most of its cost. The step returns a :class:`Written` account.
2. :meth:`Refresh.records` turns that account into change records, loaded
   from the rows just written. It leaves out the records whose signal has no
   receivers (unless all are asked for): loading a table with its columns
   is most of a cold listing's cost when nobody reads them. A table created
   by a cold listing and announced this way is the one case that writes:
   its record carries its columns with their ids, so their rows are written
   first (from what the listing read: the rows its first
   ``GET /tables/<id>`` would write).

Refreshes are serialised across processes by the reader's lock (an advisory
lock, ``GET_LOCK`` or SQLite's write lock) and probe again once they hold it,
so two workers noticing the same change apply it, and announce it, once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa

from .changes import (
    Change,
    ObjectDropped,
    SchemaCreated,
    SchemaDropped,
    SchemaRenamed,
    TableAltered,
    TableCreated,
    TableDropped,
    TableRenamed,
)
from .diff import Changed, ColumnChange, Created, Dropped, diff_schemas, diff_tables
from .event_trigger import current_epoch
from .models import CatalogSchema
from .objects import ObjectStore
from .rows import schema_snapshot
from .snapshot import CatalogReader, LiveTable, SchemaSnapshot
from .store import SCHEMAS_SCOPE, CatalogStore, tables_scope


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Written:
    """What one refresh wrote, by catalog id, each list in announcing order.

    :param columns_later: created tables whose column rows were left to be
        written when first needed (a schema's first comparison), with what
        was read of them.
    :param now: the time of the refresh (the rows' ``last_synced``).
    """

    schemas_created: list[int] = field(default_factory=list)
    schemas_renamed: list[tuple[int, str, str]] = field(default_factory=list)
    schemas_dropped: list[int] = field(default_factory=list)
    tables_created: list[int] = field(default_factory=list)
    tables_renamed: list[tuple[int, str, str]] = field(default_factory=list)
    tables_altered: list[
        tuple[int, tuple[ColumnChange, ...], tuple[str, ...]]
    ] = field(default_factory=list)
    tables_dropped: list[int] = field(default_factory=list)
    objects_dropped: list[int] = field(default_factory=list)
    columns_later: dict[int, LiveTable] = field(default_factory=dict)
    now: datetime = field(default_factory=_now)


class Refresh:
    """Brings the catalog of one database up to date.

    :param store: the catalog tables.
    :param reader: the live database's catalog reader.
    :param exclude: :func:`fnmatch.fnmatchcase` patterns of table names to
        ignore.
    """

    def __init__(
        self, store: CatalogStore, reader: CatalogReader, exclude: Sequence[str] = ()
    ) -> None:
        self.store = store
        self.reader = reader
        self.exclude = tuple(exclude)
        self.objects = ObjectStore(store.t) if store.t.objects is not None else None

    # -- entry points -----------------------------------------------------------

    def schemas(
        self, connection: sa.Connection, *, force: bool, all_changes: bool = False
    ) -> list[Change]:
        """Refresh the schema level if its probe says it changed (or
        ``force``) and describe what changed.

        :param all_changes: describe every change, even those nobody
            receives.
        :returns: the changes, committed, to be announced.
        """
        stored = self.store.probe(connection, SCHEMAS_SCOPE)
        # Never compared: no need to ask whether anything changed.
        if not force and stored is not None:
            if self._schemas_probe(connection) == stored:
                return []
        with self.locked(connection):
            written = self._sync_schemas(connection, force=force)
            return self.records(connection, written, everything=all_changes)

    def tables(
        self,
        connection: sa.Connection,
        schema: CatalogSchema,
        *,
        force: bool,
        all_changes: bool = False,
    ) -> list[Change]:
        """Refresh one schema's tables if their probe says they changed (or
        ``force``) and describe what changed; as :meth:`schemas`."""
        stored = self.store.probe(connection, tables_scope(schema.id))
        live: str | None = None
        # Never compared (a cold listing): no need to ask whether anything
        # changed; the refresh computes the fingerprint it stores.
        if not force and stored is not None:
            epoch = current_epoch(connection, self.store.t.probes)
            live = (
                _as_probe(epoch, "")
                if epoch is not None
                else self.reader.tables_fingerprint(
                    connection, schema_snapshot(schema)
                )
            )
            if live is not None and live == stored:
                return []
        with self.locked(connection):
            written = self._sync_tables(connection, schema.id, force=force,
                                        probe=live)
            return self.records(connection, written, everything=all_changes)

    @contextmanager
    def locked(self, connection: sa.Connection) -> Iterator[None]:
        """Hold the refresh lock for a transaction; commit at the end."""
        self.reader.lock(connection)
        try:
            yield
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            self.reader.unlock(connection)

    # -- describing what was written --------------------------------------------

    def records(
        self, connection: sa.Connection, written: Written, *, everything: bool
    ) -> list[Change]:
        """The change records of what a refresh wrote, read back from the
        catalog; the lock is held.

        :param everything: every record; else only those of schema changes
            and of table changes whose signal has receivers.
        """
        def wanted(signal_of: type[Change]) -> bool:
            return everything or bool(signal_of.signal.receivers)

        created = written.tables_created if wanted(TableCreated) else []
        renamed = written.tables_renamed if wanted(TableRenamed) else []
        altered = written.tables_altered if wanted(TableAltered) else []
        dropped = written.tables_dropped if wanted(TableDropped) else []
        # The one write a listener causes: see the module docstring.
        self.store.write_new_columns(
            connection,
            [(i, written.columns_later[i]) for i in created
             if i in written.columns_later],
            written.now,
        )
        loaded = self.store.tables_by_id(
            connection,
            created + [i for i, _, _ in renamed] + [i for i, _, _ in altered]
            + dropped,
        )
        schemas: dict[int, CatalogSchema] = {}
        if (written.schemas_created or written.schemas_renamed
                or written.schemas_dropped):
            schemas = {
                schema.id: schema
                for schema in self.store.schemas(connection, include_deleted=True)
            }
        changes: list[Change] = [SchemaCreated(schemas[i])
                                 for i in written.schemas_created]
        changes += [SchemaRenamed(schemas[i], old, new)
                    for i, old, new in written.schemas_renamed]
        # A dropped schema's tables are announced before it.
        changes += [TableDropped(loaded[i]) for i in dropped
                    if loaded[i].schema_id in written.schemas_dropped]
        if written.objects_dropped and self.objects is not None:
            changes += [
                ObjectDropped(item)
                for item in self.objects.dropped_with_schemas(
                    connection, written.objects_dropped,
                    {i: schemas[i].name for i in written.schemas_dropped},
                )
            ]
        changes += [SchemaDropped(schemas[i]) for i in written.schemas_dropped]
        changes += [TableCreated(loaded[i]) for i in created]
        changes += [TableRenamed(loaded[i], old, new) for i, old, new in renamed]
        changes += [TableAltered(loaded[i], columns, attributes)
                    for i, columns, attributes in altered]
        changes += [TableDropped(loaded[i]) for i in dropped
                    if loaded[i].schema_id not in written.schemas_dropped]
        return changes

    # -- probing ----------------------------------------------------------------

    def _schemas_probe(self, connection: sa.Connection) -> str:
        epoch = current_epoch(connection, self.store.t.probes)
        if epoch is not None:
            return _as_probe(epoch, "")
        return self.reader.schemas_fingerprint(connection)

    # -- schemas ----------------------------------------------------------------

    def _sync_schemas(self, connection: sa.Connection, *, force: bool) -> Written:
        """Compare and write the schema level; the lock is held."""
        store = self.store
        now = _now()
        # The epoch is read before the catalog: a change committing in between
        # leaves a newer epoch behind, so the next probe looks again.
        epoch = current_epoch(connection, store.t.probes)
        fingerprint = _as_probe(epoch, self.reader.schemas_fingerprint(connection))
        if not force and fingerprint == store.probe(connection, SCHEMAS_SCOPE):
            return Written()  # another process did it while we waited for the lock
        live = self.reader.read_schemas(connection)
        written = Written()
        for difference in diff_schemas(store.live_schemas(connection), live):
            if isinstance(difference, Created):
                written.schemas_created.append(
                    store.insert_schema(connection, difference.new, now)
                )
            elif isinstance(difference, Changed):
                store.update_schema(connection, difference.catalog_id, difference.new)
                if difference.renamed:
                    written.schemas_renamed.append(
                        (difference.catalog_id, difference.old.name,
                         difference.new.name)
                    )
            elif isinstance(difference, Dropped):
                written.schemas_dropped.append(difference.catalog_id)
        store.mark_schemas_synced(connection, now)
        lost = store.drop_schemas(connection, written.schemas_dropped)
        store.drop_tables(connection, lost, now)
        written.tables_dropped = lost
        if self.objects is not None:
            written.objects_dropped = self.objects.drop_with_schemas(
                connection, written.schemas_dropped, now
            )
        store.store_probe(connection, SCHEMAS_SCOPE, fingerprint, now)
        return written

    # -- tables -----------------------------------------------------------------

    def _sync_tables(
        self,
        connection: sa.Connection,
        schema_id: int,
        *,
        force: bool,
        probe: str | None = None,
    ) -> Written:
        """Compare and write one schema's tables; the lock is held.

        :param probe: the probe taken before the lock, if any. It is no newer
            than what is read below, so storing it can at worst make the next
            listing compare again; computing it again would double the cost
            of the probe for every listing that finds a change.
        """
        store = self.store
        schema = store.schema(connection, schema_id, allow_deleted=True)
        if schema.deleted:
            return Written()
        snapshot = schema_snapshot(schema)
        scope = tables_scope(schema.id)
        if probe is not None:
            fingerprint = probe
        else:
            epoch = current_epoch(connection, store.t.probes)
            if epoch is not None:
                # The read below tells whether the schema is still there.
                fingerprint = _as_probe(epoch, "")
            else:
                present = self.reader.tables_fingerprint(connection, snapshot)
                if present is None:
                    return self._sync_schemas(connection, force=True)
                fingerprint = present
        stored_probe = store.probe(connection, scope)
        if not force and fingerprint == stored_probe:
            return Written()
        stored = store.live_table_rows(connection, schema.id)
        found = self._live_tables(connection, snapshot, stored, force=force)
        if found is None:
            return self._sync_schemas(connection, force=True)
        live_tables, settled = found
        now = _now()

        live = {
            table.oid: table for table in live_tables if not self._excluded(table.name)
        }
        digests = {oid: table.digest() for oid, table in live.items()}
        unchanged = settled | {
            row.oid for row in stored if digests.get(row.oid) == row.digest
        }
        # Described again but unchanged: remember the new version, and the
        # new rename hint (a table MariaDB copied for an ALTER it does not
        # show, or TRUNCATE, gets a new InnoDB id under the same name).
        store.store_versions(
            connection,
            [
                (row.id, live[row.oid].version, live[row.oid].rename_hint)
                for row in stored
                if row.oid in live and digests[row.oid] == row.digest
                and (live[row.oid].version != row.version
                     or live[row.oid].rename_hint != row.rename_hint)
            ],
        )
        stale = [row for row in stored if row.oid not in unchanged]
        old, columns_written = store.snapshots(connection, [row.id for row in stale])
        # Only a table that may be one the catalog knows (same identity, or a
        # rename hint to pair it by) is decoded and compared; the others are
        # new and go in as the reader encoded them.
        known = {row.oid for row in stale}
        arriving = [table for oid, table in live.items() if oid not in unchanged]
        compared = [t_ for t_ in arriving if t_.oid in known or t_.rename_hint]

        written = Written()
        created_oids = {t_.oid for t_ in arriving} - {t_.oid for t_ in compared}
        for difference in diff_tables(
            old,
            [t_.snapshot() for t_ in compared],
            by_name=getattr(self.reader, "identity_by_name", False),
            hints_are_ids=getattr(self.reader, "rename_hints_are_ids", False),
        ):
            if isinstance(difference, Created):
                created_oids.add(difference.new.oid)
            elif isinstance(difference, Changed):
                store.update_table(
                    connection, difference.catalog_id, live[difference.new.oid],
                    difference.new, digests[difference.new.oid], now,
                    columns_written=difference.catalog_id in columns_written,
                    renamed_columns={
                        change.after.oid: change.before.oid
                        for change in difference.columns
                        if change.kind == "renamed"
                        and change.before is not None and change.after is not None
                    },
                )
                if difference.renamed:
                    written.tables_renamed.append(
                        (difference.catalog_id, difference.old.name,
                         difference.new.name)
                    )
                if difference.altered:
                    written.tables_altered.append(
                        (difference.catalog_id, difference.columns,
                         difference.attributes)
                    )
            elif isinstance(difference, Dropped):
                written.tables_dropped.append(difference.catalog_id)
        created = [table for table in arriving if table.oid in created_oids]
        # A schema's first comparison finds every table at once; their
        # column rows wait until they are first needed (see the module
        # docstring). Any later refresh writes them with the table.
        first_comparison = stored_probe is None
        ids = store.insert_tables(connection, schema.id, created, digests, now,
                                  with_columns=not first_comparison)
        written.tables_created = [ids[table.oid] for table in created]
        if first_comparison:
            written.columns_later = {ids[table.oid]: table for table in created}
            written.now = now
        store.drop_tables(connection, written.tables_dropped, now)
        store.store_probe(connection, scope, fingerprint, now)
        return written

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

    def _excluded(self, name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in self.exclude)

    def excluded(self, name: str) -> bool:
        """Whether ``name`` matches one of the patterns the catalog ignores."""
        return self._excluded(name)

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


def _as_probe(epoch: str | None, fingerprint: str) -> str:
    # With the event trigger installed, every catalog change bumps the
    # epoch in the DDL's own transaction: "same epoch" is then a complete
    # and much cheaper answer to "did anything change?".
    return f"ddl:{epoch}" if epoch is not None else fingerprint
