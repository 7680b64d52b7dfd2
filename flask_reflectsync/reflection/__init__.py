"""Reflection: a live catalog of the database's schemas, tables and columns.

Nothing here depends on Flask: :class:`Catalog` takes an engine, the catalog
tables and a signal sender, and returns plain records.
"""

from __future__ import annotations

from .catalog import Catalog
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
from .diff import ColumnChange
from .models import (
    CatalogColumn,
    CatalogSchema,
    CatalogTable,
    CatalogTables,
    define_catalog_tables,
)
from .snapshot import (
    CatalogReader,
    ColumnSnapshot,
    ForeignKey,
    LiveTable,
    SchemaSnapshot,
    TableSnapshot,
    UniqueConstraint,
    reader_for,
)

__all__ = [
    "Catalog",
    "CatalogColumn",
    "CatalogReader",
    "CatalogSchema",
    "CatalogTable",
    "CatalogTables",
    "Change",
    "ColumnChange",
    "ColumnSnapshot",
    "ForeignKey",
    "LiveTable",
    "SchemaCreated",
    "SchemaDropped",
    "SchemaRenamed",
    "SchemaSnapshot",
    "TableAltered",
    "TableCreated",
    "TableDropped",
    "TableRenamed",
    "TableSnapshot",
    "UniqueConstraint",
    "define_catalog_tables",
    "reader_for",
]
