"""Database-level capture: triggers that write the operations log.

This module is PostgreSQL's statement-level triggers, and the entry points
for every backend; MariaDB / MySQL and SQLite have row-level triggers of
their own (:mod:`.row_triggers`), with the same guarantees.

With ``REFLECTSYNC_CAPTURE = "triggers"`` (see :ref:`database-capture`),
every tracked table gets three statement-level ``AFTER`` triggers
(``INSERT``, ``UPDATE``, ``DELETE``) with transition tables, so one
statement, whatever its number of rows, costs one ``INSERT ... SELECT``
into ``reflectsync_operations``. They log exactly what the ORM path would:

* ``row_key``: the text of :meth:`.TrackedTable.encode_key` (integer
  columns as digits, strings as JSON with non-ASCII escaped as Python's
  ``json.dumps`` does; composite keys joined by ``,``);
* ``changed_columns``: the sorted JSON list of
  :func:`.columns.encode_columns`, of the synced non-key columns whose value
  is distinct; an update that changes none (or only excluded columns) logs
  nothing; an update that changes a key logs delete + insert, rows matched
  by key;
* the version row: the first operation of a transaction inserts one
  (``number`` NULL) and keeps its id in the transaction-local setting
  ``reflectsync.version_id`` (``set_config(..., true)``: a rollback, also to
  a savepoint, forgets it with the row). The existing after-commit
  numbering (:mod:`.numbering`) numbers it: nothing is numbered in the
  trigger, so versions stay gap-free and visible in commit order.

A transaction the extension logs itself (a node's push, which records the
pushing node with its version) sets ``reflectsync.capture`` to ``off``:
the triggers stand down for it (:func:`stand_down`).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..errors import ConfigurationError
from . import row_triggers
from .registry import TrackedTable
from .tables import LogTables

#: The values of ``REFLECTSYNC_CAPTURE``.
ORM, TRIGGERS = "orm", "triggers"
CAPTURE_MODES = (ORM, TRIGGERS)

#: Every database object this module creates starts with it (reflection
#: leaves them out).
PREFIX = "reflectsync_capture"
_ESCAPE_FUNCTION = "reflectsync_capture_json_ascii"
_EVENTS = (("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE"))


#: The backends with capture triggers.
BACKENDS = ("postgresql", "mysql", "sqlite")


def check_backend(dialect_name: str) -> None:
    """Refuse trigger capture on a backend it is not built for."""
    if dialect_name not in BACKENDS:
        raise ConfigurationError(
            'REFLECTSYNC_CAPTURE = "triggers" works on PostgreSQL, MariaDB / '
            f'MySQL and SQLite; on {dialect_name} use the default "orm" '
            "(writes through db.session are logged; raw SQL and other "
            "programs are not)."
        )


def _row_level(connection: sa.Connection) -> bool:
    return connection.dialect.name != "postgresql"


def function_name(info: TrackedTable) -> str:
    """The trigger function of a tracked table (short and unique per table)."""
    digest = hashlib.sha256(info.name.encode()).hexdigest()[:12]
    return f"{PREFIX}_{digest}"


#: ``TRUNCATE`` fires no row-level change a log could hold: refused.
_TRUNCATE_TRIGGER = f"{PREFIX}_t"
_TRUNCATE_FUNCTION = f"{PREFIX}_refuse_truncate"


def trigger_names() -> list[str]:
    """The triggers installed on every tracked table."""
    return [f"{PREFIX}_{letter}" for letter, _ in _EVENTS] + [_TRUNCATE_TRIGGER]


def _truncate_function_sql() -> str:
    return f"""
