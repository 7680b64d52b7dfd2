"""Merging pulled server changes into a node's database (framework-free).

A node keeps its unpushed changes as a queue: the operations of its
unnumbered ``reflectsync_versions`` rows, compressed to one command per row.
A pulled page brings the server's changes, one per row, with the rows'
current values. :func:`merge_page` applies the page to the node's tables in
the caller's transaction and rewrites the queue so that the next push makes
the server agree with the node:

* a row only the server changed is written (or deleted) locally;
* a row both sides changed is a *conflict*, decided per model by a
  :data:`Strategy` (see :class:`Resolutions`); the decision either keeps the
  server's version (the local change leaves the queue), keeps the node's
  (it stays queued, as an insert when the server no longer has the row), or
  writes values chosen by a callable (queued);
* foreign keys are followed both ways: a parent the server deleted while
  local rows still point at it, and a parent the node deleted while server
  rows point at it, are *dependency* conflicts;
* two inserts of the same integer key on two offline nodes are a
  *primary-key* collision: the local row is re-keyed, with every foreign key
  pointing at it, so both rows survive; so is a local insert of a key the
  server had and deleted since the node's last pull (pulls send such rows
  as deletes), because nodes that knew the old row may still update it;
* a server row whose unique values a queued local row already holds is a
  *unique* conflict; unless a callable supplies new values (or the model is
  ``server-wins``), it raises
  :class:`~flask_reflectsync.errors.UniqueConstraintError` and the caller
  rolls the whole page back.

A node never hands out an integer key at or below the highest key it has
seen for the table (its *high water*, see
:class:`~flask_reflectsync.node.keys.HighWater`): a key the
server once had, given to a new row, would reach other nodes as an update
of the old row.

Nothing here writes through a tracked session: the caller passes a plain
connection, so applying server changes logs no local operations. The queue
is rewritten explicitly through :class:`~flask_reflectsync.node.queue.LocalQueue`.

Conflicts and strategies live in :mod:`flask_reflectsync.node.conflicts`,
the high water in :mod:`flask_reflectsync.node.keys`, row access in
:mod:`flask_reflectsync.rows`. This module stays above the layout's ~500
lines on purpose: ``_Merge`` is one algorithm (a plan of writes and
deletes, every kind of conflict deciding on it, then applying it), and its
steps share that plan; split across modules they would only pass it around.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import UniqueConstraintError
from ..rows import (
    UPSERT_DIALECTS,
    batches,
    key_filter,
    key_reference,
    read_rows,
    row_key,
    select_rows,
    unique_column_sets,
    upsert_columns,
    write_rows,
)
from ..tracking import DELETE, INSERT, UPDATE, LogTables, TrackedTable, decode_key
from ..tracking.columns import ColumnSet, overlap
from .bases import read_base
from .conflicts import (
    DELETE_DELETE,
    DELETE_UPDATE,
    DEPENDENCY,
    NODE,
    PRIMARY_KEY,
    REVERSED_DEPENDENCY,
    SERVER,
    UNIQUE,
    UPDATE_DELETE,
    UPDATE_UPDATE,
    Conflict,
    Decision,
    Resolutions,
)
from .keys import HighWater, KeyReserve
from .patches import complete_patches
from .queue import LocalQueue

# -- the incoming page -----------------------------------------------------------------


@dataclass
class ServerChange:
    """One row the server changed: ``row`` is ``None`` for a delete;
    ``columns`` names the columns an update changed (``None``: the whole
    row, as for inserts)."""

    table: str
    key: tuple[Any, ...]
    command: str
    row: dict[str, Any] | None
    columns: ColumnSet = None


@dataclass
class PulledTable:
    """One table's part of a pulled page, decoded, column-wise.

    :param table: the table name.
    :param columns: the names of the columns sent (that the node has).
    :param values: per column, the typed values of the rows the server
        inserted or updated (their current state), in row order.
    :param commands: one letter per row, ``"i"`` or ``"u"``.
    :param deleted: the keys of the rows the server deleted.
    :param changed: per row, the columns an update changed since the
        node's version (``None``: the whole row); ``None`` when every row
        is whole.
    """

    table: str
    columns: list[str]
    values: Sequence[Sequence[Any]]
    commands: str
    deleted: list[tuple[Any, ...]]
    changed: list[ColumnSet] | None = None

    def __len__(self) -> int:
        return len(self.commands) + len(self.deleted)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The written rows by column name."""
        rows = zip(*self.values, strict=True)
        return [dict(zip(self.columns, row, strict=True)) for row in rows]

    def written_keys(self, info: TrackedTable) -> set[tuple[Any, ...]]:
        """The keys of the written rows."""
        names = [c.name for c in info.pk_columns]
        if not self.commands or any(n not in self.columns for n in names):
            return set()
        columns = [self.values[self.columns.index(n)] for n in names]
        return set(zip(*columns, strict=True))

    def changes(self, info: TrackedTable) -> list[ServerChange]:
        """The part as one :class:`ServerChange` per row: written rows, then
        deleted ones. A key both deleted and written is an old row's delete,
        then a new row's insert (see :ref:`reused-keys`): it comes first."""
        marks = self.changed or [None] * len(self.commands)
        written = [
            ServerChange(self.table, row_key(info, row), command, row, columns)
            for row, command, columns in zip(
                self.rows, self.commands, marks, strict=True
            )
        ]
        replaced = self.written_keys(info) & set(self.deleted) if self.deleted else ()
        return [
            *(ServerChange(self.table, key, DELETE, None) for key in replaced),
            *written,
            *(
                ServerChange(self.table, key, DELETE, None)
                for key in self.deleted
                if key not in replaced
            ),
        ]


