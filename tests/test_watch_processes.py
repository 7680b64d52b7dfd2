"""Live sync with servers in processes of their own (issue 17's "done when"):
two gunicorn processes on one database, a node watching one and writes
arriving through the other; every route refusing a revoked node; a
``reflectsync-node sync --watch`` process riding out its server's restart
and stopping cleanly on SIGTERM; a gunicorn worker ending its held feed
requests at once when told to stop.

On PostgreSQL the servers' feed poll interval is a minute: a change
reaching the watcher within seconds can only have come by ``NOTIFY``. On
SQLite and MariaDB the feed polls the counter (a fifth of a second).
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask

from example_app import server as survey
from flask_reflectsync.client import SyncClient
from flask_reflectsync.tracking.numbering import number_versions, settle_numbering

from .http_server import REPAIR_ACCEPT, TestNode
from .nodes import Cluster
from .process_server import ROOT, ServerProcess

#: What a test waits at most for something that takes a fraction of a second.
PATIENCE = 20.0
#: Holds no passing test waits out.
HOLD = 30.0


def _poll_interval(database_url: str) -> float:
    """A minute on PostgreSQL (only ``NOTIFY`` wakes a feed in time), a
    fifth of a second elsewhere (the counter's bounded polling)."""
    return 60.0 if database_url.startswith("postgresql") else 0.2


@pytest.fixture
def local(database_url: str) -> Iterator[Flask]:
    """The survey app in the test process, on the servers' database: it
    creates the tables, and reads and writes as the operator would."""
    app = survey.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SECRET_KEY": "process-test",
            "REFLECTSYNC_OPEN_REGISTRATION": True,
        }
    )
    with app.app_context():
        survey.db.drop_all()
        survey.db.create_all()
    try:
        yield app
    finally:
        with app.app_context():
            survey.db.session.remove()
            settle_numbering(survey.db.engine)
            survey.db.drop_all()
            survey.db.engine.dispose()


def _config(database_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SECRET_KEY": "process-test",
        "REFLECTSYNC_OPEN_REGISTRATION": True,
        "REFLECTSYNC_FEED_MAX_WAIT": HOLD,
        "REFLECTSYNC_FEED_POLL_INTERVAL": _poll_interval(database_url),
        **extra,
    }