CREATE OR REPLACE FUNCTION {_TRUNCATE_FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $body$
BEGIN
    IF current_setting('reflectsync.capture', true) = 'off' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'TRUNCATE of the tracked table ' || TG_TABLE_NAME
            || ' cannot be logged for sync (nodes would keep the rows): use'
            || ' DELETE, or run SET LOCAL reflectsync.capture = ''off'' first'
            || ' to truncate without logging';
END
$body$
"""


# -- SQL generation ------------------------------------------------------------


def _quote(connection: sa.Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _key_part(connection: sa.Connection, alias: str, column: sa.Column[object]) -> str:
    """SQL for one key column's text as :func:`.keys.encode_key` writes it."""
    ref = f"{alias}.{_quote(connection, column.name)}"
    type_ = column.type
    if isinstance(type_, sa.Integer):
        return f"{ref}::text"
    if isinstance(type_, sa.Boolean):
        return f"to_json({ref})::text"
    if isinstance(type_, (sa.String, sa.Uuid, sa.Date, sa.Numeric)) and not isinstance(
        type_, sa.Enum
    ):
        return f"{_ESCAPE_FUNCTION}(to_json({ref}::text)::text)"
    raise ConfigurationError(
        f"Trigger capture cannot encode the key column {column.name!r} of "
        f"{column.table.name} ({type_}); use integer, string, UUID, date or "
        'numeric keys, or REFLECTSYNC_CAPTURE = "orm".'
    )


def _key_sql(connection: sa.Connection, info: TrackedTable, alias: str) -> str:
    parts = " || ',' || ".join(_key_part(connection, alias, c) for c in info.pk_columns)
    return f"'[' || {parts} || ']'"


def _distinct(connection: sa.Connection, column: sa.Column[object]) -> str:
    name = _quote(connection, column.name)
    if isinstance(column.type, sa.JSON) and not _is_jsonb(column):
        # json has no equality operator: compare as jsonb
        return f"o.{name}::jsonb IS DISTINCT FROM n.{name}::jsonb"
    return f"o.{name} IS DISTINCT FROM n.{name}"


def _is_jsonb(column: sa.Column[object]) -> bool:
    return type(column.type).__name__.upper() == "JSONB"


def _changed_sql(connection: sa.Connection, info: TrackedTable) -> str | None:
    """SQL for the ``changed_columns`` text of an update row pair ``o``/``n``
    (NULL when nothing synced changed), or ``None`` for a table with no
    synced non-key column."""
    names = row_triggers.compared_columns(info)
    if not names:
        return None
    parts = [
        f"CASE WHEN {_distinct(connection, column)} THEN {_literal(name)} END"
        for column, name in names
    ]
    return f"'[' || nullif(concat_ws(',', {', '.join(parts)}), '') || ']'"


def function_sql(
    connection: sa.Connection, info: TrackedTable, tables: LogTables
) -> str:
    """``CREATE OR REPLACE FUNCTION`` of a tracked table's trigger function."""
    preparer = connection.dialect.identifier_preparer
    ops = preparer.format_table(tables.operations)
    versions = preparer.format_table(tables.versions)
    name = _literal(info.name)
    key_o, key_n = _key_sql(connection, info, "o"), _key_sql(connection, info, "n")
    join = " AND ".join(
        f"o.{_quote(connection, c.name)} = n.{_quote(connection, c.name)}"
        for c in info.pk_columns
    )
    changed = _changed_sql(connection, info)
    updates = (
        f"SELECT {key_n}, 'u', {changed} FROM old_rows o JOIN new_rows n ON {join} "
        f"WHERE {changed} IS NOT NULL"
        if changed is not None
        else "SELECT NULL::text, NULL::text, NULL::text WHERE false"
    )
    return f"""
CREATE OR REPLACE FUNCTION {function_name(info)}() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
    v bigint;
    created boolean := false;
    written bigint;
BEGIN
    IF current_setting('reflectsync.capture', true) = 'off' THEN
        RETURN NULL;
    END IF;
    v := nullif(current_setting('reflectsync.version_id', true), '')::bigint;
    IF v IS NULL THEN
        -- left un-numbered: numbered after commit (never here)
        INSERT INTO {versions} (created_at) VALUES (now()) RETURNING id INTO v;
        PERFORM set_config('reflectsync.version_id', v::text, true);
        created := true;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {ops} (version_id, table_name, row_key, command)
        SELECT v, {name}, {key_n}, 'i' FROM new_rows n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {ops} (version_id, table_name, row_key, command)
        SELECT v, {name}, {key_o}, 'd' FROM old_rows o;
    ELSE
        -- rows matched by key: a changed key is a delete and an insert
        INSERT INTO {ops} (version_id, table_name, row_key, command,
                           changed_columns)
        SELECT v, {name}, k, c, cols FROM (
            SELECT {key_o} AS k, 'd' AS c, NULL::text AS cols, 1 AS step
              FROM old_rows o WHERE NOT EXISTS
                   (SELECT FROM new_rows n WHERE {join})
            UNION ALL
            SELECT {key_n}, 'i', NULL, 2 FROM new_rows n WHERE NOT EXISTS
                   (SELECT FROM old_rows o WHERE {join})
            UNION ALL
            SELECT *, 3 FROM ({updates}) AS u
        ) AS changes ORDER BY step;
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written = 0 AND created THEN
        -- nothing changed (a no-op update): no version either
        DELETE FROM {versions} WHERE id = v;
        PERFORM set_config('reflectsync.version_id', '', true);
    END IF;
    RETURN NULL;
END
$body$
"""


def _escape_function_sql() -> str:
    # Python's json.dumps (ensure_ascii) escapes every character outside
    # ' '..'~' as \\uXXXX (UTF-16 surrogate pairs beyond the BMP);
    # PostgreSQL's to_json escapes only control characters, the same way.
    return rf"""
CREATE OR REPLACE FUNCTION {_ESCAPE_FUNCTION}(t text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $body$
DECLARE
    result text := '';
    ch text;
    code integer;
BEGIN
    IF t ~ '^[ -~]*$' THEN
        RETURN t;
    END IF;
    FOREACH ch IN ARRAY regexp_split_to_array(t, '') LOOP
        code := ascii(ch);
        IF code BETWEEN 32 AND 126 THEN
            result := result || ch;
        ELSIF code < 65536 THEN
            result := result || '\u' || lpad(to_hex(code), 4, '0');
        ELSE
            code := code - 65536;
            result := result || '\u' || lpad(to_hex(55296 + (code >> 10)), 4, '0')
                             || '\u' || lpad(to_hex(56320 + (code & 1023)), 4, '0');
        END IF;
    END LOOP;
    RETURN result;
END
$body$
"""


# -- install, remove, status ------------------------------------------------------


@dataclass(frozen=True)
class TableStatus:
    """Whether one tracked table's capture triggers are in place.

    :param name: the tracked table.
    :param state: ``"installed"``, ``"missing"`` (none or some of its
        triggers) or ``"outdated"`` (its function differs from what
        :func:`install` would create now: install again).
    """

    name: str
    state: str


def _table_sql(connection: sa.Connection, info: TrackedTable) -> str:
    return connection.dialect.identifier_preparer.format_table(info.table)


def install(
    connection: sa.Connection, tables: LogTables, tracked: Iterable[TrackedTable]
) -> list[str]:
    """Create (or replace) the capture function and triggers of every tracked
    table. Idempotent; installing again upgrades. Runs in the caller's
    transaction (on MariaDB, each DDL statement commits); returns the
    tables' names."""
    check_backend(connection.dialect.name)
    if _row_level(connection):
        names = row_triggers.install(connection, tables, tracked)
        forget(connection.engine)
        return names
    connection.exec_driver_sql(_escape_function_sql())
    connection.exec_driver_sql(_truncate_function_sql())
    names = []
    for info in tracked:
        table = _table_sql(connection, info)
        function = function_name(info)
        connection.exec_driver_sql(function_sql(connection, info, tables))
        for (letter, event), trigger in zip(_EVENTS, trigger_names()[:3], strict=True):
            referencing = {
                "i": "NEW TABLE AS new_rows",
                "u": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "d": "OLD TABLE AS old_rows",
            }[letter]
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
            connection.exec_driver_sql(
                f"CREATE TRIGGER {trigger} AFTER {event} ON {table} "
                f"REFERENCING {referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {function}()"
            )
        connection.exec_driver_sql(
            f"DROP TRIGGER IF EXISTS {_TRUNCATE_TRIGGER} ON {table}"
        )
        connection.exec_driver_sql(
            f"CREATE TRIGGER {_TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_TRUNCATE_FUNCTION}()"
        )
        names.append(info.name)
    forget(connection.engine)
    return names


def remove(connection: sa.Connection, tracked: Iterable[TrackedTable]) -> list[str]:
    """Drop the capture triggers and functions of every tracked table (and
    of any other table that still has them). Idempotent."""
    check_backend(connection.dialect.name)
    if _row_level(connection):
        names = row_triggers.remove(connection, tracked)
        forget(connection.engine)
        return names
    names = []
    leftover = connection.exec_driver_sql(
        "SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger "
        "WHERE tgname = ANY(%(names)s)",
        {"names": trigger_names()},
    ).scalars()
    targets = {_table_sql(connection, info): info.name for info in tracked}
    for table in leftover:
        targets.setdefault(table, table)
    for table, name in targets.items():
        exists = connection.exec_driver_sql(
            "SELECT to_regclass(%(t)s)", {"t": table}
        ).scalar()
        if exists is not None:
            for trigger in trigger_names():
                connection.exec_driver_sql(
                    f"DROP TRIGGER IF EXISTS {trigger} ON {table}"
                )
        names.append(name)
    functions = connection.exec_driver_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "WHERE p.proname LIKE %(prefix)s",
        {"prefix": PREFIX + r"\_%"},
    ).scalars()
    for function in list(functions):
        connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function}")
    forget(connection.engine)
    return names


