"""The offline node: :class:`SyncClient`.

A node keeps its own database (SQLite by default). Changes made through
:attr:`SyncClient.Session` are logged in the node's operations log, in the
change's transaction, by the same listeners the server uses; on a node the
log's unnumbered versions are the *push queue*. :meth:`SyncClient.push`
sends the queue, :meth:`SyncClient.pull` fetches the server's changes and
merges them with the queue (see :mod:`flask_reflectsync.node.merge`),
:meth:`SyncClient.synchronize` does both until the server accepts the push.

No Flask is needed: the client works from any Python program with plain
SQLAlchemy, and several clients and a server may live in one process.

:class:`SyncClient` only orchestrates; the work is in the modules beside
it: ``transport`` (HTTP, retries, signing, error answers), ``state`` and
``tables`` (the node's own rows), ``push``, ``pull`` and ``merge``,
``repair``, ``query``, ``keys`` (keys of new rows), ``set_aside``,
``conflicts`` and ``queue``. It is longer than the layout's ~500 lines
because its public methods carry the API's documentation.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from ..errors import (
    ConfigurationError,
    InvalidValueError,
    NotRegisteredError,
    PushRejectedError,
    SchemaMismatchError,
    SchemaRefusedError,
    UniqueConstraintError,
)
from ..sqlite import use_immediate_transactions
from ..tracking import OperationLog, TrackedTable, start_tracking, tracked_tables
from ..wire.messages import PROTOCOL_VERSION
from . import bases as _bases
from . import catch_up as _catch_up
from . import migrate as _migrate
from . import pull as _pull
from . import push as _push
from . import query as _query
from . import repair as _repair
from . import schema as _node_schema
from . import set_aside as _set_aside
from . import state as _state
from . import watch as _watch
from .conflicts import Conflict, KindResolver, Resolutions, Strategy
from .keys import assign_keys_on
from .merge import MergeSchema
from .migrate import Migration
from .results import PullProgress, PullResult, PushResult, SyncResult
from .schema import SchemaCheck
from .set_aside import SetAside
from .state import State
from .status import StatusKeeper, SyncStatus
from .tables import NODE_LOG, NODE_METADATA, create_node_tables, create_private_file
from .transport import Retry, Transport, Words
from .values import check_values_on

__all__ = [
    "SyncClient",
    "SchemaCheck",
    "SetAside",
    "PushResult",
    "PullResult",
    "SyncResult",
    "Conflict",
    "KindResolver",
    "Retry",
    "PullProgress",
    "SyncStatus",
    "Migration",
]

M = TypeVar("M")

#: How many times one ``synchronize()`` moves inserts off keys that rows of
#: other shares hold before setting what is still refused aside: each move
#: takes a key of the node's reserved block (free on the server), so one is
#: the rule; more only where the server's own app takes keys of the block
#: (MariaDB, SQLite; see server/key_blocks.py).
_REKEY_ROUNDS = 5


class _NodeSessionmaker(sessionmaker[Session]):
    """A sessionmaker that creates the node's tables before the first session."""

    client: SyncClient

    def __call__(self, **local_kw: Any) -> Session:
        self.client._prepare()
        return super().__call__(**local_kw)


