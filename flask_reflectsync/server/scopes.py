"""Sync scopes: which rows of each tracked table a node may read and write
(framework-free, server side; declared with :meth:`ReflectSync.scope
<flask_reflectsync.ReflectSync.scope>`, see :doc:`/scopes`).

A node acts for a *principal*: the attributes the app's registration check
returned for it (``{"user": 7, "region": "north"}``), stored with the node.
A table's rule is one of:

``equals``
    a row belongs to the nodes whose principal attribute equals the row's
    column (``sync.scope(Survey, Survey.region, equals="region")``); an
    attribute holding a list matches any of its values;
``follows``
    a row belongs where the row its foreign key points at belongs
    (``sync.scope(Answer, follows=Answer.survey_id)``), along a chain that
    ends at an ``equals`` table;
``read_only``
    every node reads every row, no node writes;
``hidden``
    no node reads or writes it: every route answers as if it were untracked.

Tables without a rule keep the behaviour from before scopes: every node
reads and writes every row (a :class:`~flask_reflectsync.errors.ScopeWarning`
names them once scopes are in use).

**Routing without reading other shares.** Every logged operation of a table
with an ``equals`` or ``follows`` rule carries two *tags*: the row's share
before and after the change (``"region:\\"north\\""``; empty for "no row").
Capture writes them (see :meth:`Scopes.tag_reader`); a pull reads only the
operations whose tags are among the node's, by index, so its cost follows
the node's share, and it learns of a row that left the share (an
*eviction*) without reading the row.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError, ScopeDeniedError, ScopeWarning
from ..rows import batches, key_filter
from ..tracking import TrackedTable, decode_key
from ..tracking.capture import ObjectTagger, TagReader
from ..tracking.tables import NO_ROW
from ..wire.codec import key_codecs, key_from_log, stores_time_zones, synced_codecs

#: The kinds of rule a table can have.
EQUALS, FOLLOWS, READ_ONLY, HIDDEN = "equals", "follows", "read_only", "hidden"

#: Tags are stored in ``String(255)`` columns; longer ones are hashed.
_TAG_LIMIT = 255

#: How many values' tags capture keeps per table (see ``object_tagger``).
_KNOWN_TAGS = 4096


@dataclass(frozen=True)
class TableScope:
    """One table's rule.

    :param table: the tracked table's logged name.
    :param kind: one of ``"equals"``, ``"follows"``, ``"read_only"``,
        ``"hidden"``.
    :param column: ``equals``: the column compared with the principal;
        ``follows``: the foreign key column.
    :param attribute: ``equals``: the principal attribute.
    :param moves: whether a node may move a row out of its share with an
        update (by default such an update is refused).
    """

    table: str
    kind: str
    column: str | None = None
    attribute: str | None = None
    moves: bool = False

    @property
    def routed(self) -> bool:
        """Whether the table's operations are routed by tags."""
        return self.kind in (EQUALS, FOLLOWS)


@dataclass(frozen=True)
class ScopeNode:
    """The node a rule is applied for: its id and principal attributes.

    :param id: the node id.
    :param principal: what the registration check returned for it (or
        :meth:`ReflectSync.bind_node
        <flask_reflectsync.ReflectSync.bind_node>` set); empty when none.
    """

    id: int
    principal: Mapping[str, Any] = field(default_factory=dict)

    def values(self, attribute: str) -> list[Any]:
        """The values of ``attribute`` (a list attribute gives all of its
        values; missing or ``None``: none)."""
        value = self.principal.get(attribute)
        if value is None:
            return []
        if isinstance(value, (list, tuple, set, frozenset)):
            return [v for v in value if v is not None]
        return [value]

    def tags(self, attributes: Iterable[str]) -> list[str]:
        """The tags of the shares this node belongs to."""
        return sorted({tag(a, v) for a in set(attributes) for v in self.values(a)})


def tag(attribute: str, value: Any) -> str:
    """The tag of the share where ``attribute`` equals ``value``: the
    attribute and the value in canonical JSON (values JSON cannot hold, such
    as UUIDs or dates, as their text), hashed beyond 255 characters."""
    if value is None:
        return NO_ROW
    plain = value if isinstance(value, (bool, int, float, str)) else str(value)
    text = f"{attribute}:{json.dumps(plain, ensure_ascii=False, separators=(',', ':'))}"
    if len(text) <= _TAG_LIMIT:
        return text
    return "#" + hashlib.sha256(text.encode()).hexdigest()