def status(
    connection: sa.Connection, tables: LogTables, tracked: Sequence[TrackedTable]
) -> list[TableStatus]:
    """The state of every tracked table's capture triggers."""
    check_backend(connection.dialect.name)
    if _row_level(connection):
        present = row_triggers.installed(connection)
        return [
            TableStatus(
                info.name, row_triggers.state_of(connection, tables, info, present)
            )
            for info in tracked
        ]
    found = _installed_on(connection)
    result = []
    for info in tracked:
        state = "missing"
        if found.get(info.name, 0) == len(trigger_names()):
            source = connection.exec_driver_sql(
                "SELECT prosrc FROM pg_proc WHERE proname = %(n)s",
                {"n": function_name(info)},
            ).scalar()
            wanted = function_sql(connection, info, tables)
            body = wanted.split("$body$")[1]
            state = "installed" if source == body else "outdated"
        result.append(TableStatus(info.name, state))
    return result


def _installed_on(connection: sa.Connection) -> dict[str, int]:
    """How many capture triggers each table has, by logged name
    (``schema.name`` outside the search path's first schema)."""
    rows = connection.exec_driver_sql(
        "SELECT CASE WHEN n.nspname = current_schema() THEN c.relname "
        "ELSE n.nspname || '.' || c.relname END, count(*) "
        "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE t.tgname = ANY(%(names)s) AND t.tgenabled <> 'D' "
        "GROUP BY 1",
        {"names": trigger_names()},
    ).all()
    return {str(name): int(count) for name, count in rows}


