"""Stale pushes the server decides by the node's built-in strategy (see
conflicts.rst, "Conflicts the server decides"), over HTTP with hand-made
messages: what is applied, what is kept, what the answer says, and what is
still refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import AppFactory
from .http_server import (
    ServerEnv,
    TestNode,
    database_state,
    insert,
    server_env,
    without_nonces,
)


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as env:
        yield env


def _city(node: TestNode, population: int, command: str = "u") -> Any:
    return node.push(
        [{"table": "city", "key": [1], "command": command}],
        {
            "city": {
                "columns": ["id", "name", "population"],
                "rows": [[1, "Lima", population]],
            }
        },
        resolutions=node.resolutions,  # type: ignore[attr-defined]
    )


def _seeded(server: ServerEnv, strategy: str | None) -> tuple[TestNode, TestNode]:
    """City 1 pushed by ``a``, pulled by ``b`` (version 1), then updated by
    ``a`` (version 2): ``b`` is one version behind on that row."""
    a, b = server.node(), server.node()
    a.resolutions = {}  # type: ignore[attr-defined]
    b.resolutions = {"city": strategy} if strategy else {}  # type: ignore[attr-defined]
    first, payload = insert("city", {"id": 1, "name": "Lima", "population": 1})
    assert a.push([first], payload).status_code == 200
    b.last_version = a.last_version = 1
    assert _city(a, 10).status_code == 200
    return a, b


def _population(server: ServerEnv) -> list[Any]:
    rows = database_state(server.env)["city"]
    return [row[2] for row in rows]


def test_update_update_is_decided_for_the_node(server: ServerEnv) -> None:
    _, b = _seeded(server, "last-pusher-wins")
    answer = _city(b, 20)
    assert answer.status_code == 200, answer.text
    [entry] = answer.json()["resolved"]
    assert entry["kind"] == "update/update" and entry["resolution"] == "node"
    assert entry["key"] == [1] and entry["server"]["population"] == 10
    assert _population(server) == [20]


def test_server_wins_keeps_the_servers_row_and_says_so(server: ServerEnv) -> None:
    _, b = _seeded(server, "server-wins")
    answer = _city(b, 20)
    assert answer.status_code == 200, answer.text
    assert [(e["kind"], e["resolution"]) for e in answer.json()["resolved"]] == [
        ("update/update", "server")
    ]
    assert answer.json()["operations"] == 0
    assert _population(server) == [10]


def test_a_stale_delete_loses_to_the_update_under_last_pusher_wins(
    server: ServerEnv,
) -> None:
    _, b = _seeded(server, "last-pusher-wins")
    answer = b.push(
        [{"table": "city", "key": [1], "command": "d"}],
        resolutions={"city": "last-pusher-wins"},
    )
    assert answer.status_code == 200, answer.text
    assert [(e["kind"], e["resolution"]) for e in answer.json()["resolved"]] == [
        ("delete/update", "server")
    ]
    assert _population(server) == [10]


def test_a_retried_push_hears_the_same_rulings(server: ServerEnv) -> None:
    """A node whose answer was lost sends the push again: the stored answer
    must carry the rulings too, or the node never learns that its delete
    was overruled (seen in the soak as deletes back with no conflict)."""
    _, b = _seeded(server, "last-pusher-wins")
    delete = [{"table": "city", "key": [1], "command": "d"}]
    first = b.push(delete, push_id="p-ruled", resolutions={"city": "last-pusher-wins"})
    again = b.push(delete, push_id="p-ruled", resolutions={"city": "last-pusher-wins"})
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["resolved"] == first.json()["resolved"]
    assert [(e["kind"], e["resolution"]) for e in again.json()["resolved"]] == [
        ("delete/update", "server")
    ]
    assert again.json()["version"] == first.json()["version"]
    assert _population(server) == [10]


def test_a_stale_delete_wins_under_node_wins(server: ServerEnv) -> None:
    _, b = _seeded(server, "node-wins")
    answer = b.push(
        [{"table": "city", "key": [1], "command": "d"}],
        resolutions={"city": "node-wins"},
    )
    assert answer.status_code == 200, answer.text
    assert _population(server) == []


def test_an_update_of_a_row_deleted_since_is_restored(server: ServerEnv) -> None:
    a, b = _seeded(server, "last-pusher-wins")
    assert a.push([{"table": "city", "key": [1], "command": "d"}]).status_code == 200
    answer = _city(b, 20)
    assert answer.status_code == 200, answer.text
    [entry] = answer.json()["resolved"]
    assert (entry["kind"], entry["server"]) == ("update/delete", None)
    assert _population(server) == [20]


@pytest.mark.parametrize("strategy", [None, "last-pusher-wins"])
def test_what_the_server_cannot_decide_is_still_refused(
    server: ServerEnv, strategy: str | None
) -> None:
    """Without a strategy (a callable on the node), and for an insert under
    a key the server used (the node must re-key), the push is refused and
    nothing is written."""
    _, b = _seeded(server, strategy)
    before = without_nonces(database_state(server.env))
    command = "u" if strategy is None else "i"
    answer = _city(b, 20, command)
    assert answer.status_code == 409, answer.text
    assert answer.json()["conflicts"][0]["key"] == [1]
    assert without_nonces(database_state(server.env)) == before


def test_an_unknown_strategy_is_refused(server: ServerEnv) -> None:
    _, b = _seeded(server, "whoever-shouts")
    answer = _city(b, 20)
    assert answer.status_code == 400
    assert "resolutions" in answer.json()["error"]


def test_a_push_that_meets_a_deadlock_is_tried_again_by_the_server(
    server: ServerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit of the retry loop (the soak saw MariaDB pick a push as a
    deadlock victim and answer 503): the first try fails busy, the second
    applies the push once; the node sees 200."""
    from flask_reflectsync.errors import ServiceBusyError
    from flask_reflectsync.server import push as push_module

    real = push_module._push_once
    tries: list[int] = []

    def busy_once(*args: Any) -> Any:
        tries.append(1)
        if len(tries) == 1:
            raise ServiceBusyError("deadlock")
        return real(*args)

    monkeypatch.setattr(push_module, "_push_once", busy_once)
    node = server.node()
    first, payload = insert("city", {"id": 1, "name": "Lima", "population": 1})
    answer = node.push([first], payload)
    assert answer.status_code == 200, answer.text
    assert len(tries) == 2
    assert _population(server) == [1]
