"""Which mapped classes and plain tables are tracked, and what the log needs
to know of them."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from ..errors import ConfigurationError
from .keys import encode_key

T = TypeVar("T", bound=type)

#: The attribute ``track`` sets on a class (in the class's own ``__dict__``).
TRACK_ATTRIBUTE = "__reflectsync_track__"

_lock = threading.Lock()
# Weak, so classes defined per test (or per app factory call) can go away.
_tracked_classes: weakref.WeakSet[type] = weakref.WeakSet()
#: Bumped by every track() and untrack(): what was derived from the tracked
#: classes (a server's TrackedSchema) is stale when it changes.
_generation = 0
# Mapper -> TrackedTable or None. Cleared whenever ``track`` is called, so a
# class decorated after a first flush is still picked up.
_mapper_cache: weakref.WeakKeyDictionary[Mapper[Any], TrackedTable | None] = (
    weakref.WeakKeyDictionary()
)
# Plain tables passed to track() (association tables, see
# docs/tracking.rst), described once at registration.
_tracked_plain: weakref.WeakKeyDictionary[sa.Table, TrackedTable] = (
    weakref.WeakKeyDictionary()
)


# eq=False: one instance per mapper (cached below), hashed by identity, which
# is cheap; capture puts them in sets on hot paths.
@dataclass(frozen=True, eq=False)
class TrackedTable:
    """What the operations log records for one tracked mapped class or
    plain table.

    :param mapper: the mapper of the decorated class; ``None`` for a plain
        :class:`~sqlalchemy.Table` passed to :func:`track` (an association
        table).
    :param table: the table its rows live in.
    :param name: the table's name as logged (``schema.name`` when qualified).
    :param pk_columns: the primary-key columns, in key order.
    :param pk_attrs: the mapped attribute names of those columns (their
        column keys for a plain table).
    :param synced_columns: the columns that travel between the server and
        its nodes, in table order: every column but those kept out of sync
        with ``track(exclude=...)`` or ``track(only=...)``. Every route reads
        its columns here (:func:`~flask_reflectsync.wire.codec.synced_codecs`).
    :param excluded: the names of the columns kept out of sync (empty when
        every column travels).
    """

    mapper: Mapper[Any] | None
    table: sa.Table
    name: str
    pk_columns: tuple[sa.Column[Any], ...]
    pk_attrs: tuple[str, ...]
    integer_key: bool = False
    synced_columns: tuple[sa.Column[Any], ...] = ()
    excluded: frozenset[str] = frozenset()
    # Per mapper (the class's and its single-table subclasses'): the keys of
    # the column attributes whose columns travel. Filled on first use.
    _synced_attrs: dict[Mapper[Any], frozenset[str]] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        if not self.synced_columns:
            object.__setattr__(self, "synced_columns", tuple(self.table.columns))

    def synced_attrs(self, mapper: Mapper[Any]) -> frozenset[str]:
        """The keys of ``mapper``'s column attributes that travel: what
        capture compares to tell whether an update changed anything."""
        found = self._synced_attrs.get(mapper)
        if found is None:
            found = frozenset(
                prop.key
                for prop in mapper.column_attrs
                if prop.columns[0].name not in self.excluded
            )
            self._synced_attrs[mapper] = found
        return found

    def only_excluded(self, names: Iterable[str]) -> bool:
        """Whether ``names`` (attribute keys, column keys or column names,
        as a bulk ``UPDATE`` names what it sets) are all of excluded
        columns: such a statement changes nothing that travels."""
        if not self.excluded:
            return False
        excluded = {
            name
            for column in self.table.columns
            if column.name in self.excluded
            for name in (column.name, column.key, *self._attr_keys(column))
        }
        listed = set(names)
        return bool(listed) and listed <= excluded

    @property
    def model(self) -> Any:
        """What the user tracked: the mapped class, or the plain table.
        Conflicts name it (``Conflict.model``) and strategies are set on it."""
        return self.table if self.mapper is None else self.mapper.class_

    @property
    def label(self) -> str:
        """How messages name it: the class name, or ``table <name>``."""
        if self.mapper is None:
            return f"table {self.name}"
        return self.mapper.class_.__name__

    def _attr_keys(self, column: sa.Column[Any]) -> list[str]:
        if self.mapper is None:
            return []
        return [
            prop.key
            for mapper in self.mapper.self_and_descendants
            for prop in mapper.column_attrs
            if prop.columns[0] is column
        ]

    @property
    def single_integer_key(self) -> bool:
        """Whether the key is one integer column: the keys nodes hand out
        and re-key, and whose re-use the sync protocol guards against."""
        return self.integer_key and len(self.pk_columns) == 1

    def encode_key(self, values: tuple[Any, ...]) -> str:
        """The canonical text of a key of this table (see :mod:`.keys`)."""
        # Integer keys are the common case and are encoded on every captured
        # row: format them directly (same text as the JSON encoder).
        if self.integer_key and all(type(v) is int for v in values):
            return "[" + ",".join(map(str, values)) + "]"
        return encode_key(values)


@dataclass(frozen=True)
class TrackOptions:
    """What :func:`track` was given for one class (stored on the class).

    :param exclude: names of columns kept out of sync.
    :param only: names of the only columns synchronised besides the
        primary key, or ``None``.
    """

    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None


@overload
def track(
    cls: sa.Table,
    /,
    *,
    exclude: Iterable[str] | None = None,
    only: Iterable[str] | None = None,
) -> sa.Table: ...


@overload
def track(
    cls: T,
    /,
    *,
    exclude: Iterable[str] | None = None,
    only: Iterable[str] | None = None,
) -> T: ...


@overload
def track(
    *, exclude: Iterable[str] | None = None, only: Iterable[str] | None = None
) -> Callable[[T], T]: ...


def track(
    cls: Any = None,
    /,
    *,
    exclude: Iterable[str] | None = None,
    only: Iterable[str] | None = None,
) -> Any:
    """Mark a mapped class as tracked: its inserts, updates and deletes are logged.

    Works on Flask-SQLAlchemy models and on plain SQLAlchemy declarative or
    imperatively mapped classes, with integer, UUID or composite primary keys.
    Subclasses sharing the decorated class's table (single-table inheritance)
    are tracked with it.

    A plain :class:`~sqlalchemy.Table` can be tracked too: the association
    table of a ``secondary=`` relationship, whose link rows the ORM writes
    without a mapped object (see :ref:`association-tables`). It needs a
    primary key (its foreign-key columns, usually)::

        followers = track(db.Table(
            "followers",
            db.Column("follower_id", db.ForeignKey("user.id"), primary_key=True),
            db.Column("followed_id", db.ForeignKey("user.id"), primary_key=True),
        ))

    ::

        @track
        class City(db.Model):
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str]

        @track(exclude=["password_hash", "last_seen"])
        class User(db.Model):
            ...

    Columns kept out of sync (see :ref:`excluded-columns`) never leave the
    server: pulls, repairs and queries leave them out, a push naming one is
    refused, a node keeps its own value, and an update that changes only
    such columns logs nothing.

    :param cls: the class (or plain table) to track.
    :param exclude: names of columns (attribute or column names) kept out of
        sync.
    :param only: names of the only columns synchronised; the primary key
        always is. Give ``exclude`` or ``only``, not both.
    :return: the class itself, so ``track`` works as a decorator (with or
        without arguments).
    :raises ConfigurationError: for a plain table without a primary key,
        an unknown column, a primary-key column
        left out, a left-out column a row cannot be inserted without (``NOT
        NULL`` with no default), or both ``exclude`` and ``only``.
    """
    options = _options(exclude, only)
    if cls is None:
        return lambda decorated: _register(decorated, options)
    return _register(cls, options)


def _options(exclude: Iterable[str] | None, only: Iterable[str] | None) -> TrackOptions:
    if exclude is not None and only is not None:
        raise ConfigurationError(
            "track() takes exclude=[...] or only=[...], not both: list the "
            "columns to leave out, or the columns to keep."
        )
    for name, given in (("exclude", exclude), ("only", only)):
        if isinstance(given, str):
            raise ConfigurationError(
                f"track({name}=...) takes a list of column names, not the "
                f"string {given!r}; write {name}=[{given!r}]."
            )
    return TrackOptions(
        exclude=tuple(exclude or ()),
        only=None if only is None else tuple(only),
    )


def _register(cls: T, options: TrackOptions) -> T:
    if isinstance(cls, sa.Table):
        _register_table(cls, options)
        return cls
    if not isinstance(cls, type):
        raise TypeError(
            f"track() takes a mapped class or a Table, not {cls!r}."
        )
    mapper: Mapper[Any] | None = sa.inspect(cls, raiseerr=False)
    if mapper is not None and isinstance(mapper.local_table, sa.Table):
        # Mapped already (declarative): check the names now. An imperatively
        # mapped class is checked when it is first used.
        _check_not_plain(cls.__name__, mapper.local_table)
        _excluded_columns(cls, mapper.local_table, mapper, options)
    global _generation
    with _lock:
        setattr(cls, TRACK_ATTRIBUTE, options)
        _tracked_classes.add(cls)
        _mapper_cache.clear()
        _generation += 1
    return cls


def _register_table(table: sa.Table, options: TrackOptions) -> None:
    """Track a plain table (an association table of a ``secondary=``
    relationship): its rows are matched by their primary key."""
    pk_columns = tuple(table.primary_key.columns)
    if not pk_columns:
        raise ConfigurationError(
            f"track() of table {table.fullname}: the table has no primary key, "
            "so its rows cannot be matched between the server and its nodes. "
            "Make its foreign-key columns the primary key "
            "(Column(..., primary_key=True) on each); a link is then stored once."
        )
    for cls in tracked_classes():
        found: Mapper[Any] | None = sa.inspect(cls, raiseerr=False)
        if found is not None and found.local_table is table:
            _check_not_plain(cls.__name__, table, plain_first=False)
    excluded = _excluded_columns(table, table, None, options)
    info = TrackedTable(
        mapper=None,
        table=table,
        name=table.fullname,
        pk_columns=pk_columns,
        pk_attrs=tuple(c.key for c in pk_columns),
        integer_key=all(isinstance(c.type, sa.Integer) for c in pk_columns),
        synced_columns=tuple(c for c in table.columns if c.name not in excluded),
        excluded=excluded,
    )
    global _generation
    with _lock:
        _tracked_plain[table] = info
        _generation += 1


def _check_not_plain(name: str, table: sa.Table, *, plain_first: bool = True) -> None:
    """Refuse to track a table both as a plain table and through a mapped
    class: every write would be logged twice (once per object, once per
    statement on the table)."""
    if plain_first and table not in _tracked_plain:
        return
    raise ConfigurationError(
        f"Table {table.fullname} is tracked twice: as a plain table "
        f"(track({table.fullname})) and through the mapped class {name} "
        "(@track), so each of its writes would be logged twice. Track one "
        "of them: the class if the app writes objects of it, the table if "
        "only a secondary= relationship writes its rows."
    )


def _excluded_columns(
    cls: type | sa.Table,
    table: sa.Table,
    mapper: Mapper[Any] | None,
    options: TrackOptions,
) -> frozenset[str]:
    """The names of the columns of ``table`` that ``options`` keep out of
    sync, checked."""
    listed = options.exclude if options.only is None else options.only
    what = "exclude" if options.only is None else "only"
    label = cls.fullname if isinstance(cls, sa.Table) else cls.__name__
    named: set[str] = set()
    for name in listed:
        column = _column_named(mapper, table, name)
        if column is None:
            known = ", ".join(c.name for c in table.columns)
            raise ConfigurationError(
                f"track({what}=[...]) of {label}: {name!r} is not a column "
                f"of {table.fullname}; its columns are {known}."
            )
        named.add(column.name)
    if options.only is None:
        excluded = named
    else:
        pk = {c.name for c in table.primary_key.columns}
        excluded = {c.name for c in table.columns} - named - pk
    for column in table.columns:
        if column.name not in excluded:
            continue
        if column.primary_key:
            raise ConfigurationError(
                f"track(exclude=[...]) of {label}: {column.name!r} is a "
                "primary-key column, which cannot be kept out of sync (rows "
                "are matched by their key)."
            )
        if (
            not column.nullable
            and column.default is None
            and column.server_default is None
        ):
            raise ConfigurationError(
                f"{label}.{column.name} is kept out of sync but is NOT "
                "NULL without a default: a row inserted on the other side "
                "(pulled by a node, pushed to the server) arrives without it "
                "and could not be stored. Give the column a default or a "
                "server_default, or make it nullable."
            )
    return frozenset(excluded)


def _column_named(
    mapper: Mapper[Any] | None, table: sa.Table, name: str
) -> sa.Column[Any] | None:
    """The column of ``table`` that ``name`` names: a column attribute of
    the class, else a column key or name of the table."""
    prop = (
        mapper.column_attrs.get(name)
        if mapper is not None and isinstance(name, str)
        else None
    )
    by_key: dict[str, sa.Column[Any]] = {c.key: c for c in table.columns}
    if prop is not None and prop.columns[0].table is table:
        return by_key[prop.columns[0].key]
    if name in by_key:
        return by_key[name]
    return {c.name: c for c in table.columns}.get(name)


def untrack(cls: type | sa.Table) -> None:
    """Stop tracking ``cls`` (mostly useful in tests)."""
    global _generation
    with _lock:
        if isinstance(cls, sa.Table):
            _tracked_plain.pop(cls, None)
            _generation += 1
            return
        if TRACK_ATTRIBUTE in cls.__dict__:
            delattr(cls, TRACK_ATTRIBUTE)
        _tracked_classes.discard(cls)
        _mapper_cache.clear()
        _generation += 1


def is_tracked(cls: type | sa.Table) -> bool:
    """Whether instances of ``cls`` (or rows of a plain table) are logged."""
    if isinstance(cls, sa.Table):
        return cls in _tracked_plain
    mapper: Mapper[Any] | None = sa.inspect(cls, raiseerr=False)
    if mapper is None:
        return bool(cls.__dict__.get(TRACK_ATTRIBUTE, False))
    return tracked_table_for(mapper) is not None


def tracked_table_for(mapper: Mapper[Any]) -> TrackedTable | None:
    """The :class:`TrackedTable` for a mapper, or ``None`` when it is not tracked."""
    try:
        return _mapper_cache[mapper]
    except KeyError:
        pass
    info = _describe(mapper)
    with _lock:
        _mapper_cache[mapper] = info
    return info


def _describe(mapper: Mapper[Any]) -> TrackedTable | None:
    owner: Mapper[Any] | None = None
    for candidate in mapper.iterate_to_root():
        if candidate.class_.__dict__.get(TRACK_ATTRIBUTE):
            owner = candidate
            break
    if owner is None:
        return None
    table = owner.local_table
    if not isinstance(table, sa.Table):
        raise ConfigurationError(
            f"{owner.class_.__name__} is mapped to {table!r}, not to a table; "
            "only classes mapped to a table can be tracked."
        )
    _check_not_plain(owner.class_.__name__, table)
    if mapper.local_table is not table and mapper.inherits is not None:
        raise ConfigurationError(
            f"{mapper.class_.__name__} adds its own table to the tracked "
            f"{owner.class_.__name__}; joined-table inheritance is not supported. "
            "Track the subclass's table as a model of its own."
        )
    pk_columns = tuple(table.c[c.key] for c in owner.primary_key)
    pk_attrs = tuple(owner.get_property_by_column(c).key for c in pk_columns)
    options = owner.class_.__dict__[TRACK_ATTRIBUTE]
    if not isinstance(options, TrackOptions):
        options = TrackOptions()
    excluded = _excluded_columns(owner.class_, table, owner, options)
    return TrackedTable(
        mapper=owner,
        table=table,
        name=table.fullname,
        pk_columns=pk_columns,
        pk_attrs=pk_attrs,
        integer_key=all(isinstance(c.type, sa.Integer) for c in pk_columns),
        synced_columns=tuple(c for c in table.columns if c.name not in excluded),
        excluded=excluded,
    )


def registry_state() -> tuple[int, int]:
    """Changes whenever the set of tracked classes does: the number of
    :func:`track`/:func:`untrack` calls so far and how many tracked classes
    are alive (a collected class leaves the weak set silently)."""
    with _lock:
        return _generation, len(_tracked_classes) + len(_tracked_plain)


def tracked_classes() -> list[type]:
    """Every live class passed to :func:`track`."""
    with _lock:
        return list(_tracked_classes)


def tracked_tables(metadata: sa.MetaData | None = None) -> Iterator[TrackedTable]:
    """The tracked tables, optionally only those on ``metadata``."""
    seen: set[int] = set()
    for cls in tracked_classes():
        mapper: Mapper[Any] | None = sa.inspect(cls, raiseerr=False)
        if mapper is None:
            continue
        info = tracked_table_for(mapper)
        if info is None or id(info.table) in seen:
            continue
        if metadata is not None and info.table.metadata is not metadata:
            continue
        seen.add(id(info.table))
        yield info
    for info in tracked_plain_tables():
        if id(info.table) in seen:
            continue
        if metadata is not None and info.table.metadata is not metadata:
            continue
        seen.add(id(info.table))
        yield info


def tracked_plain_tables() -> list[TrackedTable]:
    """The plain tables passed to :func:`track` (no mapped class)."""
    with _lock:
        return list(_tracked_plain.values())


def plain_tracked(table: Any) -> TrackedTable | None:
    """The :class:`TrackedTable` of ``table`` when it was tracked as a plain
    table, else ``None`` (cheap: capture asks for every statement a flush
    runs)."""
    try:
        return _tracked_plain.get(table)
    except TypeError:  # not weak-referenceable, so not a tracked table
        return None


def tracked_table_by_table(table: Any) -> TrackedTable | None:
    """The tracked table whose :class:`~sqlalchemy.Table` is ``table``."""
    plain = plain_tracked(table)
    if plain is not None:
        return plain
    for info in tracked_tables():
        if info.table is table:
            return info
    return None
