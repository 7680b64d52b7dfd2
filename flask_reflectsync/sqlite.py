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

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event


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
    event.listen(engine, "connect", _driver_autocommit)
    event.listen(engine, "begin", _begin_immediate)


def _driver_autocommit(dbapi_connection: Any, connection_record: Any) -> None:
    # Stop the driver from issuing its own BEGIN; SQLAlchemy's "begin" event
    # below issues ours.
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")
