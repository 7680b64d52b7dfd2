"""Schema-level objects that belong to no table: enum and domain types and
sequences (issue 18).

They are few per schema and change rarely, so they form a level of their
own beside the tables: its own probe (scope ``objects:<schema id>``), read in
full whenever that probe changes, diffed by identity (``oid``) against the
rows of ``reflectsync_catalog_objects``, written back and announced with the
``object_*`` signals. A reader that has no such objects (SQLite), or does not
know the methods below, lists none.

A reader provides, optionally:

- ``objects_fingerprint(connection, schema) -> str | None``: changes whenever
  an object of the schema is created, renamed, altered or dropped (``None``:
  the schema is gone);
- ``read_objects(connection, schema) -> list[ObjectSnapshot] | None``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..errors import GoneError, NotFoundError
from .models import CatalogObject, CatalogSchema, CatalogTables, as_utc
from .snapshot import CatalogReader, SchemaSnapshot

#: The ``kind`` of a schema-level object.
ENUM = "enum"
DOMAIN = "domain"
SEQUENCE = "sequence"
OBJECT_KINDS = (ENUM, DOMAIN, SEQUENCE)


def objects_scope(schema_id: int) -> str:
    """The probe scope of one schema's objects."""
    return f"objects:{schema_id}"


@dataclass(frozen=True)
class ObjectSnapshot:
    """A schema-level object as the database reports it.

    :param oid: the backend's identity (PostgreSQL: the ``pg_type`` or
        ``pg_class`` oid; MariaDB: the name).
    :param name: its name.
    :param kind: one of :data:`OBJECT_KINDS`.
    :param details: what it is, as JSON text (see :class:`.CatalogObject`).
    """

    oid: str
    name: str
    kind: str
    details: str

    def digest(self) -> str:
        """A short hash of everything shown of the object."""
        text = "\x1f".join((self.oid, self.name, self.kind, self.details))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()


def has_objects(reader: CatalogReader) -> bool:
    """Whether the reader reads schema-level objects at all."""
    return hasattr(reader, "read_objects") and hasattr(reader, "objects_fingerprint")


def catalog_object(row: Any, schema_name: str) -> CatalogObject:
    """A ``reflectsync_catalog_objects`` row as its record."""
    return CatalogObject(
        id=row.id,
        schema_id=row.schema_id,
        schema_name=schema_name,
        oid=row.oid,
        name=row.name,
        kind=row.kind,
        details=json.loads(row.details),
        last_synced=as_utc(row.last_synced),
        deleted=bool(row.deleted),
    )


@dataclass
class ObjectsWritten:
    """What one refresh of a schema's objects wrote, by catalog id:
    ``renamed`` as ``(id, old name, new name)``, ``altered`` as
    ``(id, changed detail keys)``."""

    created: list[int]
    renamed: list[tuple[int, str, str]]
    altered: list[tuple[int, tuple[str, ...]]]
    dropped: list[int]

    def ids(self) -> list[int]:
        return [*self.created, *(i for i, _, _ in self.renamed),
                *(i for i, _ in self.altered), *self.dropped]


