"""Turn what the catalog remembers and what the database says into changes.

Objects are matched by identity (``oid``): a matched object whose name
differs was renamed; one only in the catalog was dropped; one only in the
database was created. On backends whose identity is the name (SQLite,
MariaDB/MySQL) every rename would look like a drop and a create, so a dropped
and a created table are paired as a rename when they share a non-empty
``rename_hint`` (SQLite's root page, which ``ALTER TABLE ... RENAME`` keeps),
the same kind and the same columns.

Columns are matched the same way within a table: by ``attnum`` on
PostgreSQL, so a renamed column is a rename; by name elsewhere, so a renamed
column is a dropped and an added column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .models import fields_dict
from .snapshot import ColumnSnapshot, SchemaSnapshot, TableSnapshot

S = TypeVar("S", SchemaSnapshot, TableSnapshot)

ColumnChangeKind = Literal["added", "dropped", "renamed", "altered"]

#: Table attributes other than columns whose change makes a table "altered".
TABLE_ATTRIBUTES = ("kind", "comment", "primary_key", "foreign_keys",
                    "unique_constraints")


@dataclass(frozen=True)
class ColumnChange:
    """One change to one column, part of the ``table_altered`` payload.

    :param kind: ``added``, ``dropped``, ``renamed`` (possibly altered too:
        see ``fields``) or ``altered``.
    :param name: the column's name now (for ``dropped``: its last name).
    :param old_name: the previous name, for ``renamed``; otherwise ``None``.
    :param fields: the attributes that changed (``type``, ``nullable``,
        ``default``, ``comment``); empty for ``added`` and ``dropped``.
    :param before: the column before the change (``None`` for ``added``).
    :param after: the column after the change (``None`` for ``dropped``).
    """

    kind: ColumnChangeKind
    name: str
    old_name: str | None
    fields: tuple[str, ...]
    before: ColumnSnapshot | None
    after: ColumnSnapshot | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return fields_dict(self)


@dataclass(frozen=True)
class Created(Generic[S]):
    """An object only the database has.

    :param new: the object as the database reports it.
    """

    new: S


@dataclass(frozen=True)
class Dropped(Generic[S]):
    """An object only the catalog has.

    :param catalog_id: its catalog id.
    :param old: the object as the catalog remembers it.
    """

    catalog_id: int
    old: S


@dataclass(frozen=True)
class Changed(Generic[S]):
    """An object both have, with differences.

    :param catalog_id: its catalog id.
    :param old: as the catalog remembers it.
    :param new: as the database reports it.
    :param renamed: whether the name changed.
    :param columns: column changes (tables only).
    :param attributes: other table attributes that changed, from
        :data:`TABLE_ATTRIBUTES`.
    """

    catalog_id: int
    old: S
    new: S
    renamed: bool
    columns: tuple[ColumnChange, ...] = ()
    attributes: tuple[str, ...] = ()

    @property
    def altered(self) -> bool:
        """Whether anything besides the name changed."""
        return bool(self.columns or self.attributes)


Difference = Created[S] | Dropped[S] | Changed[S]


def diff_schemas(
    old: Mapping[int, SchemaSnapshot], new: Sequence[SchemaSnapshot]
) -> list[Difference[SchemaSnapshot]]:
    """Differences between remembered and live schemas.

    :param old: live catalog schemas by catalog id.
    :param new: the schemas the database reports.
    """
    found: list[Difference[SchemaSnapshot]] = []
    by_oid = {schema.oid: catalog_id for catalog_id, schema in old.items()}
    seen: set[int] = set()
    for schema in new:
        catalog_id = by_oid.get(schema.oid)
        if catalog_id is None:
            found.append(Created(schema))
            continue
        seen.add(catalog_id)
        before = old[catalog_id]
        if before != schema:
            found.append(Changed(catalog_id, before, schema,
                                 renamed=before.name != schema.name))
    found.extend(
        Dropped(catalog_id, schema)
        for catalog_id, schema in old.items()
        if catalog_id not in seen
    )
    return found


def diff_tables(
    old: Mapping[int, TableSnapshot], new: Sequence[TableSnapshot]
) -> list[Difference[TableSnapshot]]:
    """Differences between remembered and live tables of one schema.

    Tables known to be unchanged may be left out of both sides.

    :param old: catalog tables by catalog id.
    :param new: the tables the database reports.
    """
    by_oid = {table.oid: catalog_id for catalog_id, table in old.items()}
    matched: dict[int, TableSnapshot] = {}
    created: list[TableSnapshot] = []
    for table in new:
        catalog_id = by_oid.get(table.oid)
        if catalog_id is None:
            created.append(table)
        else:
            matched[catalog_id] = table
    unmatched = {cid: table for cid, table in old.items() if cid not in matched}
    for catalog_id, table in _pair_renames(unmatched, created):
        matched[catalog_id] = table
        created.remove(table)
        del unmatched[catalog_id]

    found: list[Difference[TableSnapshot]] = [Created(table) for table in created]
    for catalog_id, table in matched.items():
        change = _compare_tables(catalog_id, old[catalog_id], table)
        if change is not None:
            found.append(change)
    found.extend(Dropped(cid, table) for cid, table in unmatched.items())
    return found


def _shape(table: TableSnapshot) -> tuple[Any, ...]:
    return (table.kind, tuple((c.name, c.type) for c in table.columns))


def _pair_renames(
    dropped: Mapping[int, TableSnapshot], created: Sequence[TableSnapshot]
) -> list[tuple[int, TableSnapshot]]:
    """Dropped/created pairs that are one table renamed: same rename hint,
    same shape, and no other candidate on either side."""
    candidates: dict[tuple[Any, ...], list[int]] = {}
    for catalog_id, table in dropped.items():
        if table.rename_hint:
            key = (table.rename_hint, _shape(table))
            candidates.setdefault(key, []).append(catalog_id)
    arrivals: dict[tuple[Any, ...], list[TableSnapshot]] = {}
    for table in created:
        if table.rename_hint:
            key = (table.rename_hint, _shape(table))
            arrivals.setdefault(key, []).append(table)
    return [
        (ids[0], arrivals[key][0])
        for key, ids in candidates.items()
        if len(ids) == 1 and len(arrivals.get(key, [])) == 1
    ]


def _compare_tables(
    catalog_id: int, old: TableSnapshot, new: TableSnapshot
) -> Changed[TableSnapshot] | None:
    columns = diff_columns(old.columns, new.columns)
    attributes = tuple(
        name for name in TABLE_ATTRIBUTES if getattr(old, name) != getattr(new, name)
    )
    renamed = old.name != new.name
    # Positions shift when an earlier column goes; that alone is no change a
    # user sees, but the catalog must still store the new positions.
    if not (renamed or columns or attributes) and old == new:
        return None
    return Changed(catalog_id, old, new, renamed=renamed, columns=columns,
                   attributes=attributes)


def diff_columns(
    old: Sequence[ColumnSnapshot], new: Sequence[ColumnSnapshot]
) -> tuple[ColumnChange, ...]:
    """Column changes from ``old`` to ``new``, matched by column identity.

    :param old: the remembered columns.
    :param new: the live columns.
    """
    before = {column.oid: column for column in old}
    changes: list[ColumnChange] = []
    for column in new:
        previous = before.pop(column.oid, None)
        if previous is None:
            changes.append(ColumnChange("added", column.name, None, (), None, column))
            continue
        fields = tuple(
            name
            for name in ColumnSnapshot.COMPARED
            if getattr(previous, name) != getattr(column, name)
        )
        if previous.name != column.name:
            changes.append(
                ColumnChange("renamed", column.name, previous.name, fields,
                             previous, column)
            )
        elif fields:
            changes.append(
                ColumnChange("altered", column.name, None, fields, previous, column)
            )
    changes.extend(
        ColumnChange("dropped", column.name, None, (), column, None)
        for column in before.values()
    )
    return tuple(changes)
