"""Reflection: a live catalog of the database's schemas, tables and columns.

Nothing here depends on Flask: :class:`Catalog` takes an engine, the catalog
tables and a signal sender, and returns plain records.
"""

from __future__ import annotations

from .catalog import Catalog
from .changes import (
    Change,
    ObjectAltered,
    ObjectCreated,
    ObjectDropped,
    ObjectRenamed,
    SchemaCreated,
    SchemaDropped,
    SchemaRenamed,
    TableAltered,
    TableCreated,
    TableDropped,
    TableRenamed,
)
from .diff import ColumnChange
from .models import (
    CatalogColumn,
    CatalogObject,
    CatalogSchema,
    CatalogTable,
    CatalogTables,
    define_catalog_tables,
)
from .snapshot import (
    PRIVILEGES,
    CatalogReader,
    CheckConstraint,
    ColumnSnapshot,
    ForeignKey,
    Index,
    LiveTable,
    SchemaSnapshot,
    TableSnapshot,
    Trigger,
    UniqueConstraint,
    reader_for,
)

__all__ = [
    "PRIVILEGES",
    "Catalog",
    "CatalogColumn",
    "CatalogObject",
    "CatalogReader",
    "CatalogSchema",
    "CatalogTable",
    "CatalogTables",
    "Change",
    "CheckConstraint",
    "ColumnChange",
    "ColumnSnapshot",
    "ForeignKey",
    "Index",
    "LiveTable",
    "ObjectAltered",
    "ObjectCreated",
    "ObjectDropped",
    "ObjectRenamed",
    "SchemaCreated",
    "SchemaDropped",
    "SchemaRenamed",
    "SchemaSnapshot",
    "TableAltered",
    "TableCreated",
    "TableDropped",
    "TableRenamed",
    "TableSnapshot",
    "Trigger",
    "UniqueConstraint",
    "define_catalog_tables",
    "reader_for",
]
