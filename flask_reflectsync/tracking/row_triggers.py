"""Database-level capture on MariaDB / MySQL and SQLite: row-level triggers.

Neither backend has transition tables, so every tracked table gets three
``AFTER ... FOR EACH ROW`` triggers (``INSERT``, ``UPDATE``, ``DELETE``),
named ``reflectsync_capture_<digest>_<i|u|d>`` (trigger names are unique per
database here, not per table). Each writes what the ORM path would log for
its row (see :mod:`.triggers` for the text of ``row_key`` and
``changed_columns``): an update that changes no synced column logs nothing,
one that changes the key logs a delete and an insert.

Nothing in a trigger numbers a version: the version rows they create have
``number`` NULL and are numbered by :mod:`.numbering`, after commit, as the
ORM path's are. Which version row a trigger's operation joins:

* **MariaDB / MySQL** have no transaction-local setting, and a transaction
  cannot tell its own uncommitted rows from committed ones. A version row
  is therefore created per *statement*: the session variables
  ``@reflectsync_capture_version`` and ``@reflectsync_capture_at`` keep the
  last row the session's triggers created and the statement's start time
  (``NOW(6)``, the same for every row of one statement). Each statement
  that logs something gets a version row of its own; its rows all join it.
  A statement that starts in the same microsecond as the previous one (a
  session whose clock is fixed with ``SET timestamp``) joins that version
  only after locking it and finding it still un-numbered: the numbering
  then waits for this transaction, so the version is numbered only once
  everything in it committed, never before.
* **SQLite** has one writer at a time, and numbering is itself a write: a
  trigger joins the newest version row if it is un-numbered (its own
  transaction's, or one committed but not numbered yet, which no numbering
  can number before this transaction ends), and creates one otherwise.

A push (logged by the extension itself, with its node) makes the triggers
stand down: on MariaDB by ``@reflectsync_capture_off`` = its version row's
id, honoured while that row exists un-numbered (so a push that ended, by
commit or rollback, leaves nothing that could silence a later transaction
of the pooled connection); on SQLite by the newest version row being the
push's own (un-numbered, with a ``node_id``).

``TRUNCATE`` (MariaDB) fires no trigger and is not logged: use ``DELETE``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import sqlalchemy as sa

from ..errors import ConfigurationError
from .columns import encode_columns
from .registry import TrackedTable
from .tables import LogTables

PREFIX = "reflectsync_capture"
#: MariaDB's function turning a string into JSON text as ``json.dumps``
#: writes it (non-ASCII escaped).
JSON_FUNCTION = f"{PREFIX}_json_ascii"
_EVENTS = (("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE"))
_OFF = "@reflectsync_capture_off"
_VERSION = "@reflectsync_capture_version"
_AT = "@reflectsync_capture_at"


def trigger_name(info: TrackedTable, letter: str) -> str:
    """The trigger of ``info`` for one event (``i``, ``u`` or ``d``)."""
    digest = hashlib.sha256(info.name.encode()).hexdigest()[:12]
    return f"{PREFIX}_{digest}_{letter}"


def _quote(connection: sa.Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def _mysql(connection: sa.Connection) -> bool:
    return connection.dialect.name == "mysql"


def _literal(connection: sa.Connection, text: str) -> str:
    escaped = text.replace("'", "''")
    if _mysql(connection):
        # installed with backslash escapes on (see install)
        escaped = escaped.replace("\\", "\\\\")
    return f"'{escaped}'"


# -- keys ------------------------------------------------------------------------


def _uuid_text(ref: str, sqlite: bool) -> str:
    # Native UUID (MariaDB 10.7+) reads as the dashed form; CHAR(32) (SQLite,
    # older MariaDB) holds the hex: encode_key writes str(uuid), dashed.
    cast = f"lower(CAST({ref} AS {'TEXT' if sqlite else 'CHAR'}))"
    pieces = (
        f"substr({cast}, 1, 8)",
        f"substr({cast}, 9, 4)",
        f"substr({cast}, 13, 4)",
        f"substr({cast}, 17, 4)",
        f"substr({cast}, 21)",
    )
    if sqlite:
        dashed = " || '-' || ".join(pieces)
        return (
            f"'\"' || CASE WHEN length({cast}) = 32 THEN {dashed} "
            f"ELSE {cast} END || '\"'"
        )
    return (
        f"CONCAT('\"', IF(CHAR_LENGTH({cast}) = 32, "
        f"CONCAT_WS('-', {', '.join(pieces)}), {cast}), '\"')"
    )


def _sqlite_json_string(ref: str) -> str:
    """SQLite has no stored functions: the escaping of :mod:`.keys` (Python's
    ``json.dumps``) as one expression, a recursive CTE over the characters
    for the rare key outside printable ASCII."""
    u = f"unicode(substr({ref}, i, 1))"
    char = (
        f"CASE WHEN {u} = 34 THEN '\\\"' WHEN {u} = 92 THEN '\\\\' "
        f"WHEN {u} BETWEEN 32 AND 126 THEN char({u}) "
        f"WHEN {u} = 8 THEN '\\b' WHEN {u} = 9 THEN '\\t' "
        f"WHEN {u} = 10 THEN '\\n' WHEN {u} = 12 THEN '\\f' "
        f"WHEN {u} = 13 THEN '\\r' "
        f"WHEN {u} < 65536 THEN printf('\\u%04x', {u}) "
        f"ELSE printf('\\u%04x\\u%04x', 55296 + (({u} - 65536) >> 10), "
        f"56320 + (({u} - 65536) & 1023)) END"
    )
    escaped = (
        f"(WITH RECURSIVE e(i, t) AS (SELECT 1, '' UNION ALL "
        f"SELECT i + 1, t || {char} FROM e WHERE i <= length({ref})) "
        f"SELECT '\"' || t || '\"' FROM e WHERE i > length({ref}))"
    )
    return (
        f"CASE WHEN {ref} NOT GLOB '*[^ -~]*' THEN json_quote({ref}) "
        f"ELSE {escaped} END"
    )


def _key_part(connection: sa.Connection, ref: str, column: sa.Column[object]) -> str:
    sqlite = not _mysql(connection)
    type_ = column.type
    if isinstance(type_, sa.Integer):
        return f"CAST({ref} AS {'TEXT' if sqlite else 'CHAR'})"
    if isinstance(type_, sa.Uuid):
        return _uuid_text(ref, sqlite)
    if isinstance(type_, sa.Date) and not isinstance(type_, sa.DateTime):
        if sqlite:
            return f"json_quote({ref})"
        return f"DATE_FORMAT({ref}, '\"%Y-%m-%d\"')"
    if isinstance(type_, sa.String) and not isinstance(type_, sa.Enum):
        return _sqlite_json_string(ref) if sqlite else f"{JSON_FUNCTION}({ref})"
    raise ConfigurationError(
        f"Trigger capture on {connection.dialect.name} cannot encode the key "
        f"column {column.name!r} of {column.table.name} ({type_}); use "
        'integer, string, UUID or date keys, or REFLECTSYNC_CAPTURE = "orm".'
    )


def _key_sql(connection: sa.Connection, info: TrackedTable, row: str) -> str:
    parts = [
        _key_part(connection, f"{row}.{_quote(connection, c.name)}", c)
        for c in info.pk_columns
    ]
    if _mysql(connection):
        return "CONCAT('[', " + ", ',', ".join(parts) + ", ']')"
    return "'[' || " + " || ',' || ".join(parts) + " || ']'"


def _differs(connection: sa.Connection, column: sa.Column[object]) -> str:
    name = _quote(connection, column.name)
    if not _mysql(connection):
        return f"OLD.{name} IS NOT NEW.{name}"
    if isinstance(column.type, sa.String):
        # byte for byte: collations fold case and pad spaces, Python does not
        return f"NOT (BINARY OLD.{name} <=> BINARY NEW.{name})"
    return f"NOT (OLD.{name} <=> NEW.{name})"


def _key_changed(connection: sa.Connection, info: TrackedTable) -> str:
    return " OR ".join(f"({_differs(connection, c)})" for c in info.pk_columns)


def compared_columns(info: TrackedTable) -> list[tuple[sa.Column[object], str]]:
    """The synced non-key columns an update trigger compares, by name, each
    with its name as it stands in ``changed_columns`` (without brackets)."""
    pk = {c.name for c in info.pk_columns}
    columns = sorted(
        (c for c in info.synced_columns if c.name not in pk), key=lambda c: c.name
    )
    found = []
    for column in columns:
        text = encode_columns([column.name])
        assert text is not None
        found.append((column, text[1:-1]))
    return found


def _changed_sql(connection: sa.Connection, info: TrackedTable) -> str | None:
    """SQL for the text between the brackets of ``changed_columns`` (``''``
    when no synced non-key column changed), or ``None`` for a table without
    synced non-key columns."""
    names = compared_columns(info)
    if not names:
        return None
    if _mysql(connection):
        parts = ", ".join(
            f"IF({_differs(connection, c)}, {_literal(connection, t)}, NULL)"
            for c, t in names
        )
        return f"CONCAT_WS(',', {parts})"
    parts = " || ".join(
        f"CASE WHEN {_differs(connection, c)} THEN {_literal(connection, t + ',')} "
        "ELSE '' END"
        for c, t in names
    )
    return f"rtrim({parts}, ',')"


# -- MariaDB / MySQL ------------------------------------------------------------------


def _mysql_body(
    connection: sa.Connection, info: TrackedTable, tables: LogTables, letter: str
) -> str:
    preparer = connection.dialect.identifier_preparer
    ops = preparer.format_table(tables.operations)
    versions = preparer.format_table(tables.versions)
    name = _literal(connection, info.name)
    columns = "(version_id, table_name, row_key, command, changed_columns)"
    Op = tuple[str, str, str]

    def values(op: Op) -> str:
        key, command, changed = op
        return (
            f"INSERT INTO {ops} {columns} VALUES "
            f"({_VERSION}, {name}, {key}, '{command}', {changed});"
        )

    def write(logged: list[Op]) -> str:
        # Stored-program statements cost tens of microseconds each: a row
        # after the statement's first costs one, the INSERT ... SELECT that
        # joins the version only if it is still un-numbered, under a shared
        # lock that makes the numbering wait for this transaction.
        first, *rest = logged
        key, command, changed = first
        return f"""IF {_AT} = NOW(6) THEN
      INSERT INTO {ops} {columns}
      SELECT id, {name}, {key}, '{command}', {changed} FROM {versions}
       WHERE id = {_VERSION} AND number IS NULL LOCK IN SHARE MODE;
      IF ROW_COUNT() > 0 THEN
        {" ".join(values(op) for op in rest)}
        LEAVE capture;
      END IF;
    END IF;
    -- left un-numbered: numbered after commit (never here)
    INSERT INTO {versions} (created_at) VALUES (UTC_TIMESTAMP());
    SET {_VERSION} = LAST_INSERT_ID(), {_AT} = NOW(6);
    {" ".join(values(op) for op in logged)}"""

    key_new = _key_sql(connection, info, "NEW")
    key_old = _key_sql(connection, info, "OLD")
    moved_ops = [(key_old, "d", "NULL"), (key_new, "i", "NULL")]
    if letter == "i":
        logged, body = "TRUE", write([(key_new, "i", "NULL")])
    elif letter == "d":
        logged, body = "TRUE", write([(key_old, "d", "NULL")])
    else:
        changed = _changed_sql(connection, info)
        moved = _key_changed(connection, info)
        if changed is None:
            logged, body = moved, write(moved_ops)
        else:
            logged = f"({moved}) OR {changed} <> ''"
            update = (key_new, "u", "CONCAT('[', " + changed + ", ']')")
            body = (
                f"IF {moved} THEN\n    {write(moved_ops)}\n  ELSE\n    "
                f"{write([update])}\n  END IF;"
            )
    return f"""capture: BEGIN
  DECLARE n INT DEFAULT 0;
  IF NOT ({logged}) THEN LEAVE capture; END IF;
  IF {_OFF} IS NOT NULL THEN
    SELECT count(*) INTO n FROM {versions}
     WHERE id = {_OFF} AND number IS NULL;
    IF n > 0 THEN LEAVE capture; END IF;  -- a push logs itself
    SET {_OFF} = NULL;
  END IF;
  {body}
