"""Per-address limits on registrations and badly signed requests: 429 with
Retry-After, nothing written, and the window slides."""

from __future__ import annotations

import pytest

from flask_reflectsync.blueprints.limits import MAX_ADDRESSES, WINDOW, AddressLimit
from flask_reflectsync.errors import TooManyRequestsError

from .conftest import AppFactory
from .http_server import TestNode, database_state, server_env


def test_a_limit_counts_per_address_in_a_sliding_minute() -> None:
    limit = AddressLimit("things", 2)
    for moment in (0.0, 10.0):
        limit.check("a", now=moment)
        limit.count("a", now=moment)
    limit.check("b", now=11.0)  # another address has its own count
    with pytest.raises(TooManyRequestsError) as caught:
        limit.check("a", now=11.0)
    assert caught.value.status == 429 and caught.value.retryable
    assert caught.value.retry_after == 49  # the first event leaves at 60
    assert "at most 2 a minute" in caught.value.message
    limit.check("a", now=WINDOW + 0.5)  # the first event has left the window
    limit.count("a", now=WINDOW + 0.5)
    with pytest.raises(TooManyRequestsError):
        limit.check("a", now=WINDOW + 1)


def test_no_limit_when_turned_off_and_a_bounded_table() -> None:
    off = AddressLimit("things", 0)
    for _ in range(1000):
        off.count("a")
        off.check("a")
    limit = AddressLimit("things", 1)
    for number in range(MAX_ADDRESSES + 5):
        limit.count(f"10.0.{number // 256}.{number % 256}", now=1.0)
    assert len(limit._events) == MAX_ADDRESSES
    limit.check("10.0.0.0", now=2.0)  # the oldest address was forgotten


def test_registrations_over_the_limit_get_429_and_create_nothing(
    make_app: AppFactory,
) -> None:
    with server_env(make_app, REFLECTSYNC_REGISTRATIONS_PER_MINUTE=2) as server:
        for _ in range(2):
            assert TestNode(server.base).register().status_code == 200
        before = database_state(server.env)
        answer = TestNode(server.base).register()
        assert answer.status_code == 429
        assert int(answer.headers["Retry-After"]) >= 1
        body = answer.json()
        assert body["ok"] is False and body["status"] == 429
        assert "Too many registrations" in body["error"]
        assert database_state(server.env) == before


def test_an_address_sending_bad_signatures_is_slowed_down(
    make_app: AppFactory,
) -> None:
    with server_env(make_app, REFLECTSYNC_AUTH_FAILURES_PER_MINUTE=3) as server:
        node = TestNode(server.base)
        assert node.register().status_code == 200
        pull = {"protocol": 2, "since": 0}
        assert node.call("POST", "/pull", json=pull).status_code == 200
        secret, node.secret = node.secret, "guessed"
        for _ in range(3):
            assert node.call("POST", "/pull", json=pull).status_code == 401
        node.secret = secret
        answer = node.call("POST", "/pull", json=pull)  # even signed well
        assert answer.status_code == 429
        assert "Too many badly signed requests" in answer.json()["error"]
        assert "Retry-After" in answer.headers
