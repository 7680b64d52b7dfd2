"""What the database says right now: plain, immutable snapshots of schemas,
tables and columns, and the per-backend readers that take them.

A reader answers four questions on a :class:`~sqlalchemy.engine.Connection`:
which schemas exist, a cheap *fingerprint* of one schema's tables (equal
fingerprints mean nothing changed), the full snapshot of one schema's tables,
and the snapshot of one table. Readers know nothing of the catalog tables or
of Flask.

Identities (``oid``) are strings on every backend:

- PostgreSQL: the ``pg_namespace`` / ``pg_class`` oid; a column's identity is
  its ``attnum``.
- SQLite and MariaDB/MySQL: the name. See :mod:`.diff` for how renames are
  recognised there (SQLite: the root page; MariaDB/MySQL: the InnoDB table
  id; columns by position and type).

The module stays above the layout's ~500 lines on purpose: the snapshot
records and their digest are one definition of what "the same table"
means; every field added to the catalog is added here once, in its record
and in its digest, side by side.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from .models import fields_dict

#: The ``kind`` of a table-like object.
TABLE = "table"
VIEW = "view"
MATERIALIZED_VIEW = "materialized_view"
PARTITIONED_TABLE = "partitioned_table"
FOREIGN_TABLE = "foreign_table"
KINDS = (TABLE, VIEW, MATERIALIZED_VIEW, PARTITIONED_TABLE, FOREIGN_TABLE)


@dataclass(frozen=True)
class SchemaSnapshot:
    """A schema as the database reports it.

    :param oid: the backend's identity of the schema.
    :param name: its name.
    :param comment: its comment, if the backend has them.
    """

    oid: str
    name: str
    comment: str | None = None


@dataclass(frozen=True)
class ColumnSnapshot:
    """A column as the database reports it.

    :param oid: identity within its table (``attnum`` on PostgreSQL, the name
        elsewhere).
    :param name: column name.
    :param position: 1-based position among the table's live columns.
    :param type: the type as the database spells it (``character varying(100)``).
    :param nullable: whether NULL is allowed.
    :param default: the default expression as SQL text, or ``None``.
    :param comment: the column comment, or ``None``.
    """

    oid: str
    name: str
    position: int
    type: str
    nullable: bool
    default: str | None = None
    comment: str | None = None

    #: Attributes compared to decide that a column was altered (``position``
    #: is not: dropping an earlier column moves it without altering it).
    COMPARED = ("type", "nullable", "default", "comment")

    def to_dict(self) -> dict[str, Any]:
        """The column as JSON-ready data."""
        return fields_dict(self)


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key constraint.

    :param name: constraint name (``None`` where the backend has none).
    :param columns: the constrained columns, in order.
    :param referred_schema: schema of the referred table (``None``: the same).
    :param referred_table: name of the referred table.
    :param referred_columns: the referred columns, in order.
    :param on_update: referential action, upper case (``CASCADE``), or ``None``
        for the default (``NO ACTION``).
    :param on_delete: as ``on_update``.
    """

    name: str | None
    columns: tuple[str, ...]
    referred_schema: str | None
    referred_table: str
    referred_columns: tuple[str, ...]
    on_update: str | None = None
    on_delete: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The constraint as JSON-ready data."""
        return fields_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForeignKey:
        """The inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            columns=tuple(data["columns"]),
            referred_schema=data["referred_schema"],
            referred_table=data["referred_table"],
            referred_columns=tuple(data["referred_columns"]),
            on_update=data["on_update"],
            on_delete=data["on_delete"],
        )


