"""Which mapped classes are tracked, and what the log needs to know of them."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

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


# eq=False: one instance per mapper (cached below), hashed by identity, which
# is cheap; capture puts them in sets on hot paths.
@dataclass(frozen=True, eq=False)
class TrackedTable:
    """What the operations log records for one tracked mapped class.

    :param mapper: the mapper of the decorated class.
    :param table: the table its rows live in.
    :param name: the table's name as logged (``schema.name`` when qualified).
    :param pk_columns: the primary-key columns, in key order.
    :param pk_attrs: the mapped attribute names of those columns.
    """

    mapper: Mapper[Any]
    table: sa.Table
    name: str
    pk_columns: tuple[sa.Column[Any], ...]
    pk_attrs: tuple[str, ...]
    integer_key: bool = False

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


def track(cls: T) -> T:
    """Mark a mapped class as tracked: its inserts, updates and deletes are logged.

    Works on Flask-SQLAlchemy models and on plain SQLAlchemy declarative or
    imperatively mapped classes, with integer, UUID or composite primary keys.
    Subclasses sharing the decorated class's table (single-table inheritance)
    are tracked with it.

    ::

        @track
        class City(db.Model):
            id: Mapped[int] = mapped_column(primary_key=True)
            name: Mapped[str]

    :param cls: the class to track.
    :return: the class itself, so ``track`` works as a decorator.
    """
    if not isinstance(cls, type):
        raise TypeError(f"track() takes a mapped class, not {cls!r}.")
    global _generation
    with _lock:
        setattr(cls, TRACK_ATTRIBUTE, True)
        _tracked_classes.add(cls)
        _mapper_cache.clear()
        _generation += 1
    return cls


def untrack(cls: type) -> None:
    """Stop tracking ``cls`` (mostly useful in tests)."""
    global _generation
    with _lock:
        if TRACK_ATTRIBUTE in cls.__dict__:
            delattr(cls, TRACK_ATTRIBUTE)
        _tracked_classes.discard(cls)
        _mapper_cache.clear()
        _generation += 1


def is_tracked(cls: type) -> bool:
    """Whether instances of ``cls`` are logged."""
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
    if mapper.local_table is not table and mapper.inherits is not None:
        raise ConfigurationError(
            f"{mapper.class_.__name__} adds its own table to the tracked "
            f"{owner.class_.__name__}; joined-table inheritance is not supported. "
            "Track the subclass's table as a model of its own."
        )
    pk_columns = tuple(table.c[c.key] for c in owner.primary_key)
    pk_attrs = tuple(owner.get_property_by_column(c).key for c in pk_columns)
    return TrackedTable(
        mapper=owner,
        table=table,
        name=table.fullname,
        pk_columns=pk_columns,
        pk_attrs=pk_attrs,
        integer_key=all(isinstance(c.type, sa.Integer) for c in pk_columns),
    )


def registry_state() -> tuple[int, int]:
    """Changes whenever the set of tracked classes does: the number of
    :func:`track`/:func:`untrack` calls so far and how many tracked classes
    are alive (a collected class leaves the weak set silently)."""
    with _lock:
        return _generation, len(_tracked_classes)


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


def tracked_table_by_table(table: Any) -> TrackedTable | None:
    """The tracked table whose :class:`~sqlalchemy.Table` is ``table``."""
    for info in tracked_tables():
        if info.table is table:
            return info
    return None
