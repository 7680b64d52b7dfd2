"""MariaDB / MySQL: the connected database is the one schema; identities are
names, renames are told by the InnoDB table id.

MySQL has no schemas inside a database, so the catalog shows the database
named in the URL as its only schema. A table's identity is its name and a
column's identity is its name, as nothing else survives every ``ALTER``
(one that copies the table gives it a new InnoDB id).

Renames are recognised all the same (see :mod:`.diff`):

- a table's rename hint is its InnoDB table id
  (``information_schema.INNODB_SYS_TABLES`` on MariaDB, ``INNODB_TABLES`` on
  MySQL 8), which ``RENAME TABLE`` keeps and no other table ever gets. A
  dropped and a created table with the same id are one table renamed. The
  id needs the ``PROCESS`` privilege; without it (and for views, tables of
  other engines, partitioned tables and names with non-ASCII characters,
  whose InnoDB names are not looked up) a rename is a drop and a create;
- a column is paired as renamed by position and type (:func:`.diff.pair_columns`).

The fingerprint of the tables is one aggregate over ``information_schema``
(counts and checksums of the rows describing tables, columns and keys), and
one over the InnoDB table ids, so that an unchanged database is confirmed
without transferring it.

The module stays above the layout's ~500 lines on purpose: it is one
backend's ``information_schema`` queries and the shape-based rename
pairing they feed, which change together when a catalog field is added.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from .objects import SEQUENCE, ObjectSnapshot
from .snapshot import (
    PRIVILEGES,
    TABLE,
    VIEW,
    CheckConstraint,
    ColumnSnapshot,
    ForeignKey,
    Index,
    SchemaSnapshot,
    TableSnapshot,
    Trigger,
    UniqueConstraint,
    UnversionedReader,
    rows_by_table,
)

_KINDS = {"BASE TABLE": TABLE, "SYSTEM VERSIONED": TABLE, "VIEW": VIEW}
_LOCK_NAME = "reflectsync_catalog"
_LOCK_TIMEOUT_SECONDS = 30


def _checksum(columns: str, rows: str) -> str:
    return (
        f"(SELECT CONCAT(COUNT(*), ':', COALESCE(SUM(CRC32(CONCAT_WS('|', {columns})"
        f")), 0)) {rows})"
    )


# The connected account as information_schema's GRANTEE spells it.
_GRANTEE = (
    "CONCAT(QUOTE(SUBSTRING_INDEX(CURRENT_USER(), '@', 1)), '@',"
    " QUOTE(SUBSTRING_INDEX(CURRENT_USER(), '@', -1)))"
)
# What the connected account was granted: on everything, on the database,
# on one table (privileges through roles and through database name patterns
# are not read).
_PRIVILEGE_ROWS = (
    "SELECT 'global' AS level, '' AS tbl, PRIVILEGE_TYPE"
    " FROM information_schema.USER_PRIVILEGES"
    f" WHERE GRANTEE = {_GRANTEE}"
    " UNION ALL SELECT 'schema', '', PRIVILEGE_TYPE"
    " FROM information_schema.SCHEMA_PRIVILEGES"
    f" WHERE GRANTEE = {_GRANTEE} AND TABLE_SCHEMA = :schema"
    " UNION ALL SELECT 'table', TABLE_NAME, PRIVILEGE_TYPE"
    " FROM information_schema.TABLE_PRIVILEGES"
    f" WHERE GRANTEE = {_GRANTEE} AND TABLE_SCHEMA = :schema"
)
#: The privileges MariaDB/MySQL has of :data:`PRIVILEGES` (its TRUNCATE
#: is the DROP privilege).
_TABLE_PRIVILEGES = tuple(name for name in PRIVILEGES if name != "TRUNCATE")

_FINGERPRINT_TEXT = (
    "SELECT CONCAT_WS('/', "
    + ", ".join(
        [
            _checksum(
                "TABLE_NAME, TABLE_TYPE, TABLE_COMMENT",
                "FROM information_schema.TABLES WHERE TABLE_SCHEMA = :schema",
            ),
            _checksum(
                "TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE,"
                " IS_NULLABLE, COALESCE(COLUMN_DEFAULT, '<none>'), COLUMN_COMMENT",
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :schema",
            ),
            _checksum(
                "TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, ORDINAL_POSITION,"
                " COALESCE(REFERENCED_TABLE_SCHEMA, ''),"
                " COALESCE(REFERENCED_TABLE_NAME, ''),"
                " COALESCE(REFERENCED_COLUMN_NAME, '')",
                "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = :schema",
            ),
            _checksum(
                "TABLE_NAME, CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE",
                "FROM information_schema.REFERENTIAL_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = :schema",
            ),
            _checksum(
                "CONSTRAINT_NAME, CHECK_CLAUSE",
                "FROM information_schema.CHECK_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = :schema",
            ),
            _checksum(
                "TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME",
                "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = :schema",
            ),
            _checksum(
                "TABLE_NAME, VIEW_DEFINITION",
                "FROM information_schema.VIEWS WHERE TABLE_SCHEMA = :schema",
            ),
            _checksum(
                "TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION,"
                " ACTION_STATEMENT",
                "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = :schema",
            ),
            _checksum("level, tbl, PRIVILEGE_TYPE", "FROM ({privileges}) AS p"),
        ]
    )
    + ")"
)
_FINGERPRINT = sa.text(_FINGERPRINT_TEXT.replace("{privileges}", _PRIVILEGE_ROWS))

_TABLES = (
    "SELECT TABLE_NAME AS name, TABLE_TYPE AS type, TABLE_COMMENT AS comment"
    " FROM information_schema.TABLES WHERE TABLE_SCHEMA = :schema"
)
_COLUMNS = (
    "SELECT TABLE_NAME AS tbl, COLUMN_NAME AS name, COLUMN_TYPE AS type,"
    " IS_NULLABLE AS nullable, COLUMN_DEFAULT AS dflt, COLUMN_COMMENT AS comment"
    " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :schema"
)
_KEYS = (
    "SELECT k.TABLE_NAME AS tbl, k.CONSTRAINT_NAME AS name,"
    " t.CONSTRAINT_TYPE AS type, k.COLUMN_NAME AS col,"
    " k.REFERENCED_TABLE_SCHEMA AS rschema, k.REFERENCED_TABLE_NAME AS rtable,"
    " k.REFERENCED_COLUMN_NAME AS rcol, r.UPDATE_RULE AS onupd,"
    " r.DELETE_RULE AS ondel"
    " FROM information_schema.KEY_COLUMN_USAGE k"
    " JOIN information_schema.TABLE_CONSTRAINTS t"
    "  ON t.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND t.TABLE_SCHEMA = k.TABLE_SCHEMA"
    "  AND t.TABLE_NAME = k.TABLE_NAME AND t.CONSTRAINT_NAME = k.CONSTRAINT_NAME"
    " LEFT JOIN information_schema.REFERENTIAL_CONSTRAINTS r"
    "  ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.TABLE_NAME = k.TABLE_NAME"
    "  AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME"
    " WHERE k.TABLE_SCHEMA = :schema"
    "  AND t.CONSTRAINT_TYPE IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')"
)


_CHECKS = {
    # MariaDB names a CHECK constraint per table; MySQL per schema, and only
    # TABLE_CONSTRAINTS says whose it is.
    True: (
        "SELECT TABLE_NAME AS tbl, CONSTRAINT_NAME AS name, CHECK_CLAUSE AS expr"
        " FROM information_schema.CHECK_CONSTRAINTS"
        " WHERE CONSTRAINT_SCHEMA = :schema{one}"
        " ORDER BY TABLE_NAME, CONSTRAINT_NAME"
    ),
    False: (
        "SELECT t.TABLE_NAME AS tbl, c.CONSTRAINT_NAME AS name,"
        " c.CHECK_CLAUSE AS expr FROM information_schema.CHECK_CONSTRAINTS c"
        " JOIN information_schema.TABLE_CONSTRAINTS t"
        "  ON t.CONSTRAINT_SCHEMA = c.CONSTRAINT_SCHEMA"
        "  AND t.CONSTRAINT_NAME = c.CONSTRAINT_NAME AND t.CONSTRAINT_TYPE = 'CHECK'"
        " WHERE c.CONSTRAINT_SCHEMA = :schema{one}"
        " ORDER BY t.TABLE_NAME, c.CONSTRAINT_NAME"
    ),
}
# Unique indexes are unique constraints here (TABLE_CONSTRAINTS lists them).
_INDEXES = (
    "SELECT TABLE_NAME AS tbl, INDEX_NAME AS name, COLUMN_NAME AS col"
    " FROM information_schema.STATISTICS"
    " WHERE TABLE_SCHEMA = :schema AND NON_UNIQUE = 1{one}"
    " ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
)
_VIEWS = (
    "SELECT TABLE_NAME AS tbl, VIEW_DEFINITION AS definition"
    " FROM information_schema.VIEWS WHERE TABLE_SCHEMA = :schema{one}"
)
_TRIGGERS = (
    "SELECT EVENT_OBJECT_TABLE AS tbl, TRIGGER_NAME AS name,"
    " ACTION_TIMING AS timing, EVENT_MANIPULATION AS event,"
    " ACTION_STATEMENT AS definition"
    " FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = :schema{one}"
    # the sync log's capture triggers (flask_reflectsync.tracking
    # .row_triggers) are the extension's own: a table that has them is
    # not altered
    r" AND TRIGGER_NAME NOT LIKE 'reflectsync\_capture\_%'"
    " ORDER BY EVENT_OBJECT_TABLE, TRIGGER_NAME"
)


def _innodb_name(name: str) -> str | None:
    """The name InnoDB's dictionary gives a database or table called
    ``name`` (MySQL's ``filename`` character set), or ``None`` for a name
    with characters outside ASCII, which that set spells in ways not worth
    reproducing here."""
    if not name.isascii():
        return None
    return "".join(
        char if char.isalnum() or char == "_" else f"@{ord(char):04x}"
        for char in name
    )


def _is_mariadb(connection: sa.Connection) -> bool:
    return connection.dialect.name == "mariadb" or bool(
        getattr(connection.dialect, "is_mariadb", False)
    )


def _innodb_rows(
    connection: sa.Connection, schema: SchemaSnapshot, aggregate: bool
) -> list[Any] | None:
    """The ``(TABLE_ID, NAME)`` rows of the InnoDB dictionary for the tables
    of ``schema`` (or one checksum row, if ``aggregate``); ``None`` when the
    role may not read them (no ``PROCESS`` privilege) or the name cannot be
    spelled."""
    prefix = _innodb_name(schema.name)
    if prefix is None:
        return None
    table = "INNODB_SYS_TABLES" if _is_mariadb(connection) else "INNODB_TABLES"
    selected = (
        "CONCAT(COUNT(*), ':', COALESCE(SUM(CRC32(CONCAT(NAME, '|', TABLE_ID))), 0))"
        if aggregate else "TABLE_ID, NAME"
    )
    statement = sa.text(
        f"SELECT {selected} FROM information_schema.{table}"
        " WHERE LEFT(NAME, :length) = :prefix"
    )
    try:
        with connection.begin_nested():
            return list(connection.execute(
                statement, {"length": len(prefix) + 1, "prefix": prefix + "/"}
            ).all())
    except sa.exc.DBAPIError:
        return None


class MySQLReader(UnversionedReader):
    """:class:`~.snapshot.CatalogReader` for MariaDB and MySQL."""

    dialect = "mysql"

    #: Identities are names: columns are paired as renamed by their shape.
    identity_by_name = True
    #: The rename hint is the InnoDB table id, never given to another table.
    rename_hints_are_ids = True

    def schemas_fingerprint(self, connection: sa.Connection) -> str:
        return ",".join(schema.name for schema in self.read_schemas(connection))

    def read_schemas(self, connection: sa.Connection) -> list[SchemaSnapshot]:
        name = connection.execute(sa.text("SELECT DATABASE()")).scalar_one()
        return [] if name is None else [SchemaSnapshot(oid=name, name=name)]

    def tables_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        if not self._present(connection, schema):
            return None
        found = connection.execute(_FINGERPRINT, {"schema": schema.name})
        ids = _innodb_rows(connection, schema, aggregate=True)
        return f"{found.scalar_one()}/{'-' if ids is None else ids[0][0]}"

    def lock(self, connection: sa.Connection) -> None:
        acquired = connection.execute(
            sa.text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": _LOCK_NAME, "timeout": _LOCK_TIMEOUT_SECONDS},
        ).scalar_one()
        if acquired != 1:
            from ..errors import SyncError

            raise SyncError(
                "Another process has been refreshing the reflection catalog for "
                f"{_LOCK_TIMEOUT_SECONDS} seconds; try again later.",
                code="catalog.refresh_locked",
            )
        # GET_LOCK is held by the session, not the transaction: end the
        # transaction so that the next reads take a fresh REPEATABLE READ view.
        connection.commit()

    def unlock(self, connection: sa.Connection) -> None:
        connection.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _LOCK_NAME})
        connection.commit()

    def read_objects(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> list[ObjectSnapshot] | None:
        """MariaDB's sequences (see :mod:`.objects`); enums are column types
        here and domains do not exist. A sequence's identity is its name."""
        if not self._present(connection, schema):
            return None
        return _sequences(connection, schema)

    def objects_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        """Every sequence's definition: ``ALTER SEQUENCE`` shows nowhere in
        ``information_schema``, so this reads them all (few, small)."""
        if not self._present(connection, schema):
            return None
        return ";".join(
            f"{item.name}={item.details}" for item in _sequences(connection, schema)
        )

    def _present(self, connection: sa.Connection, schema: SchemaSnapshot) -> bool:
        return any(found.name == schema.name for found in self.read_schemas(connection))

    def _read(
        self, connection: sa.Connection, schema: SchemaSnapshot, name: str | None
    ) -> list[TableSnapshot]:
        params = {"schema": schema.name, "table": name}
        one = " AND TABLE_NAME = :table" if name is not None else ""
        tables = connection.execute(
            sa.text(_TABLES + one + " ORDER BY TABLE_NAME"), params
        ).all()
        columns = rows_by_table(
            connection, _COLUMNS + one + " ORDER BY TABLE_NAME, ORDINAL_POSITION",
            params,
        )
        key_filter = " AND k.TABLE_NAME = :table" if name is not None else ""
        keys = rows_by_table(
            connection,
            _KEYS
            + key_filter
            + " ORDER BY k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
            params,
        )
        mariadb = _is_mariadb(connection)
        more = _More.read(connection, params, name is not None, mariadb)
        innodb = {
            str(row.NAME): f"innodb:{row.TABLE_ID}"
            for row in _innodb_rows(connection, schema, aggregate=False) or ()
        }
        prefix = _innodb_name(schema.name)
        snapshots = []
        for table in tables:
            kind = _KINDS.get(table.type)
            if kind is None:  # sequences and other table-like objects
                continue
            encoded = _innodb_name(table.name)
            hint = (
                innodb.get(f"{prefix}/{encoded}")
                if kind == TABLE and encoded is not None else None
            )
            snapshots.append(
                _table(
                    table, kind, columns[table.name], keys[table.name], schema,
                    mariadb, hint, more,
                )
            )
        return snapshots


class _More:
    """CHECK constraints, indexes, view queries, triggers and privileges of
    the tables read, by table name."""

    def __init__(self) -> None:
        self.checks: dict[str, list[Any]] = {}
        self.indexes: dict[str, list[Any]] = {}
        self.views: dict[str, str] = {}
        self.triggers: dict[str, list[Any]] = {}
        self.granted: set[str] = set()
        self.by_table: dict[str, set[str]] = defaultdict(set)

    @classmethod
    def read(
        cls, connection: sa.Connection, params: dict[str, Any], one: bool,
        mariadb: bool,
    ) -> _More:
        found = cls()

        def where(column: str) -> str:
            return f" AND {column} = :table" if one else ""

        found.checks = rows_by_table(
            connection,
            _CHECKS[mariadb].format(
                one=where("TABLE_NAME" if mariadb else "t.TABLE_NAME")
            ),
            params,
        )
        found.indexes = rows_by_table(
            connection, _INDEXES.format(one=where("TABLE_NAME")), params
        )
        found.views = {
            row.tbl: row.definition
            for row in connection.execute(
                sa.text(_VIEWS.format(one=where("TABLE_NAME"))), params
            )
        }
        found.triggers = rows_by_table(
            connection, _TRIGGERS.format(one=where("EVENT_OBJECT_TABLE")), params
        )
        for row in connection.execute(sa.text(_PRIVILEGE_ROWS), params):
            if row.PRIVILEGE_TYPE == "ALL PRIVILEGES":
                granted = set(_TABLE_PRIVILEGES)
            else:
                granted = {row.PRIVILEGE_TYPE}
            if row.level == "table":
                found.by_table[row.tbl] |= granted
            else:
                found.granted |= granted
        return found

    def privileges(self, table: str) -> tuple[str, ...]:
        granted = self.granted | self.by_table.get(table, set())
        return tuple(name for name in _TABLE_PRIVILEGES if name in granted)


def _default(value: str | None, mariadb: bool) -> str | None:
    # MariaDB reports an implicit DEFAULT NULL as the text NULL (a string
    # default 'NULL' comes back quoted, so this is unambiguous).
    if mariadb and value == "NULL":
        return None
    return value


def _table(
    table: Any,
    kind: str,
    columns: list[Any],
    keys: list[Any],
    schema: SchemaSnapshot,
    mariadb: bool,
    rename_hint: str | None,
    more: _More,
) -> TableSnapshot:
    by_constraint: dict[str, list[Any]] = defaultdict(list)
    for row in keys:
        by_constraint[row.name].append(row)
    primary_key: tuple[str, ...] = ()
    uniques = []
    foreign_keys = []
    for constraint, parts in by_constraint.items():
        first = parts[0]
        names = tuple(part.col for part in parts)
        if first.type == "PRIMARY KEY":
            primary_key = names
        elif first.type == "UNIQUE":
            uniques.append(UniqueConstraint(name=constraint, columns=names))
        else:
            foreign_keys.append(
                ForeignKey(
                    name=constraint,
                    columns=names,
                    referred_schema=(
                        None if first.rschema == schema.name else first.rschema
                    ),
                    referred_table=first.rtable,
                    referred_columns=tuple(part.rcol for part in parts),
                    on_update=_action(first.onupd),
                    on_delete=_action(first.ondel),
                )
            )
    comment = table.comment or None
    indexes: dict[str, list[str]] = defaultdict(list)
    for row in more.indexes.get(table.name, ()):
        indexes[row.name].append(row.col)
    own_keys = {key.name: key.columns for key in foreign_keys}
    return TableSnapshot(
        oid=table.name,
        name=table.name,
        kind=kind,
        comment=None if kind == VIEW else comment,
        columns=tuple(
            ColumnSnapshot(
                oid=row.name,
                name=row.name,
                position=position,
                type=row.type,
                nullable=row.nullable == "YES",
                default=_default(row.dflt, mariadb),
                comment=row.comment or None,
            )
            for position, row in enumerate(columns, start=1)
        ),
        primary_key=primary_key,
        foreign_keys=tuple(sorted(foreign_keys, key=lambda k: k.name or "")),
        unique_constraints=tuple(sorted(uniques, key=lambda u: u.name or "")),
        rename_hint=rename_hint,
        check_constraints=tuple(
            CheckConstraint(name=row.name, expression=row.expr)
            for row in more.checks.get(table.name, ())
        ),
        indexes=tuple(
            Index(name=index, columns=tuple(names), unique=False)
            for index, names in sorted(indexes.items())
            # the index InnoDB made for a foreign key: named as the key
            if tuple(own_keys.get(index, ())) != tuple(names)
        ),
        definition=more.views.get(table.name) if kind == VIEW else None,
        triggers=tuple(
            Trigger(name=row.name, timing=row.timing, events=(row.event,),
                    definition=row.definition)
            for row in more.triggers.get(table.name, ())
        ),
        privileges=more.privileges(table.name),
    )


def _action(value: str | None) -> str | None:
    return None if value in (None, "NO ACTION") else value


def _sequences(
    connection: sa.Connection, schema: SchemaSnapshot
) -> list[ObjectSnapshot]:
    names = connection.execute(
        sa.text(
            "SELECT TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = :schema AND TABLE_TYPE = 'SEQUENCE'"
            " ORDER BY TABLE_NAME"
        ),
        {"schema": schema.name},
    ).scalars().all()
    if not names:
        return []
    quote = connection.dialect.identifier_preparer.quote_identifier
    # One statement for all: the definition is the sequence's only row
    # (its current value, next_not_cached_value, is left out).
    statement = " UNION ALL ".join(
        f"SELECT {i} AS i, start_value, increment, minimum_value, maximum_value,"
        f" cycle_option FROM {quote(schema.name)}.{quote(name)}"
        for i, name in enumerate(names)
    )
    rows = {row.i: row for row in connection.execute(sa.text(statement))}
    found = []
    for i, name in enumerate(names):
        row = rows[i]
        details = {
            "type": "bigint",
            "start": str(row.start_value),
            "increment": str(row.increment),
            "minimum": str(row.minimum_value),
            "maximum": str(row.maximum_value),
            "cycle": bool(row.cycle_option),
            "owner": None,
            "owned_by": None,
        }
        found.append(ObjectSnapshot(oid=name, name=name, kind=SEQUENCE,
                                    details=json.dumps(details)))
    return found
