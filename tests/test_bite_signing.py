"""The server compares the whole signature (issue 12): a signature cut
short, a prefix of the right one, or the right one with more after it is
refused, and the request changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
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

#: The header name is part of the protocol (docs/protocol.rst).
SIGNATURE = "X-Reflectsync-Signature"


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda good: good[:-1], id="last-digit-cut"),
        pytest.param(lambda good: good[:32], id="first-half"),
        pytest.param(lambda good: good[:1], id="one-digit"),
        pytest.param(lambda good: good + "0", id="one-digit-more"),
        pytest.param(lambda good: good + good, id="twice"),
        pytest.param(lambda good: good.upper(), id="upper-case"),
    ],
)
def test_a_signature_that_is_not_exactly_the_right_one_is_refused(
    server: ServerEnv, forge: Callable[[str], str]
) -> None:
    node = server.node()
    op, payload = insert("country", {"id": 1, "name": "Peru"})
    body = {
        "protocol": 2,
        "push_id": "p",
        "last_version": 0,
        "operations": [op],
        "payloads": payload,
    }
    before = without_nonces(database_state(server.env))

    request = node.sign(node.build("POST", "/push", json=body))
    good = request.headers[SIGNATURE]
    assert len(good) == 64
    request.headers[SIGNATURE] = forge(good)
    answer = node.send(request)
    assert answer.status_code == 401, answer.text
    assert answer.json()["ok"] is False
    assert without_nonces(database_state(server.env)) == before

    # The right signature still passes (the refusal was the signature's).
    assert node.call("POST", "/push", json=body).status_code == 200


def _pull(node: TestNode) -> httpx.Request:
    return node.build("POST", "/pull", json={"protocol": 2, "since": 0})


@pytest.mark.parametrize("skew", [-3600, 3600, -301, 301])
def test_a_timestamp_too_far_from_the_servers_clock_either_way_is_refused(
    server: ServerEnv, skew: int
) -> None:
    # REFLECTSYNC_SIGNATURE_MAX_AGE is 300 s: a clock ahead is no better
    # than a clock behind (a request signed for the future could be
    # replayed until then, after its nonce was forgotten).
    node = server.node()
    request = node.sign(_pull(node), timestamp=int(time.time()) + skew)
    answer = node.send(request)
    assert answer.status_code == 401
    assert "clock" in answer.json()["error"]


def test_a_timestamp_within_the_window_either_way_is_accepted(
    server: ServerEnv,
) -> None:
    node = server.node()
    for skew in (-200, 200):
        request = node.sign(_pull(node), timestamp=int(time.time()) + skew)
        assert node.send(request).status_code == 200, skew


def test_a_request_replayed_after_later_requests_is_still_refused(
    server: ServerEnv,
) -> None:
    # The server forgets nonces only once their timestamps are out of the
    # window; requests in between must not make it forget earlier ones.
    node = server.node()
    first = node.sign(_pull(node))
    assert node.send(first).status_code == 200
    for _ in range(3):
        assert (
            node.call("POST", "/pull", json={"protocol": 2, "since": 0}).status_code
            == 200
        )
    replay = node.client.build_request(
        first.method,
        first.url,
        content=first.content,
        headers={
            k: v for k, v in first.headers.items() if k.lower() != "content-length"
        },
    )
    answer = node.send(replay)
    assert answer.status_code == 401
    assert "replayed" in answer.json()["error"]