def _stored_as_given(type_: sa.types.TypeEngine[Any]) -> type | None:
    """The Python type whose values a column of ``type_`` stores and reads
    back unchanged (so an object's value tags its row), or ``None``: a
    type decorator may convert, fixed-width strings are padded, enums and
    everything else are read back to be sure."""
    if isinstance(type_, sa.types.TypeDecorator) or isinstance(
        type_, (sa.Enum, sa.CHAR, sa.NCHAR)
    ):
        return None
    if isinstance(type_, sa.Boolean):
        return bool
    if isinstance(type_, sa.Integer):
        return int
    if isinstance(type_, sa.String):
        return str
    return None


def principal_text(principal: Mapping[str, Any] | None) -> str | None:
    """A principal as stored in ``reflectsync_nodes.principal`` (canonical
    JSON), ``None`` for none.

    :raises ConfigurationError: it is not a JSON object of JSON values.
    """
    if principal is None:
        return None
    if not isinstance(principal, Mapping) or not all(
        isinstance(k, str) for k in principal
    ):
        raise ConfigurationError(
            "A node's principal must be a mapping of attribute names to "
            f"values, not {type(principal).__name__}."
        )
    try:
        return json.dumps(dict(principal), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            f"A node's principal must hold JSON values (strings, numbers, "
            f"lists): {error}"
        ) from None


