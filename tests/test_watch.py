"""Live sync: the change feed (``POST /changes``), the node's sync status
and ``client.watch()``, against real HTTP servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import AppFactory
from .http_server import ServerEnv, TestNode, server_env


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app, REFLECTSYNC_FEED_MAX_WAIT=5) as found:
        yield found


def _feed(node: TestNode, since: int, wait: float | None = None) -> Any:
    message: dict[str, Any] = {"protocol": 2, "since": since}
    if wait is not None:
        message["wait"] = wait
    return node.call("POST", "/changes", json=message)


def _add_city(server: ServerEnv, name: str) -> None:
    City = server.env.models.City
    server.env.db.session.add(City(name=name))
    server.env.db.session.commit()


def test_the_feed_answers_unchanged_when_the_hold_ends(server: ServerEnv) -> None:
    node = server.node()
    answer = _feed(node, 0, wait=0.3)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "protocol": 2, "changed": False, "version": 0}


def test_an_app_commit_wakes_a_held_feed(server: ServerEnv) -> None:
    node = server.node()
    held: dict[str, Any] = {}

    def wait() -> None:
        held["answer"] = _feed(node, 0, wait=5)
        held["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    _add_city(server, "Lima")
    waiter.join()
    body = held["answer"].json()
    assert body["changed"] is True, body
