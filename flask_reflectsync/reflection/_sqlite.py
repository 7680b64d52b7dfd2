"""SQLite: identities are names; each attached database is a schema.

``main`` and every ``ATTACH``-ed database are schemas (``temp`` is not). A
table's identity is its name, a column's identity its name. The fingerprint
of a schema's tables is SQLite's own ``schema_version`` cookie, which SQLite
bumps on every change to the schema.

``ALTER TABLE ... RENAME TO`` keeps the table's b-tree (its root page), so a
table that disappeared and one that appeared with the same root page and the
same columns (some possibly renamed) are reported as a rename, and a column
that went and one that came at the same place with the same type as a
column renamed (see :mod:`.diff`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .objects import ObjectSnapshot
from .snapshot import (
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

_OBJECTS = (
    "FROM {schema}.sqlite_schema m WHERE m.type IN ('table', 'view')"
    " AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)
_ONE = " AND m.name = :table"


@dataclass(frozen=True)
class _Token:
    """A word, a quoted name or literal, or a punctuation mark of SQL text,
    with where it is and how many parentheses enclose it."""

    text: str
    start: int
    end: int
    depth: int

    @property
    def word(self) -> str:
        """The token upper-cased, for keywords."""
        return self.text.upper()


def _tokens(sql: str) -> list[_Token]:
    """SQLite's own ``CREATE`` statement split into tokens, comments left
    out; enough to find keywords and balanced parentheses in it."""
    found: list[_Token] = []
    depth, i, n = 0, 0, len(sql)
    closing = {"'": "'", '"': '"', "`": "`", "[": "]"}
    while i < n:
        char = sql[i]
        if char.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif char in closing:
            end = i + 1
            while end < n:
                if sql[end] == closing[char]:
                    if char != "[" and sql.startswith(closing[char] * 2, end):
                        end += 2  # a doubled quote stands for itself
                        continue
                    break
                end += 1
            found.append(_Token(sql[i:end + 1], i, end + 1, depth))
            i = end + 1
        elif char == "(":
            found.append(_Token(char, i, i + 1, depth))
            depth += 1
            i += 1
        elif char == ")":
            depth -= 1
            found.append(_Token(char, i, i + 1, depth))
            i += 1
        elif char.isalnum() or char == "_":
            end = i
            while end < n and (sql[end].isalnum() or sql[end] in "_$"):
                end += 1
            found.append(_Token(sql[i:end], i, end, depth))
            i = end
        else:
            found.append(_Token(char, i, i + 1, depth))
            i += 1
    return found


def _unquote(name: str) -> str:
    if name[:1] in "\"`[" and len(name) > 1:
        inner = name[1:-1]
        return inner if name[0] == "[" else inner.replace(name[0] * 2, name[0])
    return name


def _checks(sql: str | None) -> tuple[CheckConstraint, ...]:
    """The CHECK constraints of a ``CREATE TABLE`` statement: each
    ``CHECK (...)`` among the column definitions and table constraints,
    named by a ``CONSTRAINT name`` just before it."""
    if not sql:
        return ()
    tokens = _tokens(sql)
    found = []
    for at, token in enumerate(tokens):
        if token.word != "CHECK" or token.depth != 1 or at + 1 >= len(tokens):
            continue
        opening = tokens[at + 1]
        if opening.text != "(":
            continue
        close = next(
            (t for t in tokens[at + 2:] if t.text == ")" and t.depth == opening.depth),
            None,
        )
        if close is None:
            continue
        name = None
        if at >= 2 and tokens[at - 2].word == "CONSTRAINT":
            name = _unquote(tokens[at - 1].text)
        found.append(CheckConstraint(name=name,
                                     expression=sql[opening.end:close.start].strip()))
    return tuple(found)


def _after_keyword(sql: str | None, keyword: str) -> str | None:
    """The text after the first ``keyword`` outside parentheses (the
    ``WHERE`` of a partial index, the ``AS`` of a view)."""
    if not sql:
        return None
    for token in _tokens(sql):
        if token.depth == 0 and token.word == keyword:
            return sql[token.end:].strip().rstrip(";").strip() or None
    return None


_EVENT_ORDER = ("INSERT", "UPDATE", "DELETE")


def _trigger(name: str, sql: str) -> Trigger:
    """A trigger from its ``CREATE TRIGGER`` statement: its timing (SQLite's
    default is ``BEFORE``) and its one event."""
    words = [token.word for token in _tokens(sql) if token.depth == 0]
    head = words[: words.index("ON")] if "ON" in words else words
    timing = "BEFORE"
    if "INSTEAD" in head:
        timing = "INSTEAD OF"
    elif "AFTER" in head:
        timing = "AFTER"
    events = tuple(event for event in _EVENT_ORDER if event in head)
    return Trigger(name=name, timing=timing, events=events, definition=sql)


class SQLiteReader(UnversionedReader):
    """:class:`~.snapshot.CatalogReader` for SQLite."""

    dialect = "sqlite"

    #: Identities are names: columns are paired as renamed by their shape.
    identity_by_name = True
    #: The root page is handed to the next table created after a drop.
    rename_hints_are_ids = False

    def schemas_fingerprint(self, connection: sa.Connection) -> str:
        return ",".join(schema.name for schema in self.read_schemas(connection))

    def read_schemas(self, connection: sa.Connection) -> list[SchemaSnapshot]:
        rows = connection.exec_driver_sql("PRAGMA database_list").all()
        names = sorted(row[1] for row in rows if row[1] != "temp")
        return [SchemaSnapshot(oid=name, name=name) for name in names]

    def tables_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        if not self._present(connection, schema):
            return None
        quoted = _quote(connection, schema.name)
        version = connection.exec_driver_sql(f"PRAGMA {quoted}.schema_version")
        return str(version.scalar_one())

    def lock(self, connection: sa.Connection) -> None:
        # End whatever implicit transaction reads opened, then take SQLite's
        # write lock with a statement that writes nothing: from here until the
        # commit no other connection can change the catalog, and our reads
        # start after the previous holder's commit.
        connection.commit()
        connection.exec_driver_sql(
            "UPDATE reflectsync_catalog_probes SET scope = scope WHERE 0"
        )

    def unlock(self, connection: sa.Connection) -> None:
        """Nothing to do: the write lock ended with the commit."""

    def read_objects(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> list[ObjectSnapshot] | None:
        """SQLite has no enum or domain types and no sequences."""
        return [] if self._present(connection, schema) else None

    def objects_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        return "" if self._present(connection, schema) else None

    def _present(self, connection: sa.Connection, schema: SchemaSnapshot) -> bool:
        return any(found.name == schema.name for found in self.read_schemas(connection))

    def _read(
        self, connection: sa.Connection, schema: SchemaSnapshot, name: str | None
    ) -> list[TableSnapshot]:
        objects = _OBJECTS.format(schema=_quote(connection, schema.name))
        where = objects + (_ONE if name is not None else "")
        params: dict[str, Any] = {"schema": schema.name, "table": name}

        tables = connection.execute(
            sa.text(
                f"SELECT m.name, m.type, m.rootpage, m.sql {where} ORDER BY m.name"
            ),
            params,
        ).all()
        schema_table = f"{_quote(connection, schema.name)}.sqlite_schema"
        one = " AND tbl_name = :table" if name is not None else ""
        others = rows_by_table(
            connection,
            f"SELECT tbl_name AS tbl, type, name, sql FROM {schema_table}"
            f" WHERE type IN ('index', 'trigger') AND sql IS NOT NULL{one}"
            # the sync log's capture triggers (flask_reflectsync.tracking
            # .row_triggers) are the extension's own: not an alteration
            r" AND name NOT LIKE 'reflectsync\_capture\_%' ESCAPE '\'"
            " ORDER BY tbl_name, name",
            params,
        )
        indexed = rows_by_table(
            connection,
            "SELECT m.name AS tbl, il.name AS idx, il.\"unique\" AS uniq,"
            " ii.seqno, ii.name AS col"
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_index_list(m.name, :schema) il"
            " JOIN pragma_index_info(il.name, :schema) ii"
            " WHERE il.origin = 'c'"
            " ORDER BY m.name, il.name, ii.seqno",
            params,
        )
        columns = rows_by_table(
            connection,
            'SELECT m.name AS tbl, p.cid, p.name, p.type, p."notnull",'
            " p.dflt_value, p.pk, p.hidden"
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_table_xinfo(m.name, :schema) p"
            " ORDER BY m.name, p.cid",
            params,
        )
        foreign = rows_by_table(
            connection,
            'SELECT m.name AS tbl, f.id, f.seq, f."table" AS referred,'
            ' f."from" AS source, f."to" AS target, f.on_update, f.on_delete'
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_foreign_key_list(m.name, :schema) f"
            " ORDER BY m.name, f.id, f.seq",
            params,
        )
        unique = rows_by_table(
            connection,
            "SELECT m.name AS tbl, il.name AS idx, ii.seqno, ii.name AS col"
            f" FROM (SELECT m.name {where}) m"
            " JOIN pragma_index_list(m.name, :schema) il"
            " JOIN pragma_index_info(il.name, :schema) ii"
            " WHERE il.\"unique\" = 1 AND il.origin = 'u'"
            " ORDER BY m.name, il.name, ii.seqno",
            params,
        )

        primary_keys = {
            tbl: tuple(r.name for r in sorted(rows, key=lambda r: r.pk) if r.pk)
            for tbl, rows in columns.items()
        }
        return [
            TableSnapshot(
                oid=table.name,
                name=table.name,
                kind=VIEW if table.type == "view" else TABLE,
                comment=None,
                columns=tuple(
                    ColumnSnapshot(
                        oid=row.name,
                        name=row.name,
                        position=position,
                        type=row.type,
                        nullable=not row.notnull,
                        default=row.dflt_value,
                    )
                    for position, row in enumerate(
                        (r for r in columns[table.name] if r.hidden != 1), start=1
                    )
                ),
                primary_key=primary_keys.get(table.name, ()),
                foreign_keys=_foreign_keys(foreign[table.name], primary_keys),
                unique_constraints=_uniques(unique[table.name]),
                rename_hint=str(table.rootpage) if table.rootpage else None,
                check_constraints=_checks(table.sql) if table.type == "table" else (),
                indexes=_indexes(indexed[table.name], others[table.name]),
                definition=(
                    _after_keyword(table.sql, "AS") if table.type == "view" else None
                ),
                triggers=tuple(
                    _trigger(row.name, row.sql)
                    for row in others[table.name] if row.type == "trigger"
                ),
            )
            for table in tables
        ]


def _quote(connection: sa.Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote_identifier(name)


def _action(value: str | None) -> str | None:
    return None if value in (None, "", "NO ACTION") else value


def _foreign_keys(
    rows: list[Any], primary_keys: dict[str, tuple[str, ...]]
) -> tuple[ForeignKey, ...]:
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.id].append(row)
    keys = []
    for parts in grouped.values():
        first = parts[0]
        referred = tuple(part.target for part in parts)
        if any(column is None for column in referred):
            # "REFERENCES parent" without columns means the parent's key.
            referred = primary_keys.get(first.referred, ())
        keys.append(
            ForeignKey(
                name=None,
                columns=tuple(part.source for part in parts),
                referred_schema=None,
                referred_table=first.referred,
                referred_columns=referred,
                on_update=_action(first.on_update),
                on_delete=_action(first.on_delete),
            )
        )
    return tuple(sorted(keys, key=lambda key: (key.columns, key.referred_table)))


def _indexes(columns: list[Any], objects: list[Any]) -> tuple[Index, ...]:
    """The ``CREATE INDEX`` indexes of a table: columns from
    ``pragma_index_info`` (an expression, which it leaves unnamed, is taken
    from the statement), the predicate from the statement's ``WHERE``."""
    statements = {row.name: row.sql for row in objects if row.type == "index"}
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in columns:
        grouped[row.idx].append(row)
    found = []
    for index, parts in grouped.items():
        sql = statements.get(index)
        names = [part.col for part in parts]
        if any(name is None for name in names) and sql:
            names = _index_terms(sql) or names
        found.append(Index(
            name=index,
            columns=tuple(str(name) for name in names),
            unique=bool(parts[0].uniq),
            predicate=_after_keyword(sql, "WHERE"),
        ))
    return tuple(sorted(found, key=lambda i: i.name or ""))


def _index_terms(sql: str) -> list[str]:
    """The indexed terms of a ``CREATE INDEX`` statement as written."""
    tokens = _tokens(sql)
    opening = next((t for t in tokens if t.text == "(" and t.depth == 0), None)
    if opening is None:
        return []
    terms, start = [], opening.end
    for token in tokens:
        if token.start <= opening.start or token.depth != 1:
            if token.text == ")" and token.depth == 0 and token.start > opening.start:
                terms.append(sql[start:token.start].strip())
                break
            continue
        if token.text == ",":
            terms.append(sql[start:token.start].strip())
            start = token.end
    return terms


def _uniques(rows: list[Any]) -> tuple[UniqueConstraint, ...]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        grouped[row.idx].append(row.col)
    constraints = [
        UniqueConstraint(
            # SQLite names the index behind an inline UNIQUE itself; that name
            # is not the constraint's and changes when the table is rebuilt.
            name=None if index.startswith("sqlite_autoindex_") else index,
            columns=tuple(names),
        )
        for index, names in grouped.items()
    ]
    return tuple(sorted(constraints, key=lambda u: (u.columns, u.name or "")))
