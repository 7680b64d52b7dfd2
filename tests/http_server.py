"""A live sync server on 127.0.0.1 and a small signing node for the tests.

``served`` runs the app under werkzeug in a thread on a free port;
:class:`TestNode` registers and signs requests with httpx, the way a real
node does (the shared signing code is :mod:`flask_reflectsync.wire.signing`).
"""

from __future__ import annotations

import datetime
import decimal
import functools
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from json import dumps
from typing import Any

import httpx
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.serving import make_server

from flask_reflectsync import track
from flask_reflectsync.tracking import define_tables
from flask_reflectsync.tracking.numbering import number_versions
from flask_reflectsync.wire.repair import MEDIA_TYPE, RepairReader
from flask_reflectsync.wire.signing import sign_request

from .conftest import AppEnv, AppFactory

SECRET_KEY = "test-server-key"
#: What a node sends with ``GET /repair``.
REPAIR_ACCEPT = {"Accept": MEDIA_TYPE}


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for the test clients of a process.

    The test servers speak plain HTTP, so TLS is never used, but an
    ``httpx.Client`` or ``HTTPTransport`` given none builds its own and
    loads a CA bundle into it (about 30 ms of CPU each, 15% of the
    convergence test's): the clients made by the hundreds (:class:`TestNode`,
    the convergence examples' transports) share this one instead.
    """
    return ssl.create_default_context()


def read_repair(answer: httpx.Response) -> dict[str, Any]:
    """A repair answer read with the node's reader, in one document:
    ``{"header", "end", "tables": {name: {"columns", "rows"}}}``."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == MEDIA_TYPE
    reader = RepairReader(iter([answer.content]), "test")
    tables = {
        name: {"columns": columns, "rows": [row for rows in chunks for row in rows]}
        for name, columns, chunks in reader.tables()
    }
    return {"header": reader.header, "end": reader.end, "tables": tables}


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; yields its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        end_feed_holds(app)
        server.shutdown()
        thread.join()
        server.server_close()


def end_feed_holds(app: Flask) -> None:
    """Answer every change-feed request ``app`` holds at once (a server
    shutting down), so none is left querying the database after the test;
    the next request makes a new hub."""
    state = app.extensions.get("reflectsync")
    if state is not None and state.feed_hub is not None:
        state.feed_hub.close()
        state.feed_hub = None


def define_sample(db: SQLAlchemy) -> Any:
    """A tracked model with one column of each type the codec handles."""

    @track
    class Sample(db.Model):  # type: ignore[name-defined]
        __tablename__ = "sample"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        code: Mapped[str | None] = mapped_column(sa.String(20), unique=True)
        day: Mapped[datetime.date | None]
        # MySQL's DATETIME keeps whole seconds unless given a precision.
        moment: Mapped[datetime.datetime | None] = mapped_column(
            sa.DateTime(timezone=True).with_variant(
                mysql.DATETIME(fsp=6), "mysql", "mariadb"
            )
        )
        amount: Mapped[decimal.Decimal | None] = mapped_column(sa.Numeric(14, 4))
        blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
        ref: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
        doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
        flag: Mapped[bool] = mapped_column(default=False)

    return Sample


@dataclass
class ServerEnv:
    """An app with the sample model, served over HTTP."""

    env: AppEnv
    url: str
    Sample: Any

    @property
    def base(self) -> str:
        return self.url + "/sync"

    def node(self, **register: Any) -> TestNode:
        """A newly registered node."""
        node = TestNode(self.base)
        answer = node.register(**register)
        assert answer.status_code == 200, answer.text
        return node


@contextmanager
def server_env(make_app: AppFactory, **config: Any) -> Iterator[ServerEnv]:
    settings: dict[str, Any] = {
        "SECRET_KEY": SECRET_KEY,
        "REFLECTSYNC_OPEN_REGISTRATION": True,
    }
    settings.update(config)
    env = make_app(**settings)
    Sample = define_sample(env.db)
    with env.app.app_context():
        env.db.create_all()
    # The test itself runs in an app context (to read the database); the
    # server thread pushes its own per request.
    with served(env.app) as url, env.app.app_context():
        yield ServerEnv(env, url, Sample)


class TestNode:
    """Registers with the server and sends signed requests."""

    __test__ = False  # not a test class

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(timeout=60, verify=tls_context())
        self.id: int | None = None
        self.secret: str | None = None
        self.last_version = 0

    def register(self, **message: Any) -> httpx.Response:
        answer = self.client.post(
            self.base + "/register", json={"protocol": 2, **message}
        )
        if answer.status_code == 200:
            node = answer.json()["node"]
            self.id, self.secret = node["id"], node["secret"]
        return answer

    def build(
        self,
        method: str,
        route: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        if json is not None:
            content = dumps(json).encode()
        return self.client.build_request(
            method,
            self.base + route,
            content=content,
            params=params,
            headers={
                **({"Content-Type": "application/json"} if content else {}),
                **(headers or {}),
            },
        )

    def sign(self, request: httpx.Request, **options: Any) -> httpx.Request:
        assert self.id is not None and self.secret is not None
        request.headers.update(
            sign_request(
                self.id,
                self.secret,
                request.method,
                request.url.path,
                request.url.query.decode("latin-1"),
                request.content,
                **options,
            )
        )
        return request

    def send(self, request: httpx.Request) -> httpx.Response:
        return self.client.send(request)

    def call(self, method: str, route: str, **kwargs: Any) -> httpx.Response:
        """Build, sign and send one request."""
        return self.send(self.sign(self.build(method, route, **kwargs)))

    def repair(self) -> httpx.Response:
        """``GET /repair`` as a node asks for it (naming the stream's type)."""
        return self.call("GET", "/repair", headers=REPAIR_ACCEPT)

    def push(
        self,
        operations: list[dict[str, Any]],
        payloads: dict[str, Any] | None = None,
        *,
        push_id: str | None = None,
        last_version: int | None = None,
        **extra: Any,
    ) -> httpx.Response:
        message: dict[str, Any] = {
            "protocol": 2,
            "push_id": push_id or uuid.uuid4().hex,
            "last_version": self.last_version if last_version is None else last_version,
            "operations": operations,
            **extra,
        }
        if payloads is not None:
            message["payloads"] = payloads
        return self.call("POST", "/push", json=message)

    def pull(self, since: int | None = None, **extra: Any) -> httpx.Response:
        since = self.last_version if since is None else since
        return self.call("POST", "/pull", json={"protocol": 2, "since": since, **extra})

    def pull_all(self) -> list[dict[str, Any]]:
        """Every page of a pull from ``last_version``; records the new version."""
        pages = []
        cursor = None
        while True:
            extra = {"cursor": cursor} if cursor else {}
            answer = self.pull(**extra)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            pages.append(page)
            cursor = page["cursor"]
            if cursor is None:
                self.last_version = page["until"]
                return pages

    def close(self) -> None:
        self.client.close()


def insert(
    table: str, row: dict[str, Any], key: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One insert operation and its payload (for a single-row push)."""
    key_values = [row[k] for k in (key or ["id"])]
    return (
        {"table": table, "key": key_values, "command": "i"},
        {table: {"columns": list(row), "rows": [list(row.values())]}},
    )


def database_state(env: AppEnv) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table on the app's metadata, sorted: equal states
    mean nothing was written.

    Committed versions are numbered first, as any pull or push does on
    PostgreSQL and MySQL (they are numbered after commit): a refused request
    may number the app's earlier versions, which writes nothing of its own.
    """
    if "reflectsync_operations" in env.db.metadata.tables:
        number_versions(env.db.engine, define_tables(env.db.metadata))
    state = {}
    with env.db.engine.connect() as connection:
        for table in env.db.metadata.sorted_tables:
            rows = connection.execute(sa.select(table)).all()
            state[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return state


def without_nonces(state: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
    """A database state minus what authentication itself records (the nonce
    and the node's last_seen_at), which a well-signed request writes even
    when its message is refused, and the server's record of its own
    columns' names (PostgreSQL, once per process: see
    :mod:`flask_reflectsync.server.column_names`)."""
    own = ("reflectsync_nonces", "reflectsync_column_names")
    kept = {k: v for k, v in state.items() if k not in own}
    kept["reflectsync_nodes"] = [
        row[:4] + row[5:] for row in state["reflectsync_nodes"]
    ]
    return kept