class SyncClient:
    """An offline node of a flask-reflectsync server.

    ::

        engine = sa.create_engine("sqlite:///field.db")
        Base.metadata.create_all(engine)
        client = SyncClient("https://example.org/sync", engine)
        client.register(token="...")
        with client.Session() as session:
            session.add(City(name="Lima"))
            session.commit()          # logged in the node's push queue
        client.synchronize()          # push, pull and merge

    :param base_url: the server's URL with the sync prefix
        (``http://host:5000/sync``).
    :param engine: the node's database. On SQLite every transaction of this
        engine is made to start with ``BEGIN IMMEDIATE`` (see
        :func:`~flask_reflectsync.sqlite.use_immediate_transactions`), so
        merges and the app's writes queue behind each other.
    :param models: the tracked mapped classes (and tracked plain tables,
        such as association tables) this node synchronises;
        default: every tracked class whose table exists in ``engine``'s
        database.
    :param name: a name for the node, sent when it registers.
    :param resolution: the default conflict strategy: ``"last-pusher-wins"``
        (default), ``"server-wins"``, ``"node-wins"`` or a callable (see
        :doc:`/conflicts`).
    :param resolutions: strategies for particular models, by mapped class,
        and for particular columns, by mapped column attribute
        (``City.population``; a built-in strategy name).
    :param timeout: seconds to wait for the server.
    :param transport: an :mod:`httpx` transport (tests, proxies).
    :param page_size: ask for at most this many operations per pull page.
    :param retries: how many times a request is sent again when the server
        answers 503, 429, 502 or 504 or cannot be reached (see
        :ref:`retries`); ``0`` never retries.
    :param retry_within: the most seconds spent waiting between the tries of
        one request; the backoff is scaled to fit.
    :param on_retry: called with a :class:`Retry` before each wait.
    :param secret: where the node's signing secret comes from instead of its
        database: the secret itself, or a callable returning it (read once,
        when first needed). See :ref:`node-secret`.
    :param save_secret: with ``secret``, called with the new secret when the
        node registers (the database never holds it).
    :param key_blocks: ask the server, on each pull, for blocks of integer
        keys reserved for this node (see :ref:`key-blocks`; PostgreSQL
        servers), so new rows of different nodes never take the same key.
        ``False`` always hands out keys above the high water.
    :param check_values: refuse, at flush, values the server's columns
        cannot store (too long, out of range, NUL; see
        :ref:`values checked locally <local-values>`)
        with :class:`~flask_reflectsync.errors.InvalidValueError`, instead
        of learning it at the next push. ``False`` leaves it to the server.
    """

    def __init__(
        self,
        base_url: str,
        engine: sa.Engine,
        models: Iterable[type | sa.Table] | None = None,
        *,
        name: str = "",
        resolution: Strategy = "last-pusher-wins",
        resolutions: Mapping[Any, Strategy] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        page_size: int | None = None,
        retries: int = 3,
        retry_within: float = 10.0,
        on_retry: Callable[[Retry], Any] | None = None,
        secret: str | Callable[[], str | None] | None = None,
        save_secret: Callable[[str], Any] | None = None,
        key_blocks: bool = True,
        check_values: bool = True,
        on_status: Callable[[SyncStatus], Any] | None = None,
    ) -> None:
        if retries < 0 or retry_within < 0:
            raise ConfigurationError("retries and retry_within cannot be negative.")
        self.engine = engine
        self.name = name
        self._registration_id: str | None = None
        self.page_size = page_size
        self.resolutions = Resolutions(resolution, resolutions)
        self._models = list(models) if models is not None else None
        self._schema: MergeSchema | None = None
        self._description: dict[str, dict[str, str]] | None = None
        #: The node's digest of each table, and the server's as its last
        #: ``schema.describe`` answer told them (``None``: never told).
        self._digests: dict[str, str] | None = None
        self._server_digests: dict[str, str] | None = None
        self._local_checked = False
        self._unserved: dict[str, list[str]] = {}
        #: Tracked tables the server answered it does not synchronise, when
        #: asked for their rows (see catch_up.py): not asked again.
        self._not_on_server: set[str] = set()
        self._lock = threading.RLock()
        self._prepared = False
        self._credentials: tuple[int, str] | None = None
        self._transport = Transport(
            base_url.rstrip("/"),
            httpx.Client(timeout=timeout, transport=transport),
            self._signing_credentials,
            retries=retries,
            retry_within=retry_within,
            on_retry=on_retry,
        )
        self._secret = secret
        self._save_secret = save_secret
        self.key_blocks = key_blocks
        self.check_values = check_values
        create_private_file(engine)
        self._log = OperationLog(
            tables=NODE_LOG, assign_versions=False, keep_bases=_bases.keep
        )
        use_immediate_transactions(engine)
        #: Sessions whose changes to tracked models are logged for the push.
        maker = _NodeSessionmaker(bind=engine)
        maker.client = self
        self.Session: sessionmaker[Session] = maker
        self._status = StatusKeeper(self, on_status)
        self._watches: list[_watch.Watch] = []
        start_tracking(self.Session, self._log)
        assign_keys_on(self.Session, self)
        check_values_on(self.Session)
        self._hear_commits(self.Session)

    # -- setup -------------------------------------------------------------------

    def track_session(self, target: Any) -> None:
        """Log changes made through another sessionmaker, scoped session or
        Session subclass (for example a node app's Flask-SQLAlchemy
        ``db.session``) into this node's queue. Its sessions must use this
        client's engine.
        """
        self._prepare()
        start_tracking(target, self._log)
        assign_keys_on(target, self)
        check_values_on(target)
        self._hear_commits(target)

    def _hear_commits(self, target: Any) -> None:
        """Tell a running :meth:`watch` of each commit of ``target``'s
        sessions (no SQL: ``after_commit`` may not emit any)."""
        sa.event.listen(target, "after_commit", _LocalCommits(self))

    def _prepare(self) -> None:
        if self._prepared:
            return
        with self._lock:
            if self._prepared:
                return
            create_node_tables(self.engine)
            self._prepared = True

    @property
    def schema(self) -> MergeSchema:
        """The tracked tables this node synchronises, parents first."""
        if self._schema is None:
            with self.engine.connect() as connection:
                return self._schema_on(connection)
        return self._schema

    def _schema_on(self, connection: sa.Connection) -> MergeSchema:
        """:attr:`schema`, resolved (once) on ``connection``: inside a
        transaction a second connection would wait for the SQLite write lock
        this one holds (``BEGIN IMMEDIATE``), and fail after the timeout."""
        if self._schema is None:
            self._schema = MergeSchema.of(self._tracked(connection))
        return self._schema

    def _tracked(self, connection: sa.Connection) -> list[TrackedTable]:
        if self._models is not None:
            infos = []
            for model in self._models:
                infos.append(_query.model_table(model))
            return infos
        existing = set(sa.inspect(connection).get_table_names())
        found: dict[str, TrackedTable] = {}
        for info in tracked_tables():
            if info.table.metadata is NODE_METADATA or info.name not in existing:
                continue
            if info.name in found and found[info.name].table is not info.table:
                raise ConfigurationError(
                    f"Several tracked classes are mapped to a table called "
                    f"{info.name!r}; pass SyncClient(..., models=[...])."
                )
            found[info.name] = info
        return list(found.values())

    def set_resolution(self, model: type, strategy: Strategy) -> None:
        """Resolve conflicts on rows of ``model`` with ``strategy``."""
        self.resolutions.set(model, strategy)

    def close(self) -> None:
        """Close the HTTP connections (the engine is the caller's)."""
        self._transport.http.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------

    def _state(self, connection: sa.Connection | None = None) -> State:
        self._prepare()
        if connection is None:
            with self.engine.connect() as own:
                return _state.read_state(own)
        return _state.read_state(connection)

    def _set_state(self, connection: sa.Connection, **values: Any) -> None:
        _state.set_state(connection, **values)

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        """A write transaction on the node's database, logging nothing."""
        with _state.begin(self.engine) as connection:
            yield connection

    def _registered(self) -> State:
        state = self._state()
        if state.node_id is None:
            raise NotRegisteredError(
                "This node has not registered with the server yet; "
                f"{self._words.register}."
            )
        if self._secret is None and state.secret is None:
            raise NotRegisteredError(
                f"This node (node {state.node_id}) keeps its secret outside its "
                f"database; {self._words.secret}."
            )
        return state

    def _signing_credentials(self) -> tuple[int, str]:
        # Read once and kept: signing happens inside merge transactions,
        # where a second connection to the node's SQLite file would wait on
        # the merge's own write lock.
        if self._credentials is None:
            state = self._registered()
            assert state.node_id is not None
            secret = self._outside_secret() if self._secret is not None else None
            if self._secret is None:
                secret = state.secret
            if not secret:
                raise NotRegisteredError(
                    "This node's secret is not available: the secret source "
                    "given to the client returned nothing."
                )
            self._credentials = (state.node_id, secret)
        return self._credentials

    def _outside_secret(self) -> str | None:
        source = self._secret
        return source() if callable(source) else source

    @property
    def last_version(self) -> int:
        """The last server version this node has pulled."""
        return self._state().last_version

    @property
    def node_id(self) -> int | None:
        """The id the server gave this node, or ``None`` before registering."""
        return self._state().node_id

    @property
    def unserved(self) -> dict[str, list[str]]:
        """The server's tables and columns this node does not store, as its
        pulls were told (see :doc:`/schema-changes`): by table, the columns
        left out of what it was sent. Empty when the schemas match."""
        return {t: list(c) for t, c in self._unserved.items()}

    def pending_operations(self) -> int:
        """How many logged operations wait to be pushed (before compression)."""
        self._prepare()
        with self.engine.connect() as connection:
            return _state.pending_operations(connection)

    # -- status (see status.py) ----------------------------------------------------

    @property
    def status(self) -> SyncStatus:
        """This node's synchronisation as last seen: connected, last synced,
        pending and set-aside counts, last error, watching (a
        :class:`SyncStatus`, immutable). Reading it costs nothing: it is
        kept up to date by every push, pull, repair and synchronize, and by
        :meth:`watch`; :meth:`refresh_status` counts the queue again (local
        commits change ``pending`` without a sync)."""
        return self._status.current

    def refresh_status(self) -> SyncStatus:
        """Count the queue and the set-aside changes again and return the
        status (announced if it changed)."""
        self._prepare()
        return self._status.refresh()

    # -- watching (see watch.py) -------------------------------------------------

    def watch(
        self,
        stop: threading.Event | None = None,
        *,
        wait: float = 25.0,
        debounce: float = 0.5,
        max_backoff: float = 60.0,
        handle_signals: bool = False,
    ) -> None:
        """Keep the node in sync until stopped: push soon after local
        commits, pull as soon as the server's change feed (``POST
        /changes``) says the node's share changed, back off with jitter
        while the server cannot be reached or is busy, and catch up when it
        comes back. Blocks the calling thread (run it in a thread of its
        own in an app); :attr:`status` follows it (``watching`` is true
        meanwhile). See :doc:`/fleet`.

        A push or a pull is never interrupted: stopping is looked at between
        operations. A revoked node ends the watch with
        :class:`~flask_reflectsync.errors.NodeRevokedError`; a retired one
        repairs by itself when nothing is queued. Other errors are kept in
        :attr:`status` and tried again later.

        :param stop: set it (from any thread) to end the watch; or call
            :meth:`stop_watching`.
        :param wait: how long the server may hold each feed request (it
            holds at most its ``REFLECTSYNC_FEED_MAX_WAIT``).
        :param debounce: seconds to let a burst of local commits end before
            pushing them together.
        :param max_backoff: the longest wait between tries while failing.
        :param handle_signals: SIGINT (Ctrl-C) and SIGTERM stop the watch
            cleanly instead of interrupting it (main thread only).
        """
        if wait < 0 or debounce < 0 or max_backoff <= 0:
            raise ConfigurationError(
                "wait and debounce cannot be negative, max_backoff must be "
                "positive."
            )
        self._registered()
        _watch.watch(
            self,
            stop if stop is not None else threading.Event(),
            wait=wait,
            debounce=debounce,
            max_backoff=max_backoff,
            handle_signals=handle_signals,
        )

    def stop_watching(self) -> None:
        """End every running :meth:`watch` of this client once its current
        operation is done."""
        for watch in list(self._watches):
            watch.stop.set()
            watch.wake.set()

    # -- HTTP (see transport.py) ---------------------------------------------------

    @property
    def base_url(self) -> str:
        """The server's URL with its sync prefix."""
        return self._transport.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._transport.base_url = value.rstrip("/")

    @property
    def retries(self) -> int:
        """How many times a request is sent again (see :ref:`retries`)."""
        return self._transport.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._transport.retries = value

    @property
    def retry_within(self) -> float:
        """The most seconds spent waiting between the tries of one request."""
        return self._transport.retry_within

    @retry_within.setter
    def retry_within(self, value: float) -> None:
        self._transport.retry_within = value

    @property
    def on_retry(self) -> Callable[[Retry], Any] | None:
        """Called with a :class:`Retry` before each wait."""
        return self._transport.on_retry

    @on_retry.setter
    def on_retry(self, value: Callable[[Retry], Any] | None) -> None:
        self._transport.on_retry = value

    @property
    def _words(self) -> Words:
        return self._transport.words

    @_words.setter
    def _words(self, value: Words) -> None:
        self._transport.words = value

    def _send(self, method: str, route: str, **kwargs: Any) -> httpx.Response:
        return self._transport.send(method, route, **kwargs)

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        return self._transport.call(method, route, **kwargs)

    def _delay(self, attempt: int, asked: float | None) -> float:
        return self._transport.delay(attempt, asked)

    # -- registration ---------------------------------------------------------------

    def register(
        self,
        token: str | None = None,
        *,
        info: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> int:
        """Register this node with the server (once) and keep its secret.

        :param token: the server's ``REFLECTSYNC_REGISTRATION_TOKEN``, if it
            has one.
        :param info: anything the server's registration checks want to see.
        :param force: register again even if already registered (the node
            gets a new id; its queue and data are kept). Needed when the
            server no longer knows the node ("Unknown node"), for example
            after its database was reset.
        :return: the node id.
        :raises RegistrationRefusedError: if the server refuses.
        :raises AuthenticationError: if a token is needed and not given.
        :raises ConfigurationError: the client reads its secret from outside
            its database (``secret=``) and has no ``save_secret`` to hand
            the new one to.
        """
        with self._lock:
            state = self._state()
            if state.node_id is not None and not force:
                return state.node_id
            if self._secret is not None and self._save_secret is None:
                raise ConfigurationError(
                    "This client reads its secret from outside its database "
                    "(secret=...); pass save_secret= as well, to receive the "
                    "secret the server gives when registering."
                )
            # One id for every try of this registration, until one succeeds:
            # a try whose answer was lost created the node, and the server
            # answers the next try with that node instead of a second one.
            if self._registration_id is None:
                self._registration_id = secrets.token_urlsafe(32)
            message: dict[str, Any] = {
                "protocol": PROTOCOL_VERSION,
                "name": self.name,
                "registration_id": self._registration_id,
            }
            if token is not None:
                message["token"] = token
            if info is not None:
                message["info"] = dict(info)
            answer = self._call("POST", "/register", message=message, signed=False)
            node = answer["node"]
            self._registration_id = None
            self._credentials = None
            outside = self._save_secret is not None and self._secret is not None
            if outside:
                assert self._save_secret is not None
                self._save_secret(str(node["secret"]))
            with self._begin() as connection:
                self._set_state(
                    connection,
                    server_url=self.base_url,
                    node_id=int(node["id"]),
                    node_name=node.get("name", ""),
                    secret=None if outside else node["secret"],
                    registered_at=datetime.datetime.now(datetime.timezone.utc),
                )
            return int(node["id"])

    def is_registered(self) -> bool:
        """Whether this node has registered: its id is stored, and its secret
        too (or the client was given a source for it)."""
        state = self._state()
        if state.node_id is None:
            return False
        return self._secret is not None or state.secret is not None

    # -- push ----------------------------------------------------------------------

    def push(self) -> PushResult:
        """Send the queued operations to the server, exactly once.

        The queue's version rows are recorded, with a new push id, before
        anything is sent; until the server acknowledges that push id, every
        call sends the same id and the same versions again (the server
        applies it once). Operations logged meanwhile stay queued for the
        next push.

        :return: what the server did (``push_id`` is ``None`` when there was
            nothing to push).
        :raises PushRejectedError: the server holds changes to the same rows
            that the node has not pulled: :meth:`pull` and push again (or
            call :meth:`synchronize`). The push id is dropped: nothing of it
            was applied.
        :raises ServerUnreachableError: the push may or may not have been
            applied; the next call resends it with the same id.
        """
        with self._lock, self._status.exchange(caught_up=False):
            state = self._registered()
            _node_schema.check_local(self)
            aside: list[SetAside] = []
            widened = False
            while True:
                if state.push_id is None:
                    # A table never synchronised gets the server's rows
                    # before its rows are pushed: a local row under a key
                    # the server has is re-keyed, not sent over it.
                    try:
                        _catch_up.catch_up(self, state)
                    except SchemaMismatchError as error:
                        # Rows the node cannot store: the pull says so; the
                        # queue is not held up for it (the server refuses
                        # a row under a key it has).
                        _catch_up.postponed(error)
                if state.push_id is None and not _push.start_push(self):
                    return PushResult(None, None, 0, set_aside=aside)
                try:
                    result = _push.send_push(self)
                except PushRejectedError as error:
                    # Patches of rows the server lacks, now queued whole:
                    # sent again once, they bring the rows back.
                    if widened or not _push.only_whole_rows_needed(error):
                        raise
                    widened = True
                    state = self._state()
                    continue
                except SchemaRefusedError as error:
                    # Rows the server's schema cannot take: set them all
                    # aside with their reasons, push the rest.
                    before = {entry.id for entry in aside}
                    _set_aside.set_aside_rows(self, error)
                    aside = [e for e in self.set_aside() if e.id not in before]
                    state = self._state()
                    continue
                except InvalidValueError as error:
                    # Refused for good: set the row aside, push the rest.
                    before = {entry.id for entry in aside}
                    _set_aside.set_aside_refused(self, error)
                    aside = [e for e in self.set_aside() if e.id not in before]
                    state = self._state()
                    continue
                return dataclasses.replace(result, set_aside=aside)

    # -- set-aside changes (see set_aside.py) -----------------------------------

    def set_aside(self) -> list[SetAside]:
        """The changes the server refused for good and the node keeps out of
        its queue (see :ref:`set-aside`), oldest first."""
        return _set_aside.entries(self)

    def retry_set_aside(self, ids: Iterable[int] | None = None) -> int:
        """Queue set-aside changes again (after the app fixed the rows): each
        is pushed as the row is now (an insert or update, or a delete if the
        row is gone). A set-aside insert or update whose row a pull has
        removed meanwhile is written back from the values kept with it.

        :param ids: which (:attr:`SetAside.id`); all when ``None``.
        :return: how many were queued again.
        """
        return _set_aside.retry(self, ids)

    def discard_set_aside(self, ids: Iterable[int] | None = None) -> int:
        """Give set-aside changes up: each row takes the server's copy back
        (or is deleted, if the server has none).

        :param ids: which (:attr:`SetAside.id`); all when ``None``.
        :return: how many were discarded.
        """
        return _set_aside.discard(self, ids)

    # -- pull (see pull.py) -----------------------------------------------------------

    def pull(
        self,
        progress: Callable[[int, int], Any] | None = None,
        *,
        on_page: Callable[[PullProgress], Any] | None = None,
    ) -> PullResult:
        """Fetch the server's changes since the last pull and merge them.

        Every page is merged in one local transaction with the queued local
        changes (see :doc:`/conflicts`); each resolved conflict sends
        :data:`~flask_reflectsync.signals.conflict_resolved` with this client
        as sender. A push whose answer was lost is first sent again.

        A node that has never pulled and has nothing queued is *bootstrapped*
        when the server has trimmed its log past version 0 (answer 410): it
        is repaired from the server's copy, then pulls from there
        (:attr:`PullResult.repaired` says how many rows were copied). Any
        other node gets the :class:`~flask_reflectsync.errors.GoneError`.

        :param progress: called as ``progress(version, server_version)`` after
            each page is merged: how far the node has got, and where the
            server was when the page was served.
        :param on_page: called with a :class:`PullProgress` after each page
            is merged: the logged operations merged so far, and how many the
            pull covers when the server says.

        :raises UniqueConstraintError: a local change holds unique values the
            server gave another row; the page is not merged.
        :raises GoneError: the server trimmed the changes this node needs;
            :meth:`repair` it.
        """
        with self._status.exchange(caught_up=True):
            return _pull.pull(self, progress, on_page=on_page)

    # -- synchronize -----------------------------------------------------------------

    def synchronize(self, tries: int = 3) -> SyncResult:
        """Push; when the server rejects the push, pull, merge and push again.
        Ends with a pull, so the node also has every change of the others.

        :param tries: how many pushes to send before giving up.
        :raises PushRejectedError: if the push is still rejected after
            ``tries`` attempts (the server kept changing the same rows).
        """
        with self._lock, self._status.exchange(caught_up=True):
            pulled: list[PullResult] = []
            refused: set[tuple[str, str]] = set()
            brought: set[tuple[str, str]] = set()
            attempt = rekeyed = 0
            while True:
                attempt += 1
                try:
                    pushed = self.push()
                except UniqueConstraintError as error:
                    named = self._unique_refusals(error)
                    again, refused = named & refused, named
                    if again - brought:
                        # The pull brought no row holding the values (it may
                        # not have been committed yet): fetch the holders the
                        # server named and merge them, so the node's own
                        # unique-conflict rules decide.
                        brought |= again
                        merged = _pull.bring_holders(self, error, again)
                        if merged is not None:
                            pulled.append(merged)
                        attempt -= 1
                        continue
                    # A row refused on a value whose holder the node deletes
                    # in this very push is not in conflict: the server could
                    # not delete the holder first (a child of it the node has
                    # not pulled yet). Pull and push again, never set it aside.
                    again -= _pull.refused_by_own_givers(self, error)
                    if again and rekeyed < _REKEY_ROUNDS:
                        # An insert whose key holds a row of another share:
                        # the node moves its row and pushes again.
                        moved, result = _pull.rekey_unseen_holders(self, error, again)
                        if result is not None:
                            rekeyed += 1
                            pulled.append(result)
                            again -= moved
                            if not again:
                                attempt -= 1
                                continue
                    if again:
                        # Refused twice for the same rows, with a merge in
                        # between that found no local row holding the values
                        # (nothing for it to resolve): the refusal would come
                        # back for good. Set those rows aside, push the rest.
                        for table, key in sorted(again):
                            _set_aside.set_aside_key(
                                self,
                                table, json.loads(key), error.message, error
                            )
                        attempt -= 1
                        continue
                    if attempt >= tries:
                        raise
                    pulled.append(self.pull())
                    continue
                except PushRejectedError:
                    if attempt >= tries:
                        raise
                    pulled.append(self.pull())
                    continue
                pulled.append(self.pull())
                return SyncResult(pushed, pulled, attempt)

    @staticmethod
    def _unique_refusals(error: UniqueConstraintError) -> set[tuple[str, str]]:
        return {
            (str(c.get("table")), json.dumps(c.get("key")))
            for c in error.conflicts
            if isinstance(c, dict) and isinstance(c.get("key"), list)
        }

    # -- repair (see repair.py) --------------------------------------------------------

    def repair(
        self,
        progress: Callable[[str, int], Any] | None = None,
        *,
        on_total: Callable[[int], Any] | None = None,
    ) -> int:
        """Replace the node's tracked data with the server's copy.

        The server streams every tracked table; rows are written in batches
        as they arrive, in one local transaction, so memory stays flat. The
        node's queued (unpushed) changes are discarded, and the node goes on
        pulling from the version the copy was taken at.

        :param progress: called as ``progress(table, rows_so_far)`` after each
            batch of rows is written.
        :param on_total: called once, before the first row is written, with
            how many rows the copy holds, if the server says (a server older
            than this node's release does not).
        :return: how many rows were written.
        """
        with self._status.exchange(caught_up=True):
            return _repair.repair(self, progress, on_total=on_total)

    # -- migrate (see migrate.py) -----------------------------------------------------

    def migrate(
        self, renames: Mapping[str, Mapping[str, str | None]] | None = None
    ) -> Migration:
        """Bring the node's database file to its models, after the app got
        new model code (see :doc:`/schema-changes`): create the tables the
        file lacks, rename the columns the models renamed, keeping their
        data and rewriting the queued changes to the new names, add the
        other new columns, and fetch from the server what the node could not
        store before (the new columns' values, the new tables' rows). Run it
        before the first sync with the new models; a push in flight is
        settled first.

        A renamed column is told by what the server's catalog knows
        (PostgreSQL servers: the column's identity survives the rename),
        else by shape: the old column and the new one each the other's only
        candidate by the kind of value, then by exact type. Where that does
        not decide (two columns of one type renamed in one table), nothing
        is changed and ``renames`` must say it.

        :param renames: by table, each old column of the file and the
            model's column it became (``None``: not renamed; the new column
            is added and filled from the server), for example
            ``{"post": {"lang": "lang_code"}}``.
        :return: what was created, renamed, added and fetched.
        :raises ConfigurationError: a push is still unanswered; which
            columns were renamed cannot be told (the candidates named); a
            column the models no longer name has queued changes and no new
            name; or ``renames`` names what is not there.
        """
        with self._status.exchange(caught_up=False):
            return _migrate.migrate(self, renames)

    def check_schema(self) -> SchemaCheck:
        """Compare the node's models with its own database file and with the
        server's tracked tables, and say what differs (one request; nothing
        is sent but the node's schema, nothing applied on either side).

        Call it when the app starts, to learn of a disagreement then rather
        than at the first refused pull or set-aside row; the client never
        does it by itself (constructing it makes no request).
        ``reflectsync-node status --schema`` prints it, and
        ``reflectsync-node sync --watch`` says it when it starts.

        :return: the differences (``same`` when there are none).
        :raises ServerUnreachableError: the server cannot be reached.
        """
        return _node_schema.check_schema(self)

    # -- query (see query.py) ----------------------------------------------------------

    def query(self, model: type[M], **filters: Any) -> list[M]:
        """Read rows of ``model`` from the server, not from the node.

        Filters are ``column=value`` or ``column__op=value`` with ``op`` one
        of ``ne``, ``lt``, ``lte``, ``gt``, ``gte``, ``in`` (a list) and
        ``isnull`` (a bool). The instances are built from the server's rows
        and added to no session.

        :return: every matching row, in primary-key order.
        """
        return _query.query(self, model, **filters)


class _LocalCommits:
    """An ``after_commit`` listener waking the client's running watches
    (holding the client weakly: a session maker may outlive it)."""

    def __init__(self, client: SyncClient) -> None:
        self.client = weakref.ref(client)

    def __call__(self, session: Session) -> None:
        client = self.client()
        if client is not None:
            for watch in client._watches:
                watch.local_commit()
