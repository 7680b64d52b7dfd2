"""The server compares the whole signature (issue 12): a signature cut
short, a prefix of the right one, or the right one with more after it is
refused, and the request changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .conftest import AppFactory
from .http_server import ServerEnv, database_state, insert, server_env, without_nonces

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
        "protocol": 1,
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
