"""The client sends a request again when the server is busy (503, 429) or
cannot be reached, with backoff, within bounds, honouring Retry-After."""

from __future__ import annotations

import datetime
import email.utils
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, jsonify, request

from flask_reflectsync import errors
from flask_reflectsync.client import Retry, SyncClient
from flask_reflectsync.node.transport import retry_after

from .nodes import Cluster


def answer_busy(
    app: Flask,
    path: str,
    times: int,
    status: int = 503,
    headers: dict[str, str] | None = None,
) -> dict[str, int]:
    """Make ``app`` answer ``status`` to the first ``times`` requests for
    ``path`` (before any view runs); returns the counts seen and answered.
    Must be called before the app serves its first request."""
    counts = {"left": times, "seen": 0}

    @app.before_request
    def busy() -> Any:
        if request.path != path:
            return None
        counts["seen"] += 1
        if counts["left"] <= 0:
            return None
        counts["left"] -= 1
        body = {"ok": False, "error": "The database is busy.", "status": status}
        return jsonify(body), status, headers or {}

    return counts


def test_pull_is_retried_on_503_until_it_succeeds(net: Cluster) -> None:
    counts = answer_busy(net.server.env.app, "/sync/pull", 2)
    seen: list[Retry] = []
    node = net.node(retry_within=0.5, on_retry=seen.append)
    result = node.pull()
    assert result.version == 0
    assert counts["seen"] == 3
    assert [r.attempt for r in seen] == [2, 3]
    assert all(r.route == "/pull" and r.attempts == 4 for r in seen)
    assert all(isinstance(r.error, errors.ServiceBusyError) for r in seen)
    assert "try 2 of 4" in seen[0].describe()


def test_retries_are_bounded(net: Cluster) -> None:
    counts = answer_busy(net.server.env.app, "/sync/pull", 100)
    node = net.node(retries=2, retry_within=0.3)
    started = time.monotonic()
    with pytest.raises(errors.ServiceBusyError) as caught:
        node.pull()
    assert time.monotonic() - started < 2
    assert counts["seen"] == 3
    assert "tried 3 times" in caught.value.message
    assert caught.value.retryable


def test_no_retries_when_turned_off(net: Cluster) -> None:
    counts = answer_busy(net.server.env.app, "/sync/pull", 1)
    node = net.node(retries=0)
    with pytest.raises(errors.ServiceBusyError):
        node.pull()
    assert counts["seen"] == 1


def test_a_push_answered_429_is_retried_and_applied_once(net: Cluster) -> None:
    m = net.server.env.models
    counts = answer_busy(net.server.env.app, "/sync/push", 1, status=429)
    node = net.node(retry_within=0.5)
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    result = node.push()
    assert result.operations == 1
    assert counts["seen"] == 2
    assert net.server_rows()["country"] == [(1, "Peru")]


def test_retry_after_is_honoured(net: Cluster) -> None:
    answer_busy(net.server.env.app, "/sync/pull", 1, headers={"Retry-After": "1"})
    seen: list[Retry] = []
    node = net.node(retry_within=5, on_retry=seen.append)
    started = time.monotonic()
    node.pull()
    assert time.monotonic() - started >= 1
    assert [r.delay for r in seen] == [1.0]


def test_a_retry_after_beyond_the_budget_is_not_waited_for(net: Cluster) -> None:
    counts = answer_busy(
        net.server.env.app, "/sync/pull", 1, headers={"Retry-After": "3600"}
    )
    node = net.node(retry_within=5)
    with pytest.raises(errors.ServiceBusyError):
        node.pull()
    assert counts["seen"] == 1


def test_refusals_are_not_retried(net: Cluster) -> None:
    app = net.server.env.app
    counts = answer_busy(app, "/sync/pull", 1, status=401)
    node = net.node(retry_within=0.5)
    with pytest.raises(errors.AuthenticationError):
        node.pull()
    assert counts["seen"] == 1


def test_registration_is_retried_when_the_server_is_busy(net: Cluster) -> None:
    counts = answer_busy(net.server.env.app, "/sync/register", 1)
    node = net.node(retry_within=0.5)
    assert node.is_registered()
    assert counts["seen"] == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_is_retried(net: Cluster, tmp_path: Path) -> None:
    """The server is down for the first tries, then comes up."""
    node = net.node(retries=6, retry_within=6)
    port = _free_port()
    node.base_url = f"http://127.0.0.1:{port}/sync"
    seen: list[Retry] = []
    node.on_retry = seen.append
    up = threading.Event()
    done = threading.Event()

    def serve_later() -> None:
        time.sleep(0.4)
        from werkzeug.serving import make_server

        server = make_server("127.0.0.1", port, net.server.env.app, threaded=True)
        up.set()
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        thread.start()
        done.wait(30)
        server.shutdown()
        thread.join()
        server.server_close()

    starter = threading.Thread(target=serve_later)
    starter.start()
    try:
        node.pull()
    finally:
        done.set()
        starter.join()
    assert up.is_set()
    assert seen and all(
        isinstance(r.error, errors.ServerUnreachableError) for r in seen
    )


def test_an_unreachable_server_is_reported_after_the_tries(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'off.db'}")
    port = _free_port()
    seen: list[Retry] = []
    client = SyncClient(
        f"http://127.0.0.1:{port}/sync",
        engine,
        models=[],
        retries=2,
        retry_within=0.2,
        on_retry=seen.append,
    )
    try:
        with pytest.raises(errors.ServerUnreachableError) as caught:
            client.register()
        assert len(seen) == 2
        assert "tried 3 times" in caught.value.message
    finally:
        client.close()
        engine.dispose()


def test_negative_bounds_are_refused(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(errors.ConfigurationError):
        SyncClient("http://127.0.0.1:9/sync", engine, retries=-1)
    engine.dispose()


# -- pure units ------------------------------------------------------------------------


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after(None) is None
    assert retry_after("2") == 2.0
    assert retry_after(" 0 ") == 0.0
    assert retry_after("-5") == 0.0
    assert retry_after("soon") is None
    assert retry_after("nan") is None
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        seconds=30
    )
    seconds = retry_after(email.utils.format_datetime(later, usegmt=True))
    assert seconds is not None and 25 < seconds <= 30


def test_backoff_grows_and_stays_within_the_budget(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    client = SyncClient("http://127.0.0.1:9/sync", engine, retries=3)
    try:
        for _ in range(50):
            delays = [client._delay(n, None) for n in (1, 2, 3)]
            assert sum(delays) <= client.retry_within
            assert 0.625 <= delays[0] <= 1.25 and 2.5 <= delays[2] <= 5
        assert client._delay(1, 7.0) == 7.0
    finally:
        client.close()
        engine.dispose()