#: Reads rows from the server: ``fetch(table, keys)`` returns the server's
#: current rows among ``keys``, by key (missing keys: rows the server lacks).
Fetcher = Callable[
    [str, Sequence[tuple[Any, ...]]], dict[tuple[Any, ...], dict[str, Any]]
]


@dataclass
class _Reference:
    """A foreign key from ``child`` to ``parent``'s primary key."""

    child: TrackedTable
    child_columns: tuple[str, ...]
    parent_columns: tuple[str, ...]


@dataclass
class MergeSchema:
    """The node's tracked tables, parents first, and their foreign keys."""

    tables: dict[str, TrackedTable]
    referenced_by: dict[str, list[_Reference]] = field(default_factory=dict)
    references: dict[str, list[tuple[str, _Reference]]] = field(default_factory=dict)

    @classmethod
    def of(cls, infos: Iterable[TrackedTable]) -> MergeSchema:
        by_table = {info.table: info for info in infos}
        ordered = [by_table[t] for t in sa.schema.sort_tables(list(by_table))]
        schema = cls({info.name: info for info in ordered})
        for info in ordered:
            for constraint in info.table.foreign_key_constraints:
                parent = by_table.get(constraint.referred_table)
                if parent is None:
                    continue
                pointing = key_reference(constraint, parent)
                if pointing is None:
                    continue  # a foreign key to another unique key: not followed
                child_columns = tuple(c.name for c in pointing)
                pk_names = tuple(c.name for c in parent.pk_columns)
                ref = _Reference(info, child_columns, pk_names)
                schema.referenced_by.setdefault(parent.name, []).append(ref)
                schema.references.setdefault(info.name, []).append((parent.name, ref))
        return schema


@dataclass
class MergeResult:
    """What one merged page did."""

    conflicts: list[Conflict] = field(default_factory=list)
    written: int = 0
    deleted: int = 0


# -- merging ---------------------------------------------------------------------------