def _start(*servers: ServerProcess) -> None:
    """Start servers side by side (each takes a second to import)."""
    threads = [threading.Thread(target=s.start) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for server in servers:
        assert server.process is not None and server.process.poll() is None


def _eventually(check: Callable[[], bool], what: str) -> float:
    """Wait for ``check``; the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < PATIENCE:
        if check():
            return time.monotonic() - began
        time.sleep(0.01)
    raise AssertionError(f"not within {PATIENCE} s: {what}")


class Recorder(httpx.HTTPTransport):
    """Keeps (path, answer body) of every request a client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []
        self.asked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/sync")
        self.asked.append(path)
        answer = super().handle_request(request)
        answer.read()
        try:
            body = answer.json()
        except ValueError:
            body = None
        self.seen.append((path, body))
        return answer


def _node(base: str, path: Path, **options: Any) -> SyncClient:
    engine = sa.create_engine(f"sqlite:///{path}")
    survey.Base.metadata.create_all(engine)
    client = SyncClient(
        base, engine, models=[survey.Site, survey.Observation], **options
    )
    client.register()
    return client


def _sites(client: SyncClient) -> set[str]:
    with client.engine.connect() as connection:
        return set(connection.execute(sa.text("SELECT name FROM site")).scalars())


def test_writes_through_one_process_reach_a_node_watching_another(
    local: Flask, database_url: str, tmp_path: Path
) -> None:
    a = ServerProcess(_config(database_url), tmp_path)
    b = ServerProcess(_config(database_url), tmp_path)
    recorder = Recorder()
    watcher = writer = None
    try:
        _start(a, b)
        watcher = _node(a.base, tmp_path / "watcher.db", transport=recorder)
        writer = _node(b.base, tmp_path / "writer.db")
        stop = threading.Event()
        thread = threading.Thread(
            target=watcher.watch, args=(stop,), kwargs={"wait": HOLD}, daemon=True
        )
        thread.start()
        _eventually(
            lambda: watcher.status.last_synced_at is not None
            and "/changes" in recorder.asked,
            "the watcher caught up and holds the feed of A",
        )
        time.sleep(0.3)  # A's feed is past its first look at the log

        # Another node's push, served by B.
        with writer.Session() as session:
            session.add(survey.Site(name="pushed to B"))
            session.commit()
        writer.push()
        pushed = _eventually(
            lambda: "pushed to B" in _sites(watcher), "the push through B arrives"
        )
        # The server app's own commit, made in B.
        b.add_site("committed in B")
        committed = _eventually(
            lambda: "committed in B" in _sites(watcher),
            "the app's commit in B arrives",
        )
        stop.set()
        thread.join(PATIENCE)
        assert not thread.is_alive()
    finally:
        for node in (watcher, writer):
            if node is not None:
                node.close()
                node.engine.dispose()
        for server in (a, b):
            server.kill()
    # Well under the poll interval on PostgreSQL: NOTIFY woke A's feed.
    assert max(pushed, committed) < min(5.0, _poll_interval(database_url) / 2 + 2)
    # Every pull followed a feed answer saying "changed" (or was the first
    # catch-up): the node did not poll.
    paths = [path for path, _ in recorder.seen]
    woken = [
        n for n, (path, body) in enumerate(recorder.seen)
        if path == "/changes" and body and body.get("changed") is True
    ]
    assert len(woken) >= 2, recorder.seen
    assert paths.count("/pull") == 1 + len(woken), recorder.seen


#: A signed request to each node route; a route added to the blueprint must
#: be added here (the test below checks it).
NODE_ROUTES: dict[str, Callable[[TestNode], httpx.Response]] = {
    "/push": lambda n: n.push([]),
    "/pull": lambda n: n.pull(0),
    "/changes": lambda n: n.call(
        "POST", "/changes", json={"protocol": 2, "since": 0, "wait": 0}
    ),
    "/repair": lambda n: n.call("GET", "/repair", headers=REPAIR_ACCEPT),
    "/query": lambda n: n.call("GET", "/query", params={"model": "site"}),
    "/schema-check": lambda n: n.call(
        "POST", "/schema-check", json={"protocol": 2, "schema": {}}
    ),
}
#: The routes a node may call without being registered.
UNSIGNED_ROUTES = {"/register", "/openapi.json"}


def test_a_revoked_node_is_refused_on_every_route_of_every_process(
    local: Flask, database_url: str, tmp_path: Path
) -> None:
    # Every sync route (the catalog's are the app's UI, behind its own
    # access check, not a node's).
    prefix = local.config["REFLECTSYNC_URL_PREFIX"]
    routes = {
        rule.rule.removeprefix(prefix)
        for rule in local.url_map.iter_rules()
        if local.view_functions[rule.endpoint].__module__
        == "flask_reflectsync.blueprints.sync"
    }
    assert routes == set(NODE_ROUTES) | UNSIGNED_ROUTES

    a = ServerProcess(_config(database_url), tmp_path)
    b = ServerProcess(_config(database_url), tmp_path)
    nodes: list[TestNode] = []
    try:
        _start(a, b)
        lost, kept = TestNode(a.base), TestNode(a.base)
        nodes += [lost, kept]
        assert lost.register().status_code == kept.register().status_code == 200
        with local.app_context():
            survey.sync.revoke_node(lost.id)
        for server in (a, b):  # the refusal is in the database, not a process
            for node in (lost, kept):
                node.base = server.base
            for route, call in NODE_ROUTES.items():
                answer = call(lost)
                assert answer.status_code == 403, (server.port, route, answer.text)
                body = answer.json()
                assert (body["ok"], body["code"]) == (False, "auth.revoked"), route
                served = call(kept)  # the other node is served as before
                assert served.status_code == 200, (route, served.text)
    finally:
        for node in nodes:
            node.close()
        for server in (a, b):
            server.kill()


def _lines(stream: Any) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=read, daemon=True).start()
    return found


def _wait_line(lines: queue.Queue[str], start: str, seen: list[str]) -> str:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(start):
            return line
    raise AssertionError(f"no line starting {start!r} in {seen}")


def _node_sites(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sa.text("SELECT name FROM site")).scalars())
    finally:
        engine.dispose()


def _missed(app: Flask, client: SyncClient) -> list[int]:
    """The server's versions after the node's last one that it did not
    push itself: what it would still have to pull."""
    with app.app_context():
        tables = app.extensions["reflectsync"].tables
        number_versions(survey.db.engine, tables)
        versions = tables.versions
        with survey.db.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(versions.c.number).where(
                        versions.c.number > client.last_version,
                        sa.or_(
                            versions.c.node_id.is_(None),
                            versions.c.node_id != client.node_id,
                        ),
                    )
                ).scalars()
            )


def _pending(url: str) -> int:
    client = SyncClient("http://127.0.0.1:9/sync", sa.create_engine(url))
    try:
        return client.pending_operations()
    finally:
        client.close()
        client.engine.dispose()


