"""The catalog: tables on the application's metadata that remember what the
database looked like, and the plain records read from them.

The catalog lives in the database, not in a process, so every worker serving
the app shares it. All names start with ``reflectsync_catalog_``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

PREFIX = "reflectsync_catalog_"


@dataclass(frozen=True)
class CatalogTables:
    """The catalog's tables.

    :param schemas: one row per schema ever seen; dropped ones are kept with
        ``deleted`` set, so their ids keep answering "gone" rather than
        "never existed".
    :param tables: one row per table, view or materialized view, likewise;
        each also keeps its columns as they were last compared, as JSON text.
    :param columns: one row per column of a catalog table, written the first
        time the table is served or announced with its columns.
    :param probes: the last fingerprint seen per scope (``"schemas"``,
        ``"tables:<schema id>"`` or ``"objects:<schema id>"``), so an
        unchanged level is not re-read.
    :param objects: one row per schema-level object (enum and domain types,
        sequences) ever seen, dropped ones kept with ``deleted`` set.
    """

    schemas: sa.Table
    tables: sa.Table
    columns: sa.Table
    probes: sa.Table
    objects: sa.Table | None = None


def define_catalog_tables(metadata: sa.MetaData) -> CatalogTables:
    """Define the catalog tables on ``metadata``, or return them if already
    there.

    :param metadata: usually ``db.metadata``.
    """
    if PREFIX + "schemas" in metadata.tables:
        return CatalogTables(
            schemas=metadata.tables[PREFIX + "schemas"],
            tables=metadata.tables[PREFIX + "tables"],
            columns=metadata.tables[PREFIX + "columns"],
            probes=metadata.tables[PREFIX + "probes"],
            objects=metadata.tables.get(PREFIX + "objects"),
        )
    when = sa.DateTime(timezone=True)
    schemas = sa.Table(
        PREFIX + "schemas",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("oid", sa.String(255), nullable=False, index=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("last_synced", when, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    )
    tables = sa.Table(
        PREFIX + "tables",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "schema_id",
            sa.Integer,
            sa.ForeignKey(schemas.c.id, ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("oid", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("primary_key", sa.JSON, nullable=False),
        sa.Column("foreign_keys", sa.JSON, nullable=False),
        sa.Column("unique_constraints", sa.JSON, nullable=False),
        # Reflected since issue 18: nullable, so that a catalog from before
        # takes them with a plain ADD COLUMN (NULL reads as none).
        sa.Column("check_constraints", sa.JSON, nullable=True),
        sa.Column("indexes", sa.JSON, nullable=True),
        sa.Column("definition", sa.Text, nullable=True),
        sa.Column("triggers", sa.JSON, nullable=True),
        sa.Column("privileges", sa.JSON, nullable=True),
        # LiveTable.digest() of what was stored: equal means unchanged.
        sa.Column("digest", sa.String(64), nullable=False),
        # The live columns when last compared, as LiveTable.columns (JSON
        # text). The column rows are written from it when the table is first
        # served with its columns or announced (columns_written).
        sa.Column("columns_json", sa.Text, nullable=False),
        sa.Column("columns_written", sa.Boolean, nullable=False, default=False),
        # LiveTable.version when last described (PostgreSQL): equal means
        # the description need not be read again.
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("rename_hint", sa.String(64), nullable=True),
        sa.Column("last_synced", when, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, default=False),
        sa.Index(PREFIX + "tables_schema", "schema_id", "deleted"),
    )
    columns = sa.Table(
        PREFIX + "columns",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "table_id",
            sa.Integer,
            sa.ForeignKey(tables.c.id, ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("oid", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("nullable", sa.Boolean, nullable=False),
        sa.Column("default", sa.Text, nullable=True),
        sa.Column("primary_key", sa.Boolean, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("last_synced", when, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    )
    probes = sa.Table(
        PREFIX + "probes",
        metadata,
        sa.Column("scope", sa.String(100), primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("checked_at", when, nullable=False),
    )
    objects = sa.Table(
        PREFIX + "objects",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "schema_id",
            sa.Integer,
            sa.ForeignKey(schemas.c.id, ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("oid", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        # What the object is, as the reader's JSON text (CatalogObject.details).
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("last_synced", when, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    )
    return CatalogTables(schemas=schemas, tables=tables, columns=columns,
                         probes=probes, objects=objects)


def fields_dict(
    record: Any, *, renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """A record's fields as JSON-ready data, in field order: times as ISO 8601
    text, tuples as lists, records inside as their own ``to_dict()``.

    :param record: a dataclass instance.
    :param renamed: keys to use instead of some field names.
    """
    names = renamed or {}
    return {
        names.get(field.name, field.name): _plain(getattr(record, field.name))
        for field in fields(record)
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime. SQLite and MySQL hand back the
    naive UTC datetimes the catalog stored.

    :param value: a datetime read from a catalog table.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class CatalogSchema:
    """A schema as the catalog remembers it.

    :param id: catalog id, stable for as long as the schema keeps its identity.
    :param oid: the backend's identity (see :mod:`.snapshot`).
    :param name: its name when last seen.
    :param comment: its comment.
    :param last_synced: when reflection last compared it with the database.
    :param deleted: whether it has been dropped.
    """

    id: int
    oid: str
    name: str
    comment: str | None
    last_synced: datetime
    deleted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, as served by ``GET /schemas``."""
        return fields_dict(self)


