"""SQLite settings for several writers at once.

With Python's ``sqlite3`` default, a transaction starts with a deferred
``BEGIN`` and takes the write lock at its first write. Two writers that both
already read can then deadlock, and SQLite answers one of them at once with
"database is locked" instead of waiting. Starting every transaction with
``BEGIN IMMEDIATE`` takes the write lock up front, so writers queue behind
each other (for up to the connection's ``timeout``) and version numbers are
handed out in commit order. It also lets SAVEPOINTs behave as documented.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

#: How long a transaction waits for its turn in the process before it goes
#: on to SQLite's own wait (a turn never handed back costs only this).
TURN_TIMEOUT = 10.0


class _Turns:
    """Writers of one SQLite engine in this process, first come first
    served.

    SQLite's busy handler polls with growing sleeps, so a thread that
    commits and begins again at once can keep the write lock from a waiting
    thread until its timeout ("database is locked") although the waiter
    asked first. Threads of the process therefore queue here before ``BEGIN
    IMMEDIATE``: the lock is handed to the oldest waiter on each commit or
    rollback. A thread may take its turn again while holding it (a second
    connection of the same thread then meets SQLite's own wait, as before).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self._owner: int | None = None
        self._depth = 0

    def take(self, timeout: float) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            ticket = object()
            self._waiting.append(ticket)
            ready = self._cond.wait_for(
                lambda: self._owner is None and self._waiting[0] is ticket, timeout
            )
            self._waiting.remove(ticket)
            if not ready:
                self._cond.notify_all()
                return False
            self._owner, self._depth = me, 1
            return True

    def give_back(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth <= 0:
                self._owner, self._depth = None, 0
                self._cond.notify_all()


_TURNS_KEY = "reflectsync_turn"


def use_immediate_transactions(engine: sa.Engine) -> None:
    """Make every transaction on a SQLite ``engine`` start with ``BEGIN IMMEDIATE``.

    Call it once, right after creating the engine (for Flask-SQLAlchemy, in
    an app context after ``db.init_app(app)``: ``use_immediate_transactions(
    db.engine)``). Does nothing for other backends.

    :param engine: the engine to configure.
    """
    if engine.dialect.name != "sqlite":
        return
    if event.contains(engine, "connect", _driver_autocommit):
        return
    turns = _Turns()

    def begin_immediate(connection: sa.Connection) -> None:
        if turns.take(TURN_TIMEOUT):
            connection.info[_TURNS_KEY] = turns
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _give_back(connection)
            raise

    event.listen(engine, "connect", _driver_autocommit)
    event.listen(engine, "begin", begin_immediate)
    event.listen(engine, "commit", _give_back)
    event.listen(engine, "rollback", _give_back)


def _driver_autocommit(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop the driver from issuing its own BEGIN; SQLAlchemy's "begin" event
    # below issues ours.
    dbapi_connection.isolation_level = None


def _give_back(connection: sa.Connection) -> None:
    turns = connection.info.pop(_TURNS_KEY, None)
    if turns is not None:
        turns.give_back()
