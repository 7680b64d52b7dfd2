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
"""

from __future__ import annotations

import codecs
import copy
import dataclasses
import datetime
import decimal
import email.utils
import functools
import json
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapper, Session, scoped_session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from .. import signals
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ForbiddenError,
    GoneError,
    InvalidKeyError,
    InvalidValueError,
    NotFoundError,
    NotRegisteredError,
    PayloadTooLargeError,
    ProtocolMismatchError,
    PushRejectedError,
    RegistrationRefusedError,
    ServerUnreachableError,
    ServiceBusyError,
    SyncError,
    UniqueConstraintError,
    ValidationError,
)
from ..sqlite import use_immediate_transactions
from ..tracking import (
    DELETE,
    INSERT,
    UPDATE,
    OperationLog,
    TrackedTable,
    compress,
    decode_key,
    define_tables,
    start_tracking,
    tracked_tables,
)
from ..tracking.registry import tracked_table_for
from ..wire.codec import (
    DECODE_ERRORS,
    ColumnCodec,
    key_from_log,
    stores_time_zones,
    table_codecs,
)
from ..wire.messages import PROTOCOL_VERSION
from ..wire.signing import sign_request
from .merge import (
    Conflict,
    Decision,
    HighWater,
    LocalQueue,
    MergeResult,
    MergeSchema,
    PulledTable,
    Resolutions,
    Strategy,
    define_high_water_table,
    key_filter,
    merge_page,
    read_rows,
    row_key,
    separate_replaced_rows,
    write_rows,
)
from .set_aside import (
    SetAside,
    define_set_aside_table,
    rejoin_changed,
    requeue_command,
    set_aside_row,
)

_log = logging.getLogger("flask_reflectsync.client")

__all__ = [
    "SyncClient",
    "SetAside",
    "PushResult",
    "PullResult",
    "SyncResult",
    "Conflict",
    "Retry",
    "PullProgress",
]

M = TypeVar("M")

#: The node's own tables live on a private metadata, never the app's.
NODE_METADATA = sa.MetaData()
NODE_LOG = define_tables(NODE_METADATA)
#: One row (``id = 1``): who the node is and how far it has synchronised.
NODE_STATE = sa.Table(
    "reflectsync_node_state",
    NODE_METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("server_url", sa.String(2000), nullable=True),
    sa.Column("node_id", sa.Integer, nullable=True),
    sa.Column("node_name", sa.String(200), nullable=True),
    # The node must be able to sign requests, so it keeps its secret.
    sa.Column("secret", sa.String(200), nullable=True),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_version", sa.BigInteger, nullable=False, default=0),
    # Where an unfinished pull stopped inside the version after last_version
    # (the server's page cursor): the next pull resumes there instead of
    # serving that version's first pages again.
    sa.Column("pull_cursor", sa.String(64), nullable=True),
    # The push in flight: its id and the version rows it covers (JSON list),
    # kept until the server acknowledges it.
    sa.Column("push_id", sa.String(64), nullable=True),
    sa.Column("push_versions", sa.Text, nullable=True),
    # The push message as first sent: a retry must send the same (the server
    # refuses a push id it applied with other content).
    sa.Column("push_message", sa.Text, nullable=True),
)

#: Per tracked table with an integer key, the highest key the node has ever
#: seen: new rows get keys above it (see :doc:`/conflicts`).
NODE_KEYS = define_high_water_table(NODE_METADATA)
#: Changes the server refused for good, out of the queue (see set_aside.py).
NODE_SET_ASIDE = define_set_aside_table(NODE_METADATA)
#: Per table, the block of keys the server reserved for this node: new rows
#: take ``next_key`` up to ``last_key`` first (see :doc:`/conflicts`).
NODE_KEY_BLOCKS = sa.Table(
    "reflectsync_node_key_blocks",
    NODE_METADATA,
    sa.Column("table_name", sa.String(200), primary_key=True),
    sa.Column("next_key", sa.BigInteger, nullable=False),
    sa.Column("last_key", sa.BigInteger, nullable=False),
)
#: A node asks for a new block when fewer keys than this are left.
_KEY_BLOCK_LOW = 250

_BATCH = 500


@dataclass(frozen=True)
class PushResult:
    """What a push did.

    :param push_id: the id the push was sent with (``None`` when the queue
        was empty and nothing was sent).
    :param version: the server version it created (``None`` if none).
    :param operations: how many operations the server applied.
    :param conflicts: the conflicts the server decided by this node's
        strategies (see :ref:`stale-pushes`), with their resolutions.
    :param set_aside: the changes this push set aside because the server
        refused them for good (see :ref:`set-aside`).
    """

    push_id: str | None
    version: int | None
    operations: int
    conflicts: list[Conflict] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)


@dataclass(frozen=True)
class PullResult:
    """What a pull did.

    :param version: the server version the node now has.
    :param operations: how many server changes were merged.
    :param conflicts: every conflict found, with its resolution.
    :param repaired: rows copied from the server when the pull bootstrapped
        a new node (0 when it did not).
    """

    version: int
    operations: int
    conflicts: list[Conflict] = field(default_factory=list)
    repaired: int = 0


@dataclass(frozen=True)
class PullProgress:
    """How far a pull has got (passed to ``pull(on_page=...)``).

    :param version: the server version the node now has.
    :param server_version: the server's version when the page was served.
    :param operations: the logged operations merged so far by this pull.
    :param total: how many the pull covers, if the server said (a server
        older than this node's release does not); changes committed on the
        server during the pull may make ``operations`` exceed it.
    """

    version: int
    server_version: int
    operations: int
    total: int | None


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`SyncClient.synchronize` did.

    :param pushed: the accepted push.
    :param pulled: the pulls it ran, in order.
    :param attempts: how many pushes it sent.
    """

    pushed: PushResult
    pulled: list[PullResult]
    attempts: int

    @property
    def conflicts(self) -> list[Conflict]:
        """Every conflict resolved on the way: by the server for the
        accepted push, then by the pulls' merges."""
        return [
            *self.pushed.conflicts,
            *(c for pull in self.pulled for c in pull.conflicts),
        ]


@dataclass(frozen=True)
class Retry:
    """A request about to be sent again (passed to ``on_retry``).

    :param route: the route, e.g. ``"/pull"``.
    :param attempt: the number of the try about to be made (2 for the first
        retry).
    :param attempts: how many tries are allowed in all.
    :param delay: the seconds waited before it.
    :param error: why the last try failed (a busy server, a lost connection).
    """

    route: str
    attempt: int
    attempts: int
    delay: float
    error: SyncError

    def describe(self) -> str:
        """One line a person can read."""
        return (
            f"{self.error.message} Trying {self.route} again in "
            f"{self.delay:.1f} s (try {self.attempt} of {self.attempts})."
        )


#: Answers after which the same request is sent again: the server (or a
#: proxy in front of it) was busy or rate-limited, and applied nothing.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Transport errors raised before the request left the node.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number of seconds or
    an HTTP date), or ``None`` when there is none or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        now = datetime.datetime.now(datetime.timezone.utc)
        seconds = (moment - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


@dataclass(frozen=True)
class Words:
    """How messages name the things a person can do: the Python API's words
    by default, the command line's flags in ``reflectsync-node``."""

    register: str = "call client.register() first"
    register_again: str = "register it again with client.register(force=True)"
    base_url: str = "base_url"
    token: str = "Pass it as client.register(token=...)."
    secret: str = "pass SyncClient(..., secret=...)"


API_WORDS = Words()


@dataclass
class _State:
    server_url: str | None
    node_id: int | None
    node_name: str | None
    secret: str | None
    last_version: int
    pull_cursor: str | None
    push_id: str | None
    push_versions: list[int]
    push_message: str | None


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
    :param models: the tracked mapped classes this node synchronises;
        default: every tracked class whose table exists in ``engine``'s
        database.
    :param name: a name for the node, sent when it registers.
    :param resolution: the default conflict strategy: ``"last-pusher-wins"``
        (default), ``"server-wins"``, ``"node-wins"`` or a callable (see
        :doc:`/conflicts`).
    :param resolutions: strategies for particular models, by mapped class.
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
    """

    def __init__(
        self,
        base_url: str,
        engine: sa.Engine,
        models: Iterable[type] | None = None,
        *,
        name: str = "",
        resolution: Strategy = "last-pusher-wins",
        resolutions: Mapping[type, Strategy] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        page_size: int | None = None,
        retries: int = 3,
        retry_within: float = 10.0,
        on_retry: Callable[[Retry], Any] | None = None,
        secret: str | Callable[[], str | None] | None = None,
        save_secret: Callable[[str], Any] | None = None,
        key_blocks: bool = True,
    ) -> None:
        if retries < 0 or retry_within < 0:
            raise ConfigurationError("retries and retry_within cannot be negative.")
        self.base_url = base_url.rstrip("/")
        self.engine = engine
        self.name = name
        self.page_size = page_size
        self.resolutions = Resolutions(resolution, resolutions)
        self._models = list(models) if models is not None else None
        self._schema: MergeSchema | None = None
        self._lock = threading.RLock()
        self._prepared = False
        self._credentials: tuple[int, str] | None = None
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self.retries = retries
        self.retry_within = retry_within
        self.on_retry = on_retry
        self._random = random.Random()
        self._secret = secret
        self._save_secret = save_secret
        self.key_blocks = key_blocks
        self._words = API_WORDS
        _create_private_file(engine)
        self._log = OperationLog(tables=NODE_LOG, assign_versions=False)
        use_immediate_transactions(engine)
        #: Sessions whose changes to tracked models are logged for the push.
        maker = _NodeSessionmaker(bind=engine)
        maker.client = self
        self.Session: sessionmaker[Session] = maker
        start_tracking(self.Session, self._log)
        _assign_keys_on(self.Session, self)

    # -- setup -------------------------------------------------------------------

    def track_session(self, target: Any) -> None:
        """Log changes made through another sessionmaker, scoped session or
        Session subclass (for example a node app's Flask-SQLAlchemy
        ``db.session``) into this node's queue. Its sessions must use this
        client's engine.
        """
        self._prepare()
        start_tracking(target, self._log)
        _assign_keys_on(target, self)

    def _prepare(self) -> None:
        if self._prepared:
            return
        with self._lock:
            if self._prepared:
                return
            NODE_METADATA.create_all(self.engine, checkfirst=True)
            with self.engine.begin() as connection:
                _add_push_message_column(connection)
                found = connection.execute(
                    sa.select(NODE_STATE.c.id).where(NODE_STATE.c.id == 1)
                ).first()
                if found is None:
                    connection.execute(
                        sa.insert(NODE_STATE).values(id=1, last_version=0)
                    )
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
                infos.append(self._model_table(model))
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
        self._http.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------

    def _state(self, connection: sa.Connection | None = None) -> _State:
        self._prepare()
        if connection is None:
            with self.engine.connect() as own:
                return self._state(own)
        row = connection.execute(
            sa.select(NODE_STATE).where(NODE_STATE.c.id == 1)
        ).one()
        return _State(
            server_url=row.server_url,
            node_id=row.node_id,
            node_name=row.node_name,
            secret=row.secret,
            last_version=int(row.last_version or 0),
            pull_cursor=row.pull_cursor,
            push_id=row.push_id,
            push_versions=json.loads(row.push_versions or "[]"),
            push_message=row.push_message,
        )

    def _set_state(self, connection: sa.Connection, **values: Any) -> None:
        connection.execute(
            sa.update(NODE_STATE).where(NODE_STATE.c.id == 1).values(**values)
        )

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        """A write transaction on the node's database, logging nothing."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                # Rows may point at parents restored later in the transaction.
                connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            yield connection

    def _registered(self) -> _State:
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

    def pending_operations(self) -> int:
        """How many logged operations wait to be pushed (before compression)."""
        self._prepare()
        versions, operations = NODE_LOG.versions, NODE_LOG.operations
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count())
                    .select_from(operations)
                    .join(versions, versions.c.id == operations.c.version_id)
                    .where(versions.c.number.is_(None))
                ).scalar()
                or 0
            )

    # -- HTTP --------------------------------------------------------------------

    def _send(
        self,
        method: str,
        route: str,
        *,
        message: Any = None,
        params: Mapping[str, str] | None = None,
        signed: bool = True,
        stream: bool = False,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send one request, trying again on a busy server or a lost
        connection (see :ref:`retries`).

        :param idempotent: whether sending the request twice does no harm (a
            push carries its id; pulls, repairs and queries only read). A
            request that is not is tried again only when it cannot have
            reached the server (busy answers, refused connections).
        """
        content = b"" if message is None else json.dumps(message).encode("utf-8")
        waited = 0.0
        for attempt in range(1, self.retries + 2):
            # Signed anew each time: a nonce is accepted only once.
            request = self._request(method, route, content, params, signed)
            try:
                answer = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                failure: SyncError = ServerUnreachableError(
                    f"Cannot reach the sync server at {self.base_url} ({error!s} "
                    f"[{type(error).__name__}]); check the network and try again."
                )
                failure.__cause__ = error
                never_sent = isinstance(error, _NEVER_SENT)
                asked: float | None = None
                if not (idempotent or never_sent):
                    raise failure from error
            else:
                if answer.status_code == 200:
                    return answer
                try:
                    if stream:
                        answer.read()
                    failure = _error_from(answer, route, self.base_url, self._words)
                finally:
                    answer.close()
                if answer.status_code not in RETRY_STATUSES:
                    raise failure
                asked = retry_after(answer.headers.get("Retry-After"))
            delay = self._delay(attempt, asked)
            if attempt > self.retries or waited + delay > self.retry_within:
                if attempt > 1:
                    failure.message += f" (tried {attempt} times)"
                    failure.args = (failure.message, *failure.args[1:])
                raise failure
            if self.on_retry is not None:
                self.on_retry(
                    Retry(route, attempt + 1, self.retries + 1, delay, failure)
                )
            time.sleep(delay)
            waited += delay
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, asked: float | None) -> float:
        """How long to wait before try ``attempt + 1``: what the server asked
        for, or else exponential backoff with jitter, scaled so that every
        wait together stays within ``retry_within``."""
        if asked is not None:
            return asked
        full = self.retry_within * 2.0 ** (attempt - 1) / 2.0**self.retries
        # Between half and all of it, so nodes turned away together do not
        # come back together.
        return full / 2 + self._random.uniform(0, full / 2)

    def _request(
        self,
        method: str,
        route: str,
        content: bytes,
        params: Mapping[str, str] | None,
        signed: bool,
    ) -> httpx.Request:
        request = self._http.build_request(
            method,
            self.base_url + route,
            content=content or None,
            params=params,
            headers={"Content-Type": "application/json"} if content else None,
        )
        if signed:
            node_id, secret = self._signing_credentials()
            request.headers.update(
                sign_request(
                    node_id,
                    secret,
                    request.method,
                    request.url.path,
                    request.url.query.decode("latin-1"),
                    content,
                )
            )
        return request

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        answer = self._send(method, route, **kwargs)
        try:
            body = answer.json()
        except ValueError:
            raise ProtocolMismatchError(
                f"{self.base_url}{route} did not answer JSON; is "
                f"{self._words.base_url} the sync server's URL with its prefix "
                "(for example http://host:5000/sync)?"
            ) from None
        _check_protocol(body, self.base_url)
        return body  # type: ignore[no-any-return]

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
            message: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "name": self.name}
            if token is not None:
                message["token"] = token
            if info is not None:
                message["info"] = dict(info)
            # Not idempotent: a lost answer may have created a node, so only
            # a request that cannot have arrived is sent again.
            answer = self._call(
                "POST", "/register", message=message, signed=False, idempotent=False
            )
            node = answer["node"]
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
        with self._lock:
            state = self._registered()
            aside: list[SetAside] = []
            while True:
                if state.push_id is None and not self._start_push():
                    return PushResult(None, None, 0, set_aside=aside)
                try:
                    result = self._send_push()
                except InvalidValueError as error:
                    # Refused for good: set the row aside, push the rest.
                    before = {entry.id for entry in aside}
                    self._set_aside_refused(error)
                    aside = [e for e in self.set_aside() if e.id not in before]
                    state = self._state()
                    continue
                return dataclasses.replace(result, set_aside=aside)

    # -- set-aside changes -------------------------------------------------------

    def _set_aside_refused(self, error: InvalidValueError) -> None:
        self._set_aside_row(error.table, error.key, error.message, error)

    def _set_aside_row(
        self, table: str, wire_key: Sequence[Any], reason: str, error: SyncError
    ) -> None:
        info = self.schema.tables.get(table)
        key = self._typed_key(info, wire_key) if info is not None else None
        if info is None or key is None:
            raise ProtocolMismatchError(
                f"The server refused a value of {table} {list(wire_key)}, a row "
                f"this node does not have: {reason}"
            ) from error
        aware = stores_time_zones(self.engine.dialect)

        def encode(name: str, row: dict[str, Any]) -> dict[str, Any]:
            codecs_ = table_codecs(self.schema.tables[name].table, aware_storage=aware)
            return {c: codecs_[c].to_json(v) for c, v in row.items() if c in codecs_}

        with self._begin() as connection:
            moved = set_aside_row(
                connection,
                NODE_LOG,
                NODE_SET_ASIDE,
                self.schema,
                info.name,
                key,
                reason,
                encode,
            )
            if not moved:  # nothing queued for it: the server and node disagree
                raise ProtocolMismatchError(
                    f"The server refused {info.name} {list(key)}, which this "
                    f"node has not queued: {reason}"
                ) from error
            self._set_state(
                connection, push_id=None, push_versions=None, push_message=None
            )
        _log.warning(
            "The server refused %s %s for good (%s); it is set aside, the rest "
            "of the queue is pushed.",
            info.name,
            list(key),
            reason,
        )

    def _typed_key(
        self, info: TrackedTable, wire: Sequence[Any]
    ) -> tuple[Any, ...] | None:
        codecs_ = table_codecs(
            info.table, aware_storage=stores_time_zones(self.engine.dialect)
        )
        pk = [codecs_[c.name] for c in info.pk_columns]
        try:
            return tuple(
                c.to_db(v, f"{info.name} key") for c, v in zip(pk, wire, strict=True)
            )
        except (*DECODE_ERRORS, TypeError, ValueError):
            return None

    def set_aside(self) -> list[SetAside]:
        """The changes the server refused for good and the node keeps out of
        its queue (see :ref:`set-aside`), oldest first."""
        self._prepare()
        table = NODE_SET_ASIDE
        found: list[SetAside] = []
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(table).order_by(table.c.id)).all()
        for row in rows:
            info = self.schema.tables.get(row.table_name)
            key = (
                _logged_key(info, row.row_key)
                if info is not None
                else tuple(decode_key(row.row_key))
            )
            found.append(
                SetAside(
                    id=row.id,
                    table=row.table_name,
                    key=key,
                    command=row.command,
                    reason=row.reason,
                    row=None if row.row is None else json.loads(row.row),
                    set_aside_at=row.set_aside_at,
                )
            )
        return found

    def retry_set_aside(self, ids: Iterable[int] | None = None) -> int:
        """Queue set-aside changes again (after the app fixed the rows): each
        is pushed as the row is now (an insert or update, or a delete if the
        row is gone). A set-aside insert or update whose row a pull has
        removed meanwhile is written back from the values kept with it.

        :param ids: which (:attr:`SetAside.id`); all when ``None``.
        :return: how many were queued again.
        """
        with self._lock, self._begin() as connection:
            entries = self._chosen(connection, ids)
            queue = LocalQueue(connection, NODE_LOG)
            for entry in entries:
                info = self.schema.tables.get(entry.table_name)
                if info is not None:
                    typed = _logged_key(info, entry.row_key)
                    exists = bool(list(read_rows(connection, info, [typed])))
                    if not exists and entry.row is not None and entry.command != DELETE:
                        kept = json.loads(entry.row)
                        stored = table_codecs(
                            info.table,
                            aware_storage=stores_time_zones(self.engine.dialect),
                        )
                        # Decoded without the server's limits: the value the
                        # server refused is the one the app is to fix.
                        row = {
                            name: None if value is None else stored[name].decode(value)
                            for name, value in kept.items()
                            if name in stored
                        }
                        write_rows(connection, info, [row], [])
                        exists = True
                    command = requeue_command(entry.command, exists)
                    if command is not None:
                        queue.append(entry.table_name, entry.row_key, command)
                connection.execute(
                    sa.delete(NODE_SET_ASIDE).where(NODE_SET_ASIDE.c.id == entry.id)
                )
            return len(entries)

    def discard_set_aside(self, ids: Iterable[int] | None = None) -> int:
        """Give set-aside changes up: each row takes the server's copy back
        (or is deleted, if the server has none).

        :param ids: which (:attr:`SetAside.id`); all when ``None``.
        :return: how many were discarded.
        """
        with self._lock:
            chosen = [e for e in self.set_aside() if ids is None or e.id in set(ids)]
            # Read the server's rows first: no HTTP inside a write transaction.
            server: dict[int, dict[str, Any] | None] = {}
            for entry in chosen:
                if entry.table in self.schema.tables:
                    rows = self._fetch(entry.table, [entry.key])
                    server[entry.id] = rows.get(entry.key)
            with self._begin() as connection:
                for entry in chosen:
                    info = self.schema.tables.get(entry.table)
                    if info is not None:
                        found = server.get(entry.id)
                        local = list(read_rows(connection, info, [entry.key]))
                        if found is None:
                            connection.execute(
                                sa.delete(info.table).where(
                                    key_filter(info, [entry.key])
                                )
                            )
                        elif local:
                            write_rows(connection, info, [], [found])
                        else:
                            write_rows(connection, info, [found], [])
                    connection.execute(
                        sa.delete(NODE_SET_ASIDE).where(NODE_SET_ASIDE.c.id == entry.id)
                    )
            return len(chosen)

    def _chosen(
        self, connection: sa.Connection, ids: Iterable[int] | None
    ) -> list[Any]:
        query = sa.select(NODE_SET_ASIDE).order_by(NODE_SET_ASIDE.c.id)
        if ids is not None:
            query = query.where(NODE_SET_ASIDE.c.id.in_(list(ids)))
        return list(connection.execute(query))

    def _start_push(self) -> bool:
        versions = NODE_LOG.versions
        with self._begin() as connection:
            # A new row under a deleted row's key is pushed as a new row.
            schema = self._schema_on(connection)
            # A set-aside row the app changed again goes with this push.
            rejoin_changed(connection, NODE_LOG, NODE_SET_ASIDE)
            separate_replaced_rows(connection, schema, NODE_LOG, NODE_KEYS)
            ids = list(
                connection.execute(
                    sa.select(versions.c.id)
                    .where(versions.c.number.is_(None))
                    .order_by(versions.c.id)
                ).scalars()
            )
            if not ids:
                return False
            self._set_state(
                connection, push_id=uuid.uuid4().hex, push_versions=json.dumps(ids)
            )
            return True

    def _send_push(self) -> PushResult:
        state = self._state()
        assert state.push_id is not None
        if state.push_message is not None:
            message = json.loads(state.push_message)
        else:
            message = self._push_message(state)
            with self._begin() as connection:
                self._set_state(connection, push_message=json.dumps(message))
        if not message["operations"]:
            self._acknowledge(state.push_versions)
            return PushResult(state.push_id, None, 0)
        try:
            answer = self._call("POST", "/push", message=message)
        except PushRejectedError:
            with self._begin() as connection:
                self._set_state(
                    connection, push_id=None, push_versions=None, push_message=None
                )
            raise
        self._acknowledge(state.push_versions)
        conflicts = self._server_conflicts(answer.get("resolved") or [])
        for conflict in conflicts:
            signals.conflict_resolved.send(self, conflict=conflict)
        return PushResult(
            state.push_id, answer["version"], answer["operations"], conflicts
        )

    def _server_conflicts(self, resolved: Sequence[Any]) -> list[Conflict]:
        """The conflicts the server decided, read on one connection."""
        if not resolved:
            return []
        with self.engine.connect() as connection:
            return [
                conflict
                for entry in resolved
                if (conflict := self._server_conflict(connection, entry)) is not None
            ]

    def _server_conflict(
        self, connection: sa.Connection, entry: Any
    ) -> Conflict | None:
        """One entry of a push answer's ``resolved`` list as a :class:`Conflict`
        (``local`` is the node's row as it is now)."""
        info = self.schema.tables.get(entry.get("table"))
        if info is None:
            return None
        aware = stores_time_zones(self.engine.dialect)
        codecs_ = table_codecs(info.table, aware_storage=aware)
        pk = [codecs_[c.name] for c in info.pk_columns]
        where = f"{info.name} conflict"
        try:
            wire = zip(pk, entry["key"], strict=True)
            key = tuple(c.to_db(v, where) for c, v in wire)
            server = entry.get("server")
            if server is not None:
                server = {
                    name: codecs_[name].to_db(value, where)
                    for name, value in server.items()
                    if name in codecs_
                }
        except (*DECODE_ERRORS, KeyError, ValueError):
            raise ProtocolMismatchError(
                f"The server described a conflict of {info.name} that does "
                "not fit the node's table; the server and node schemas differ."
            ) from None
        return Conflict(
            kind=entry["kind"],
            model=info.mapper.class_,
            table=info.name,
            key=key,
            local=next(iter(read_rows(connection, info, [key])), None),
            server=server,
            resolution=entry["resolution"],
        )

    def _push_message(self, state: _State) -> dict[str, Any]:
        schema = self.schema
        operations = NODE_LOG.operations
        aware = stores_time_zones(self.engine.dialect)
        wire_ops: list[dict[str, Any]] = []
        payloads: dict[str, Any] = {}
        with self.engine.connect() as connection:
            logged: list[tuple[int, int, str, str, str]] = []
            for batch in _batches(state.push_versions, _BATCH):
                logged += [
                    (row[0], row[1], row[2], row[3], row[4])
                    for row in connection.execute(
                        sa.select(
                            operations.c.version_id,
                            operations.c.id,
                            operations.c.table_name,
                            operations.c.row_key,
                            operations.c.command,
                        ).where(operations.c.version_id.in_(batch))
                    )
                ]
            logged.sort()
            ops = compress(
                _LoggedOp(table, key, command)
                for _, _, table, key, command in logged
                if table in schema.tables
            )
            by_table: dict[str, list[_LoggedOp]] = {}
            for op in ops:
                by_table.setdefault(op.table_name, []).append(op)
            for name, items in by_table.items():
                info = schema.tables[name]
                codecs_ = list(table_codecs(info.table, aware_storage=aware).values())
                pk_codecs = _pk_codecs(info, codecs_)
                typed = {
                    op.row_key: key_from_log(decode_key(op.row_key), pk_codecs)
                    for op in items
                }
                wanted = [typed[op.row_key] for op in items if op.command != DELETE]
                current = {
                    row_key(info, found): found
                    for found in read_rows(connection, info, wanted)
                }
                rows = []
                for op in items:
                    key = typed[op.row_key]
                    command = op.command
                    if command != DELETE:
                        found = current.get(key)
                        if found is None:  # deleted since: a later push says so
                            if command == INSERT:
                                continue
                            command = DELETE
                        else:
                            rows.append([c.to_json(found[c.name]) for c in codecs_])
                    wire_ops.append(
                        {
                            "table": name,
                            "key": [
                                c.to_json(v)
                                for c, v in zip(pk_codecs, key, strict=True)
                            ],
                            "command": command,
                        }
                    )
                if rows:
                    payloads[name] = {
                        "columns": [c.name for c in codecs_],
                        "rows": rows,
                    }
        message: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "push_id": state.push_id,
            "last_version": state.last_version,
            "operations": wire_ops,
            "payloads": payloads,
        }
        # The server decides a stale push's direct conflicts as the merge
        # would, for the tables whose strategy is built in.
        named = {
            name: self.resolutions.named(schema.tables[name].mapper.class_)
            for name in by_table
        }
        strategies = {name: found for name, found in named.items() if found}
        if strategies:
            message["resolutions"] = strategies
        return message

    def _acknowledge(self, version_ids: Sequence[int]) -> None:
        versions, operations = NODE_LOG.versions, NODE_LOG.operations
        with self._begin() as connection:
            for batch in _batches(list(version_ids), _BATCH):
                connection.execute(
                    sa.delete(operations).where(operations.c.version_id.in_(batch))
                )
                connection.execute(sa.delete(versions).where(versions.c.id.in_(batch)))
            self._set_state(
                connection, push_id=None, push_versions=None, push_message=None
            )

    def _settle_push(self) -> None:
        """Resend a push whose answer was lost, before anything is merged:
        merging must know whether those operations reached the server."""
        if self._state().push_id is None:
            return
        try:
            self._send_push()
        except PushRejectedError:
            pass  # not applied, and the push id is dropped: the ops stay queued

    # -- pull ----------------------------------------------------------------------

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
        with self._lock:
            self._registered()
            self._settle_push()
            state = self._state()
            since = state.last_version
            # A pull cut off inside a version resumes where it stopped.
            cursor = state.pull_cursor
            conflicts: list[Conflict] = []
            count = done = 0
            total: int | None = None
            version = since
            first = True
            while True:
                message: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "since": since}
                if cursor is not None:
                    message["cursor"] = cursor
                if self.page_size is not None:
                    message["limit"] = self.page_size
                wanted = self._blocks_wanted() if first else []
                if wanted:
                    message["keys"] = wanted
                try:
                    page = self._call("POST", "/pull", message=message)
                except GoneError:
                    if not first or not self._never_pulled(state):
                        raise
                    return self._bootstrap(progress, on_page)
                first = False
                if page.get("keys"):
                    self._store_blocks(page["keys"])
                changes = self._decode_page(page)
                result = self._merge(changes, page["until"], page["cursor"])
                for conflict in result.conflicts:
                    signals.conflict_resolved.send(self, conflict=conflict)
                conflicts += result.conflicts
                count += sum(len(part) for part in changes)
                version = page["until"]
                cursor = page["cursor"]
                if type(page.get("total")) is int and total is None:
                    total = page["total"]
                operations = page.get("operations")
                if type(operations) is not int:  # an older server: rows
                    operations = sum(len(part) for part in changes)
                done += operations
                if progress is not None:
                    progress(version, int(page.get("version", version)))
                if on_page is not None:
                    server_version = int(page.get("version", version))
                    on_page(PullProgress(version, server_version, done, total))
                if cursor is None:
                    return PullResult(version, count, conflicts)

    def _blocks_wanted(self) -> list[str]:
        """The tables with one integer key whose block of reserved keys is
        missing or three quarters used (see :ref:`key-blocks`)."""
        names = [n for n, info in self.schema.tables.items() if info.single_integer_key]
        if not names or not self.key_blocks:
            return []
        c = NODE_KEY_BLOCKS.c
        with self.engine.connect() as connection:
            left = dict(
                connection.execute(
                    sa.select(c.table_name, c.last_key - c.next_key + 1)
                ).all()
            )
        return [n for n in names if int(left.get(n) or 0) < _KEY_BLOCK_LOW]

    def _store_blocks(self, blocks: Any) -> None:
        """Keep the key blocks a pull answer reserved for this node."""
        if not isinstance(blocks, dict):
            return
        with self._begin() as connection:
            for name, block in blocks.items():
                if name not in self.schema.tables or not (
                    isinstance(block, list)
                    and len(block) == 2
                    and all(type(v) is int for v in block)
                    and 0 < block[0] <= block[1]
                ):
                    continue  # not a block this node can use
                c = NODE_KEY_BLOCKS.c
                connection.execute(
                    sa.delete(NODE_KEY_BLOCKS).where(c.table_name == name)
                )
                connection.execute(
                    sa.insert(NODE_KEY_BLOCKS).values(
                        table_name=name, next_key=block[0], last_key=block[1]
                    )
                )

    def _never_pulled(self, state: _State) -> bool:
        """Whether repairing this node loses nothing: it has never pulled
        (nor started to), and has nothing to push."""
        return (
            state.last_version == 0
            and state.pull_cursor is None
            and state.push_id is None
            and self.pending_operations() == 0
        )

    def _bootstrap(
        self,
        progress: Callable[[int, int], Any] | None,
        on_page: Callable[[PullProgress], Any] | None,
    ) -> PullResult:
        copied = self.repair()
        pulled = self.pull(progress, on_page=on_page)
        return PullResult(
            pulled.version, pulled.operations, pulled.conflicts, repaired=copied
        )

    def _merge(
        self, changes: list[PulledTable], until: int, cursor: str | None
    ) -> MergeResult:
        """Merge one page in one local transaction, never holding the node's
        write lock while waiting for the server.

        When the merge needs rows from the server (to settle a conflict), the
        transaction is rolled back, the rows are fetched with no lock held,
        and the merge starts again from the queue as it is then: a local
        write made meanwhile is part of the decision, never overwritten by a
        plan made without it. Each round fetches rows the earlier ones did
        not, so it ends; past ``_MERGE_ROUNDS`` the rows are fetched in the
        transaction, as a last resort.
        """
        fetched: dict[str, dict[tuple[Any, ...], dict[str, Any] | None]] = {}
        resolutions = _RememberedResolutions(self.resolutions)
        for round_ in range(1, _MERGE_ROUNDS + 1):
            fetch = functools.partial(
                self._fetch_known, fetched, round_ == _MERGE_ROUNDS
            )
            try:
                with self._begin() as connection:
                    result = merge_page(
                        connection,
                        self.schema,
                        NODE_LOG,
                        changes,
                        resolutions,
                        fetch,
                        NODE_KEYS,
                    )
                    self._set_state(connection, last_version=until, pull_cursor=cursor)
                return result
            except _NeedRows as need:
                found = self._fetch(need.table, need.keys)
                known = fetched.setdefault(need.table, {})
                known.update({k: found.get(k) for k in need.keys})
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch_known(
        self,
        fetched: dict[str, dict[tuple[Any, ...], dict[str, Any] | None]],
        last: bool,
        table: str,
        keys: Sequence[tuple[Any, ...]],
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """The merge's fetcher: server rows already fetched, or
        :class:`_NeedRows` for the others (on the ``last`` round: fetched
        there and then)."""
        known = fetched.setdefault(table, {})
        missing = [k for k in keys if k not in known]
        if missing and not last:
            raise _NeedRows(table, missing)
        if missing:
            found = self._fetch(table, missing)
            known.update({k: found.get(k) for k in missing})
        return {k: row for k in keys if (row := known[k]) is not None}

    def _decode_page(self, page: Mapping[str, Any]) -> list[PulledTable]:
        schema = self.schema
        aware = stores_time_zones(self.engine.dialect)
        parts = []
        if not isinstance(page.get("changes"), dict):
            raise ProtocolMismatchError(
                "The server answered a pull without its changes by table: it "
                "runs another version of flask-reflectsync than this node; "
                "upgrade both to the same release."
            )
        for name, wire in page["changes"].items():
            info = schema.tables.get(name)
            if info is None:
                continue  # a table this node does not synchronise
            codecs_ = table_codecs(info.table, aware_storage=aware)
            commands = wire["commands"]
            try:
                columns, values = _decode_columns(codecs_, wire, len(commands))
                pk = [codecs_[c.name] for c in info.pk_columns]
                deleted = _decode_columns(
                    {c.name: c for c in pk},
                    {"columns": [c.name for c in pk], "values": wire["deleted"]},
                    len(wire["deleted"][0]),
                )[1]
            except (*DECODE_ERRORS, KeyError, IndexError):
                raise ProtocolMismatchError(
                    f"The server sent changes of {name} that do not fit the "
                    "node's table; the server and node schemas differ."
                ) from None
            if commands and any(c.name not in columns for c in info.pk_columns):
                raise ProtocolMismatchError(
                    f"The server sent rows of {name} without their keys; the "
                    "server and node versions differ."
                )
            keys = list(zip(*deleted, strict=True))
            parts.append(PulledTable(name, columns, values, commands, keys))
        return parts

    def _fetch(
        self, table: str, keys: Sequence[tuple[Any, ...]]
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        info = self.schema.tables[table]
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        codecs_ = table_codecs(info.table, aware_storage=True)
        pk = [codecs_[c.name] for c in info.pk_columns]
        if len(pk) == 1:
            for batch in _batches(list(keys), 50):
                values = ",".join(_text(pk[0].to_json(k[0])) for k in batch)
                for row in self._server_rows(info, {f"{pk[0].name}__in": values}):
                    found[row_key(info, row)] = row
            return found
        for key in keys:
            filters = {
                c.name: _text(c.to_json(v)) for c, v in zip(pk, key, strict=True)
            }
            for row in self._server_rows(info, filters):
                found[row_key(info, row)] = row
        return found

    def _server_rows(
        self, info: TrackedTable, filters: Mapping[str, str]
    ) -> Iterator[dict[str, Any]]:
        codecs_ = table_codecs(
            info.table, aware_storage=stores_time_zones(self.engine.dialect)
        )
        offset: int | None = 0
        while offset is not None:
            params = {"model": info.name, **filters}
            if offset:
                params["offset"] = str(offset)
            answer = self._call("GET", "/query", params=params)
            for item in answer["rows"]:
                yield {
                    name: codecs_[name].to_db(value, f"{info.name} row")
                    for name, value in item.items()
                    if name in codecs_
                }
            offset = answer["next_offset"]

    # -- synchronize -----------------------------------------------------------------

    def synchronize(self, tries: int = 3) -> SyncResult:
        """Push; when the server rejects the push, pull, merge and push again.
        Ends with a pull, so the node also has every change of the others.

        :param tries: how many pushes to send before giving up.
        :raises PushRejectedError: if the push is still rejected after
            ``tries`` attempts (the server kept changing the same rows).
        """
        with self._lock:
            pulled: list[PullResult] = []
            refused: set[tuple[str, str]] = set()
            brought: set[tuple[str, str]] = set()
            attempt = 0
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
                        self._bring_holders(error, again)
                        attempt -= 1
                        continue
                    if again:
                        # Refused twice for the same rows, with a merge in
                        # between that found no local row holding the values
                        # (nothing for it to resolve): the refusal would come
                        # back for good. Set those rows aside, push the rest.
                        for table, key in sorted(again):
                            self._set_aside_row(
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

    def _bring_holders(
        self, error: UniqueConstraintError, rows: set[tuple[str, str]]
    ) -> None:
        """Merge the server rows that hold the unique values the push of
        ``rows`` was refused for (``existing_key`` of each entry)."""
        state = self._state()
        parts: list[PulledTable] = []
        for entry in error.conflicts:
            if not isinstance(entry, dict):
                continue
            ident = (str(entry.get("table")), json.dumps(entry.get("key")))
            info = self.schema.tables.get(ident[0])
            holder = entry.get("existing_key")
            if ident not in rows or info is None or not isinstance(holder, list):
                continue
            key = self._typed_key(info, holder)
            found = self._fetch(info.name, [key]).get(key) if key else None
            if found is not None:
                columns = list(found)
                values = [[found[c]] for c in columns]
                parts.append(PulledTable(info.name, columns, values, UPDATE, []))
        if parts:
            self._merge(parts, state.last_version, state.pull_cursor)

    @staticmethod
    def _unique_refusals(error: UniqueConstraintError) -> set[tuple[str, str]]:
        return {
            (str(c.get("table")), json.dumps(c.get("key")))
            for c in error.conflicts
            if isinstance(c, dict) and isinstance(c.get("key"), list)
        }

    # -- repair --------------------------------------------------------------------

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
        with self._lock:
            self._registered()
            self._settle_push()
            schema = self.schema
            aware = stores_time_zones(self.engine.dialect)
            total = 0
            answer = self._send("GET", "/repair", stream=True)
            try:
                with self._begin() as connection:
                    for tracked in reversed(list(schema.tables.values())):
                        connection.execute(sa.delete(tracked.table))
                    stream = _RepairStream(answer.iter_bytes(), self.base_url)
                    announced = on_total is None
                    for name, columns, rows in stream.tables():
                        if not announced:
                            announced = True
                            self._announce_total(stream.header, on_total)
                        info = schema.tables.get(name)
                        codecs_ = (
                            table_codecs(info.table, aware_storage=aware)
                            if info is not None
                            else {}
                        )
                        done = 0
                        batch: list[dict[str, Any]] = []
                        for values in rows:
                            if info is None:
                                continue
                            batch.append(_decode_row(codecs_, columns, values))
                            if len(batch) >= 1000:
                                write_rows(connection, info, batch, ())
                                done += len(batch)
                                batch = []
                                if progress is not None:
                                    progress(name, done)
                        if batch and info is not None:
                            write_rows(connection, info, batch, ())
                            done += len(batch)
                        if progress is not None and info is not None:
                            progress(name, done)
                        total += done
                    versions, operations = NODE_LOG.versions, NODE_LOG.operations
                    queued = sa.select(versions.c.id).where(versions.c.number.is_(None))
                    connection.execute(
                        sa.delete(operations).where(
                            operations.c.version_id.in_(queued.scalar_subquery())
                        )
                    )
                    connection.execute(
                        sa.delete(versions).where(versions.c.number.is_(None))
                    )
                    HighWater(connection, NODE_KEYS).raise_to_tables(schema)
                    self._set_state(
                        connection,
                        last_version=stream.header["version"],
                        pull_cursor=None,
                        push_id=None,
                        push_versions=None,
                        push_message=None,
                    )
            finally:
                answer.close()
            return total

    def _announce_total(
        self, header: Mapping[str, Any], on_total: Callable[[int], Any] | None
    ) -> None:
        counts = header.get("counts")
        if on_total is None or not isinstance(counts, dict):
            return
        mine = self.schema.tables
        on_total(sum(n for t, n in counts.items() if t in mine and type(n) is int))

    # -- query ---------------------------------------------------------------------

    def query(self, model: type[M], **filters: Any) -> list[M]:
        """Read rows of ``model`` from the server, not from the node.

        Filters are ``column=value`` or ``column__op=value`` with ``op`` one
        of ``ne``, ``lt``, ``lte``, ``gt``, ``gte``, ``in`` (a list) and
        ``isnull`` (a bool). The instances are built from the server's rows
        and added to no session.

        :return: every matching row, in primary-key order.
        """
        mapper = sa.inspect(model)
        info = self._model_table(model)
        params: dict[str, str] = {}
        for name, value in filters.items():
            attribute, _, operator = name.partition("__")
            prop = mapper.attrs.get(attribute)
            column = (
                prop.columns[0].name
                if prop is not None and hasattr(prop, "columns")
                else attribute
            )
            if operator == "in":
                text = ",".join(_text(v) for v in value)
            else:
                text = _text(value)
            params[f"{column}__{operator}" if operator else column] = text
        names = {
            c.name: mapper.get_property_by_column(c).key for c in info.table.columns
        }
        found: list[M] = []
        for row in self._server_rows(info, params):
            instance = mapper.class_manager.new_instance()
            for column_name, value in row.items():
                set_committed_value(instance, names[column_name], value)
            found.append(instance)
        return found

    def _model_table(self, model: type) -> TrackedTable:
        mapper: Mapper[Any] | None = sa.inspect(model, raiseerr=False)
        info = tracked_table_for(mapper) if mapper is not None else None
        if info is None:
            raise ConfigurationError(
                f"{getattr(model, '__name__', model)!r} is not a tracked mapped class."
            )
        return info


# -- keys of new rows ------------------------------------------------------------------

#: The client whose tables the sessions of each session class write.
_key_clients: weakref.WeakKeyDictionary[type[Session], weakref.ref[SyncClient]] = (
    weakref.WeakKeyDictionary()
)


def _assign_keys_on(target: Any, client: SyncClient) -> None:
    """Make new rows flushed through ``target``'s sessions take integer keys
    above the node's high water, and raise it to the keys they flush."""
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        target = target.class_
    if not (isinstance(target, type) and issubclass(target, Session)):
        return  # start_tracking has refused it already
    if target not in _key_clients:
        event.listen(target, "before_flush", _assign_new_keys)
        event.listen(target, "after_flush", _raise_high_water)
    _key_clients[target] = weakref.ref(client)


def _key_client(session: Session) -> SyncClient | None:
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
    client = _key_client(session)
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
        reserved = _reserved_keys(connection, info, len(objects))
        key = water.next_key(info, lock=True)
        for obj in objects:
            if reserved:
                setattr(obj, info.pk_attrs[0], reserved.pop(0))
                continue
            setattr(obj, info.pk_attrs[0], key)
            raised[name] = key
            key += 1
    water.raise_to(raised)


def _reserved_keys(
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
    client = _key_client(session)
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


# -- helpers --------------------------------------------------------------------------

#: How many times a page's merge may start again for rows from the server
#: before it fetches them inside its transaction.
_MERGE_ROUNDS = 20


class _NeedRows(Exception):
    """Raised through a merge that needs server rows not fetched yet."""

    def __init__(self, table: str, keys: list[tuple[Any, ...]]) -> None:
        super().__init__(table, keys)
        self.table = table
        self.keys = keys


class _RememberedResolutions(Resolutions):
    """The client's resolutions, asked once per distinct conflict: a merge
    that starts again does not ask a resolver callable (which may ask a
    person) the same question twice."""

    def __init__(self, inner: Resolutions) -> None:
        self.inner = inner
        self.default = inner.default
        self.per_model = inner.per_model
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


def _create_private_file(engine: sa.Engine) -> None:
    """Create the node's SQLite file readable by its owner only (0600), if
    it does not exist yet: it holds the node's data and, unless the client
    is given ``secret=``, the secret that signs its requests. SQLite gives
    its journal and WAL files the database file's permissions."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return
    path = url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return  # in memory, or a URI filename: SQLite's to interpret
    if url.query.get("mode") == "memory" or os.path.exists(path):
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # created meanwhile by someone else: theirs to protect
    except OSError:
        return  # no such folder, no right: SQLite's own error will say so
    os.close(descriptor)


@dataclass(frozen=True)
class _LoggedOp:
    table_name: str
    row_key: str
    command: str


def _pk_codecs(info: TrackedTable, codecs_: list[ColumnCodec]) -> list[ColumnCodec]:
    columns = list(info.table.columns)
    return [codecs_[columns.index(c)] for c in info.pk_columns]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _decode_columns(
    codecs_: Mapping[str, ColumnCodec], payload: Mapping[str, Any], length: int
) -> tuple[list[str], list[list[Any]]]:
    """A column-wise payload (``{"columns": [...], "values": [[...], ...]}``,
    one array per column), decoded: the names of the columns the node has and
    their values (a column only the server has is left out).

    :param length: how many values each column must hold.
    :raises ValueError, TypeError: a column of the wrong length, or a value
        that does not fit its column.
    """
    columns = list(payload["columns"])
    values = payload["values"]
    if len(values) != len(columns) or any(
        type(column) is not list or len(column) != length for column in values
    ):
        raise ValueError("the values do not match the columns")
    names: list[str] = []
    decoded: list[list[Any]] = []
    for name, column in zip(columns, values, strict=True):
        codec = codecs_.get(name)
        if codec is not None:
            names.append(name)
            decoded.append(_decode_column(codec, column))
    return names, decoded


def _decode_column(codec: ColumnCodec, column: list[Any]) -> list[Any]:
    exact = codec.exact_type
    if exact is not None and set(map(type, column)) <= {exact, type(None)}:
        return column  # already the database values
    decode = codec.decode
    return [None if v is None else decode(v) for v in column]


def _decode_row(
    codecs_: Mapping[str, ColumnCodec], columns: Sequence[str], values: Sequence[Any]
) -> dict[str, Any]:
    row = {}
    for name, value in zip(columns, values, strict=True):
        codec = codecs_.get(name)
        if codec is not None:  # a column only the server has is ignored
            row[name] = None if value is None else codec.decode(value)
    return row


def _text(value: Any) -> str:
    """A value as query-string text the server's codecs parse."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    return str(value)


def _check_protocol(body: Any, base_url: str) -> None:
    if not isinstance(body, dict) or body.get("ok") is not True:
        raise ProtocolMismatchError(
            f"{base_url} answered something that is not a sync server's answer."
        )
    if body.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolMismatchError(
            f"The server at {base_url} speaks protocol {body.get('protocol')!r}; "
            f"this node speaks {PROTOCOL_VERSION}. Upgrade the older side."
        )


def _logged_key(info: TrackedTable, text: str) -> tuple[Any, ...]:
    """The typed key of a row from its text in the node's log."""
    codecs_ = table_codecs(info.table, aware_storage=True)
    return key_from_log(decode_key(text), [codecs_[c.name] for c in info.pk_columns])


def _add_push_message_column(connection: sa.Connection) -> None:
    """Node files made before push messages were kept lack the column."""
    columns = sa.inspect(connection).get_columns(NODE_STATE.name)
    if "push_message" not in {column["name"] for column in columns}:
        connection.exec_driver_sql(
            f"ALTER TABLE {NODE_STATE.name} ADD COLUMN push_message TEXT"
        )


def _error_from(
    answer: httpx.Response, route: str, base_url: str, words: Words
) -> SyncError:
    try:
        body = answer.json()
    except ValueError:
        body = None
    status = answer.status_code
    if not isinstance(body, dict) or "error" not in body:
        if status >= 500:
            return ServiceBusyError(
                f"The sync server at {base_url} failed with HTTP {status}; try "
                "again later."
            )
        return ProtocolMismatchError(
            f"{base_url}{route} answered HTTP {status} without a sync error; is "
            f"{words.base_url} the server's URL with its sync prefix?"
        )
    message = str(body["error"])
    if status == 400 and "protocol" in message.lower():
        return ProtocolMismatchError(message)
    if status == 400:
        return ValidationError(message)
    if status == 401:
        if message.startswith("Unknown node"):
            message += (
                " The server does not know this node (was its database reset?); "
                f"{words.register_again}."
            )
        elif "registration token" in message and route == "/register":
            message += f" {words.token}"
        return AuthenticationError(message)
    if status == 403:
        if route == "/register":
            return RegistrationRefusedError(message)
        return ForbiddenError(message)
    if status == 404:
        if route == "/query":
            return NotFoundError(message)
        return ProtocolMismatchError(
            f"{base_url}{route} does not exist ({message}); check "
            f"{words.base_url} and the server's REFLECTSYNC_URL_PREFIX."
        )
    if status == 409:
        conflicts = list(body.get("conflicts") or [])
        if conflicts and all("columns" in c for c in conflicts):
            return UniqueConstraintError(message, conflicts)
        return PushRejectedError(message, conflicts)
    if status == 410:
        return GoneError(message)
    if status == 413:
        return PayloadTooLargeError(message)
    if status == 422 and body.get("code") in ("invalid-value", "invalid-key"):
        kind = InvalidKeyError if body["code"] == "invalid-key" else InvalidValueError
        return kind(
            message,
            table=str(body.get("table")),
            key=list(body.get("key") or []),
            column=str(body.get("column")),
        )
    if status in (502, 503, 504):
        return ServiceBusyError(message)
    error = SyncError(message)
    error.status = status
    return error


class _RepairStream:
    """Reads the streamed ``GET /repair`` answer table by table, row by row,
    holding only the current piece of text in memory."""

    def __init__(self, chunks: Iterator[bytes], base_url: str) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0
        self._base_url = base_url
        self.header: dict[str, Any] = {}

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer = self._buffer[self._pos :] + self._decoder.decode(chunk)
                self._pos = 0
                return True
        return False

    def _broken(self) -> ProtocolMismatchError:
        return ProtocolMismatchError(
            f"The repair answer of {self._base_url} is cut or malformed; run "
            "repair again."
        )

    def _peek(self) -> str:
        while True:
            while (
                self._pos < len(self._buffer) and self._buffer[self._pos] in " \t\r\n"
            ):
                self._pos += 1
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._more():
                raise self._broken()

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise self._broken()
        self._pos += 1

    def _value(self) -> Any:
        self._peek()
        while True:
            try:
                value, end = self._json.raw_decode(self._buffer, self._pos)
            except ValueError:
                if not self._more():
                    raise self._broken() from None
                continue
            if end == len(self._buffer) and isinstance(value, (int, float)):
                if self._more():  # a number may continue in the next chunk
                    continue
            self._pos = end
            return value

    def tables(self) -> Iterator[tuple[str, list[str], Iterator[list[Any]]]]:
        """``(table, columns, rows)`` for each table; consume ``rows`` before
        asking for the next table."""
        self._expect("{")
        while True:
            name = self._value()
            self._expect(":")
            if name != "tables":
                self.header[name] = self._value()
            else:
                yield from self._tables()
            if self._peek() == ",":
                self._pos += 1
                continue
            self._expect("}")
            if self.header.get("ok") is not True or "version" not in self.header:
                raise self._broken()
            if self.header.get("protocol") != PROTOCOL_VERSION:
                raise ProtocolMismatchError(
                    f"The server speaks protocol {self.header.get('protocol')!r}; "
                    f"this node speaks {PROTOCOL_VERSION}."
                )
            return

    def _tables(self) -> Iterator[tuple[str, list[str], Iterator[list[Any]]]]:
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
            return
        while True:
            name = self._value()
            self._expect(":")
            self._expect("{")
            columns: list[str] = []
            while True:
                field_name = self._value()
                self._expect(":")
                if field_name == "columns":
                    columns = self._value()
                elif field_name == "rows":
                    yield name, columns, self._rows()
                else:
                    self._value()
                if self._peek() == ",":
                    self._pos += 1
                    continue
                self._expect("}")
                break
            if self._peek() == ",":
                self._pos += 1
                continue
            self._expect("}")
            return

    def _rows(self) -> Iterator[list[Any]]:
        self._expect("[")
        if self._peek() == "]":
            self._pos += 1
            return
        while True:
            yield self._value()
            if self._peek() == ",":
                self._pos += 1
                continue
            self._expect("]")
            return
