"""Live sync over real HTTP: the change feed (``POST /changes``), the
node's sync status and ``client.watch()``.

No assertion here is about speed. A feed woken by a change is told apart
from one held to its end by a long hold (60 s) that the test never waits
out: the answer arriving at all, long before, is the proof.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from flask_reflectsync import signals
from flask_reflectsync.client import SyncClient, SyncStatus
from flask_reflectsync.errors import NodeRevokedError, ServerUnreachableError

from .conftest import AppFactory
from .http_server import (
    ServerEnv,
    TestNode,
    database_state,
    end_feed_holds,
    server_env,
    without_nonces,
)
from .nodes import Cluster, cluster
from .test_scopes import Field, field  # noqa: F401 (a fixture)

#: Long enough never to run out in a passing test.
LONG = 60.0
#: What a test waits at most for something that takes a fraction of a second.
PATIENCE = 30.0


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app, REFLECTSYNC_FEED_MAX_WAIT=LONG) as found:
        yield found


def _feed(node: TestNode, since: int, wait: float | None = None) -> httpx.Response:
    message: dict[str, Any] = {"protocol": 2, "since": since}
    if wait is not None:
        message["wait"] = wait
    return node.call("POST", "/changes", json=message)


def _add_city(env: Any, name: str) -> None:
    with env.app.app_context():
        env.db.session.add(env.models.City(name=name))
        env.db.session.commit()


def _held(
    call: Callable[[], httpx.Response],
) -> tuple[threading.Thread, dict[str, Any]]:
    found: dict[str, Any] = {}

    def run() -> None:
        found["answer"] = call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, found


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


# -- the feed -------------------------------------------------------------------


def test_the_feed_answers_unchanged_when_its_hold_ends(server: ServerEnv) -> None:
    node = server.node()
    answer = _feed(node, 0, wait=0.3)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "protocol": 2, "changed": False, "version": 0}


def test_an_app_commit_wakes_a_held_feed(server: ServerEnv) -> None:
    node = server.node()
    thread, found = _held(lambda: _feed(node, 0, wait=LONG))
    time.sleep(0.5)  # let the request be held (the test is right either way)
    _add_city(server.env, "Lima")
    thread.join(PATIENCE)
    assert not thread.is_alive(), "the feed was not woken by the commit"
    body = found["answer"].json()
    assert body["changed"] is True and body["version"] == 1, body


def test_the_feed_answers_at_once_when_the_node_is_behind(server: ServerEnv) -> None:
    node = server.node()
    _add_city(server.env, "Lima")
    thread, found = _held(lambda: _feed(node, 0, wait=LONG))
    thread.join(PATIENCE)
    assert found["answer"].json()["changed"] is True
    # Up to date: held, then unchanged.
    assert _feed(node, 1, wait=0.2).json() == {
        "ok": True, "protocol": 2, "changed": False, "version": 1,
    }


def test_a_nodes_own_push_does_not_wake_its_feed(net: Cluster) -> None:
    node = net.node()
    with node.Session() as session:
        session.add(net.server.env.models.City(name="Lima"))
        session.commit()
    node.push()
    raw = _raw_as(net, node)
    assert _feed(raw, 0, wait=0.3).json()["changed"] is False
    other = net.node()
    with other.Session() as session:
        session.add(net.server.env.models.City(name="Quito"))
        session.commit()
    other.synchronize()
    assert _feed(raw, 0, wait=0.3).json()["changed"] is True


def _raw_as(net: Cluster, client: SyncClient) -> TestNode:
    """A hand-signing node with ``client``'s identity."""
    raw = TestNode(net.server.base)
    raw.id, raw.secret = client._signing_credentials()
    return raw


@pytest.mark.parametrize(
    "message",
    [
        {"protocol": 2},
        {"protocol": 2, "since": -1},
        {"protocol": 2, "since": "1"},
        {"protocol": 2, "since": 0, "wait": -1},
        {"protocol": 2, "since": 0, "wait": "5"},
        {"protocol": 2, "since": 0, "wait": True},
        {"protocol": 2, "since": 0, "wait": 10**400},
        {"protocol": 2, "since": 0, "wait": 1e300},
        {"protocol": 2, "since": 0, "more": 1},
        {"protocol": 2, "since": 2**63},
        {"protocol": 2, "since": 5},  # ahead of the server
        [1],
    ],
)
def test_bad_feed_requests_are_400s_that_write_nothing(
    server: ServerEnv, message: Any
) -> None:
    node = server.node()
    before = without_nonces(database_state(server.env))
    answer = node.call("POST", "/changes", json=message)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["ok"] is False and body["status"] == 400 and body["error"]
    assert body["code"] in ("request.invalid", "pull.ahead_of_server")
    assert without_nonces(database_state(server.env)) == before


