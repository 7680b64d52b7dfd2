"""The names a tracked table's columns have had, by column identity
(PostgreSQL; see :doc:`/schema-changes`).

On PostgreSQL a column's identity is its table's oid and its ``attnum`` in
``pg_attribute``: ``ALTER TABLE ... RENAME COLUMN`` keeps both, a drop and
an add makes a new attnum (the old one stays, ``attisdropped``), and a table
dropped and created again gets a new oid. The server records the live
``(oid, attnum, name)`` of its tracked tables' columns in
``reflectsync_column_names`` (rows are only added) once per process, after
it served a pull, a repair or a schema check (a refused request writes
nothing), and reads back the names the same identities had before. A name
a live attnum had is an earlier name of that column (renamed); a name whose
attnum is gone was dropped.
:func:`~flask_reflectsync.wire.schema.compare` then tells an old node's
column as renamed or dropped for certain, where the shape alone could only
guess.

It knows what the server saw: a rename made before this release first ran
(or while no server process of the table ran) is not in it, and the shape
decides as on the other backends. On SQLite and MariaDB a column's identity
is its name (their catalogs keep no number that survives a rename): nothing
is recorded, and renames are told by shape only.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..tracking import TrackedTable
from ..wire.schema import ColumnHistory
from .schema import TrackedSchema

COLUMN_NAMES = "reflectsync_column_names"

_log = logging.getLogger("flask_reflectsync")

@dataclass
class _Found:
    """A table's columns as read once per process: its live columns, what
    they tell (``None``: nothing), whether they were recorded."""

    live: list[dict[str, Any]]
    history: ColumnHistory | None
    recorded: bool = False


#: Per tracked table and database, what was found (once per process: the
#: columns of a table change only with new model code, a new process).
_found: weakref.WeakKeyDictionary[TrackedTable, dict[str, _Found]] = (
    weakref.WeakKeyDictionary()
)


def define_column_names(metadata: sa.MetaData) -> sa.Table:
    """Define (or return) the table of column names by identity on
    ``metadata`` (used on PostgreSQL only)."""
    found = metadata.tables.get(COLUMN_NAMES)
    if found is not None:
        return found
    return sa.Table(
        COLUMN_NAMES,
        metadata,
        # The table's oid, the column's attnum, a name it had.
        sa.Column("table_oid", sa.BigInteger, primary_key=True),
        sa.Column("attnum", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
    )


# The live columns of the tables named (quoted, as to_regclass reads them),
# with the position of each name in the list.
_LIVE = sa.text(
    "SELECT t.i, a.attrelid::bigint AS oid, a.attnum, a.attname::text AS name"
    " FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, i)"
    " JOIN pg_attribute a ON a.attrelid = to_regclass(t.name)"
    " WHERE a.attnum > 0 AND NOT a.attisdropped"
)


def column_history(
    engine: sa.Engine, schema: TrackedSchema
) -> dict[str, ColumnHistory]:
    """By tracked table name, its columns' earlier names (PostgreSQL; empty
    elsewhere), read once per process and table (nothing is written: see
    :func:`record_columns`).

    A database without the table (created by ``db.create_all()`` or a
    migration from this release on) gives nothing, with a warning once.
    """
    if engine.dialect.name != "postgresql":
        return {}
    key = _key(engine)
    wanted = [i for i in schema.tables.values() if key not in _found.get(i, {})]
    if wanted:
        for info, found in _read(engine, wanted).items():
            _found.setdefault(info, {})[key] = found
    return {
        name: told
        for name, info in schema.tables.items()
        if (told := _entry(info, key).history) is not None
    }


def record_columns(engine: sa.Engine, schema: TrackedSchema) -> None:
    """Record the live names of the tables' columns, in a transaction of
    its own, once per process and table (after a request was served: a
    refused one writes nothing)."""
    if engine.dialect.name != "postgresql":
        return
    column_history(engine, schema)
    key = _key(engine)
    todo = [
        e
        for info in schema.tables.values()
        if not (e := _entry(info, key)).recorded and e.live
    ]
    if not todo:
        return
    table = define_column_names(sa.MetaData())
    try:
        with engine.begin() as connection:
            connection.execute(
                postgresql.insert(table).on_conflict_do_nothing(),
                [row for e in todo for row in e.live],
            )
    except sa.exc.ProgrammingError as error:
        if COLUMN_NAMES not in str(error):
            raise
    for e in todo:
        e.recorded = True


def _key(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _entry(info: TrackedTable, key: str) -> _Found:
    return _found.get(info, {}).get(key) or _Found([], None, recorded=True)


# The live columns of the tables named (quoted, as to_regclass reads them),
# with the position of each name in the list, and every (attnum, name)
# recorded for those tables.
_LIVE = sa.text(
    "SELECT t.i, a.attrelid::bigint AS oid, a.attnum, a.attname::text AS name"
    " FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, i)"
    " JOIN pg_attribute a ON a.attrelid = to_regclass(t.name)"
    " WHERE a.attnum > 0 AND NOT a.attisdropped"
)


def _read(engine: sa.Engine, infos: list[TrackedTable]) -> dict[TrackedTable, _Found]:
    preparer = engine.dialect.identifier_preparer
    names = [preparer.format_table(info.table) for info in infos]
    table = define_column_names(sa.MetaData())
    found = {i: _Found([], None, recorded=True) for i in infos}
    try:
        with engine.connect() as connection:
            live = connection.execute(_LIVE, {"names": names}).all()
            if not live:
                return found
            oids = {int(r.oid) for r in live}
            seen = connection.execute(
                sa.select(table.c.table_oid, table.c.attnum, table.c.name).where(
                    table.c.table_oid.in_(oids)
                )
            ).all()
    except sa.exc.ProgrammingError as error:
        if COLUMN_NAMES not in str(error):
            raise
        _log.warning(
            "The database has no %s table (this release adds it: create it "
            "with db.create_all() or a migration); renames are told by shape.",
            COLUMN_NAMES,
        )
        return found
    by_position: dict[int, dict[int, str]] = {}
    oid_of: dict[int, int] = {}
    for row in live:
        by_position.setdefault(int(row.i), {})[int(row.attnum)] = str(row.name)
        oid_of[int(row.i)] = int(row.oid)
    earlier: dict[int, list[tuple[int, str]]] = {}
    for oid, attnum, name in seen:
        earlier.setdefault(int(oid), []).append((int(attnum), str(name)))
    for position, info in enumerate(infos, start=1):
        columns = by_position.get(position)
        if columns is None:
            continue  # no such table (yet)
        oid = oid_of[position]
        recorded = earlier.get(oid, [])
        known = set(recorded)
        rows = [
            {"table_oid": oid, "attnum": attnum, "name": name}
            for attnum, name in columns.items()
            if (attnum, name) not in known
        ]
        found[info] = _Found(rows, _history(columns, recorded), recorded=not rows)
    return found


def _history(
    live: Mapping[int, str], seen: list[tuple[int, str]]
) -> ColumnHistory | None:
    """The earlier names of a table's columns: ``live`` by attnum now,
    ``seen`` every (attnum, name) recorded."""
    names = set(live.values())
    renamed: dict[str, str] = {}
    dropped: set[str] = set()
    for attnum, name in seen:
        if name in names:
            continue  # a column of that name is there now
        if attnum in live:
            renamed[name] = live[attnum]
        else:
            dropped.add(name)
    if not renamed and not dropped:
        return None
    return ColumnHistory(renamed, frozenset(dropped - renamed.keys()))


def forget() -> None:
    """Forget what was found (tests: a table altered under a live process)."""
    _found.clear()