@dataclass(frozen=True)
class UniqueConstraint:
    """A unique constraint (not a bare unique index).

    :param name: constraint name, ``None`` where the backend makes one up.
    :param columns: the constrained columns, in order.
    """

    name: str | None
    columns: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The constraint as JSON-ready data."""
        return fields_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UniqueConstraint:
        """The inverse of :meth:`to_dict`."""
        return cls(name=data["name"], columns=tuple(data["columns"]))


@dataclass(frozen=True)
class CheckConstraint:
    """A CHECK constraint of a table (column-level ones included).

    :param name: constraint name, ``None`` where the backend has none.
    :param expression: the condition as the backend spells it
        (``price > 0``).
    """

    name: str | None
    expression: str

    def to_dict(self) -> dict[str, Any]:
        """The constraint as JSON-ready data."""
        return fields_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckConstraint:
        """The inverse of :meth:`to_dict`."""
        return cls(name=data["name"], expression=data["expression"])


@dataclass(frozen=True)
class Index:
    """An index of a table, other than those behind its primary key and its
    unique constraints (which show as those; on MariaDB/MySQL every unique
    index is a unique constraint) and, on MariaDB/MySQL, the one InnoDB made
    for a foreign key (named as the key, on its columns).

    :param name: index name, ``None`` where the backend makes one up
        (SQLite's automatic indexes behind inline ``UNIQUE``).
    :param columns: the indexed column names, or expressions as the backend
        spells them (``lower(code)``), in key order.
    :param unique: whether it is a unique index (those behind unique
        constraints included).
    :param predicate: a partial index's ``WHERE`` condition, else ``None``.
    """

    name: str | None
    columns: tuple[str, ...]
    unique: bool
    predicate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The index as JSON-ready data."""
        return fields_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Index:
        """The inverse of :meth:`to_dict`."""
        return cls(name=data["name"], columns=tuple(data["columns"]),
                   unique=bool(data["unique"]), predicate=data["predicate"])


@dataclass(frozen=True)
class Trigger:
    """A trigger on a table or view.

    :param name: trigger name.
    :param timing: ``BEFORE``, ``AFTER`` or ``INSTEAD OF``.
    :param events: ``INSERT``, ``UPDATE``, ``DELETE``, ``TRUNCATE``, in that
        order.
    :param definition: as the backend spells it: the ``CREATE TRIGGER``
        statement on PostgreSQL and SQLite, the trigger body on
        MariaDB/MySQL.
    """

    name: str
    timing: str
    events: tuple[str, ...]
    definition: str

    def to_dict(self) -> dict[str, Any]:
        """The trigger as JSON-ready data."""
        return fields_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trigger:
        """The inverse of :meth:`to_dict`."""
        return cls(name=data["name"], timing=data["timing"],
                   events=tuple(data["events"]), definition=data["definition"])


#: The privileges a table's ``privileges`` lists, in this order, where the
#: backend has them (TRUNCATE is PostgreSQL's).
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES",
              "TRIGGER")