def principal_from_text(text: str | None) -> dict[str, Any]:
    """The stored principal, as a dict (empty for none)."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


class Scopes:
    """The rules of one extension object, by table name.

    Rules are declared by model (or table); they are resolved against the
    tracked tables when used, so models may be tracked after their rule is
    declared.
    """

    def __init__(self) -> None:
        self._rules: dict[str, TableScope] = {}
        self._warned: set[frozenset[str]] = set()
        self._readers: dict[tuple[str, int], TagReader | None] = {}
        self._taggers: dict[str, ObjectTagger | None] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    @property
    def rules(self) -> Mapping[str, TableScope]:
        """The declared rules, by table name."""
        return self._rules

    def declare(self, rule: TableScope) -> None:
        """Add or replace a table's rule."""
        self._rules[rule.table] = rule
        self._readers.clear()
        self._taggers.clear()

    def digest(self, principal: str | None) -> str:
        """What a node's data is served under: a digest of its stored
        principal and every rule (see ``reflectsync_nodes.scoped_as``)."""
        rules = sorted(
            (r.table, r.kind, r.column or "", r.attribute or "", r.moves)
            for r in self._rules.values()
        )
        text = json.dumps([principal, rules], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def rule(self, name: str) -> TableScope | None:
        """The rule of table ``name``, or ``None`` (every node, every row)."""
        return self._rules.get(name)

    def hidden(self, name: str) -> bool:
        """Whether no node may see table ``name``."""
        found = self._rules.get(name)
        return found is not None and found.kind == HIDDEN

    def attributes(self) -> set[str]:
        """Every principal attribute a rule compares with."""
        return {r.attribute for r in self._rules.values() if r.attribute}

    def warn_unscoped(self, tables: Mapping[str, TrackedTable]) -> None:
        """Once per set of tables: a :class:`ScopeWarning` naming the
        tracked tables that every node reads and writes whole, when some
        table has a rule (with none, every table is so, by design)."""
        if not self._rules:
            return
        open_ = frozenset(name for name in tables if name not in self._rules)
        if not open_ or open_ in self._warned:
            return
        self._warned.add(open_)
        warnings.warn(
            "Sync scopes are in use, but every node reads and writes every "
            f"row of {', '.join(sorted(open_))}: give "
            + ("it" if len(open_) == 1 else "them")
            + " a rule with sync.scope(...) (read_only=True for reference "
            "tables) to say so.",
            ScopeWarning,
            stacklevel=3,
        )

    # -- chains ---------------------------------------------------------------------

    def chain(
        self, name: str, tables: Mapping[str, TrackedTable]
    ) -> list[tuple[TrackedTable, TableScope]]:
        """The tables from ``name`` along its ``follows`` rules to the
        ``equals`` table that decides its share (``name`` first).

        :raises ConfigurationError: the chain loops, leaves the tracked
            tables, or ends at a table without an ``equals`` rule.
        """
        found: list[tuple[TrackedTable, TableScope]] = []
        current = name
        while True:
            info = tables.get(current)
            rule = self._rules.get(current)
            if info is None or rule is None or not rule.routed:
                start = found[0][0].name if found else name
                raise ConfigurationError(
                    f"The scope of {start} follows foreign keys to {current}, "
                    "which has no sync.scope(..., equals=...) rule of its own "
                    "(or is not tracked): a followed table needs one, or a "
                    "follows= rule leading to one."
                )
            if any(i is info for i, _ in found):
                raise ConfigurationError(
                    f"The follows= rules starting at {name} form a loop."
                )
            found.append((info, rule))
            if rule.kind == EQUALS:
                return found
            assert rule.column is not None
            current = _logged_name(_referenced(info, rule.column), tables)

    # -- SQL ---------------------------------------------------------------------

    def condition(
        self,
        info: TrackedTable,
        tables: Mapping[str, TrackedTable],
        node: ScopeNode,
    ) -> sa.ColumnElement[bool] | None:
        """The rows of ``info`` in ``node``'s share, as a where-clause
        (``None``: every row; ``false()`` for a hidden table)."""
        rule = self._rules.get(info.name)
        if rule is None or rule.kind == READ_ONLY:
            return None
        if rule.kind == HIDDEN:
            return sa.false()
        chain = self.chain(info.name, tables)
        root, root_rule = chain[-1]
        assert root_rule.column is not None and root_rule.attribute is not None
        values = node.values(root_rule.attribute)
        if not values:
            return sa.false()
        column = root.table.c[root_rule.column]
        condition: sa.ColumnElement[bool] = column.in_(values)
        # Walk back down: each table's foreign key points into its parent's
        # share.
        for child, rule_ in reversed(chain[:-1]):
            assert rule_.column is not None
            fk = child.table.c[rule_.column]
            target = _target_column(child, rule_.column)
            condition = fk.in_(sa.select(target).where(condition))
        return condition

    def tag_reader(
        self, info: TrackedTable, tables: Mapping[str, TrackedTable]
    ) -> TagReader | None:
        """How capture reads the share tags of rows of ``info`` by logged
        key text (batched queries), or ``None`` when the table is not
        routed. Rows not found (deleted) are left out of the answer."""
        cache_key = (info.name, id(tables))
        if cache_key in self._readers:
            return self._readers[cache_key]
        reader = self._tag_reader(info, tables)
        self._readers[cache_key] = reader
        return reader

    def _tag_reader(
        self, info: TrackedTable, tables: Mapping[str, TrackedTable]
    ) -> TagReader | None:
        rule = self._rules.get(info.name)
        if rule is None or not rule.routed:
            return None
        chain = self.chain(info.name, tables)
        root, root_rule = chain[-1]
        assert root_rule.column is not None and root_rule.attribute is not None
        attribute = root_rule.attribute
        joined: Any = info.table
        for child, rule_ in chain[:-1]:
            assert rule_.column is not None
            joined = joined.join(
                _referenced(child, rule_.column),
                child.table.c[rule_.column] == _target_column(child, rule_.column),
            )
        pk = list(info.pk_columns)
        value = root.table.c[root_rule.column]

        def read(connection: sa.Connection, texts: Sequence[str]) -> dict[str, str]:
            aware = stores_time_zones(connection.dialect)
            codecs = list(synced_codecs(info, aware_storage=aware).values())
            pk_codecs = key_codecs(info, codecs)
            keys = [key_from_log(decode_key(text), pk_codecs) for text in texts]
            found: dict[str, str] = {}
            for batch in batches(keys, 1000):
                query = (
                    sa.select(*pk, value)
                    .select_from(joined)
                    .where(key_filter(pk, batch, inline=True))
                )
                for row in connection.execute(query):
                    found[info.encode_key(tuple(row[:-1]))] = tag(attribute, row[-1])
            return found

        return read

    def object_tagger(self, info: TrackedTable) -> ObjectTagger | None:
        """How capture tags a flushed object of ``info`` without reading its
        row back (see :class:`~flask_reflectsync.tracking.capture.OperationLog`):
        for an ``equals`` rule on a plain string, integer or boolean column
        of a mapped class, whose values the database stores as they are;
        ``None`` for every other rule and column type (their tags are read
        from the rows)."""
        if info.name not in self._taggers:
            self._taggers[info.name] = self._object_tagger(info)
        return self._taggers[info.name]

    def _object_tagger(self, info: TrackedTable) -> ObjectTagger | None:
        rule = self._rules.get(info.name)
        if rule is None or rule.kind != EQUALS or info.mapper is None:
            return None
        assert rule.column is not None and rule.attribute is not None
        column = info.table.c[rule.column]
        kind = _stored_as_given(column.type)
        if kind is None:
            return None
        try:
            key = info.mapper.get_property_by_column(column).key
        except sa.orm.exc.UnmappedColumnError:
            return None
        attribute = rule.attribute
        # Rows share few values (teams, regions): each is encoded once.
        known: dict[Any, str] = {}

        def tag_of(value: Any) -> str | None:
            if value is None:
                return NO_ROW
            if type(value) is not kind:
                return None
            found = known.get(value)
            if found is None:
                if len(known) >= _KNOWN_TAGS:
                    known.clear()
                found = known[value] = tag(attribute, value)
            return found

        return key, tag_of

    # -- write rules -------------------------------------------------------------------

    def check_push(
        self,
        session: Any,
        tables: Mapping[str, TrackedTable],
        node: ScopeNode,
        changes: Mapping[str, Any],
        *,
        written: bool,
    ) -> None:
        """Refuse a push that writes outside ``node``'s share.

        Called twice in the push's transaction: before the writes
        (``written=False``: every updated or deleted row must be in the
        share now; nothing may be written to a read-only table) and after
        them (``written=True``: every inserted row, and every updated row
        unless the rule allows moves, must be in the share).

        :param changes: the push's decoded changes by table (see
            :mod:`.push_decode`).
        :raises ScopeDeniedError: (403) naming the first row refused.
        """
        for name, change in changes.items():
            rule = self._rules.get(name)
            if rule is None:
                continue
            info = change.info
            if rule.kind == READ_ONLY:
                ops = change.operations
                if ops:
                    raise _denied(
                        change,
                        ops[0].row_key,
                        "read_only",
                        f"table {name} is read-only for nodes",
                    )
                continue
            if rule.kind == HIDDEN:  # decode refuses these first; kept safe
                raise ConfigurationError(f"hidden table {name} reached a push")
            condition = self.condition(info, tables, node)
            assert condition is not None
            if not written:
                keys = [
                    op.row_key
                    for op in (*change.updates, *change.restores, *change.deletes)
                ]
                outside = _existing_outside(session, info, keys, condition)
                if outside is not None:
                    raise _denied(
                        change,
                        outside,
                        "outside_share",
                        f"the row of {name} is not in this node's share",
                    )
                continue
            inserted = [op.row_key for op in (*change.inserts, *change.restores)]
            outside = _existing_outside(session, info, inserted, condition)
            if outside is not None:
                raise _denied(
                    change,
                    outside,
                    "insert_outside_share",
                    f"the new row of {name} would be outside this node's share",
                )
            if not rule.moves:
                updated = [op.row_key for op in change.updates]
                outside = _existing_outside(session, info, updated, condition)
                if outside is not None:
                    raise _denied(
                        change,
                        outside,
                        "moves_out",
                        f"the update would move the row of {name} out of this "
                        "node's share (the rule allows no moves)",
                    )


def _existing_outside(
    session: Any,
    info: TrackedTable,
    keys: Sequence[tuple[Any, ...]],
    condition: sa.ColumnElement[bool],
) -> tuple[Any, ...] | None:
    """The first of ``keys`` whose row exists and is outside ``condition``."""
    pk = list(info.pk_columns)
    for batch in batches(list(keys), 1000):
        query = (
            sa.select(*pk)
            .where(key_filter(pk, batch, inline=True), sa.not_(condition))
            .limit(1)
        )
        row = session.execute(query).first()
        if row is not None:
            return tuple(row)
    return None


def _denied(
    change: Any, key: tuple[Any, ...], rule: str, what: str
) -> ScopeDeniedError:
    return ScopeDeniedError(
        f"The push was refused whole and nothing was written: {what} "
        f"(rule {rule!r}, row {change.wire_key(key)}).",
        table=change.info.name,
        key=change.wire_key(key),
        column="",
        rule=rule,
    )


def _referenced(info: TrackedTable, column: str) -> sa.Table:
    """The table the foreign key on ``column`` of ``info`` points at."""
    return _foreign_key(info, column).column.table


def _target_column(info: TrackedTable, column: str) -> sa.ColumnElement[Any]:
    return _foreign_key(info, column).column


def _foreign_key(info: TrackedTable, column: str) -> sa.ForeignKey:
    keys = list(info.table.c[column].foreign_keys)
    if len(keys) != 1:
        raise ConfigurationError(
            f"sync.scope({info.name}, follows=...) needs a column with one "
            f"foreign key; {column} has {len(keys)}."
        )
    return keys[0]


def _logged_name(table: sa.Table, tables: Mapping[str, TrackedTable]) -> str:
    for name, info in tables.items():
        if info.table is table:
            return name
    return table.fullname


__all__ = [
    "EQUALS",
    "FOLLOWS",
    "HIDDEN",
    "NO_ROW",
    "READ_ONLY",
    "ScopeNode",
    "Scopes",
    "TableScope",
    "principal_from_text",
    "principal_text",
    "tag",
]


def table_scope(
    model: Any,
    column: Any = None,
    *,
    equals: str | None = None,
    follows: Any = None,
    read_only: bool = False,
    hidden: bool = False,
    moves: bool = False,
) -> TableScope:
    """The rule :meth:`ReflectSync.scope <flask_reflectsync.ReflectSync.scope>`
    declares, checked.

    :raises ConfigurationError: the arguments do not make exactly one rule.
    """
    table = _table_of(model)
    name = table.fullname
    kinds = [
        kind
        for kind, given in (
            (EQUALS, column is not None or equals is not None),
            (FOLLOWS, follows is not None),
            (READ_ONLY, read_only),
            (HIDDEN, hidden),
        )
        if given
    ]
    if len(kinds) != 1:
        raise ConfigurationError(
            f"sync.scope({name}, ...) needs exactly one rule: a column with "
            "equals=<principal attribute>, follows=<foreign key column>, "
            "read_only=True or hidden=True."
        )
    (kind,) = kinds
    if kind == EQUALS:
        if column is None or not equals:
            raise ConfigurationError(
                f"sync.scope({name}, column, equals=...) needs both the "
                "column and the principal attribute it equals."
            )
        return TableScope(
            name, EQUALS, _column_name(table, column), attribute=equals, moves=moves
        )
    if kind == FOLLOWS:
        found = _column_name(table, follows)
        if len(table.c[found].foreign_keys) != 1:
            raise ConfigurationError(
                f"sync.scope({name}, follows={found}) needs a column with "
                "exactly one foreign key."
            )
        return TableScope(name, FOLLOWS, found, moves=moves)
    if moves:
        raise ConfigurationError(
            f"sync.scope({name}, moves=True) applies to equals= and follows= "
            "rules only."
        )
    return TableScope(name, kind)


def _table_of(model: Any) -> sa.Table:
    if isinstance(model, sa.Table):
        return model
    table = getattr(model, "__table__", None)
    if isinstance(table, sa.Table):
        return table
    raise ConfigurationError(
        f"sync.scope() takes a mapped class or a Table, not {model!r}."
    )


def _column_name(table: sa.Table, column: Any) -> str:
    if isinstance(column, str):
        name = column
    else:
        expression = getattr(column, "expression", column)
        found = getattr(expression, "name", None)
        owner = getattr(expression, "table", None)
        if not isinstance(found, str) or (
            owner is not None and getattr(owner, "fullname", None) != table.fullname
        ):
            raise ConfigurationError(
                f"sync.scope({table.fullname}, ...) needs a column of "
                f"{table.fullname}, not {column!r}."
            )
        name = found
    if name not in table.c:
        raise ConfigurationError(f"{table.fullname} has no column {name!r}.")
    return name