class _Merge:
    def __init__(
        self,
        connection: sa.Connection,
        schema: MergeSchema,
        queue: LocalQueue,
        resolutions: Resolutions,
        fetch: Fetcher,
        high_water: HighWater | None = None,
        reserve: KeyReserve | None = None,
    ) -> None:
        self.connection = connection
        self.schema = schema
        self.queue = queue
        self.resolutions = resolutions
        self.fetch = fetch
        self.high_water = high_water
        self.reserve = reserve
        self.result = MergeResult()
        # The plan: rows to write locally and rows to delete locally.
        self.writes: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
        self.deletes: set[tuple[str, tuple[Any, ...]]] = set()
        self.local: dict[tuple[str, tuple[Any, ...]], dict[str, Any] | None] = {}
        # Pulled tables written as they came, column-wise (see run_untouched).
        self.bulk: dict[str, PulledTable] = {}
        # Keys a page deletes and inserts again (see run).
        self.replaced: set[tuple[str, tuple[Any, ...]]] = set()

    # -- helpers ------------------------------------------------------------------

    def info(self, table: str) -> TrackedTable:
        return self.schema.tables[table]

    def text(self, table: str, key: tuple[Any, ...]) -> str:
        return self.info(table).encode_key(key)

    def queued(self, table: str, key: tuple[Any, ...]) -> str | None:
        if not self.queue.commands:  # a node with nothing queued: no lookup
            return None
        return self.queue.get(table, self.text(table, key))

    def load(self, table: str, keys: Iterable[tuple[Any, ...]]) -> None:
        info = self.info(table)
        wanted = [k for k in keys if (table, k) not in self.local]
        for k in wanted:
            self.local[(table, k)] = None
        for found in read_rows(self.connection, info, wanted):
            self.local[(table, row_key(info, found))] = found

    def local_row(self, table: str, key: tuple[Any, ...]) -> dict[str, Any] | None:
        if (table, key) not in self.local:
            self.load(table, [key])
        return self.local[(table, key)]

    def conflict(
        self,
        kind: str,
        table: str,
        key: tuple[Any, ...],
        server: dict[str, Any] | None,
        *,
        decide: bool = True,
        **extra: Any,
    ) -> tuple[Conflict, Decision]:
        """Record a conflict and ask the model's strategy (unless ``decide``
        is false: there is only one way to resolve it)."""
        conflict = Conflict(
            kind=kind,
            model=self.info(table).model,
            table=table,
            key=key,
            local=_copy(self.local_row(table, key)),
            server=server,
            **extra,
        )
        decision = self.resolutions.decide(conflict) if decide else None
        self.result.conflicts.append(conflict)
        return conflict, decision

    def write(self, table: str, key: tuple[Any, ...], row: Mapping[str, Any]) -> None:
        self.deletes.discard((table, key))
        self.writes[(table, key)] = dict(row)

    def delete(self, table: str, key: tuple[Any, ...]) -> None:
        self.writes.pop((table, key), None)
        self.deletes.add((table, key))

    def will_exist(self, table: str, key: tuple[Any, ...]) -> bool:
        if (table, key) in self.writes:
            return True
        if (table, key) in self.deletes:
            return False
        return self.local_row(table, key) is not None

    # -- the steps ------------------------------------------------------------------

    def run(self, changes: Sequence[ServerChange]) -> MergeResult:
        by_table: dict[str, list[ServerChange]] = {}
        for change in changes:
            by_table.setdefault(change.table, []).append(change)
        for table, items in by_table.items():
            self.load(table, [c.key for c in items])
        incoming = {(c.table, c.key) for c in changes}
        # Keys the page deletes and writes again: rows replaced under their
        # key (see pull compression); an insert alone may be the node's own
        # row with others' updates.
        self.replaced = {
            (c.table, c.key) for c in changes if c.row is None
        } & {(c.table, c.key) for c in changes if c.command == INSERT}
        self.separate_replaced(incoming)
        for table in self.schema.tables:
            for change in by_table.get(table, ()):
                self.direct(change, incoming)
        self.server_deleted_parents()
        self.node_deleted_parents()
        self.unique_conflicts()
        self.apply()
        return self.result

    def run_untouched(self, page: Sequence[PulledTable]) -> MergeResult:
        """Merge a page whose tables, and the tables related to them by
        foreign keys, have nothing queued (see :func:`untouched`): every row
        is the server's to write or delete, so no row-by-row decision is
        needed. Tables without unique constraints are written column-wise as
        they came. The others take the usual way: their unique values are
        checked (a local row the server changed later may hold them), and
        updates are written before inserts, so a value can move between
        rows."""
        upsert = self.connection.dialect.name in UPSERT_DIALECTS
        for part in page:
            info = self.info(part.table)
            if upsert and not unique_column_sets(info.table, primary_key=False):
                self.bulk[part.table] = part
            else:
                for row in part.rows:
                    self.writes[(part.table, row_key(info, row))] = row
            # A key both deleted and written (a row replaced under its key)
            # is overwritten in place, as the full merge does: deleting it
            # first would fire the node's ON DELETE actions on its children.
            written = part.written_keys(info) if part.deleted else set()
            for key in part.deleted:
                if key not in written:
                    self.deletes.add((part.table, key))
        self.unique_conflicts()
        self.apply()
        return self.result

    def direct(self, change: ServerChange, incoming: set[Any]) -> None:
        table, key, row = change.table, change.key, change.row
        queued = self.queued(table, key)
        if queued is None:
            if row is None:
                self.delete(table, key)
            else:
                if (table, key) in self.replaced:
                    self.replaced_parent(table, key, incoming)
                self.write(table, key, row)
            return
        text = self.text(table, key)
        if queued == UPDATE and change.command == INSERT:
            if self.info(table).single_integer_key:
                # The server inserted a new row under the key of the row the
                # node updated or restored: the old row was deleted there and
                # the key handed out again (the server app's max(id) + 1).
                # Two rows, as for two inserts of one key.
                queued = INSERT
        if queued == INSERT:
            info = self.info(table)
            if row is None:
                if info.single_integer_key:
                    self.reused_key(table, key, incoming)
                # A natural key: the node's row is pushed after the delete.
                return
            if info.single_integer_key:
                conflict, decision = self.conflict(PRIMARY_KEY, table, key, row)
                if decision == SERVER:
                    # The local row gives way; rows pointing at its key now
                    # point at the server's row.
                    self.queue.drop(table, text)
                    self.write(table, key, row)
                    conflict.resolution = SERVER
                    return
                new_key = self.rekey(table, key, incoming)
                conflict.resolution, conflict.new_key = "rekeyed", new_key
                self.write(table, key, row)
                return
            queued = UPDATE  # same natural key on both sides: one row
        if queued == UPDATE and row is not None:
            self.update_update(change, text)
        elif queued == UPDATE:
            conflict, decision = self.conflict(UPDATE_DELETE, table, key, None)
            if decision == SERVER:
                self.queue.drop(table, text)
                self.delete(table, key)
            else:
                if isinstance(decision, Mapping):
                    base = self.local_row(table, key) or {}
                    self.write(table, key, {**base, **decision})
                # A restore: pushed as an update of the old key, which the
                # server inserts again (the same row returns; see push).
                self.queue.set(table, text, UPDATE)
            conflict.resolution = _named(decision)
        elif row is not None:  # queued delete, server update
            conflict, decision = self.conflict(DELETE_UPDATE, table, key, row)
            if decision == NODE:
                self.queue.set(table, text, DELETE)
            elif isinstance(decision, Mapping):
                self.write(table, key, {**row, **decision})
                self.queue.set(table, text, UPDATE)
            else:
                self.queue.drop(table, text)
                self.write(table, key, row)
            conflict.resolution = _named(decision)
        else:  # both deleted
            conflict, _ = self.conflict(DELETE_DELETE, table, key, None)
            self.queue.drop(table, text)
            conflict.resolution = "deleted"

    def update_update(self, change: ServerChange, text: str) -> None:
        """Both sides updated the row: a conflict only in the columns both
        changed. The node's other columns survive on top of the server's row,
        and stay queued; the server's other columns are written. A queued
        update kept over the server's change takes the server's values as
        its base (see :mod:`.bases`)."""
        table, key, row = change.table, change.key, change.row
        assert row is not None
        mine = self.queue.columns_of(table, text)
        both = overlap(mine, change.columns)
        local = self.local_row(table, key) or {}
        kept = {c: local[c] for c in (mine or ()) if c in local}
        if both is not None and not both:
            # Different columns: both edits survive, nothing to decide.
            self.write(table, key, {**row, **kept})
            return
        info = self.info(table)
        base = read_base(self.connection, info, text)
        conflict, decision = self.conflict(
            UPDATE_UPDATE,
            table,
            key,
            row,
            columns=() if both is None else tuple(sorted(both)),
            local_columns=mine,
            server_columns=change.columns,
            base=dict(base) if base else None,
        )
        queued: ColumnSet
        if decision == SERVER:
            rest = None if both is None or mine is None else mine - both
            if rest:
                self.write(table, key, {**row, **{c: kept[c] for c in rest}})
                self.queue.set(table, text, UPDATE, rest)
                queued = rest
            else:
                self.queue.drop(table, text)
                self.write(table, key, row)
                queued = frozenset()
        elif isinstance(decision, Mapping):
            self.write(table, key, {**row, **kept, **decision})
            queued = None if mine is None else mine | frozenset(decision)
            self.queue.set(table, text, UPDATE, queued)
        else:
            if mine is not None:
                self.write(table, key, {**row, **kept})
            queued = mine
            self.queue.set(table, text, UPDATE, queued)
        self.queue.set_base(
            info, text, _moved_base(base, row, change.columns, queued, mine, local)
        )
        conflict.resolution = _named(decision)

    def replaced_parent(
        self, table: str, key: tuple[Any, ...], incoming: set[Any]
    ) -> None:
        """The server sends a new row under the integer key of a row the node
        holds (the page deletes the old one and inserts the new one: its key
        was given again). Local
        rows the node inserted pointing at the old row, or whose queued
        update set that reference, meant the old row, not the new one: a
        ``dependency`` conflict, as for a parent the server deleted. Decided
        for the node (the default), the old row is restored beside the new
        one, under a new key, and those rows follow it; for the server, they
        go (local inserts) or return to the server's copy."""
        info = self.info(table)
        if not info.single_integer_key or self.local_row(table, key) is None:
            return
        meant: list[tuple[TrackedTable, tuple[Any, ...]]] = []
        for child, child_key, ref in self.referencing(table, key):
            child_text = child.encode_key(child_key)
            command = self.queue.get(child.name, child_text)
            if command == INSERT:
                meant.append((child, child_key))
            elif command == UPDATE:
                mine = self.queue.columns_of(child.name, child_text)
                if mine is None or overlap(mine, frozenset(ref.child_columns)):
                    meant.append((child, child_key))
        if not meant:
            return
        conflict, decision = self.conflict(
            DEPENDENCY,
            table,
            key,
            None,
            other_key=[(c.name, k) for c, k in meant],
        )
        if decision == SERVER:
            self.cascade_local_delete(table, key)
            conflict.resolution = SERVER
            return
        # Only the rows that meant the old row follow it: the node's other
        # rows under the key pointed at it as the server's rows did, and the
        # server's page (or its silence) says where they point now.
        moving = {(child.name, child_key) for child, child_key in meant}
        conflict.new_key = self.rekey(table, key, incoming, children=moving)
        conflict.resolution = NODE

    def reused_key(
        self, table: str, key: tuple[Any, ...], incoming: set[Any]
    ) -> None:
        """The node inserted ``key`` while the server had a row under it that
        has gone since (added and removed by others between two pulls). Nodes
        that knew the old row may still change it offline: the local row
        moves to a new key so the two are never confused. Nothing is lost,
        so no strategy is asked; the conflict is reported as re-keyed."""
        conflict, _ = self.conflict(PRIMARY_KEY, table, key, None, decide=False)
        conflict.new_key = self.rekey(table, key, incoming)
        conflict.resolution = "rekeyed"

    def separate_replaced(self, incoming: set[Any]) -> None:
        """Give a new key to every local row inserted under the key of a row
        the node deleted (and the server still has, as far as the node
        knows): queued as the old row's delete and the new row's insert,
        they stay two rows everywhere, whoever synchronises first."""
        for table, text in sorted(self.queue.replaced):
            if self.queue.get(table, text) != UPDATE:
                continue  # deleted again (or already settled)
            info = self.info(table) if table in self.schema.tables else None
            if info is None or not info.single_integer_key:
                continue  # a natural key: the same row, replaced
            key = _int_key(text)
            if key is None:
                continue
            self.rekey(table, key, incoming, replaced=True)

    def rekey(
        self,
        table: str,
        key: tuple[Any, ...],
        incoming: set[Any],
        *,
        replaced: bool = False,
        children: set[tuple[str, tuple[Any, ...]]] | None = None,
    ) -> tuple[Any, ...]:
        """Move the local row ``key`` to a free key, with the references to it.

        :param replaced: the node deleted the row the server knows under
            ``key`` before inserting this one: queue that delete.
        :param children: the only referencing rows to move (by table and
            key); all of them by default.
        """
        info = self.info(table)
        column = info.pk_columns[0]
        highest = self.connection.execute(sa.select(sa.func.max(column))).scalar() or 0
        taken = [k[0] for t, k in incoming if t == table] + [
            k[0] for t, k in self.writes if t == table
        ]
        # Keys queued as deletes are no longer in the table, but the server
        # has them: never move a row onto one.
        queued = [
            found[0]
            for t, text in self.queue.commands
            if t == table and (found := _int_key(text)) is not None
        ]
        new_key = self.reserved_key(info, {*taken, *queued})
        if new_key is None:
            # Nor onto a key the node has ever seen: the server may have had it.
            seen = self.high_water.get(table) if self.high_water is not None else 0
            new_key = (max([highest, seen, *taken, *queued]) + 1,)
        if self.high_water is not None:
            self.high_water.raise_to({table: new_key[0]})
        old_text, new_text = self.text(table, key), self.text(table, new_key)
        self.connection.execute(
            sa.update(info.table)
            .where(column == key[0])
            .values({column.key: new_key[0]})
        )
        moved = self.local.pop((table, key), None)
        if moved is not None:
            moved[column.name] = new_key[0]
        self.local[(table, new_key)] = moved
        self.local[(table, key)] = None
        planned = self.writes.pop((table, key), None)
        if planned is not None:  # values decided for the local row go with it
            self.writes[(table, new_key)] = {**planned, column.name: new_key[0]}
        if replaced:
            self.queue.set(table, old_text, DELETE)
        else:
            self.queue.drop(table, old_text)
        self.queue.set(table, new_text, INSERT)
        for ref in self.schema.referenced_by.get(table, ()):
            child = ref.child
            child_column = child.table.c[ref.child_columns[0]]
            pointing = [
                row_key(child, found)
                for found in select_rows(self.connection, child, child_column == key[0])
            ]
            if children is not None:
                pointing = [k for k in pointing if (child.name, k) in children]
            if not pointing:
                continue
            moving = child_column == key[0]
            if children is not None:
                moving = sa.and_(moving, key_filter(child.pk_columns, pointing))
            self.connection.execute(
                sa.update(child.table)
                .where(moving)
                .values({child_column.key: new_key[0]})
            )
            for child_key in pointing:
                cached = self.local.get((child.name, child_key))
                if cached is not None:
                    cached[child_column.name] = new_key[0]
                self.queue.append(child.name, child.encode_key(child_key), UPDATE)
        return new_key

    def reserved_key(self, info: TrackedTable, avoid: set[Any]) -> tuple[int] | None:
        """The next key of the node's reserved block for ``info`` that is not
        in ``avoid``, taken; ``None`` without a block (or once it is used
        up). A key above the high water would be the next key of whichever
        node re-keys too: many nodes re-keying at once would meet again."""
        if self.reserve is None:
            return None
        while True:
            found = self.reserve(self.connection, info, 1)
            if not found:
                return None
            if found[0] not in avoid:
                return (found[0],)

    def referencing(
        self, table: str, key: tuple[Any, ...]
    ) -> list[tuple[TrackedTable, tuple[Any, ...], _Reference]]:
        """Local rows (after the plan) whose foreign keys point at ``key``."""
        found: list[tuple[TrackedTable, tuple[Any, ...], _Reference]] = []
        for ref in self.schema.referenced_by.get(table, ()):
            child = ref.child
            condition = sa.and_(
                *[
                    child.table.c[c] == v
                    for c, v in zip(ref.child_columns, key, strict=True)
                ]
            )
            for row in select_rows(self.connection, child, condition):
                child_key = row_key(child, row)
                self.local.setdefault((child.name, child_key), row)
                planned = self.writes.get((child.name, child_key))
                if (child.name, child_key) in self.deletes:
                    continue
                if planned is not None and not _points_at(planned, ref, key):
                    continue
                found.append((child, child_key, ref))
            for (name, child_key), planned in self.writes.items():
                if name == child.name and _points_at(planned, ref, key):
                    if (child, child_key, ref) not in found:
                        found.append((child, child_key, ref))
        return found

    def server_deleted_parents(self) -> None:
        # Children first, so a parent kept alive by a restored child is seen.
        for table in reversed(list(self.schema.tables)):
            doomed = [k for t, k in list(self.deletes) if t == table]
            for key in doomed:
                if self.queued(table, key) is not None:
                    continue  # decided as a direct conflict already
                local_children = [
                    (child, child_key)
                    for child, child_key, _ in self.referencing(table, key)
                    if self.queued(child.name, child_key) in (INSERT, UPDATE)
                ]
                if not local_children or self.local_row(table, key) is None:
                    continue
                conflict, decision = self.conflict(
                    DEPENDENCY,
                    table,
                    key,
                    None,
                    other_key=[(c.name, k) for c, k in local_children],
                )
                if decision == SERVER:
                    self.cascade_local_delete(table, key)
                    conflict.resolution = SERVER
                else:
                    self.deletes.discard((table, key))
                    self.queue.set(table, self.text(table, key), UPDATE)  # restore
                    conflict.resolution = NODE

    def node_deleted_parents(self) -> None:
        # Parents a queued local delete removed, that rows the page writes
        # need. Repeated until stable: a restored parent may need its own
        # parent, and a child deleted for the node may orphan grandchildren.
        decided: set[tuple[str, tuple[Any, ...]]] = set()
        changed = True
        while changed:
            changed = False
            for (table, key), row in list(self.writes.items()):
                if (table, key) not in self.writes:
                    continue
                for parent_name, ref in self.schema.references.get(table, ()):
                    parent_key = tuple(row.get(c) for c in ref.child_columns)
                    if None in parent_key or (parent_name, parent_key) in decided:
                        continue
                    if self.queued(parent_name, parent_key) != DELETE:
                        continue
                    if self.will_exist(parent_name, parent_key):
                        continue
                    decided.add((parent_name, parent_key))
                    changed = True
                    self.reversed_dependency(table, key, parent_name, parent_key)
                    break

    def reversed_dependency(
        self,
        table: str,
        key: tuple[Any, ...],
        parent_name: str,
        parent_key: tuple[Any, ...],
    ) -> None:
        children = [
            (t, k)
            for (t, k), r in self.writes.items()
            for name, ref in self.schema.references.get(t, ())
            if name == parent_name and _points_at(r, ref, parent_key)
        ]
        conflict, decision = self.conflict(
            REVERSED_DEPENDENCY,
            parent_name,
            parent_key,
            self.fetch(parent_name, [parent_key]).get(parent_key),
            other_key=children,
        )
        if decision == NODE or conflict.server is None:
            # The parent stays deleted, and so do the rows needing it.
            for child_table, child_key in children:
                self.delete(child_table, child_key)
                self.queue.set(child_table, self.text(child_table, child_key), DELETE)
            conflict.resolution = NODE
            return
        self.write(parent_name, parent_key, conflict.server)
        self.queue.drop(parent_name, self.text(parent_name, parent_key))
        conflict.resolution = SERVER

    def cascade_local_delete(self, table: str, key: tuple[Any, ...]) -> None:
        """Delete a local row the server does not keep, after settling the
        local rows referencing it: local inserts go with it, rows the server
        knows return to the server's copy (or go, if it has none)."""
        for child, child_key, ref in self.referencing(table, key):
            text = child.encode_key(child_key)
            queued = self.queue.get(child.name, text)
            self.queue.drop(child.name, text)
            fresh = (
                None
                if queued == INSERT
                else self.fetch(child.name, [child_key]).get(child_key)
            )
            if fresh is None or _points_at(fresh, ref, key):
                self.cascade_local_delete(child.name, child_key)
            else:
                self.write(child.name, child_key, fresh)
        self.delete(table, key)

    def unique_conflicts(self) -> None:
        unresolved: list[dict[str, Any]] = []
        for table in self.schema.tables:
            info = self.info(table)
            written = {k: r for (t, k), r in self.writes.items() if t == table}
            if not written:
                continue
            for columns in unique_column_sets(info.table, primary_key=False):
                wanted: dict[tuple[Any, ...], tuple[Any, ...]] = {}
                for key, row in written.items():
                    values = tuple(row.get(c) for c in columns)
                    if None not in values:
                        wanted[values] = key
                selected = [info.table.c[c] for c in columns]
                for batch in batches(list(wanted), 500):
                    if len(selected) == 1:
                        condition = selected[0].in_([v[0] for v in batch])
                    else:
                        condition = sa.tuple_(*selected).in_(list(batch))
                    for holder in select_rows(self.connection, info, condition):
                        values = tuple(holder[c] for c in columns)
                        found = wanted.get(values)
                        holder_key = row_key(info, holder)
                        if found is None or holder_key == found:
                            continue
                        if (table, holder_key) in self.deletes:
                            continue
                        planned = self.writes.get((table, holder_key))
                        if planned is not None and (
                            tuple(planned.get(c) for c in columns) != values
                        ):
                            continue  # the holder moves away in this page
                        self.local.setdefault((table, holder_key), holder)
                        entry = self.unique_conflict(
                            table, holder_key, found, columns, written[found]
                        )
                        if entry is not None:
                            unresolved.append(entry)
        if unresolved:
            first = unresolved[0]
            raise UniqueConstraintError(
                f"The local {first['model'].__name__} {list(first['key'])} holds "
                f"the values of ({', '.join(first['columns'])}) that the "
                f"server's row {list(first['existing_key'])} has; change the "
                "local row (or set a resolution for the model) and synchronize "
                "again. Nothing was merged.",
                unresolved,
            )

    def unique_conflict(
        self,
        table: str,
        holder_key: tuple[Any, ...],
        server_key: tuple[Any, ...],
        columns: tuple[str, ...],
        server_row: dict[str, Any],
    ) -> dict[str, Any] | None:
        info = self.info(table)
        text = self.text(table, holder_key)
        queued = self.queued(table, holder_key)
        if queued is None:
            # Not a local change: the server changed that row too, later.
            fresh = self.fetch(table, [holder_key]).get(holder_key)
            if fresh is None:
                self.delete(table, holder_key)
            else:
                self.write(table, holder_key, fresh)
            return None
        conflict, decision = self.conflict(
            UNIQUE, table, holder_key, server_row, columns=columns, other_key=server_key
        )
        if decision == SERVER:
            if queued == INSERT:
                self.queue.drop(table, text)
                self.cascade_local_delete(table, holder_key)
            else:
                fresh = self.fetch(table, [holder_key]).get(holder_key)
                self.queue.drop(table, text)
                if fresh is None:
                    self.cascade_local_delete(table, holder_key)
                else:
                    self.write(table, holder_key, fresh)
            conflict.resolution = SERVER
            return None
        if isinstance(decision, Mapping):
            base = self.local_row(table, holder_key) or {}
            self.write(table, holder_key, {**base, **decision})
            self.queue.append(table, text, UPDATE if queued != INSERT else INSERT)
            conflict.resolution = "values"
            return None
        self.result.conflicts.remove(conflict)
        # Nothing is merged: name the local row by the key it still has, not
        # the one a re-keying earlier in this merge planned for it.
        before = next(
            (
                c.key
                for c in self.result.conflicts
                if c.table == table and c.new_key == holder_key
            ),
            holder_key,
        )
        return {
            "model": info.model,
            "table": table,
            "key": before,
            "columns": list(columns),
            "existing_key": server_key,
        }

    # -- writing the plan --------------------------------------------------------------

    def apply(self) -> None:
        names = list(self.schema.tables)
        for table in reversed(names):
            keys = [k for t, k in self.deletes if t == table]
            if keys:
                info = self.info(table)
                for batch in batches(keys, 500):
                    self.connection.execute(
                        sa.delete(info.table).where(key_filter(info.pk_columns, batch))
                    )
                self.result.deleted += len(keys)
        for table in names:
            part = self.bulk.get(table)
            if part is not None and part.commands:
                info = self.info(table)
                upsert_columns(self.connection, info, part.columns, part.values)
                self.result.written += len(part.commands)
            rows = {k: r for (t, k), r in self.writes.items() if t == table}
            if not rows:
                continue
            info = self.info(table)
            # Whether each row exists locally is known for the keys loaded at
            # the start (the plan keeps that cache true); ask for the others.
            unknown = [k for k in rows if (table, k) not in self.local]
            existing = {
                row_key(info, found)
                for found in read_rows(self.connection, info, unknown)
            }
            existing |= {k for k in rows if self.local.get((table, k)) is not None}
            updates = [r for k, r in rows.items() if k in existing]
            inserts = [r for k, r in rows.items() if k not in existing]
            write_rows(self.connection, info, inserts, updates)
            self.result.written += len(rows)


