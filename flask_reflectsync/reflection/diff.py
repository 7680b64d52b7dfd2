"""Turn what the catalog remembers and what the database says into changes.

Objects are matched by identity (``oid``): a matched object whose name
differs was renamed; one only in the catalog was dropped; one only in the
database was created.

On backends whose identity is the name (SQLite, MariaDB/MySQL) every rename
would look like a drop and a create, so a dropped and a created table are
paired as one table renamed when they share a non-empty ``rename_hint``:

- an *identity* hint (MariaDB/MySQL: the InnoDB table id, which no other
  table ever gets) pairs them by itself;
- a *reusable* hint (SQLite's root page, which ``ALTER TABLE ... RENAME``
  keeps but which SQLite hands to the next table created after a drop)
  pairs them only when they are the only candidates on both sides, have the
  same kind, and the same columns: as many, of the same types in the same
  order, and at least one of them keeping its name (the others may have
  been renamed, see below).

Columns are matched the same way within a table: by ``attnum`` on
PostgreSQL, so a renamed column is a rename; by name elsewhere. There a
dropped and an added column are paired as one column renamed when the shape
says so (:func:`pair_columns`): between the same two columns that kept
their names (or the table's start or end) exactly one column went and
exactly one came, and both have the same type.
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
                    "unique_constraints", "check_constraints", "indexes",
                    "definition", "triggers", "privileges")


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
    old: Mapping[int, TableSnapshot],
    new: Sequence[TableSnapshot],
    *,
    by_name: bool = False,
    hints_are_ids: bool = False,
) -> list[Difference[TableSnapshot]]:
    """Differences between remembered and live tables of one schema.

    Tables known to be unchanged may be left out of both sides.

    :param old: catalog tables by catalog id.
    :param new: the tables the database reports.
    :param by_name: whether identities are names (SQLite, MariaDB/MySQL): a
        dropped and an added column may then be paired as a rename.
    :param hints_are_ids: whether a shared rename hint alone proves one table
        (see the module docstring).
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
    for catalog_id, table in _pair_renames(unmatched, created, hints_are_ids):
        matched[catalog_id] = table
        created.remove(table)
        del unmatched[catalog_id]

    found: list[Difference[TableSnapshot]] = [Created(table) for table in created]
    for catalog_id, table in matched.items():
        change = _compare_tables(catalog_id, old[catalog_id], table, by_name)
        if change is not None:
            found.append(change)
    found.extend(Dropped(cid, table) for cid, table in unmatched.items())
    return found


def _same_columns(old: TableSnapshot, new: TableSnapshot) -> bool:
    """Whether ``new`` can be ``old`` renamed, judged by its columns alone:
    as many, of the same types in the same order, each keeping its name or
    paired as renamed, and at least one keeping its name."""
    if len(old.columns) != len(new.columns):
        return False
    if any(a.type != b.type for a, b in zip(old.columns, new.columns, strict=True)):
        return False
    names = {column.name for column in old.columns}
    kept = [column for column in new.columns if column.name in names]
    if not kept:
        return False
    renamed = pair_columns(old.columns, new.columns)
    return len(kept) + len(renamed) == len(new.columns)


def _pair_renames(
    dropped: Mapping[int, TableSnapshot],
    created: Sequence[TableSnapshot],
    hints_are_ids: bool,
) -> list[tuple[int, TableSnapshot]]:
    """Dropped/created pairs that are one table renamed: the same rename
    hint and, unless the hint is an identity, the same kind and columns
    (:func:`_same_columns`) and no other candidate on either side."""
    candidates: dict[str, list[int]] = {}
    for catalog_id, table in dropped.items():
        if table.rename_hint:
            candidates.setdefault(table.rename_hint, []).append(catalog_id)
    arrivals: dict[str, list[TableSnapshot]] = {}
    for table in created:
        if table.rename_hint:
            arrivals.setdefault(table.rename_hint, []).append(table)
    pairs = []
    for hint, ids in candidates.items():
        found = arrivals.get(hint, [])
        if len(ids) != 1 or len(found) != 1:
            continue
        before, after = dropped[ids[0]], found[0]
        if hints_are_ids or (
            before.kind == after.kind and _same_columns(before, after)
        ):
            pairs.append((ids[0], after))
    return pairs


def _compare_tables(
    catalog_id: int, old: TableSnapshot, new: TableSnapshot, by_name: bool = False
) -> Changed[TableSnapshot] | None:
    columns = diff_columns(old.columns, new.columns, by_name=by_name)
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


def pair_columns(
    old: Sequence[ColumnSnapshot], new: Sequence[ColumnSnapshot]
) -> dict[str, str]:
    """On backends whose column identity is the name: which dropped columns
    of ``old`` were renamed to which added columns of ``new``.

    The columns whose names are on both sides are anchors; between two
    anchors that follow each other on both sides (or before the first, or
    after the last), exactly one column that went and exactly one that came,
    of the same type, are one column renamed. Anything else (two columns
    gone between the same anchors, a different type, anchors that changed
    order) stays a drop and an add.

    :returns: ``{new oid: old oid}`` of the renamed columns.
    """
    new_names = {column.name for column in new}
    old_names = {column.name for column in old}

    def gaps(columns: Sequence[ColumnSnapshot], others: set[str]) -> dict[
        tuple[str | None, str | None], list[ColumnSnapshot]
    ]:
        found: dict[tuple[str | None, str | None], list[ColumnSnapshot]] = {}
        anchor: str | None = None
        pending: list[ColumnSnapshot] = []
        for column in columns:
            if column.name in others:
                found[(anchor, column.name)] = pending
                anchor, pending = column.name, []
            else:
                pending.append(column)
        found[(anchor, None)] = pending
        return found

    went = gaps(old, new_names)
    came = gaps(new, old_names)
    renamed: dict[str, str] = {}
    for between, gone in went.items():
        arrived = came.get(between, [])
        if len(gone) == 1 and len(arrived) == 1 and gone[0].type == arrived[0].type:
            renamed[arrived[0].oid] = gone[0].oid
    return renamed


def diff_columns(
    old: Sequence[ColumnSnapshot],
    new: Sequence[ColumnSnapshot],
    *,
    by_name: bool = False,
) -> tuple[ColumnChange, ...]:
    """Column changes from ``old`` to ``new``, matched by column identity.

    :param old: the remembered columns.
    :param new: the live columns.
    :param by_name: whether column identities are names: a dropped and an
        added column that :func:`pair_columns` pairs are then one column
        renamed.
    """
    renames = pair_columns(old, new) if by_name else {}
    before = {column.oid: column for column in old}
    changes: list[ColumnChange] = []
    for column in new:
        previous = before.pop(renames.get(column.oid, column.oid), None)
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