# -- what the ORM path leaves to the triggers ---------------------------------------

_cache_lock = threading.Lock()
_captured: weakref.WeakKeyDictionary[sa.Engine, frozenset[str]] = (
    weakref.WeakKeyDictionary()
)


def captured_tables(connection: sa.Connection) -> frozenset[str]:
    """The names of the tables whose capture triggers are installed, read
    once per engine (:func:`install` and :func:`remove` through this process
    refresh it; after installing from another process, restart the app or
    call :func:`forget`)."""
    engine = connection.engine
    with _cache_lock:
        found = _captured.get(engine)
    if found is None:
        if connection.dialect.name not in BACKENDS:
            found = frozenset()
        elif _row_level(connection):
            counts = row_triggers.installed_on(connection)
            found = frozenset(
                n for n, c in counts.items() if c == row_triggers.event_count()
            )
        else:
            counts = _installed_on(connection)
            found = frozenset(n for n, c in counts.items() if c == len(trigger_names()))
        with _cache_lock:
            _captured[engine] = found
    return found


def forget(engine: sa.Engine) -> None:
    """Read the installed triggers again at the next write."""
    with _cache_lock:
        _captured.pop(engine, None)


def stand_down(connection: sa.Connection, version_id: int | None = None) -> None:
    """Tell the triggers to log nothing for the rest of this transaction:
    the extension logs it itself (a push). On the row-level backends the
    transaction's version row must exist already (``version_id``)."""
    if _row_level(connection):
        assert version_id is not None
        row_triggers.stand_down(connection, version_id)
        return
    connection.exec_driver_sql("SELECT set_config('reflectsync.capture', 'off', true)")