def merge_page(
    connection: sa.Connection,
    schema: MergeSchema,
    tables: LogTables,
    page: Sequence[PulledTable],
    resolutions: Resolutions,
    fetch: Fetcher,
    high_water: sa.Table | None = None,
    reserve: KeyReserve | None = None,
) -> MergeResult:
    """Merge one pulled page into the node's database, in ``connection``'s
    transaction.

    When nothing is queued on the page's tables or the tables related to
    them by foreign keys (see :func:`untouched`), no conflict can arise and
    the page is written table by table: an upsert executemany for the rows
    and batched deletes by key. Otherwise every row goes through the full
    merge.

    :param connection: a connection of the node's engine, inside a
        transaction the caller commits (or rolls back on error).
    :param schema: the node's tracked tables.
    :param tables: the node's log tables (the queue).
    :param page: the server's changes, by table, one per row.
    :param resolutions: the strategy per model.
    :param fetch: reads rows from the server when a conflict needs the
        server's copy of a row the page does not carry.
    :param high_water: the node's high-water table: raised to every integer
        key of the page, and no row is re-keyed at or below it (but onto a
        key of the node's own block, from ``reserve``).
    :param reserve: takes keys from the node's reserved key blocks, for
        re-keyed rows (see :data:`KeyReserve`).
    :return: what was written and every conflict with its resolution.
    :raises UniqueConstraintError: for unique conflicts no strategy resolves.
    """
    queue = LocalQueue(connection, tables)
    queue.forget_cancelled()
    water = HighWater(connection, high_water) if high_water is not None else None
    merge = _Merge(connection, schema, queue, resolutions, fetch, water, reserve)
    page = complete_patches(connection, schema, queue, page, fetch)
    page = [part for part in page if part.table in schema.tables and len(part)]
    if untouched(schema, queue, [part.table for part in page]):
        result = merge.run_untouched(page)
    else:
        result = merge.run(
            [c for part in page for c in part.changes(schema.tables[part.table])]
        )
    if water is not None:
        # Every key the server served is one it had: never hand it out again.
        water.raise_to(_highest_keys(schema, page))
    return result