END"""


def _mysql_json_function() -> str:
    # Python's json.dumps (ensure_ascii): \" \\ \b \t \n \f \r, other
    # characters outside ' '..'~' as \uXXXX (UTF-16 pairs beyond the BMP).
    return rf"""CREATE OR REPLACE FUNCTION {JSON_FUNCTION}(t LONGTEXT CHARSET utf8mb4)
RETURNS LONGTEXT CHARSET utf8mb4 DETERMINISTIC NO SQL
BEGIN
  DECLARE result LONGTEXT CHARSET utf8mb4 DEFAULT '';
  DECLARE i INT DEFAULT 1;
  DECLARE code INT;
  IF t IS NULL THEN RETURN NULL; END IF;
  IF CAST(t AS BINARY) NOT REGEXP '[^ -~]' THEN
    RETURN CONCAT('"', REPLACE(REPLACE(t, '\\', '\\\\'), '"', '\\"'), '"');
  END IF;
  WHILE i <= CHAR_LENGTH(t) DO
    SET code = ORD(CONVERT(SUBSTRING(t, i, 1) USING utf32));
    SET result = CONCAT(result, CASE
      WHEN code = 34 THEN '\\"'
      WHEN code = 92 THEN '\\\\'
      WHEN code BETWEEN 32 AND 126 THEN SUBSTRING(t, i, 1)
      WHEN code = 8 THEN '\\b'
      WHEN code = 9 THEN '\\t'
      WHEN code = 10 THEN '\\n'
      WHEN code = 12 THEN '\\f'
      WHEN code = 13 THEN '\\r'
      WHEN code < 65536 THEN CONCAT('\\u', LPAD(LOWER(HEX(code)), 4, '0'))
      ELSE CONCAT('\\u', LOWER(HEX(55296 + ((code - 65536) >> 10))),
                  '\\u', LOWER(HEX(56320 + ((code - 65536) & 1023))))
    END);
    SET i = i + 1;
  END WHILE;
  RETURN CONCAT('"', result, '"');
