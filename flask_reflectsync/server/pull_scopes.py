"""Serving a pull within a node's share (framework-free, server side; used
by :mod:`.pull`; the rules are in :mod:`.scopes`).

A pull page of a node with a share reads only the operations of tables
everyone reads (no rule, or ``read_only``) and those of routed tables whose
share tags, before or after, are among the node's: by index, so the pull
costs what the node's share holds. Walking each row's operations in the
page tells whether the node had the row before the page (its first
operation's tag before is the node's), and whether it was outside the share
at some point (then the node may have missed changes: it gets the row
whole). The row's current state decides the rest: in the share, it is sent
(as an insert when the node did not have it); outside it, a row the node
had is *evicted*: the node removes it without logging a delete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..rows import key_filter
from ..tracking import DELETE, INSERT, TrackedTable
from .scopes import FOLLOWS, HIDDEN, ScopeNode, Scopes


@dataclass
class Share:
    """One node's share, as a pull applies it.

    :param scopes: the rules.
    :param tables: the tracked tables by name.
    :param node: the node served.
    """

    scopes: Scopes
    tables: Mapping[str, TrackedTable]
    node: ScopeNode
    tags: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.tags = frozenset(self.node.tags(self.scopes.attributes()))

    def routed(self, name: str) -> bool:
        rule = self.scopes.rule(name)
        return rule is not None and rule.routed

    def hidden(self, name: str) -> bool:
        return self.scopes.hidden(name)

    def log_filter(self, operations: sa.Table) -> sa.ColumnElement[bool]:
        """The operations this node may hear of."""
        open_ = [
            name
            for name in self.tables
            if not self.routed(name) and not self.hidden(name)
        ]
        routed = [name for name in self.tables if self.routed(name)]
        parts: list[sa.ColumnElement[bool]] = []
        if open_:
            parts.append(operations.c.table_name.in_(open_))
        if routed and self.tags:
            tags = sorted(self.tags)
            parts.append(
                sa.and_(
                    operations.c.table_name.in_(routed),
                    sa.or_(
                        operations.c.scope_after.in_(tags),
                        operations.c.scope_before.in_(tags),
                    ),
                )
            )
        if not parts:
            return sa.false()
        return sa.or_(*parts)

    def condition(self, info: TrackedTable) -> sa.ColumnElement[bool] | None:
        """The rows of ``info`` in the share (``None``: every row)."""
        return self.scopes.condition(info, self.tables, self.node)

    def check_push(
        self, session: Any, changes: Mapping[str, Any], *, written: bool
    ) -> None:
        """Refuse a push that writes outside the share (see
        :meth:`.scopes.Scopes.check_push`)."""
        self.scopes.check_push(
            session, self.tables, self.node, changes, written=written
        )

    def children(self, name: str) -> list[tuple[TrackedTable, str]]:
        """The routed tables that follow ``name`` (with their foreign key
        column)."""
        found = []
        for child_name, rule in self.scopes.rules.items():
            info = self.tables.get(child_name)
            if info is None or rule.kind != FOLLOWS or rule.column is None:
                continue
            (fk,) = info.table.c[rule.column].foreign_keys
            parent = self.tables.get(name)
            if parent is not None and fk.column.table is parent.table:
                found.append((info, rule.column))
        return found


@dataclass
class RowWalk:
    """What a page's operations say of each routed row, by (table, logged
    key): ``had`` (the node had it before the page), ``left`` (it was
    outside the share at some point of the page), ``out_last`` (its last
    operation left it outside, or deleted it)."""

    had: dict[tuple[str, str], bool] = field(default_factory=dict)
    left: set[tuple[str, str]] = field(default_factory=set)
    out_last: set[tuple[str, str]] = field(default_factory=set)


def walk_rows(
    share: Share,
    names: Sequence[str],
    keys: Sequence[str],
    logged: Sequence[str],
    before: Sequence[str | None],
    after: Sequence[str | None],
    writers: Sequence[int | None] | None = None,
    node_id: int | None = None,
) -> RowWalk:
    """Walk the page's operations of routed tables (see :class:`RowWalk`).

    :param writers: the node of each operation (``None``: the server's
        app), with ``node_id`` the pulling node's: a row whose first
        operation is the node's own insert into its share is one it has
        (sent as an insert again, a node holding it with a queued edit
        would take it for a second row).
    """
    walk = RowWalk()
    tags = share.tags
    routed: dict[str, bool] = {}
    own = writers if writers is not None else [None] * len(names)
    for name, key, command, was, now, writer in zip(
        names, keys, logged, before, after, own, strict=True
    ):
        if name not in routed:
            routed[name] = share.routed(name)
        if not routed[name]:
            continue
        ident = (name, key)
        if ident not in walk.had:
            if command == INSERT:
                mine = node_id is not None and writer == node_id
                walk.had[ident] = mine and now in tags
            else:
                walk.had[ident] = was in tags
        outside = command != DELETE and now not in tags
        if outside:
            walk.left.add(ident)
        if outside or command == DELETE:
            walk.out_last.add(ident)
        else:
            walk.out_last.discard(ident)
    return walk


def entering_children(
    session: Any,
    share: Share,
    name: str,
    keys: Sequence[tuple[Any, ...]],
) -> dict[str, list[tuple[Any, ...]]]:
    """The keys of the rows that follow the rows ``keys`` of table
    ``name`` into the share, by child table, and theirs in turn: a row that
    enters a share brings its children along."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    pending = [(name, list(keys))]
    while pending:
        parent_name, parent_keys = pending.pop()
        parent = share.tables[parent_name]
        for child, column in share.children(parent_name):
            (fk,) = child.table.c[column].foreign_keys
            pk = list(parent.pk_columns)
            query = (
                sa.select(*child.pk_columns)
                .select_from(
                    child.table.join(parent.table, child.table.c[column] == fk.column)
                )
                .where(key_filter(pk, parent_keys, inline=True))
            )
            rows = [tuple(row) for row in session.execute(query)]
            if rows:
                found.setdefault(child.name, []).extend(rows)
                pending.append((child.name, rows))
    return found


__all__ = ["HIDDEN", "RowWalk", "Share", "entering_children", "walk_rows"]