def untouched(schema: MergeSchema, queue: LocalQueue, names: Iterable[str]) -> bool:
    """Whether the queue holds nothing on the tables ``names``, nor on the
    tables whose foreign keys point at them or that theirs point at: then
    merging a page of those tables finds no conflict of any kind but unique
    values (direct, dependency, reversed-dependency and key conflicts all
    need a queued change of the row, of a child or of a parent)."""
    related = set(names)
    for name in list(related):
        related.update(ref.child.name for ref in schema.referenced_by.get(name, ()))
        related.update(parent for parent, _ in schema.references.get(name, ()))
    queued = {table for table, _ in queue.commands}
    queued.update(table for table, _ in queue.replaced)
    return not (queued & related)


def _highest_keys(schema: MergeSchema, page: Sequence[PulledTable]) -> dict[str, int]:
    """The highest integer key of each single-integer-key table in ``page``."""
    highest: dict[str, int] = {}
    for part in page:
        info = schema.tables[part.table]
        if not info.single_integer_key:
            continue
        name = info.pk_columns[0].name
        written = part.values[part.columns.index(name)] if part.commands else []
        keys = [*written, *(key[0] for key in part.deleted)]
        found = max((k for k in keys if type(k) is int), default=None)
        if found is not None and found > 0:
            highest[part.table] = found
    return highest