END"""


# -- SQLite ----------------------------------------------------------------------


def _sqlite_statement(
    connection: sa.Connection, info: TrackedTable, tables: LogTables, letter: str
) -> str:
    preparer = connection.dialect.identifier_preparer
    ops = preparer.format_table(tables.operations)
    versions = preparer.format_table(tables.versions)
    table = preparer.format_table(info.table)
    name = _literal(connection, info.name)
    newest = f"(SELECT max(id) FROM {versions})"
    pushing = (
        f"EXISTS (SELECT 1 FROM {versions} WHERE id = {newest} "
        "AND number IS NULL AND node_id IS NOT NULL)"
    )
    version = (
        # left un-numbered: numbered at the next commit's or pull's
        # numbering (never here)
        f"INSERT INTO {versions} (created_at) SELECT "
        "strftime('%Y-%m-%d %H:%M:%f000', 'now') WHERE NOT EXISTS "
        f"(SELECT 1 FROM {versions} WHERE id = {newest} AND number IS NULL);"
    )
    columns = "(version_id, table_name, row_key, command, changed_columns)"

    def op(key: str, command: str, changed: str = "NULL", when: str = "") -> str:
        return (
            f"INSERT INTO {ops} {columns} SELECT {newest}, {name}, {key}, "
            f"'{command}', {changed}{f' WHERE {when}' if when else ''};"
        )

    key_new = _key_sql(connection, info, "NEW")
    key_old = _key_sql(connection, info, "OLD")
    event = dict(_EVENTS)[letter]
    if letter == "i":
        when, writes = "", [op(key_new, "i")]
    elif letter == "d":
        when, writes = "", [op(key_old, "d")]
    else:
        changed = _changed_sql(connection, info)
        moved = _key_changed(connection, info)
        writes = [op(key_old, "d", when=moved), op(key_new, "i", when=moved)]
        if changed is None:
            when = f"({moved})"
        else:
            when = f"(({moved}) OR {changed} <> '')"
            writes.append(
                op(key_new, "u", f"'[' || {changed} || ']'", when=f"NOT ({moved})")
            )
        when = f" AND {when}"
    body = "\n  ".join([version, *writes])
    return (
        f"CREATE TRIGGER {trigger_name(info, letter)} AFTER {event} ON {table} "
        f"FOR EACH ROW WHEN NOT {pushing}{when}\nBEGIN\n  {body}\nEND"
    )


# -- install, remove, status ------------------------------------------------------


def wanted(
    connection: sa.Connection, info: TrackedTable, tables: LogTables
) -> dict[str, str]:
    """The triggers ``info`` should have, by name: their body (MariaDB, as
    ``information_schema.TRIGGERS`` shows it) or statement (SQLite, as
    ``sqlite_master`` does)."""
    make = _mysql_body if _mysql(connection) else _sqlite_statement
    return {
        trigger_name(info, letter): make(connection, info, tables, letter)
        for letter, _ in _EVENTS
    }


def installed(connection: sa.Connection) -> dict[str, tuple[str, str]]:
    """The capture triggers in the database: name -> (table, definition)."""
    if _mysql(connection):
        rows = connection.exec_driver_sql(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT "
            "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
            "AND TRIGGER_NAME LIKE %(p)s",
            {"p": PREFIX + r"\_%"},
        ).all()
    else:
        rows = connection.exec_driver_sql(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
            "AND name LIKE ? ESCAPE '\\'",
            (PREFIX.replace("_", r"\_") + r"\_%",),
        ).all()
    return {str(n): (str(t), str(s)) for n, t, s in rows}


def install(
    connection: sa.Connection, tables: LogTables, tracked: Iterable[TrackedTable]
) -> list[str]:
    """Create (or replace) the triggers of every tracked table; idempotent.
    On MariaDB each ``CREATE`` commits (DDL does)."""
    names = []
    if _mysql(connection):
        # The triggers keep the sql_mode they were created under: with
        # backslash escapes, as their literals are written.
        mode = connection.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
        connection.exec_driver_sql(
            "SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, "
            "'NO_BACKSLASH_ESCAPES', '')"
        )
        try:
            connection.exec_driver_sql(_mysql_json_function())
            for info in tracked:
                table = connection.dialect.identifier_preparer.format_table(info.table)
                for (_, event), (name, body) in zip(
                    _EVENTS, wanted(connection, info, tables).items(), strict=True
                ):
                    connection.exec_driver_sql(
                        f"CREATE OR REPLACE TRIGGER {name} AFTER {event} ON "
                        f"{table} FOR EACH ROW {body}"
                    )
                names.append(info.name)
        finally:
            connection.exec_driver_sql(
                "SET SESSION sql_mode = %(mode)s", {"mode": mode}
            )
        return names
    for info in tracked:
        for name, statement in wanted(connection, info, tables).items():
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            connection.exec_driver_sql(statement)
        names.append(info.name)
    return names


def remove(connection: sa.Connection, tracked: Iterable[TrackedTable]) -> list[str]:
    """Drop every capture trigger (of the tracked tables and any other
    table that still has them) and the helper function; idempotent."""
    found = installed(connection)
    names = [info.name for info in tracked]
    for name, (table, _) in sorted(found.items()):
        connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        if table not in names:
            names.append(table)
    if _mysql(connection):
        connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {JSON_FUNCTION}")
    return names


def state_of(
    connection: sa.Connection,
    tables: LogTables,
    info: TrackedTable,
    found: dict[str, tuple[str, str]],
) -> str:
    """``installed``, ``missing`` or ``outdated`` (see :class:`.TableStatus`)."""
    want = wanted(connection, info, tables)
    if not all(name in found for name in want):
        return "missing"
    same = all(found[name][1].strip() == text.strip() for name, text in want.items())
    return "installed" if same else "outdated"


def installed_on(connection: sa.Connection) -> dict[str, int]:
    """How many capture triggers each table has."""
    counts: dict[str, int] = {}
    for table, _ in installed(connection).values():
        counts[table] = counts.get(table, 0) + 1
    return counts


def stand_down(connection: sa.Connection, version_id: int) -> None:
    """Make the triggers log nothing while the push whose version row is
    ``version_id`` is open (MariaDB; SQLite's triggers see the push's
    version row themselves)."""
    if _mysql(connection):
        connection.exec_driver_sql(f"SET {_OFF} = %(v)s", {"v": version_id})


def event_count() -> int:
    """Triggers per tracked table."""
    return len(_EVENTS)