def test_sync_watch_rides_out_a_server_restart_and_stops_cleanly(
    local: Flask, database_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(
        _config(database_url, REFLECTSYNC_FEED_POLL_INTERVAL=0.2), tmp_path
    )
    node_url = f"sqlite:///{tmp_path / 'node.db'}"
    command = [
        sys.executable, "-m", "flask_reflectsync",
        "--server", server.base, "--database", node_url,
        "--models", "example_app.models",
    ]
    holder = TestNode(server.base)
    watching: subprocess.Popen[str] | None = None
    try:
        server.start()
        done = subprocess.run(
            [*command, "register"], capture_output=True, text=True, timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        watching = subprocess.Popen(
            [*command, "sync", "--watch", "--wait", str(HOLD), "--max-backoff", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert watching.stderr is not None and watching.stdout is not None
        lines, seen = _lines(watching.stderr), []
        _wait_line(lines, "[connected]", seen)

        # A feed request held by the worker: a SIGTERM ends it at once
        # (flask_reflectsync.gunicorn), so the worker exits long before
        # the hold would run out.
        assert holder.register().status_code == 200
        held: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: held.append(
                holder.call("POST", "/changes", json={"protocol": 2, "since": 0})
            )
        )
        request.start()
        time.sleep(0.5)
        assert not held, "the feed request was answered before any change"
        took = server.stop()
        request.join(PATIENCE)
        assert held and held[0].status_code == 200, held
        assert held[0].json()["changed"] is False
        assert took < 10, f"gunicorn took {took:.1f} s to stop"  # 30 s unhooked

        _wait_line(lines, "[offline]", seen)
        with local.app_context():  # the app writes while the server is down
            survey.db.session.add(survey.Site(name="while down"))
            survey.db.session.commit()
        server.start()
        _wait_line(lines, "[connected]", seen)
        _eventually(lambda: "while down" in _node_sites(node_url), "caught up")

        # A crash (SIGKILL, no graceful anything); meanwhile the app writes
        # and so does the node (queued: its server is gone).
        server.kill()
        with local.app_context():
            survey.db.session.add(survey.Site(name="after the crash"))
            survey.db.session.commit()
        offline = SyncClient(
            server.base, sa.create_engine(node_url),
            models=[survey.Site, survey.Observation],
        )
        try:
            with offline.Session() as session:
                session.add(survey.Site(name="made offline"))
                session.commit()
        finally:
            offline.close()
            offline.engine.dispose()
        server.start()
        _eventually(
            lambda: "after the crash" in _node_sites(node_url), "caught up again"
        )
        server_sites = lambda: _node_sites(database_url)  # noqa: E731
        _eventually(
            lambda: "made offline" in server_sites() and _pending(node_url) == 0,
            "the queue pushed and acknowledged",
        )

        # Stopped while it cannot reach the server (backing off): at once,
        # cleanly, between two tries.
        server.kill()
        _wait_line(lines, "[offline]", seen)
        began = time.monotonic()
        watching.terminate()  # SIGTERM
        out, err = watching.communicate(timeout=PATIENCE)
        assert watching.returncode == 0, err
        assert time.monotonic() - began < 3, "it sat out the retries"
        # Nothing half-done: nothing queued, the node holds the server's rows
        # and its latest version.
        client = SyncClient(server.base, sa.create_engine(node_url))
        try:
            assert client.pending_operations() == 0, (out, err)
            assert f"Stopped at version {client.last_version}." in out, (out, err)
            assert _missed(local, client) == []
        finally:
            client.close()
            client.engine.dispose()
        assert _node_sites(node_url) == server_sites() == {
            "while down", "after the crash", "made offline"
        }
    finally:
        holder.close()
        if watching is not None and watching.poll() is None:
            watching.kill()
            watching.wait()
        server.kill()


class Refusing(httpx.HTTPTransport):
    """A network that goes away when told: every request after ``down``
    is refused as by a server that is not there."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("Connection refused", request=request)
        return super().handle_request(request)


def test_a_stopped_watch_does_not_sit_out_a_requests_retries(net: Cluster) -> None:
    network = Refusing()
    retrying = threading.Event()
    client = net.node(
        transport=network,
        retries=3,
        retry_within=60,
        on_retry=lambda retry: retrying.set(),
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=client.watch, args=(stop,), kwargs={"wait": HOLD, "debounce": 0},
        daemon=True,
    )
    thread.start()
    _eventually(lambda: client.status.last_synced_at is not None, "caught up")
    network.down = True
    with client.Session() as session:
        session.add(net.server.env.models.City(name="Lima"))
        session.commit()
    assert retrying.wait(PATIENCE), "the push was not tried again"
    began = time.monotonic()
    stop.set()
    thread.join(PATIENCE)
    # Up to a minute of retries left, yet it stopped between two tries,
    # the change still queued for the next run.
    assert not thread.is_alive()
    assert time.monotonic() - began < 2
    assert client.pending_operations() == 1
    assert client.status.watching is False