def separate_replaced_rows(
    connection: sa.Connection,
    schema: MergeSchema,
    tables: LogTables,
    high_water: sa.Table | None = None,
) -> None:
    """Re-key the local rows inserted under the integer key of a row the node
    deleted, in ``connection``'s transaction (see
    :meth:`_Merge.separate_replaced`). The client calls it before a push;
    :func:`merge_page` does it before merging."""
    queue = LocalQueue(connection, tables)
    if queue.replaced:
        water = HighWater(connection, high_water) if high_water is not None else None
        merge = _Merge(connection, schema, queue, Resolutions(), _no_fetch, water)
        merge.separate_replaced(set())


def rekey_unseen(
    connection: sa.Connection,
    schema: MergeSchema,
    tables: LogTables,
    keys: Iterable[tuple[str, tuple[Any, ...]]],
    high_water: sa.Table | None = None,
    reserve: KeyReserve | None = None,
) -> list[Conflict]:
    """Move each local row the node inserted under one of ``keys`` (table,
    integer key) to a free key, with the references to it, in
    ``connection``'s transaction.

    The server holds a row under each of those keys that this node may not
    see (outside its share, see :doc:`/scopes`): no pull or fetch brings
    it, so no merge meets it, and the node's insert would be refused for
    good. The only resolution that loses nothing, and shows nothing of the
    other row, is the one :meth:`_Merge.reused_key` makes: the local row
    moves, reported as a re-keyed primary-key conflict with no server row.
    Rows no longer queued as inserts, and keys other than single integers,
    are left alone.
    """
    queue = LocalQueue(connection, tables)
    water = HighWater(connection, high_water) if high_water is not None else None
    merge = _Merge(connection, schema, queue, Resolutions(), _no_fetch, water, reserve)
    for table, key in keys:
        info = schema.tables.get(table)
        if info is None or not info.single_integer_key:
            continue
        if merge.queued(table, key) == INSERT:
            merge.reused_key(table, key, set())
    return merge.result.conflicts


