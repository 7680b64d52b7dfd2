"""Numbering versions after their transactions committed.

A version's ``number`` is what pulls page by and what nodes remember. The
guarantees (see :doc:`/design`, "Version numbering"):

1. only committed versions are numbered, and a number, once visible, never
   changes;
2. numbers are gap-free, and the counter row (``reflectsync_version_counter``
   row 1) always equals the highest committed number;
3. a reader that saw counter value ``C`` has every version ``<= C`` fully
   visible, and every version numbered later gets a number ``> C``: no
   puller ever skips one.

On SQLite (one writer at a time) a transaction is still numbered in
``before_commit``, under the write lock it holds anyway. On PostgreSQL and
MySQL / MariaDB a tracked transaction commits its version with ``number``
NULL and takes no shared lock at all; :func:`number_versions` numbers the
committed ones later in a short transaction of its own: it locks the counter
row, reads the un-numbered versions it can see (a plain read sees only
committed rows), numbers them in ``id`` order from the counter on, moves the
counter and commits. Numberers queue on the counter row for the length of
that one small transaction, never behind an application's commit. Pulls,
trims and repairs call it first, so they see everything committed before
they started; a push calls :func:`lock_and_number` inside its own
transaction, so its conflict check sees every committed version, and its
own version is numbered at its commit under the lock it already holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import sqlalchemy as sa

from ..rows import built_once
from .tables import VERSION_ROW, LogTables

#: Backends on which versions are numbered after commit.
AFTER_COMMIT = ("postgresql", "mysql")

log = logging.getLogger("flask_reflectsync")

#: How many versions one UPDATE numbers on backends without window
#: functions in UPDATE (MySQL / MariaDB).
_CHUNK = 500


def feed_channel(tables: LogTables) -> str:
    """The PostgreSQL ``NOTIFY`` channel on which newly numbered versions are
    announced (the versions table's name: one per log)."""
    return tables.versions.name


def notify_numbered(connection: sa.Connection, tables: LogTables) -> None:
    """Announce, at the commit of ``connection``'s transaction, that versions
    were numbered (PostgreSQL ``pg_notify``; elsewhere nothing): the change
    feed's listeners in every process wake (see
    :mod:`flask_reflectsync.server.feed`).

    Only called by transactions that hold the counter lock through their
    commit anyway (numberers, a push): PostgreSQL serialises the commits of
    notifying transactions, which every tracked commit of the app must not
    pay (see :doc:`/design`).
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            "SELECT pg_notify(%(channel)s, '')", {"channel": feed_channel(tables)}
        )


def numbered_after_commit(dialect: sa.Dialect) -> bool:
    """Whether versions on this backend are numbered after commit (by
    :func:`number_versions`) rather than in ``before_commit``."""
    return dialect.name in AFTER_COMMIT


def number_versions(
    bind: sa.Engine | sa.Connection, tables: LogTables, *, wait: bool = True
) -> None:
    """Number every committed, un-numbered version, in a transaction of its
    own.

    Safe to call from any number of processes at once. It costs one
    statement when nothing is waiting to be numbered, and otherwise one
    short transaction holding the counter row's lock. On backends that
    number at commit it does nothing.

    Only for a server's log (``assign_versions``): a node's un-numbered
    versions are its push queue.

    :param bind: an engine, or a connection whose engine is used (the
        numbering never runs inside the connection's own transaction).
    :param tables: the server's log tables.
    :param wait: wait for the counter lock if another transaction holds it
        (the default). With ``False`` the numbering is left to the holder
        and later numberers: for a caller that only wants fresher numbers
        and takes the lock itself later (a push).
    """
    engine = bind if isinstance(bind, sa.Engine) else bind.engine
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            _number_left_on_sqlite(connection, tables)
        return
    if not numbered_after_commit(engine.dialect):
        return
    with engine.connect() as connection:
        _number_on(connection, tables, wait=wait)


def _number_left_on_sqlite(connection: sa.Connection, tables: LogTables) -> None:
    """SQLite numbers a transaction's version at its commit; only versions
    created by capture triggers (:mod:`.row_triggers`) in transactions
    outside the ORM are left un-numbered. Numbered here under SQLite's
    write lock, taken first: every version it then sees committed, and
    none can commit meanwhile."""
    # The look goes straight to the driver, outside any transaction: with
    # use_immediate_transactions a transaction would take the write lock,
    # and every pull would queue behind the app's writers for nothing.
    v = connection.dialect.identifier_preparer.format_table(tables.versions)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"SELECT 1 FROM {v} WHERE number IS NULL LIMIT 1")
        waiting = cursor.fetchone()
    finally:
        cursor.close()
    if waiting is None:
        return
    counter = tables.counter
    connection.execute(  # the write lock, before the reads
        sa.update(counter)
        .where(counter.c.id == VERSION_ROW)
        .values(value=counter.c.value)
    )
    base = lock_counter(connection, tables)
    assert base is not None
    _number_on_sqlite(connection, tables, base)
    connection.commit()


def _number_on_sqlite(
    connection: sa.Connection, tables: LogTables, base: int, *, own: int | None = None
) -> int:
    """:func:`_number_locked` on SQLite (under its write lock) in one
    statement where SQLite has ``UPDATE ... FROM`` (3.33): an ORM commit
    in trigger mode runs it every time."""
    if sqlite3_version() < (3, 33):
        return _number_locked(connection, tables, base, own=own)
    preparer = connection.dialect.identifier_preparer
    v = preparer.format_table(tables.versions)
    moved = connection.exec_driver_sql(
        f"UPDATE {v} SET number = ? + w.n FROM (SELECT id, row_number() OVER "
        f"(ORDER BY id) AS n FROM {v} WHERE number IS NULL AND id IS NOT ?) "
        f"AS w WHERE {v}.id = w.id",
        (base, own),
    ).rowcount
    if not moved:
        return base
    c = preparer.format_table(tables.counter)
    connection.exec_driver_sql(
        f"UPDATE {c} SET value = ? WHERE id = ?", (base + moved, VERSION_ROW)
    )
    return base + moved


def sqlite3_version() -> tuple[int, ...]:
    """The SQLite library's version."""
    import sqlite3

    return sqlite3.sqlite_version_info


def _number_on(connection: sa.Connection, tables: LogTables, *, wait: bool) -> None:
    """:func:`number_versions` on a connection of its own (not in a
    transaction)."""
    if connection.dialect.name == "postgresql":
        connection = connection.execution_options(
            isolation_level="READ COMMITTED"
        )
    else:
        # Every read of the numbering must see what committed before it,
        # the counter lock's previous holder included; applies to the
        # next transaction only, so nothing is left to reset.
        connection.exec_driver_sql(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
        )
    versions = tables.versions
    waiting = connection.execute(
        sa.select(versions.c.id).where(versions.c.number.is_(None)).limit(1)
    ).first()
    if waiting is None:
        connection.rollback()
        return
    skip = not wait and _skips_locked(connection.dialect)
    base = lock_counter(connection, tables, skip_locked=skip)
    if base is not None:
        _number_locked(connection, tables, base)
    connection.commit()


def lock_and_number(
    connection: sa.Connection, tables: LogTables, *, own: int | None = None
) -> int:
    """Inside the caller's transaction: lock the counter row (held until that
    transaction ends) and number the committed versions waiting, leaving out
    the caller's own version ``own``.

    The transaction must read committed data (``READ COMMITTED``). On
    backends that number at commit it only takes the lock.

    :return: the counter's value after numbering.
    """
    base = lock_counter(connection, tables)
    assert base is not None
    if connection.dialect.name == "sqlite":
        # Versions of capture triggers outside the ORM (see
        # _number_left_on_sqlite); the transaction writes, so it holds
        # SQLite's write lock.
        return _number_on_sqlite(connection, tables, base, own=own)
    if not numbered_after_commit(connection.dialect):
        return base
    return _number_locked(connection, tables, base, own=own)


def lock_counter(
    connection: sa.Connection, tables: LogTables, *, skip_locked: bool = False
) -> int | None:
    """Lock the counter row until the transaction ends; return its value
    (the row is created if a migration left it out).

    :param skip_locked: return ``None`` at once if another transaction
        holds the lock.
    """
    counter = tables.counter
    locked = built_once(
        counter,
        ("lock", skip_locked),
        lambda: sa.select(counter.c.value)
        .where(counter.c.id == VERSION_ROW)
        .with_for_update(skip_locked=skip_locked),
    )
    value = connection.execute(locked).scalar()
    if value is None and skip_locked:
        present = sa.select(counter.c.id).where(counter.c.id == VERSION_ROW)
        if connection.execute(present).first() is not None:
            return None  # held by another transaction
    if value is None:
        # Two first numberers racing here make one fail loudly on the
        # primary key, never hand out a number twice.
        connection.execute(sa.insert(counter).values(id=VERSION_ROW, value=0))
        value = connection.execute(locked).scalar()
    return int(value or 0)


def _skips_locked(dialect: sa.Dialect) -> bool:
    """Whether the backend knows ``FOR UPDATE SKIP LOCKED``."""
    version = tuple(getattr(dialect, "server_version_info", None) or ())
    if dialect.name == "postgresql":
        return True
    if getattr(dialect, "is_mariadb", False):
        return version[:2] >= (10, 6)
    return version[:1] >= (8,)


def _number_locked(
    connection: sa.Connection, tables: LogTables, base: int, *, own: int | None = None
) -> int:
    """Number the waiting versions from ``base`` on, under the counter lock
    (already held), and move the counter; return its new value."""
    versions, counter = tables.versions, tables.counter
    if connection.dialect.name == "postgresql":
        # One statement: a new snapshot, taken after the lock was granted,
        # so it sees every version the lock's previous holder numbered.
        v = connection.dialect.identifier_preparer.format_table(versions)
        c = connection.dialect.identifier_preparer.format_table(counter)
        skip = "" if own is None else " AND id <> %(own)s"
        moved = connection.exec_driver_sql(
            f"WITH waiting AS (SELECT id, row_number() OVER (ORDER BY id) AS n "
            f"FROM {v} WHERE number IS NULL{skip}), "
            f"numbered AS (UPDATE {v} AS v SET number = %(base)s + waiting.n "
            "FROM waiting WHERE v.id = waiting.id RETURNING 1) "
            f"UPDATE {c} SET value = %(base)s + (SELECT count(*) FROM numbered) "
            "WHERE id = %(row)s RETURNING value",
            {"base": base, "own": own, "row": VERSION_ROW},
        ).scalar_one()
        if int(moved) > base:
            notify_numbered(connection, tables)
        return int(moved)
    waiting_query = sa.select(versions.c.id).where(versions.c.number.is_(None))
    if own is not None:
        waiting_query = waiting_query.where(versions.c.id != own)
    waiting = list(connection.execute(waiting_query.order_by(versions.c.id)).scalars())
    if not waiting:
        return base
    for start in range(0, len(waiting), _CHUNK):
        ids = waiting[start : start + _CHUNK]
        numbers: dict[Any, Any] = {
            version_id: base + start + n + 1 for n, version_id in enumerate(ids)
        }
        value: Any = (
            numbers[ids[0]]
            if len(ids) == 1
            else sa.case(numbers, value=versions.c.id)
        )
        connection.execute(
            sa.update(versions).where(versions.c.id.in_(ids)).values(number=value)
        )
    top = base + len(waiting)
    connection.execute(
        sa.update(counter).where(counter.c.id == VERSION_ROW).values(value=top)
    )
    return top


class _SoonNumberer:
    """Numbers an engine's committed versions in a thread of its own, soon
    after an app's commit pokes it (see :func:`number_soon`)."""

    #: Seconds without a poke after which the thread ends.
    IDLE = 5.0
    #: Seconds a poke waits for more: the commits of a burst (an app writing
    #: row by row) share one numbering instead of one each, which competed
    #: with the app's next commit (single-row commits 1.77x untracked with a
    #: run per commit, 1.38x without the thread, back to back on PostgreSQL).
    GATHER = 0.02

    def __init__(self, engine: sa.Engine, tables: LogTables) -> None:
        # Weakly: an engine nobody else holds is gone, and so is the thread.
        self._engine = weakref.ref(engine)
        self.tables = tables
        self._poked = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._disposed = False
        self.running = False

    @property
    def idle(self) -> bool:
        """Neither numbering nor asked to."""
        return not (self.running or self._poked.is_set())

    def poke(self) -> None:
        """Ask for a numbering soon; pokes during one run are served by
        one more run, not one each."""
        self._poked.set()
        with self._lock:
            alive = self._thread is not None and self._pid == os.getpid()
            if not alive:  # none yet, ended idle, or lost in a fork
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="reflectsync-numbering", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        # One connection for the thread's whole burst of runs, not one per
        # run: opening a PostgreSQL connection starts a server process,
        # which cost the app's next commits more than the numbering itself
        # (back-to-back single-row commits 1.54x untracked with a new
        # connection per run). It is closed, never pooled, when the thread
        # ends idle or its engine is disposed (see :meth:`disposed`), so
        # nothing outlives the engine's pool.
        connection: sa.Connection | None = None
        try:
            while True:
                if not self._poked.wait(self.IDLE):
                    with self._lock:
                        if not self._poked.is_set():
                            self._thread = None
                            return
                if self._disposed:
                    # Pokes before the dispose are left to the next
                    # numberer (any pull or push): nothing is lost.
                    with self._lock:
                        self._disposed = False
                        self._poked.clear()
                    _close(connection)
                    connection = None
                    continue
                time.sleep(self.GATHER)
                engine = self._engine()
                if engine is None:
                    return
                self.running = True
                # Cleared before numbering: a commit after this point is
                # seen by this run or pokes the next one.
                self._poked.clear()
                try:
                    if connection is None:
                        connection = engine.connect()
                    _number_on(connection, self.tables, wait=True)
                except Exception:
                    # The versions wait for the next numberer (any pull,
                    # push, feed or poke); nothing is lost.
                    log.warning("Numbering after a commit failed.", exc_info=True)
                    _close(connection)
                    connection = None
                finally:
                    self.running = False
                    del engine
        finally:
            _close(connection)

    def disposed(self) -> None:
        """The engine was disposed: close the thread's connection now (at
        its next wake-up, which this causes)."""
        with self._lock:
            if self._thread is None:
                return
            self._disposed = True
        self._poked.set()


def _close(connection: sa.Connection | None) -> None:
    """Close ``connection`` for good (invalidated: not back to a pool that
    may have been disposed meanwhile)."""
    if connection is not None:
        try:
            connection.invalidate()
            connection.close()
        except Exception:  # pragma: no cover - the server went away
            log.debug("Closing the numbering connection failed.", exc_info=True)
    return None


_numberers: weakref.WeakKeyDictionary[sa.Engine, dict[str, _SoonNumberer]] = (
    weakref.WeakKeyDictionary()
)
_numberers_lock = threading.Lock()


def number_soon(engine: sa.Engine, tables: LogTables) -> None:
    """Number ``engine``'s committed versions soon, in a thread of this
    process (one per engine and log, running only while commits come), so
    the numbering's ``NOTIFY`` wakes the change feed of every process and
    host at once, not at its next poll.

    Called after an app's tracked commit on PostgreSQL, the only backend
    with a ``NOTIFY`` to send: the commit itself must not notify (see
    :func:`notify_numbered`), the numberer's own short transaction may.
    """
    per_engine = _numberers.get(engine)
    numberer = None if per_engine is None else per_engine.get(tables.versions.name)
    if numberer is not None:
        numberer.poke()
        return
    with _numberers_lock:
        per_engine = _numberers.setdefault(engine, {})
        numberer = per_engine.get(tables.versions.name)
        if numberer is None:
            numberer = per_engine[tables.versions.name] = _SoonNumberer(
                engine, tables
            )
            sa.event.listen(engine, "engine_disposed", _on_dispose(numberer))
    numberer.poke()


def _on_dispose(numberer: _SoonNumberer) -> Any:
    def disposed(engine: sa.Engine) -> None:
        numberer.disposed()

    return disposed


def settle_numbering(engine: sa.Engine, timeout: float = 5.0) -> bool:
    """Wait until :func:`number_soon`'s numbering of ``engine`` is done
    (before disposing of the engine or dropping its tables); whether it
    is."""
    deadline = time.monotonic() + timeout
    while True:
        with _numberers_lock:
            numberers = list(_numberers.get(engine, {}).values())
        if all(n.idle for n in numberers):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
