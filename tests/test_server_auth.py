"""Registration gates and signed requests, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync import signals
from flask_reflectsync.wire.messages import PROTOCOL_VERSION
from flask_reflectsync.wire.signing import HEADER_SIGNATURE

from .conftest import AppFactory
from .http_server import (
    ServerEnv,
    TestNode,
    database_state,
    insert,
    server_env,
)


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


def _nodes(server: ServerEnv) -> list[Any]:
    return database_state(server.env)["reflectsync_nodes"]


# -- registration -------------------------------------------------------------------


def test_registration_returns_id_and_a_secret_never_stored(server: ServerEnv) -> None:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        assert sender is server.env.app
        received.append(kwargs)

    node = TestNode(server.base)
    signals.node_registered.connect(receiver, server.env.app)
    try:
        answer = node.register(name="kiosk 7")
    finally:
        signals.node_registered.disconnect(receiver, server.env.app)

    assert answer.status_code == 200
    body = answer.json()
    assert body["ok"] is True and body["protocol"] == PROTOCOL_VERSION
    assert body["node"]["name"] == "kiosk 7"
    assert len(body["node"]["secret"]) >= 40
    (row,) = _nodes(server)
    assert row[0] == body["node"]["id"]
    stored = repr(row)
    assert body["node"]["secret"] not in stored
    assert received == [{"node": {"id": row[0], "name": "kiosk 7"}}]


def test_a_retried_registration_gets_the_same_node_until_it_signs(
    server: ServerEnv,
) -> None:
    """A registration whose answer was lost is sent again with the same
    registration id: the same node and secret, no second node row (an
    orphan row would pin the trim watermark), and no second signal. Once
    the node has signed a request, the id no longer fetches its secret."""
    received: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    rid = "r" * 40
    node, again, later = (TestNode(server.base) for _ in range(3))
    signals.node_registered.connect(receiver, server.env.app)
    try:
        first = node.register(name="kiosk", registration_id=rid)
        second = again.register(name="kiosk", registration_id=rid)
        assert first.status_code == second.status_code == 200, second.text
        assert second.json()["node"] == first.json()["node"]
        assert len(_nodes(server)) == 1 and len(received) == 1
        assert again.call("POST", "/pull", json={"protocol": 2, "since": 0}).is_success
        third = later.register(name="kiosk", registration_id=rid)
    finally:
        signals.node_registered.disconnect(receiver, server.env.app)
    assert third.status_code == 200
    assert third.json()["node"]["id"] != first.json()["node"]["id"]
    assert third.json()["node"]["secret"] != first.json()["node"]["secret"]
    assert len(_nodes(server)) == 2 and len(received) == 2


@pytest.mark.parametrize("rid", ["short", "x" * 65, "has space" * 5, "é" * 40])
def test_a_malformed_registration_id_is_refused(server: ServerEnv, rid: str) -> None:
    answer = TestNode(server.base).register(registration_id=rid)
    assert answer.status_code == 400
    assert "registration_id" in answer.json()["error"]
    assert _nodes(server) == []


def test_two_nodes_get_different_secrets(server: ServerEnv) -> None:
    first, second = server.node(), server.node()
    assert first.id != second.id
    assert first.secret != second.secret


def test_registration_is_closed_unless_opted_in(make_app: AppFactory) -> None:
    with server_env(make_app, REFLECTSYNC_OPEN_REGISTRATION=False) as server:
        answer = TestNode(server.base).register()
        assert answer.status_code == 403
        assert answer.json() == {
            "ok": False,
            "status": 403,
            "code": "registration.closed",
            "error": answer.json()["error"],
        }
        assert "Registration is closed" in answer.json()["error"]
        assert _nodes(server) == []


def test_registration_token(make_app: AppFactory) -> None:
    with server_env(
        make_app,
        REFLECTSYNC_OPEN_REGISTRATION=False,
        REFLECTSYNC_REGISTRATION_TOKEN="let-me-in",
    ) as server:
        missing = TestNode(server.base).register()
        wrong = TestNode(server.base).register(token="let-me-out")
        assert (missing.status_code, wrong.status_code) == (401, 403)
        assert "REFLECTSYNC_REGISTRATION_TOKEN" in missing.json()["error"]
        assert wrong.json()["error"] == "The registration token is wrong."
        assert missing.json()["code"] == "registration.token_required"
        assert wrong.json()["code"] == "registration.refused"
        assert _nodes(server) == []

        right = TestNode(server.base).register(token="let-me-in")
        assert right.status_code == 200
        assert len(_nodes(server)) == 1


def test_registration_check_decorator(make_app: AppFactory) -> None:
    seen: list[Mapping[str, Any]] = []
    with server_env(make_app, REFLECTSYNC_OPEN_REGISTRATION=False) as server:

        @server.env.sync.registration_check
        def known_device(registration: Mapping[str, Any]) -> bool:
            seen.append(registration)
            return registration.get("info", {}).get("serial") == "S-1"

        try:
            refused = TestNode(server.base).register(info={"serial": "S-2"})
            accepted = TestNode(server.base).register(info={"serial": "S-1"})
        finally:
            server.env.sync.registration_checks.remove(known_device)

        assert refused.status_code == 403
        assert "registration check refused" in refused.json()["error"]
        assert refused.json()["code"] == "registration.refused"
        assert accepted.status_code == 200
        assert len(_nodes(server)) == 1
        assert [r["info"]["serial"] for r in seen] == ["S-2", "S-1"]


def test_token_and_check_must_both_pass(make_app: AppFactory) -> None:
    with server_env(
        make_app,
        REFLECTSYNC_OPEN_REGISTRATION=False,
        REFLECTSYNC_REGISTRATION_TOKEN="t",
    ) as server:
        check = server.env.sync.registration_check(lambda r: r.get("name") == "ok")
        try:
            assert TestNode(server.base).register(token="t").status_code == 403
            assert TestNode(server.base).register(name="ok").status_code == 401
            ok = TestNode(server.base).register(token="t", name="ok")
            assert ok.status_code == 200
        finally:
            server.env.sync.registration_checks.remove(check)


def test_registration_needs_a_server_key(make_app: AppFactory) -> None:
    with server_env(make_app, SECRET_KEY=None) as server:
        answer = TestNode(server.base).register()
        assert answer.status_code == 500
        assert "REFLECTSYNC_SECRET_KEY" in answer.json()["error"]
        assert _nodes(server) == []


# -- signed requests ----------------------------------------------------------------


def _push_request(node: TestNode) -> Any:
    op, payload = insert("country", {"id": 1, "name": "Peru"})
    return node.build(
        "POST",
        "/push",
        json={
            "protocol": 2,
            "push_id": "p",
            "last_version": 0,
            "operations": [op],
            "payloads": payload,
        },
    )


def _copy(node: TestNode, signed: Any, url: Any = None, content: bytes = b"") -> Any:
    """The same signature headers on another (or the same) request."""
    headers = {k: v for k, v in signed.headers.items() if k.lower() != "content-length"}
    return node.client.build_request(
        signed.method, url or signed.url, content=content, headers=headers
    )


def _countries(server: ServerEnv) -> list[Any]:
    return database_state(server.env)["country"]


def test_unsigned_request_is_refused(server: ServerEnv) -> None:
    node = server.node()
    answer = node.send(_push_request(node))
    assert answer.status_code == 401
    assert "needs a signed request" in answer.json()["error"]
    assert _countries(server) == []


def test_a_body_altered_after_signing_is_refused_and_changes_nothing(
    server: ServerEnv,
) -> None:
    node = server.node()
    signed = node.sign(_push_request(node))
    altered = signed.content.replace(b'"Peru"', b'"Chile"')
    tampered = _copy(node, signed, content=altered)
    before = database_state(server.env)
    answer = node.send(tampered)
    assert answer.status_code == 401
    assert "wrong signature" in answer.json()["error"]
    assert database_state(server.env) == before


def test_an_unknown_node_and_a_wrong_signature_get_the_same_answer(
    server: ServerEnv,
) -> None:
    """The answer must not tell an attacker which node ids exist."""
    node = server.node()
    known = node.id
    node.secret = "not-the-secret"
    wrong = node.send(node.sign(_push_request(node)))
    node.id = known + 1000  # no such node
    unknown = node.send(node.sign(_push_request(node)))
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "Unknown node" in unknown.json()["error"]


def test_an_altered_query_string_is_refused(server: ServerEnv) -> None:
    node = server.node()
    signed = node.sign(node.build("GET", "/query", params={"model": "city"}))
    other = _copy(node, signed, str(signed.url).replace("city", "country"))
    assert node.send(other).status_code == 401
    assert node.send(signed).status_code == 200


def test_a_replayed_request_is_refused_and_changes_nothing(server: ServerEnv) -> None:
    node = server.node()
    signed = node.sign(_push_request(node))
    assert node.send(signed).status_code == 200
    before = database_state(server.env)
    replay = _copy(node, signed, content=signed.content)
    answer = node.send(replay)
    assert answer.status_code == 401
    assert "replayed" in answer.json()["error"]
    assert database_state(server.env) == before


def test_an_expired_request_is_refused(server: ServerEnv) -> None:
    node = server.node()
    old = node.sign(_push_request(node), timestamp=int(time.time()) - 3600)
    answer = node.send(old)
    assert answer.status_code == 401
    assert "clock" in answer.json()["error"]
    assert _countries(server) == []


def test_a_signature_from_another_secret_is_refused(server: ServerEnv) -> None:
    node, other = server.node(), server.node()
    node.secret = other.secret
    answer = node.call("POST", "/pull", json={"protocol": 2, "since": 0})
    assert answer.status_code == 401


def test_an_unknown_node_is_refused(server: ServerEnv) -> None:
    node = server.node()
    node.id = 9999
    answer = node.call("POST", "/pull", json={"protocol": 2, "since": 0})
    assert answer.status_code == 401
    assert "Unknown node" in answer.json()["error"]


def test_a_garbled_signature_header_is_refused(server: ServerEnv) -> None:
    node = server.node()
    request = node.sign(node.build("GET", "/query", params={"model": "city"}))
    request.headers[HEADER_SIGNATURE] = "zz" * 32
    assert node.send(request).status_code == 401


def test_requests_record_when_the_node_was_last_seen(server: ServerEnv) -> None:
    node = server.node()
    nodes = server.env.db.metadata.tables["reflectsync_nodes"]
    query = sa.select(nodes.c.last_seen_at).where(nodes.c.id == node.id)
    with server.env.db.engine.connect() as connection:
        assert connection.execute(query).scalar() is None
    assert node.pull().status_code == 200
    with server.env.db.engine.connect() as connection:
        assert connection.execute(query).scalar() is not None
