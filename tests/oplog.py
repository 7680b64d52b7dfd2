"""Reading the operations log in tests."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync.tracking import define_tables
from flask_reflectsync.tracking.numbering import number_versions


def _numbered(db: SQLAlchemy) -> None:
    # Read the log as a pull does: committed versions get their numbers
    # first (PostgreSQL and MySQL number them after commit).
    number_versions(db.engine, define_tables(db.metadata))


def logged(db: SQLAlchemy) -> list[tuple[int | None, str, list[Any], str]]:
    """Every logged operation as (version number, table, key, command), in
    version then insertion order."""
    ops = db.metadata.tables["reflectsync_operations"]
    versions = db.metadata.tables["reflectsync_versions"]
    query = (
        sa.select(versions.c.number, ops.c.table_name, ops.c.row_key, ops.c.command)
        .join(versions, versions.c.id == ops.c.version_id)
        .order_by(versions.c.number, ops.c.id)
    )
    _numbered(db)
    with db.engine.connect() as connection:
        return [
            (number, table, json.loads(key), command)
            for number, table, key, command in connection.execute(query)
        ]


def commands(db: SQLAlchemy) -> list[tuple[str, list[Any], str]]:
    """Logged operations without version numbers."""
    return [(table, key, command) for _, table, key, command in logged(db)]


def version_numbers(db: SQLAlchemy) -> list[int | None]:
    versions = db.metadata.tables["reflectsync_versions"]
    _numbered(db)
    with db.engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(versions.c.number).order_by(versions.c.number)
            ).scalars()
        )