def _moved_base(
    base: Mapping[str, Any],
    server: Mapping[str, Any],
    server_columns: ColumnSet,
    queued: ColumnSet,
    mine: ColumnSet,
    local: Mapping[str, Any],
) -> dict[str, Any]:
    """The base of a queued update kept over a server change: the server's
    values where it changed the column (what the node now last synced),
    the old base elsewhere, and the local value of a column neither side
    had changed (a resolver's choice: its synced value is the local one)."""
    names = server if queued is None else queued
    moved: dict[str, Any] = {}
    for name in names:
        if (server_columns is None or name in server_columns) and name in server:
            moved[name] = server[name]
        elif name in base:
            moved[name] = base[name]
        elif mine is not None and name not in mine and name in local:
            moved[name] = local[name]
    return moved


def _copy(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A conflict keeps the row as it was found: the merge goes on changing
    its own copy (a re-key moves it)."""
    return None if row is None else dict(row)


def _no_fetch(
    table: str, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    raise AssertionError("re-keying a replaced row reads nothing from the server")


def _int_key(text: str) -> tuple[int] | None:
    """The integer key encoded as ``text`` (``"[7]"``), or ``None``."""
    try:
        values = decode_key(text)
    except ValueError:
        return None
    if len(values) == 1 and type(values[0]) is int:
        return (values[0],)
    return None


def _named(decision: Decision) -> str:
    if isinstance(decision, Mapping):
        return "values"
    return decision or NODE


def _points_at(row: Mapping[str, Any], ref: _Reference, key: tuple[Any, ...]) -> bool:
    return tuple(row.get(c) for c in ref.child_columns) == key