def test_bad_bodies_are_400s(server: ServerEnv) -> None:
    node = server.node()
    for content in (b"{", b'{"protocol": 2, "since": NaN}', b"\xff"):
        answer = node.call("POST", "/changes", content=content)
        assert answer.status_code == 400, answer.text
    assert node.build("POST", "/changes").method == "POST"
    message = {"protocol": 2, "since": 0}
    unsigned = node.send(node.build("POST", "/changes", json=message))
    assert unsigned.status_code == 401


def test_a_revoked_or_retired_node_is_refused_on_the_feed(net: Cluster) -> None:
    revoked, retired = net.node(), net.node()
    net.server.env.sync.revoke_node(revoked.node_id)
    net.server.env.sync.retire_node(retired.node_id)
    answer = _feed(_raw_as(net, revoked), 0, wait=0)
    assert (answer.status_code, answer.json()["code"]) == (403, "auth.revoked")
    answer = _feed(_raw_as(net, retired), 0, wait=0)
    assert (answer.status_code, answer.json()["code"]) == (410, "fleet.retired")


def test_a_scoped_node_is_woken_only_by_its_share(
    field: Field,  # noqa: F811
) -> None:
    north = field.raw(region="north")
    field.add(field.Survey(id=1, region="south", title="S1"))
    # Outside the share: held to the end, unchanged.
    body = _feed(north, 0, wait=0.5).json()
    assert body == {"ok": True, "protocol": 2, "changed": False, "version": 1}
    thread, found = _held(lambda: _feed(north, 1, wait=LONG))
    time.sleep(0.3)
    field.add(field.Survey(id=2, region="south", title="S2"))  # not for north
    field.add(field.Survey(id=3, region="north", title="N1"))
    thread.join(PATIENCE)
    assert not thread.is_alive()
    assert found["answer"].json()["changed"] is True
    # A row leaving the share wakes it too (it must be evicted).
    with field.env.app.app_context():
        survey = field.db.session.get(field.Survey, 3)
        survey.region = "south"
        field.db.session.commit()
    assert _feed(north, 3, wait=0.5).json()["changed"] is True
    assert _feed(north, 4, wait=0.3).json()["changed"] is False


# -- two servers on one database --------------------------------------------------


class Recorder(httpx.HTTPTransport):
    """Keeps (path, answer body) of every request a client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []
        #: Paths of the requests sent (answered or not yet).
        self.asked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path.removeprefix("/sync"))
        answer = super().handle_request(request)
        answer.read()
        try:
            body = answer.json()
        except ValueError:
            body = None
        self.seen.append((request.url.path.removeprefix("/sync"), body))
        return answer


@contextmanager
def watching(client: SyncClient, **options: Any) -> Iterator[threading.Event]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            client.watch(stop, **options)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(PATIENCE)
        assert not thread.is_alive(), "watch() did not stop"
        assert not errors, errors


def _cities(client: SyncClient) -> set[str]:
    with client.engine.connect() as connection:
        return set(connection.execute(sa.text("SELECT name FROM city")).scalars())


def test_a_push_through_another_server_reaches_a_watching_node(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with cluster(make_app, tmp_path, REFLECTSYNC_FEED_MAX_WAIT=LONG) as net:
        with server_env(make_app) as other:  # a second app on the database
            recorder = Recorder()
            watcher = net.node("watcher", transport=recorder)
            writer = net.node("writer")
            writer.base_url = other.base
            with watching(watcher, wait=LONG):
                _eventually(
                    lambda: watcher.status.last_synced_at is not None
                    and "/changes" in recorder.asked,
                    "the watcher caught up and asks the feed",
                )
                with writer.Session() as session:
                    session.add(net.server.env.models.City(name="Lima"))
                    session.commit()
                writer.push()  # served by the other server
                _eventually(lambda: "Lima" in _cities(watcher), "Lima arrives")
            # The pull that brought it followed the feed's news: the node
            # did not poll.
            paths = [p for p, _ in recorder.seen]
            woken = [
                n for n, (p, body) in enumerate(recorder.seen)
                if p == "/changes" and body and body.get("changed") is True
            ]
            assert woken, recorder.seen
            assert "/pull" in paths[woken[0] + 1 :]
            assert paths.count("/pull") == 1 + len(woken), recorder.seen
            assert watcher.status.watching is False
            assert watcher.status.connected is True


def test_a_watching_node_pushes_its_local_commits(net: Cluster) -> None:
    watcher = net.node()
    with watching(watcher, wait=LONG):
        # Caught up first, then the feed holds: only the commit can start
        # the push.
        _eventually(lambda: watcher.status.last_synced_at is not None, "synced")
        with watcher.Session() as session:
            session.add(net.server.env.models.City(name="Cusco"))
            session.commit()
        _eventually(
            lambda: {r[1] for r in net.server_rows()["city"]} == {"Cusco"},
            "Cusco is pushed",
        )
    assert watcher.pending_operations() == 0
    assert watcher.status.pending == 0


# -- restarts, status ------------------------------------------------------------


class Restartable:
    """An app served on one port, stopped and started again at will."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.port = 0
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True)
        self.port = self.server.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        end_feed_holds(self.app)
        self.server.shutdown()
        assert self.thread is not None
        self.thread.join()
        self.server.server_close()


