"""Keys of the node's new rows.

A node never hands out an integer key at or below the highest key it has
seen for the table (its *high water*, :class:`HighWater`): a key the server
once had, given to a new row, would reach other nodes as an update of the
old row. Where the server reserved a block of keys for the node (see
:ref:`key-blocks`), new rows take those first. The session listeners here
give new rows their keys at flush time and raise the high water.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from ..tracking import TrackedTable
from ..tracking.registry import tracked_table_for
from .tables import KEY_BLOCK_LOW, NODE_KEY_BLOCKS, NODE_KEYS

if TYPE_CHECKING:
    from .client import SyncClient
    from .merge import MergeSchema


#: Takes up to ``count`` keys from the node's reserved block of a table, in
#: the connection's transaction: ``reserve(connection, info, count)``.
KeyReserve = Callable[[sa.Connection, TrackedTable, int], list[int]]


class HighWater:
    """Reads and raises the per-table high water in ``connection``'s
    transaction. It never goes down.

    :param connection: a connection of the node's engine, in a transaction.
    :param table: the high-water table (see :func:`define_high_water_table`).
    """

    def __init__(self, connection: sa.Connection, table: sa.Table) -> None:
        self.connection = connection
        self.table = table

    def get(self, name: str, *, lock: bool = False) -> int:
        """The high water of table ``name`` (0 if none). With ``lock``, the
        row is locked until the transaction ends (``FOR UPDATE``, where the
        database has it), so concurrent writers hand out keys in turn."""
        query = sa.select(self.table.c.high_water).where(
            self.table.c.table_name == name
        )
        if lock:
            query = query.with_for_update()
        return int(self.connection.execute(query).scalar() or 0)

    def next_key(self, info: TrackedTable, *, lock: bool = False) -> int:
        """The lowest key above both the high water and the table's keys."""
        column = info.pk_columns[0]
        highest = self.connection.execute(sa.select(sa.func.max(column))).scalar()
        return max(self.get(info.name, lock=lock), int(highest or 0)) + 1

    def raise_to(self, keys: Mapping[str, int]) -> None:
        """Raise the high water of each table to at least its key."""
        if not keys:
            return
        c = self.table.c
        known = {
            name: int(value)
            for name, value in self.connection.execute(
                sa.select(c.table_name, c.high_water).where(
                    c.table_name.in_(list(keys))
                )
            )
        }
        for name, key in keys.items():
            if name not in known:
                self.connection.execute(
                    sa.insert(self.table).values(table_name=name, high_water=key)
                )
            elif known[name] < key:
                self.connection.execute(
                    sa.update(self.table)
                    .where(c.table_name == name, c.high_water < key)
                    .values(high_water=key)
                )

    def raise_to_tables(self, schema: MergeSchema) -> None:
        """Raise the high water to the highest key now in each table."""
        highest: dict[str, int] = {}
        for name, info in schema.tables.items():
            if not info.single_integer_key:
                continue
            found = self.connection.execute(
                sa.select(sa.func.max(info.pk_columns[0]))
            ).scalar()
            if found is not None and int(found) > 0:
                highest[name] = int(found)
        self.raise_to(highest)


def blocks_wanted(client: SyncClient) -> list[str]:
    """The tables with one integer key whose block of reserved keys is
    missing or three quarters used (see :ref:`key-blocks`)."""
    names = [n for n, info in client.schema.tables.items() if info.single_integer_key]
    if not names or not client.key_blocks:
        return []
    c = NODE_KEY_BLOCKS.c
    with client.engine.connect() as connection:
        left = dict(
            connection.execute(
                sa.select(c.table_name, c.last_key - c.next_key + 1)
            ).all()
        )
    return [n for n in names if int(left.get(n) or 0) < KEY_BLOCK_LOW]


def store_blocks(client: SyncClient, blocks: Any) -> None:
    """Keep the key blocks a pull answer reserved for this node."""
    if not isinstance(blocks, dict):
        return
    with client._begin() as connection:
        for name, block in blocks.items():
            if name not in client.schema.tables or not (
                isinstance(block, list)
                and len(block) == 2
                and all(type(v) is int for v in block)
                and 0 < block[0] <= block[1]
            ):
                continue  # not a block this node can use
            c = NODE_KEY_BLOCKS.c
            connection.execute(sa.delete(NODE_KEY_BLOCKS).where(c.table_name == name))
            connection.execute(
                sa.insert(NODE_KEY_BLOCKS).values(
                    table_name=name, next_key=block[0], last_key=block[1]
                )
            )


# -- keys of new rows ------------------------------------------------------------------

#: The client whose tables the sessions of each session class write.
_key_clients: weakref.WeakKeyDictionary[type[Session], weakref.ref[SyncClient]] = (
    weakref.WeakKeyDictionary()
)