@dataclass(frozen=True)
class TableSnapshot:
    """A table, view or materialized view as the database reports it.

    :param oid: the backend's identity of the table.
    :param name: its name.
    :param kind: one of :data:`KINDS`.
    :param comment: the table comment, or ``None``.
    :param columns: live columns in position order.
    :param primary_key: primary key column names in key order (empty: none).
    :param foreign_keys: foreign keys, sorted.
    :param unique_constraints: unique constraints, sorted.
    :param rename_hint: on backends whose identity is the name, something a
        rename keeps and a new table almost never shares (SQLite: the root
        page, ``"<page>"``; MariaDB/MySQL: the InnoDB table id,
        ``"innodb:<id>"``); ``None`` where there is nothing of the sort.
    :param check_constraints: CHECK constraints, sorted.
    :param indexes: indexes (see :class:`Index` for those left out), sorted.
    :param definition: a view's or materialized view's query as the backend
        spells it; ``None`` for tables.
    :param triggers: triggers, sorted by name.
    :param privileges: what the connected role may do with it, from
        :data:`PRIVILEGES`; ``None`` where the backend has no privileges
        (SQLite).
    """

    oid: str
    name: str
    kind: str
    comment: str | None
    columns: tuple[ColumnSnapshot, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    unique_constraints: tuple[UniqueConstraint, ...] = ()
    rename_hint: str | None = field(default=None, compare=False)
    check_constraints: tuple[CheckConstraint, ...] = ()
    indexes: tuple[Index, ...] = ()
    definition: str | None = None
    triggers: tuple[Trigger, ...] = ()
    privileges: tuple[str, ...] | None = None


_encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


@dataclass(frozen=True)
class LiveTable:
    """A table as the database reports it, its columns and constraints still
    encoded as JSON text.

    This is what a refresh handles for every table: enough to list the table
    and to hash it, with nothing decoded. Only a table that is new to an
    existing catalog entry or changed is turned into a :class:`TableSnapshot`
    (:meth:`snapshot`) and compared. On PostgreSQL the texts are built by the
    catalog query itself.

    :param oid: the backend's identity of the table.
    :param name: its name.
    :param kind: one of :data:`KINDS`.
    :param comment: the table comment, or ``None``.
    :param columns: the live columns in position order, a JSON array of
        ``[oid, name, type, nullable, default, comment]`` arrays.
    :param primary_key: a JSON array of the primary key column names.
    :param foreign_keys: a JSON array of :meth:`ForeignKey.to_dict` objects,
        sorted.
    :param unique_constraints: a JSON array of
        :meth:`UniqueConstraint.to_dict` objects, sorted.
    :param rename_hint: as :attr:`TableSnapshot.rename_hint`.
    :param version: where the reader has them, a cheap token that changes
        whenever the catalog rows behind the table change (see
        :meth:`CatalogReader.read_versions`); not part of the digest.
    :param check_constraints: a JSON array of :meth:`CheckConstraint.to_dict`
        objects, sorted.
    :param indexes: a JSON array of :meth:`Index.to_dict` objects, sorted.
    :param definition: as :attr:`TableSnapshot.definition` (plain text).
    :param triggers: a JSON array of :meth:`Trigger.to_dict` objects, sorted.
    :param privileges: a JSON array of privilege names, or ``null``.
    """

    oid: str
    name: str
    kind: str
    comment: str | None
    columns: str
    primary_key: str = "[]"
    foreign_keys: str = "[]"
    unique_constraints: str = "[]"
    rename_hint: str | None = None
    version: str | None = None
    check_constraints: str = "[]"
    indexes: str = "[]"
    definition: str | None = None
    triggers: str = "[]"
    privileges: str = "null"

    def digest(self) -> str:
        """A short hash of everything a user sees of the table.

        Equal digests mean equal tables (the rename hint aside); the texts
        are hashed as the backend spelled them, so a digest is only compared
        with digests from the same reader.
        """
        described = "\x1f".join(
            (
                self.oid,
                self.name,
                self.kind,
                self.comment or "\x00",
                self.columns,
                self.primary_key,
                self.foreign_keys,
                self.unique_constraints,
                self.check_constraints,
                self.indexes,
                "\x00" if self.definition is None else self.definition,
                self.triggers,
                self.privileges,
            )
        )
        return hashlib.sha1(described.encode("utf-8")).hexdigest()

    def snapshot(self) -> TableSnapshot:
        """The table decoded."""
        return table_snapshot(
            oid=self.oid,
            name=self.name,
            kind=self.kind,
            comment=self.comment,
            columns=decode_columns(self.columns),
            primary_key=json.loads(self.primary_key),
            foreign_keys=json.loads(self.foreign_keys),
            unique_constraints=json.loads(self.unique_constraints),
            rename_hint=self.rename_hint,
            check_constraints=json.loads(self.check_constraints),
            indexes=json.loads(self.indexes),
            definition=self.definition,
            triggers=json.loads(self.triggers),
            privileges=json.loads(self.privileges),
        )

    @classmethod
    def of(cls, table: TableSnapshot) -> LiveTable:
        """``table`` encoded (readers that build snapshots use this).

        :param table: a decoded table.
        """
        return cls(
            oid=table.oid,
            name=table.name,
            kind=table.kind,
            comment=table.comment,
            columns=encode_columns(table.columns),
            primary_key=_encode(list(table.primary_key)),
            foreign_keys=_encode([key.to_dict() for key in table.foreign_keys]),
            unique_constraints=_encode([u.to_dict() for u in table.unique_constraints]),
            rename_hint=table.rename_hint,
            check_constraints=_encode([c.to_dict() for c in table.check_constraints]),
            indexes=_encode([i.to_dict() for i in table.indexes]),
            definition=table.definition,
            triggers=_encode([t.to_dict() for t in table.triggers]),
            privileges=_encode(
                None if table.privileges is None else list(table.privileges)
            ),
        )


def table_snapshot(
    *,
    oid: str,
    name: str,
    kind: str,
    comment: str | None,
    columns: tuple[ColumnSnapshot, ...],
    primary_key: Sequence[str],
    foreign_keys: Sequence[dict[str, Any]],
    unique_constraints: Sequence[dict[str, Any]],
    rename_hint: str | None,
    check_constraints: Sequence[dict[str, Any]] | None = (),
    indexes: Sequence[dict[str, Any]] | None = (),
    definition: str | None = None,
    triggers: Sequence[dict[str, Any]] | None = (),
    privileges: Sequence[str] | None = None,
) -> TableSnapshot:
    """A :class:`TableSnapshot` from its constraints as decoded JSON (as a
    :class:`LiveTable` and a catalog row hold them).

    :param primary_key: the key's column names.
    :param foreign_keys: :meth:`ForeignKey.to_dict` objects.
    :param unique_constraints: :meth:`UniqueConstraint.to_dict` objects.
    :param check_constraints: :meth:`CheckConstraint.to_dict` objects
        (``None``: none, as a catalog row from before they were reflected).
    :param indexes: :meth:`Index.to_dict` objects (likewise).
    :param triggers: :meth:`Trigger.to_dict` objects (likewise).
    :param privileges: privilege names, or ``None``.
    """
    return TableSnapshot(
        oid=oid,
        name=name,
        kind=kind,
        comment=comment,
        columns=columns,
        primary_key=tuple(primary_key),
        foreign_keys=tuple(ForeignKey.from_dict(key) for key in foreign_keys),
        unique_constraints=tuple(
            UniqueConstraint.from_dict(u) for u in unique_constraints
        ),
        rename_hint=rename_hint,
        check_constraints=tuple(
            CheckConstraint.from_dict(c) for c in check_constraints or ()
        ),
        indexes=tuple(Index.from_dict(i) for i in indexes or ()),
        definition=definition,
        triggers=tuple(Trigger.from_dict(t) for t in triggers or ()),
        privileges=None if privileges is None else tuple(privileges),
    )


def encode_columns(columns: Sequence[ColumnSnapshot]) -> str:
    """Columns as the JSON text :class:`LiveTable` holds.

    :param columns: in position order.
    """
    return _encode(
        [[c.oid, c.name, c.type, c.nullable, c.default, c.comment] for c in columns]
    )


def decode_columns(text: str | None) -> tuple[ColumnSnapshot, ...]:
    """The inverse of :func:`encode_columns`.

    :param text: JSON text (``None`` is no columns).
    """
    return tuple(
        ColumnSnapshot(
            oid=str(oid),
            name=name,
            position=position,
            type=type_,
            nullable=bool(nullable),
            default=default,
            comment=comment,
        )
        for position, (oid, name, type_, nullable, default, comment) in enumerate(
            json.loads(text or "[]"), start=1
        )
    )


class CatalogReader(Protocol):
    """Reads one backend's system catalog. Every method is one short
    conversation with the database; none of them writes.

    Two optional class attributes (read with ``getattr``, ``False`` when
    missing) tell the diff how far identities go: ``identity_by_name``
    (tables and columns are known by name, so a dropped and an added column
    may be paired as a rename by their shape) and ``rename_hints_are_ids``
    (a shared :attr:`TableSnapshot.rename_hint` alone proves one table
    renamed; see :mod:`.diff`).
    """

    #: The SQLAlchemy dialect name this reader serves.
    dialect: str

    def schemas_fingerprint(self, connection: sa.Connection) -> str:
        """Changes whenever a schema is created, renamed or dropped."""

    def read_schemas(self, connection: sa.Connection) -> list[SchemaSnapshot]:
        """Every user schema, sorted by name."""

    def tables_fingerprint(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> str | None:
        """Changes whenever a table of ``schema`` is created, renamed, altered
        or dropped; ``None`` if the schema itself is gone."""

    #: Whether :meth:`read_versions` is worth calling: true where versions
    #: are much cheaper than descriptions (PostgreSQL).
    versioned: bool

    def read_versions(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> dict[str, tuple[str, str]] | None:
        """``{oid: (name, version)}`` of every table of ``schema``, where the
        version is the one :meth:`read_tables` reports; ``None`` if the
        schema is gone. An equal version means an unchanged description,
        except for what the table shows of *other* objects (the names a
        foreign key refers to), which the caller checks itself."""

    def read_dependents(
        self, connection: sa.Connection, schema: SchemaSnapshot, oids: Sequence[str]
    ) -> set[str]:
        """The tables of ``schema`` whose description shows something of the
        tables ``oids`` (a foreign key to them) or of another schema; only
        for a versioned reader."""

    def read_tables(
        self,
        connection: sa.Connection,
        schema: SchemaSnapshot,
        oids: Sequence[str] | None = None,
    ) -> list[LiveTable] | None:
        """Every table, view and materialized view of ``schema`` (or those
        whose identity is in ``oids``), sorted by name; ``None`` if the
        schema itself is gone."""

    def read_table(
        self, connection: sa.Connection, schema: SchemaSnapshot, oid: str
    ) -> LiveTable | None:
        """The table of ``schema`` whose identity is ``oid``, or ``None``."""

    def lock(self, connection: sa.Connection) -> None:
        """Serialise catalog refreshes across processes until
        :meth:`unlock`; afterwards reads see everything committed before."""

    def unlock(self, connection: sa.Connection) -> None:
        """Release what :meth:`lock` took (after the commit)."""


class UnversionedReader:
    """The part of :class:`CatalogReader` shared by readers without table
    versions (SQLite, MySQL), which describe a schema in a handful of
    queries: a subclass provides ``_present`` and ``_read``."""

    #: No versions: the fingerprint is already one cheap query, and the
    #: description of a schema is read in a handful of queries.
    versioned = False

    def _present(self, connection: sa.Connection, schema: SchemaSnapshot) -> bool:
        """Whether ``schema`` still exists."""
        raise NotImplementedError

    def _read(
        self, connection: sa.Connection, schema: SchemaSnapshot, oid: str | None
    ) -> list[TableSnapshot]:
        """The tables of ``schema`` (only the one whose identity is ``oid``,
        if given), sorted by name."""
        raise NotImplementedError

    def read_versions(
        self, connection: sa.Connection, schema: SchemaSnapshot
    ) -> dict[str, tuple[str, str]] | None:
        raise NotImplementedError("no table versions on this backend")

    def read_dependents(
        self, connection: sa.Connection, schema: SchemaSnapshot, oids: Sequence[str]
    ) -> set[str]:
        raise NotImplementedError("no table versions on this backend")

    def read_tables(
        self,
        connection: sa.Connection,
        schema: SchemaSnapshot,
        oids: Sequence[str] | None = None,
    ) -> list[LiveTable] | None:
        if not self._present(connection, schema):
            return None
        wanted = None if oids is None else set(oids)
        return [
            LiveTable.of(table)
            for table in self._read(connection, schema, None)
            if wanted is None or table.oid in wanted
        ]

    def read_table(
        self, connection: sa.Connection, schema: SchemaSnapshot, oid: str
    ) -> LiveTable | None:
        if not self._present(connection, schema):
            return None
        found = self._read(connection, schema, oid)
        return LiveTable.of(found[0]) if found else None


def reader_for(dialect: str) -> CatalogReader:
    """The catalog reader of a SQLAlchemy dialect.

    :param dialect: ``engine.dialect.name``.
    :raises flask_reflectsync.errors.ConfigurationError: for other backends.
    """
    from ..errors import ConfigurationError

    if dialect == "postgresql":
        from ._postgresql import PostgresReader

        return PostgresReader()
    if dialect == "sqlite":
        from ._sqlite import SQLiteReader

        return SQLiteReader()
    if dialect in ("mysql", "mariadb"):
        from ._mysql import MySQLReader

        return MySQLReader()
    raise ConfigurationError(
        f"Reflection supports PostgreSQL, SQLite and MariaDB/MySQL, not {dialect!r}."
    )


def rows_by_table(
    connection: sa.Connection, statement: str, params: dict[str, Any]
) -> dict[str, list[Any]]:
    """The rows of a catalog query, grouped by their ``tbl`` column (each
    group in the query's order; a table with none gets an empty list).

    :param statement: SQL text selecting a ``tbl`` column.
    :param params: its bound parameters.
    """
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in connection.execute(sa.text(statement), params):
        grouped[row.tbl].append(row)
    return grouped


def column_names(
    columns: Sequence[ColumnSnapshot], oids: Sequence[Any]
) -> tuple[str, ...]:
    """Names of the columns whose identities are ``oids``, in that order.

    :param columns: a table's columns.
    :param oids: column identities (compared as strings).
    """
    by_oid = {column.oid: column.name for column in columns}
    return tuple(by_oid[str(oid)] for oid in oids if str(oid) in by_oid)
