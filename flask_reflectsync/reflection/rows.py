"""Catalog rows and what they stand for: the records served and announced,
the snapshots a refresh compares, and the values a refresh writes.

Plain functions, no queries: :mod:`.store` runs the statements.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .models import CatalogColumn, CatalogSchema, CatalogTable, as_utc
from .snapshot import (
    LiveTable,
    SchemaSnapshot,
    TableSnapshot,
    decode_columns,
    table_snapshot,
)

#: The table attributes stored as JSON, in the order :func:`catalog_table`
#: takes them.
JSON_ATTRIBUTES = ("primary_key", "foreign_keys", "unique_constraints",
                   "check_constraints", "indexes", "triggers", "privileges")


def schema_snapshot(schema: CatalogSchema) -> SchemaSnapshot:
    """The schema as a reader's snapshot, to read its tables with."""
    return SchemaSnapshot(oid=schema.oid, name=schema.name, comment=schema.comment)


def catalog_schema(row: Any) -> CatalogSchema:
    """A ``reflectsync_catalog_schemas`` row as its record."""
    return CatalogSchema(
        id=row.id,
        oid=row.oid,
        name=row.name,
        comment=row.comment,
        last_synced=as_utc(row.last_synced),
        deleted=bool(row.deleted),
    )


def synced(stored: datetime, compared: datetime | None) -> datetime:
    """The later of a row's ``last_synced`` and its schema's last full
    comparison (see :meth:`.store.CatalogStore.compared_at`)."""
    stored = as_utc(stored)
    return stored if compared is None or compared <= stored else compared


def catalog_column(row: Any, compared: datetime | None = None) -> CatalogColumn:
    """A ``reflectsync_catalog_columns`` row as its record."""
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
        last_synced=synced(row.last_synced, compared),
        deleted=bool(row.deleted),
    )


def catalog_table(
    row: Any,
    attributes: list[Any],
    columns: tuple[CatalogColumn, ...] | None,
    compared: datetime | None = None,
) -> CatalogTable:
    """A ``reflectsync_catalog_tables`` row (joined with its schema's name)
    as its record.

    :param attributes: the decoded :data:`JSON_ATTRIBUTES`.
    :param columns: its column records, or ``None`` for a summary.
    :param compared: its schema's last full comparison.
    """
    (primary_key, foreign_keys, unique_constraints, checks, indexes, triggers,
     privileges) = attributes
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
        last_synced=synced(row.last_synced, compared),
        deleted=bool(row.deleted),
        columns=columns,
        check_constraints=tuple(checks or ()),
        indexes=tuple(indexes or ()),
        definition=row.definition,
        triggers=tuple(triggers or ()),
        privileges=None if privileges is None else tuple(privileges),
    )


def stored_snapshot(row: Any) -> TableSnapshot:
    """A catalog table row as the snapshot it was stored from."""
    return table_snapshot(
        oid=row.oid,
        name=row.name,
        kind=row.kind,
        comment=row.comment,
        columns=decode_columns(row.columns_json),
        primary_key=row.primary_key,
        foreign_keys=row.foreign_keys,
        unique_constraints=row.unique_constraints,
        rename_hint=row.rename_hint,
        check_constraints=row.check_constraints,
        indexes=row.indexes,
        definition=row.definition,
        triggers=row.triggers,
        privileges=row.privileges,
    )


def table_values(
    live: LiveTable, table: TableSnapshot, digest: str, now: datetime
) -> dict[str, Any]:
    """The values of a catalog table row that stores ``table`` as seen now.

    :param live: the table as read (its encoded columns are stored as they
        are).
    :param table: the same table decoded.
    """
    return {
        "oid": table.oid,
        "name": table.name,
        "kind": table.kind,
        "comment": table.comment,
        "primary_key": list(table.primary_key),
        "foreign_keys": [key.to_dict() for key in table.foreign_keys],
        "unique_constraints": [u.to_dict() for u in table.unique_constraints],
        "check_constraints": [c.to_dict() for c in table.check_constraints],
        "indexes": [i.to_dict() for i in table.indexes],
        "definition": table.definition,
        "triggers": [t.to_dict() for t in table.triggers],
        "privileges": None if table.privileges is None else list(table.privileges),
        "digest": digest,
        "columns_json": live.columns,
        "version": live.version,
        "rename_hint": table.rename_hint,
        "last_synced": now,
        "deleted": False,
    }


def gone_schema(schema: CatalogSchema) -> str:
    """The error message for a schema asked for after it was dropped."""
    return (
        f"Schema {schema.name!r} (id {schema.id}) has been dropped from the "
        "database; list the schemas again to see what exists now."
    )


def gone_table(table: CatalogTable, successor: CatalogTable | None) -> str:
    """The error message for a table asked for after it was dropped.

    :param successor: a live table of the same name in the same schema, a
        different object the message names.
    """
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