def session_class_of(target: Any) -> type[Session] | None:
    """The Session class behind a sessionmaker, scoped session or Session
    subclass (``None`` for anything else)."""
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        target = target.class_
    if isinstance(target, type) and issubclass(target, Session):
        return target
    return None


def assign_keys_on(target: Any, client: SyncClient) -> None:
    """Make new rows flushed through ``target``'s sessions take integer keys
    above the node's high water, and raise it to the keys they flush."""
    target = session_class_of(target)
    if target is None:
        return  # start_tracking has refused it already
    if target not in _key_clients:
        event.listen(target, "before_flush", _assign_new_keys)
        event.listen(target, "after_flush", _raise_high_water)
    _key_clients[target] = weakref.ref(client)


def key_client(session: Session) -> SyncClient | None:
    for klass in type(session).__mro__:
        ref = _key_clients.get(klass)
        if ref is not None:
            return ref()
    return None


def _key_table(client: SyncClient, session: Session, obj: Any) -> TrackedTable | None:
    """The tracked table of ``obj`` if the client syncs it and it has a
    single integer key."""
    mapper = sa.inspect(obj).mapper
    info = tracked_table_for(mapper)
    if info is None or not info.single_integer_key:
        return None
    # On the session's connection: it may already hold the write lock.
    mine = client._schema_on(session.connection()).tables.get(info.name)
    if mine is None or mine.table is not info.table:
        return None
    return info


def _assign_new_keys(session: Session, flush_context: Any, instances: Any) -> None:
    """Give each new row without a key ``max(high water, max key) + 1``, in
    turn: one query per table and flush. The high-water row is locked (and
    raised) in the flush's transaction, so concurrent flushes wait for each
    other; on SQLite the node's BEGIN IMMEDIATE serialises them anyway."""
    client = key_client(session)
    if client is None or not session.new:
        return
    wanted: dict[str, tuple[TrackedTable, list[Any]]] = {}
    for obj in session.new:
        info = _key_table(client, session, obj)
        if info is None or sa.inspect(obj).dict.get(info.pk_attrs[0]) is not None:
            continue  # untracked, or an explicit key: the app's choice
        wanted.setdefault(info.name, (info, []))[1].append(obj)
    if not wanted:
        return
    connection = session.connection()
    water = HighWater(connection, NODE_KEYS)
    raised: dict[str, int] = {}
    for name, (info, objects) in wanted.items():
        reserved = reserved_keys(connection, info, len(objects))
        key = water.next_key(info, lock=True)
        for obj in objects:
            if reserved:
                setattr(obj, info.pk_attrs[0], reserved.pop(0))
                continue
            setattr(obj, info.pk_attrs[0], key)
            raised[name] = key
            key += 1
    water.raise_to(raised)


def reserved_keys(
    connection: sa.Connection, info: TrackedTable, count: int
) -> list[int]:
    """Up to ``count`` keys from the table's reserved block, taken (the
    block's next key moves past them). Keys some row already has locally
    (another node's fallback key inside this block) are skipped."""
    c = NODE_KEY_BLOCKS.c
    row = connection.execute(
        sa.select(c.next_key, c.last_key)
        .where(c.table_name == info.name)
        .with_for_update()
    ).first()
    if row is None or row.next_key > row.last_key:
        return []
    column = info.pk_columns[0]
    start, last = int(row.next_key), int(row.last_key)
    taken: list[int] = []
    while len(taken) < count and start <= last:
        end = min(last, start + count - len(taken) + 50)
        used = set(
            connection.execute(
                sa.select(column).where(column.between(start, end))
            ).scalars()
        )
        key = start
        while key <= end and len(taken) < count:
            if key not in used:
                taken.append(key)
            key += 1
        start = key
    connection.execute(
        sa.update(NODE_KEY_BLOCKS)
        .where(c.table_name == info.name)
        .values(next_key=start)
    )
    return taken


def _raise_high_water(session: Session, flush_context: Any) -> None:
    """Raise the high water to the keys of the rows this flush inserted
    (including keys the app chose) and deleted."""
    client = key_client(session)
    if client is None or not (session.new or session.deleted):
        return
    highest: dict[str, int] = {}
    for obj in [*session.new, *session.deleted]:
        info = _key_table(client, session, obj)
        if info is None:
            continue
        state = sa.inspect(obj)
        if state.key is not None:  # deleted: its identity
            value = state.key[1][0]
        else:  # inserted: the key the flush gave it
            value = state.dict.get(info.pk_attrs[0])
        if type(value) is int and value > highest.get(info.name, 0):
            highest[info.name] = value
    if highest:
        HighWater(session.connection(), NODE_KEYS).raise_to(highest)
