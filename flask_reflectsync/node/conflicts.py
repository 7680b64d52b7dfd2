"""Conflicts between the node's queued changes and the server's, and the
strategies that decide them (see :doc:`/conflicts`): :class:`Conflict`,
:class:`Resolutions` and the built-in strategies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import sqlalchemy as sa

from ..errors import ConfigurationError

#: The kinds of conflict, as found in :attr:`Conflict.kind`.
UPDATE_UPDATE = "update/update"
UPDATE_DELETE = "update/delete"  # the node updated, the server deleted
DELETE_UPDATE = "delete/update"  # the node deleted, the server updated
DELETE_DELETE = "delete/delete"
DEPENDENCY = "dependency"  # the server deleted a parent local rows reference
REVERSED_DEPENDENCY = "reversed-dependency"  # the node deleted a referenced parent
PRIMARY_KEY = "primary-key"  # both inserted the same key
UNIQUE = "unique"  # a server row takes unique values a local row holds

KINDS = (
    UPDATE_UPDATE,
    UPDATE_DELETE,
    DELETE_UPDATE,
    DELETE_DELETE,
    DEPENDENCY,
    REVERSED_DEPENDENCY,
    PRIMARY_KEY,
    UNIQUE,
)

SERVER = "server"
NODE = "node"

Decision = Literal["server", "node"] | Mapping[str, Any] | None


@dataclass
class Conflict:
    """One conflict found while merging, and how it was resolved.

    :param kind: one of :data:`KINDS`.
    :param model: the mapped class of the row in conflict.
    :param table: its table name.
    :param key: its primary key (typed values, key-column order).
    :param local: the node's row by column name, ``None`` if the node
        deleted it (or never had it).
    :param server: the server's row by column name, ``None`` if the server
        deleted it (or its copy is unknown).
    :param columns: for ``unique`` conflicts, the constraint's columns; for
        ``update/update`` conflicts, the columns both sides changed (empty:
        the whole row, when one side's columns are unknown).
    :param other_key: for ``unique`` conflicts, the key of the server row
        holding the same values; for ``dependency`` conflicts, the keys of
        the rows still referencing the parent.
    :param resolution: set once resolved: ``"server"``, ``"node"``,
        ``"values"``, ``"rekeyed"`` or ``"deleted"`` (both deleted).
    :param new_key: for a re-keyed row, its new primary key.
    :param local_columns: for ``update/update`` conflicts, the columns the
        node changed (``None``: the whole row).
    :param server_columns: for ``update/update`` conflicts, the columns the
        server changed since the node's version (``None``: the whole row).
    :param base: for ``update/update`` conflicts, the values the columns
        the node changed had when it last synchronised them (pulled or
        pushed), by column name: the common ancestor of ``local`` and
        ``server``. A column whose base is unknown is missing (changed by
        a bulk ``update()`` statement, queued by a release before bases
        were kept); ``None`` when none is known (see :doc:`/conflicts`).
    """

    kind: str
    model: type
    table: str
    key: tuple[Any, ...]
    local: dict[str, Any] | None
    server: dict[str, Any] | None
    columns: tuple[str, ...] = ()
    other_key: Any = None
    resolution: str = ""
    new_key: tuple[Any, ...] | None = None
    local_columns: frozenset[str] | None = None
    server_columns: frozenset[str] | None = None
    base: dict[str, Any] | None = None


#: A resolver: given a conflict, return ``"server"`` (keep the server's
#: version), ``"node"`` (keep the node's), a mapping of column values to
#: write and push (for update and unique conflicts), or ``None`` for the
#: default strategy's decision.
Resolver = Callable[[Conflict], Decision]
#: A strategy: ``"last-pusher-wins"``, ``"server-wins"``, ``"node-wins"``
#: or a :data:`Resolver`.
Strategy = str | Resolver

STRATEGIES = ("last-pusher-wins", "server-wins", "node-wins")

#: The kinds the server can decide for a node with a built-in strategy (see
#: :ref:`stale-pushes`): conflicts between two versions of one row.
DIRECT_KINDS = frozenset({UPDATE_UPDATE, UPDATE_DELETE, DELETE_UPDATE, DELETE_DELETE})


class KindResolver:
    """A :data:`Resolver` for some kinds of conflict and a built-in strategy
    for the others.

    A plain callable is asked about every conflict of its models, so the
    server cannot decide their stale pushes (it cannot call it) and refuses
    them with 409. When the function only cares about some kinds, say so::

        SyncClient(url, engine, resolution=KindResolver(rename_code, {"unique"}))

    and the server decides the direct conflicts of those models by
    ``otherwise``, as the node's merge would.

    :param function: the resolver, asked about conflicts of ``kinds`` only;
        returning ``None`` leaves the conflict to ``otherwise``.
    :param kinds: conflict kinds (:data:`KINDS`) the function decides.
    :param otherwise: the built-in strategy for every other kind.
    :raises ConfigurationError: for an unknown kind or strategy.
    """

    def __init__(
        self,
        function: Resolver,
        kinds: Iterable[str],
        otherwise: str = "last-pusher-wins",
    ) -> None:
        self.function = function
        self.kinds = frozenset(kinds)
        self.otherwise = otherwise
        unknown = self.kinds - set(KINDS)
        if unknown or not self.kinds:
            raise ConfigurationError(
                f"Unknown or no conflict kind(s) {sorted(unknown)}; "
                f"use some of {', '.join(KINDS)}."
            )
        if otherwise not in STRATEGIES:
            raise ConfigurationError(
                f"Unknown conflict strategy {otherwise!r} for otherwise=; "
                f"use one of {', '.join(STRATEGIES)}."
            )

    def __repr__(self) -> str:
        return (
            f"KindResolver({self.function!r}, {sorted(self.kinds)!r}, "
            f"otherwise={self.otherwise!r})"
        )

    def __call__(self, conflict: Conflict) -> Decision:
        decision = self.function(conflict) if conflict.kind in self.kinds else None
        if decision is None:
            return cast(Decision, _BUILT_IN[self.otherwise][conflict.kind])
        return decision


# What the built-in strategies decide, per kind. ``None``: cannot decide.
_LAST_PUSHER: dict[str, str | None] = {
    UPDATE_UPDATE: NODE,  # the node pushes after the server's change
    UPDATE_DELETE: NODE,  # an update beats a delete: the row comes back
    DELETE_UPDATE: SERVER,  # likewise, from the other side
    DELETE_DELETE: SERVER,
    DEPENDENCY: NODE,  # a local child keeps its parent alive
    REVERSED_DEPENDENCY: SERVER,  # a server child keeps its parent alive
    PRIMARY_KEY: NODE,  # both rows survive: the local one is re-keyed
    UNIQUE: None,
}
_BUILT_IN: dict[str, dict[str, str | None]] = {
    "last-pusher-wins": _LAST_PUSHER,
    "server-wins": {**{k: SERVER for k in KINDS}, PRIMARY_KEY: NODE},
    "node-wins": {**{k: NODE for k in KINDS}, UNIQUE: None},
}


class Resolutions:
    """The strategy of each model, with a default, and of some columns.

    :param default: the strategy of models not named in ``per_model``.
    :param per_model: strategies by mapped class; also by mapped column
        attribute (``City.population``): a built-in strategy name deciding
        that column of ``update/update`` conflicts, whatever the model's.
    :raises ConfigurationError: for an unknown strategy name, or a column
        given a callable.
    """

    def __init__(
        self,
        default: Strategy = "last-pusher-wins",
        per_model: Mapping[Any, Strategy] | None = None,
    ) -> None:
        self.default = self._checked(default)
        self.per_model: dict[Any, Strategy] = {}
        #: Built-in strategies of single columns, by (mapped class, column name).
        self.per_column: dict[tuple[type, str], str] = {}
        for target, strategy in (per_model or {}).items():
            self.set(target, strategy)

    @staticmethod
    def _checked(strategy: Strategy) -> Strategy:
        if callable(strategy) or strategy in STRATEGIES:
            return strategy
        raise ConfigurationError(
            f"Unknown conflict strategy {strategy!r}; use one of "
            f"{', '.join(STRATEGIES)} or a callable taking a Conflict."
        )

    def set(self, model: Any, strategy: Strategy) -> None:
        """Use ``strategy`` for conflicts on rows of ``model`` (a mapped
        class, or a tracked plain table such as an association table), or
        for one column of them (a mapped column attribute such as
        ``City.population``: a built-in strategy name only)."""
        if isinstance(model, (type, sa.Table)):
            self.per_model[model] = self._checked(strategy)
            return
        column = _column_of(model)
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise ConfigurationError(
                f"The strategy of column {model} must be one of "
                f"{', '.join(STRATEGIES)}, not {strategy!r}; a callable decides "
                "whole models (it sees every column in conflict)."
            )
        self.per_column[column] = strategy

    def named(self, model: Any) -> str | None:
        """The built-in strategy of ``model``, or ``None`` for a callable
        or for a model with strategies of its own per column (only the node
        can call it, or tell its columns apart: the server refuses such
        stale rows)."""
        if any(owner is model for owner, _ in self.per_column):
            return None
        strategy = self.per_model.get(model, self.default)
        if isinstance(strategy, KindResolver) and not strategy.kinds & DIRECT_KINDS:
            return strategy.otherwise
        return strategy if isinstance(strategy, str) else None

    def decide(self, conflict: Conflict) -> Decision:
        """The decision for ``conflict`` (``None``: cannot be resolved)."""
        if conflict.kind == UPDATE_UPDATE and any(
            (conflict.model, column) in self.per_column for column in conflict.columns
        ):
            return self._decide_columns(conflict)
        return self._decide_row(conflict)

    def _decide_columns(self, conflict: Conflict) -> Decision:
        """An ``update/update`` conflict some of whose columns have their
        own strategy: each column is decided by its own, the others by the
        model's; a mix comes out as the values to write."""
        rest = [
            c for c in conflict.columns if (conflict.model, c) not in self.per_column
        ]
        row_decision = self._decide_row(conflict) if rest else None
        local, server = conflict.local or {}, conflict.server or {}
        sides: dict[str, Any] = {}
        for column in conflict.columns:
            strategy = self.per_column.get((conflict.model, column))
            sides[column] = (
                _BUILT_IN[strategy][UPDATE_UPDATE] if strategy else row_decision
            )
        if all(side == SERVER for side in sides.values()):
            return cast(Decision, SERVER)
        if all(side == NODE for side in sides.values()):
            return cast(Decision, NODE)
        values: dict[str, Any] = {}
        if isinstance(row_decision, Mapping):
            values.update(row_decision)
        for column, side in sides.items():
            if side == SERVER:
                values[column] = server.get(column)
            elif side == NODE or not isinstance(side, Mapping):
                values[column] = local.get(column)
        return values

    def _decide_row(self, conflict: Conflict) -> Decision:
        strategy = self.per_model.get(conflict.model, self.default)
        fallback = self.default if isinstance(self.default, str) else ""
        if isinstance(strategy, KindResolver):
            # The function is asked about its kinds only; otherwise= decides.
            fallback = strategy.otherwise
            wanted = conflict.kind in strategy.kinds
            strategy = strategy.function if wanted else strategy.otherwise
        if callable(strategy):
            decision = strategy(conflict)
            if decision is not None:
                if not (decision in (SERVER, NODE) or isinstance(decision, Mapping)):
                    raise ConfigurationError(
                        f"A conflict resolver returned {decision!r}; return "
                        "'server', 'node', a mapping of column values or None."
                    )
                return decision
            # None: the default strategy decides (last-pusher-wins when the
            # default is itself a callable).
            strategy = fallback
        return cast(Decision, _BUILT_IN.get(strategy, _LAST_PUSHER)[conflict.kind])


class RememberedResolutions(Resolutions):
    """The client's resolutions, asked once per distinct conflict: a merge
    that starts again does not ask a resolver callable (which may ask a
    person) the same question twice."""

    def __init__(self, inner: Resolutions) -> None:
        self.inner = inner
        self.default = inner.default
        self.per_model = inner.per_model
        self.per_column = inner.per_column
        self.decided: list[tuple[tuple[Any, ...], Decision]] = []

    def decide(self, conflict: Conflict) -> Decision:
        question = (
            conflict.kind,
            conflict.table,
            conflict.key,
            copy.deepcopy(conflict.local),
            copy.deepcopy(conflict.server),
            conflict.columns,
            copy.deepcopy(conflict.other_key),
        )
        for asked, decision in self.decided:
            if asked == question:
                return decision
        decision = self.inner.decide(conflict)
        self.decided.append((question, decision))
        return decision


def _column_of(attribute: Any) -> tuple[type, str]:
    """The mapped class and column name of a mapped column attribute."""
    prop = getattr(attribute, "property", None)
    columns = getattr(prop, "columns", None)
    owner = getattr(attribute, "class_", None)
    if not columns or not isinstance(owner, type):
        raise ConfigurationError(
            f"Conflict strategies are set per mapped class or per mapped "
            f"column attribute (City.population), not {attribute!r}."
        )
    return owner, str(columns[0].name)