def test_watch_survives_the_server_restarting(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with cluster(make_app, tmp_path, REFLECTSYNC_FEED_MAX_WAIT=0.5) as net:
        served = Restartable(net.server.env.app)
        served.start()
        client = net.node()
        client.base_url = f"http://127.0.0.1:{served.port}/sync"
        client.retries, client.retry_within = 1, 0.2
        seen: list[SyncStatus] = []

        def heard(sender: Any, status: SyncStatus, **extra: Any) -> None:
            seen.append(status)

        signals.sync_status_changed.connect(heard, sender=client)
        try:
            with watching(client, wait=0.5, max_backoff=0.5):
                _eventually(lambda: client.status.connected is True, "connected")
                served.stop()
                _eventually(lambda: client.status.connected is False, "offline")
                assert client.status.last_error
                _add_city(net.server.env, "Lima")
                served.start()
                _eventually(lambda: "Lima" in _cities(client), "Lima arrives")
                _eventually(
                    lambda: client.status.connected is True
                    and client.status.last_error is None,
                    "connected again",
                )
        finally:
            signals.sync_status_changed.disconnect(heard, sender=client)
            served.stop()
        states = [s.connected for s in seen]
        offline = states.index(False)
        assert True in states[offline:], states
        assert seen[0].watching is True and seen[-1].watching is False


def test_the_status_follows_what_the_node_learns(net: Cluster) -> None:
    heard: list[SyncStatus] = []
    client = net.node(on_status=heard.append)
    assert client.status == SyncStatus()  # nothing exchanged yet
    City = net.server.env.models.City
    with client.Session() as session:
        session.add_all([City(name="Lima"), City(name="Quito")])
        session.commit()
    assert client.refresh_status().pending == 2
    assert heard[-1].pending == 2

    client.synchronize()
    status = client.status
    assert (status.connected, status.pending, status.last_error) == (True, 0, None)
    assert status.last_synced_at is not None and status.version == 1

    with client.Session() as session:
        session.add(City(name="Cusco"))
        session.commit()
    real = client.base_url
    client.base_url = "http://127.0.0.1:9/sync"  # nothing listens there
    client.retries = 0
    with pytest.raises(ServerUnreachableError):
        client.synchronize()
    status = client.status
    assert (status.connected, status.pending) == (False, 1)
    assert status.last_error and "Cannot reach" in status.last_error
    assert status.last_synced_at is not None  # kept from the last success
    client.base_url = real
    client.synchronize()
    assert (client.status.connected, client.status.last_error) == (True, None)

    # A value the server refuses is counted as set aside.
    unchecked = net.node(check_values=False)
    with unchecked.Session() as session:
        session.add(City(name="x" * 101))  # the server's column holds 100
        session.commit()
    unchecked.synchronize()
    status = unchecked.status
    assert (status.set_aside, status.pending, status.last_error) == (1, 0, None)


def test_a_revoked_node_ends_its_watch(net: Cluster) -> None:
    client = net.node()
    net.server.env.sync.revoke_node(client.node_id)
    with pytest.raises(NodeRevokedError):
        client.watch(wait=0.2)
    assert client.status.watching is False
    assert client.status.last_error and "revoked" in client.status.last_error


def test_stop_watching_ends_the_watch(net: Cluster) -> None:
    client = net.node()
    thread = threading.Thread(target=client.watch, kwargs={"wait": LONG}, daemon=True)
    thread.start()
    _eventually(lambda: client.status.watching, "watching")
    _eventually(lambda: client.status.connected is True, "connected")
    client.stop_watching()
    thread.join(PATIENCE)
    assert not thread.is_alive()
    assert client.status.watching is False