@dataclass(frozen=True)
class CatalogColumn:
    """A column as the catalog remembers it.

    :param id: catalog id.
    :param oid: identity within the table (``attnum`` on PostgreSQL, the name
        elsewhere).
    :param name: column name.
    :param position: 1-based position among live columns.
    :param type: type as the database spells it.
    :param nullable: whether NULL is allowed.
    :param default: default expression as SQL text.
    :param primary_key: whether it is part of the primary key.
    :param comment: column comment.
    :param last_synced: when reflection last compared it with the database.
    :param deleted: whether it has been dropped.
    """

    id: int
    oid: str
    name: str
    position: int
    type: str
    nullable: bool
    default: str | None
    primary_key: bool
    comment: str | None
    last_synced: datetime
    deleted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return fields_dict(self)


@dataclass(frozen=True)
class CatalogTable:
    """A table, view or materialized view as the catalog remembers it.

    :param id: catalog id, stable for as long as the table keeps its identity.
    :param schema_id: catalog id of its schema.
    :param schema_name: name of its schema.
    :param oid: the backend's identity (see :mod:`.snapshot`).
    :param name: its name.
    :param kind: ``table``, ``view``, ``materialized_view``,
        ``partitioned_table`` or ``foreign_table``.
    :param comment: table comment.
    :param primary_key: primary key column names, in key order.
    :param foreign_keys: foreign keys as dicts (see
        :meth:`.snapshot.ForeignKey.to_dict`).
    :param unique_constraints: unique constraints as dicts.
    :param last_synced: when reflection last compared it with the database.
    :param deleted: whether it has been dropped.
    :param columns: live columns in position order; ``None`` when only the
        summary was loaded (listings).
    :param check_constraints: CHECK constraints as dicts (see
        :meth:`.snapshot.CheckConstraint.to_dict`).
    :param indexes: indexes other than the primary key's, as dicts (see
        :meth:`.snapshot.Index.to_dict`).
    :param definition: a view's or materialized view's query; ``None`` for
        tables.
    :param triggers: triggers as dicts (see :meth:`.snapshot.Trigger.to_dict`).
    :param privileges: what the role the app connects as may do with it
        (from :data:`.snapshot.PRIVILEGES`); ``None`` where the backend has
        no privileges (SQLite).
    """

    id: int
    schema_id: int
    schema_name: str
    oid: str
    name: str
    kind: str
    comment: str | None
    primary_key: tuple[str, ...]
    foreign_keys: tuple[dict[str, Any], ...]
    unique_constraints: tuple[dict[str, Any], ...]
    last_synced: datetime
    deleted: bool
    columns: tuple[CatalogColumn, ...] | None = None
    check_constraints: tuple[dict[str, Any], ...] = ()
    indexes: tuple[dict[str, Any], ...] = ()
    definition: str | None = None
    triggers: tuple[dict[str, Any], ...] = ()
    privileges: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; ``columns`` only when they were loaded."""
        data = fields_dict(self, renamed={"schema_name": "schema"})
        if self.columns is None:
            del data["columns"]
        return data


@dataclass(frozen=True)
class CatalogObject:
    """A schema-level object (an enum or domain type, a sequence) as the
    catalog remembers it.

    :param id: catalog id, stable for as long as the object keeps its
        identity.
    :param schema_id: catalog id of its schema.
    :param schema_name: name of its schema.
    :param oid: the backend's identity.
    :param name: its name.
    :param kind: ``enum``, ``domain`` or ``sequence``.
    :param details: by kind: ``{"labels": [...]}`` for an enum; ``{"type",
        "nullable", "default", "check_constraints"}`` for a domain;
        ``{"type", "start", "increment", "minimum", "maximum", "cycle",
        "owner", "owned_by"}`` for a sequence (numbers as text, they may
        exceed what JSON numbers hold exactly; ``owned_by`` is
        ``{"table", "column"}`` or ``None``).
    :param last_synced: when reflection last wrote it.
    :param deleted: whether it has been dropped.
    """

    id: int
    schema_id: int
    schema_name: str
    oid: str
    name: str
    kind: str
    details: dict[str, Any]
    last_synced: datetime
    deleted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, as served by ``GET /objects/<id>``."""
        return fields_dict(self, renamed={"schema_name": "schema"})
