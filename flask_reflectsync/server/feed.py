"""The change feed (``POST /changes``): a long poll that answers as soon as
a version a node would pull exists, framework-free.

A node sends ``{"since": N, "wait": seconds}``. :func:`has_news` is the
question ("is there a numbered version after ``since``, not pushed by the
node, with an operation in its share?"), asked once when the request
arrives and again each time this process's :class:`FeedHub` says the log
may have moved, until the hold (at most ``REFLECTSYNC_FEED_MAX_WAIT``) runs
out.

The hub is one thread per worker process and database, shared by every
waiting request, and runs only while someone waits. Each poll interval
(``REFLECTSYNC_FEED_POLL_INTERVAL``) it numbers the versions committed
since (:func:`~flask_reflectsync.tracking.numbering.number_versions`: the
app's own commits are numbered after commit on PostgreSQL and MariaDB, and
nobody else may be pulling) and reads the counter: one or two cheap
statements per process, however many nodes wait. On PostgreSQL it also
listens on a connection of its own: every numbering and every push
notify at their commit
(:func:`~flask_reflectsync.tracking.numbering.notify_numbered`), so a
push through any worker or host wakes the waiters at once, not at the next
poll. Whatever wakes the hub, each waiter asks :func:`has_news` for
itself: a node is never answered ``changed`` for rows outside its share.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

import sqlalchemy as sa

from ..tracking import LogTables
from ..tracking.numbering import feed_channel, number_versions
from ..tracking.tables import current_version
from ..wire.messages import validate
from .pull_scopes import Share
from .trim import trimmed_through

log = logging.getLogger("flask_reflectsync")

#: Every hub of this process (see :func:`close_feeds`).
_hubs: weakref.WeakSet[FeedHub] = weakref.WeakSet()


def read_changes_request(message: Any, max_wait: float) -> tuple[int, float]:
    """``(since, wait)`` of a ``POST /changes`` body, the wait cut to
    ``max_wait`` (its default).

    :raises ValidationError: (400) naming what does not fit.
    """
    request = validate(message, "ChangesRequest")
    wait = float(request.get("wait", max_wait))
    return int(request["since"]), min(wait, max_wait)


def has_news(
    connection: sa.Connection,
    tables: LogTables,
    node_id: int,
    since: int,
    share: Share | None,
) -> bool:
    """Whether a pull from ``since`` would bring node ``node_id`` something:
    a numbered version after ``since``, pushed by someone else, with an
    operation the node's ``share`` holds (any, without scopes); or the log
    was trimmed past ``since`` (the pull tells the node to repair)."""
    if since < trimmed_through(connection, tables):
        return True
    versions, operations = tables.versions, tables.operations
    logged = operations.join(versions, versions.c.id == operations.c.version_id)
    query = (
        sa.select(sa.literal(1))
        .select_from(logged)
        .where(
            versions.c.number > since,
            sa.or_(versions.c.node_id.is_(None), versions.c.node_id != node_id),
        )
    )
    if share is not None:
        query = query.where(share.log_filter(operations))
    return connection.execute(query.limit(1)).first() is not None


def wait_for_news(
    engine: sa.Engine,
    tables: LogTables,
    hub: FeedHub,
    node_id: int,
    since: int,
    share: Share | None,
    wait: float,
) -> dict[str, Any]:
    """Hold until :func:`has_news` or ``wait`` seconds pass.

    :return: ``{"changed": bool, "version": the server's latest version}``.
    """
    deadline = time.monotonic() + wait
    while True:
        # Read before asking: a change after the question moves it.
        generation = hub.generation
        number_versions(engine, tables)
        with engine.connect() as connection:
            changed = has_news(connection, tables, node_id, since, share)
            version = current_version(connection, tables)
            connection.rollback()
        left = deadline - time.monotonic()
        if changed or left <= 0:
            return {"changed": changed, "version": version}
        hub.wait(generation, left)
        if hub.closed:
            return {"changed": False, "version": version}


class FeedHub:
    """Notices new versions for every waiting request of one process and
    database (see the module's docstring).

    :param engine: the server's database.
    :param tables: its log tables.
    :param poll_interval: seconds between two looks at the counter.
    """

    def __init__(
        self, engine: sa.Engine, tables: LogTables, poll_interval: float
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.poll_interval = poll_interval
        self._condition = threading.Condition()
        self._generation = 0
        self._waiters = 0
        self._thread: threading.Thread | None = None
        #: Whether a PostgreSQL ``LISTEN`` connection is open now.
        self.listening = False
        #: Set by :meth:`close`: held requests answer at once.
        self.closed = False
        _hubs.add(self)

    @property
    def generation(self) -> int:
        """Moves each time the log may have changed."""
        return self._generation

    def wait(self, generation: int, timeout: float) -> int:
        """Wait until the generation moves past ``generation`` or ``timeout``
        seconds pass; return the generation."""
        with self._condition:
            if self.closed:
                return self._generation
            self._waiters += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_run_hub,
                    args=(weakref.ref(self),),
                    name="reflectsync-feed",
                    daemon=True,
                )
                self._thread.start()
            self._condition.notify_all()
            try:
                self._condition.wait_for(
                    lambda: self._generation != generation, timeout
                )
            finally:
                self._waiters -= 1
            return self._generation

    def close(self) -> None:
        """End every hold now (the requests answer ``changed: false``
        without another query), for a server shutting down; the hub's
        thread stops once they are gone."""
        self.closed = True
        self.bump()

    def bump(self) -> None:
        """Wake every waiter: the log may have changed."""
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def _idle(self) -> bool:
        """Wait (a poll interval at most) for a waiter; whether none came."""
        with self._condition:
            return not self._condition.wait_for(
                lambda: self._waiters > 0, self.poll_interval
            )

    def _busy(self) -> bool:
        return self._waiters > 0

    def _look(self, last: int | None) -> int:
        """Number what committed, read the counter, wake the waiters if it
        moved since ``last``; return it."""
        number_versions(self.engine, self.tables)
        with self.engine.connect() as connection:
            value = current_version(connection, self.tables)
            connection.rollback()
        if last is not None and value != last:
            self.bump()
        return value

    def _serve(self) -> None:
        """Watch the log while anyone waits."""
        dialect = self.engine.dialect
        if (dialect.name, dialect.driver) == ("postgresql", "psycopg"):
            try:
                listener = _listen(self.engine, feed_channel(self.tables))
            except Exception:
                log.warning(
                    "The change feed could not LISTEN; it polls the counter "
                    "instead.",
                    exc_info=True,
                )
            else:
                try:
                    self.listening = True
                    self._serve_listening(listener)
                finally:
                    self.listening = False
                    listener.close()
                return
        last: int | None = None
        while self._busy():
            last = self._look(last)
            time.sleep(self.poll_interval)

    def _serve_listening(self, listener: Any) -> None:
        last: int | None = None
        while self._busy():
            last = self._look(last)
            heard = False
            for _ in listener.notifies(timeout=self.poll_interval, stop_after=1):
                heard = True
            if heard:
                self.bump()


def close_feeds() -> None:
    """Close every hub of this process (:meth:`FeedHub.close`): each held
    change-feed request answers ``changed: false`` at once, and requests
    arriving later answer without holding. For a server shutting down
    gracefully, which otherwise waits for every hold to run out (see
    :mod:`flask_reflectsync.gunicorn`). Safe in a signal handler."""
    for hub in list(_hubs):
        hub.close()


def _listen(engine: sa.Engine, channel: str) -> Any:
    """A connection of its own (outside the pool), in autocommit, listening
    on ``channel``."""
    dialect = engine.dialect
    args, params = dialect.create_connect_args(engine.url)
    connection = dialect.loaded_dbapi.connect(*args, **params)
    connection.autocommit = True
    quoted = dialect.identifier_preparer.quote_identifier(channel)
    connection.execute(f"LISTEN {quoted}")
    return connection


def _run_hub(ref: weakref.ref[FeedHub]) -> None:
    """The hub's thread: serves while anyone waits, idles (a poll interval
    at a time) otherwise, ends when the hub is collected."""
    while True:
        hub = ref()
        if hub is None or (hub.closed and not hub._busy()):
            return
        try:
            if not hub._idle():
                hub._serve()
        except Exception:
            # A database that went away: the waiters time out or ask again.
            log.warning("The change feed's watch failed; retrying.", exc_info=True)
            time.sleep(hub.poll_interval)
        del hub