class ObjectStore:
    """Reads and writes ``reflectsync_catalog_objects``."""

    def __init__(self, tables: CatalogTables) -> None:
        assert tables.objects is not None
        self.o = tables.objects
        self.s = tables.schemas

    def of_schema(
        self, connection: sa.Connection, schema: CatalogSchema, *, include_deleted: bool
    ) -> list[CatalogObject]:
        o = self.o
        where = o.c.schema_id == schema.id
        if not include_deleted:
            where = sa.and_(where, sa.not_(o.c.deleted))
        rows = connection.execute(
            sa.select(o).where(where).order_by(o.c.kind, o.c.name, o.c.id)
        )
        return [catalog_object(row, schema.name) for row in rows]

    def one(self, connection: sa.Connection, object_id: int) -> tuple[Any, str]:
        """An object's row and its schema's name.

        :raises NotFoundError: if the catalog never had it.
        """
        o, s = self.o, self.s
        row = connection.execute(
            sa.select(o, s.c.name.label("schema_name"))
            .join(s, s.c.id == o.c.schema_id)
            .where(o.c.id == object_id)
        ).first()
        if row is None:
            raise NotFoundError(f"There is no object with id {object_id}.")
        return row, row.schema_name

    def by_ids(
        self, connection: sa.Connection, ids: Sequence[int], schema_name: str
    ) -> dict[int, CatalogObject]:
        if not ids:
            return {}
        o = self.o
        rows = connection.execute(sa.select(o).where(o.c.id.in_(list(ids))))
        return {row.id: catalog_object(row, schema_name) for row in rows}

    def drop_with_schemas(
        self, connection: sa.Connection, schema_ids: Sequence[int], now: datetime
    ) -> list[int]:
        """Mark the live objects of dropped schemas dropped; their ids."""
        if not schema_ids:
            return []
        o = self.o
        ids = list(connection.execute(
            sa.select(o.c.id).where(o.c.schema_id.in_(list(schema_ids)),
                                    sa.not_(o.c.deleted))
        ).scalars())
        if ids:
            connection.execute(
                o.update().where(o.c.id.in_(ids)).values(deleted=True, last_synced=now)
            )
        return ids

    def dropped_with_schemas(
        self, connection: sa.Connection, ids: Sequence[int], names: dict[int, str]
    ) -> list[CatalogObject]:
        """The records of objects dropped with their schemas (``names``: the
        schemas' names by id)."""
        o = self.o
        rows = connection.execute(
            sa.select(o).where(o.c.id.in_(list(ids))).order_by(o.c.id)
        )
        return [catalog_object(row, names.get(row.schema_id, "")) for row in rows]

    def write(
        self,
        connection: sa.Connection,
        schema_id: int,
        live: Sequence[ObjectSnapshot],
        now: datetime,
    ) -> ObjectsWritten:
        """Compare the live objects with the stored ones and write the
        differences (matched by identity; a new name is a rename)."""
        o = self.o
        stored = {
            row.oid: row
            for row in connection.execute(
                sa.select(o).where(o.c.schema_id == schema_id, sa.not_(o.c.deleted))
            )
        }
        written = ObjectsWritten([], [], [], [])
        for item in live:
            row = stored.pop(item.oid, None)
            digest = item.digest()
            values = {"name": item.name, "kind": item.kind, "details": item.details,
                      "digest": digest, "last_synced": now}
            if row is None:
                inserted = connection.execute(
                    o.insert().values(schema_id=schema_id, oid=item.oid,
                                      deleted=False, **values)
                )
                key = inserted.inserted_primary_key
                assert key is not None
                written.created.append(int(key[0]))
                continue
            if row.digest == digest:
                continue
            connection.execute(o.update().where(o.c.id == row.id).values(**values))
            if row.name != item.name:
                written.renamed.append((row.id, row.name, item.name))
            before, after = json.loads(row.details), json.loads(item.details)
            changed = tuple(
                key for key in sorted(set(before) | set(after))
                if before.get(key) != after.get(key)
            )
            if changed or row.kind != item.kind:
                written.altered.append((row.id, changed or ("kind",)))
        if stored:
            ids = [row.id for row in stored.values()]
            connection.execute(
                o.update().where(o.c.id.in_(ids)).values(deleted=True, last_synced=now)
            )
            written.dropped = ids
        return written


def read_live(
    reader: CatalogReader, connection: sa.Connection, schema: SchemaSnapshot
) -> list[ObjectSnapshot] | None:
    """The schema's live objects (none for a reader without them); ``None``
    if the schema is gone."""
    if not has_objects(reader):
        return []
    found: list[ObjectSnapshot] | None = reader.read_objects(  # type: ignore[attr-defined]
        connection, schema
    )
    return found


def fingerprint(
    reader: CatalogReader, connection: sa.Connection, schema: SchemaSnapshot
) -> str | None:
    """The objects probe of the schema (``""`` for a reader without them)."""
    if not has_objects(reader):
        return ""
    found: str | None = reader.objects_fingerprint(  # type: ignore[attr-defined]
        connection, schema
    )
    return found


def gone_object(row: Any) -> str:
    """The error message for an object asked for after it was dropped."""
    return (
        f"The {row.kind} {row.schema_name}.{row.name} (id {row.id}) has been "
        "dropped from the database; list the schema's objects again to see what "
        "exists now."
    )


def check_live(row: Any) -> None:
    """Refuse a dropped object.

    :raises GoneError: if it was dropped.
    """
    if row.deleted:
        raise GoneError(gone_object(row))


__all__ = [
    "DOMAIN",
    "ENUM",
    "OBJECT_KINDS",
    "SEQUENCE",
    "ObjectSnapshot",
    "ObjectStore",
    "ObjectsWritten",
    "check_live",
    "fingerprint",
    "objects_scope",
    "read_live",
]
