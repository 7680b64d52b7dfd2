"""Old nonces are deleted once per signature window and node, not on every
request (issue 19), and never one that could still be replayed."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flask_reflectsync.server.nodes import NonceSweeps
from flask_reflectsync.server.settings import ServerSettings, define_protocol_tables
from flask_reflectsync.wire.messages import PROTOCOL_VERSION

from .conftest import AppFactory
from .http_server import ServerEnv, TestNode, server_env

MAX_AGE = 300


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app, REFLECTSYNC_SIGNATURE_MAX_AGE=MAX_AGE) as found:
        yield found


def _settings() -> ServerSettings:
    return ServerSettings.from_config(
        {"SECRET_KEY": "k", "REFLECTSYNC_SIGNATURE_MAX_AGE": MAX_AGE}
    )


def test_a_node_is_swept_once_per_window() -> None:
    sweeps, settings = NonceSweeps(), _settings()
    assert sweeps.due(1, settings, 1000.0)
    assert not sweeps.due(1, settings, 1000.0)
    assert not sweeps.due(1, settings, 1000.0 + MAX_AGE - 0.5)
    assert sweeps.due(2, settings, 1000.0 + MAX_AGE - 0.5)  # another node
    assert sweeps.due(1, settings, 1000.0 + MAX_AGE)
    assert not sweeps.due(1, settings, 1000.0 + MAX_AGE + 1)


def _nonces(server: ServerEnv, node: TestNode) -> dict[str, datetime.datetime]:
    nonces = define_protocol_tables(server.env.db.metadata)
    with server.env.db.engine.connect() as connection:
        rows = connection.execute(
            sa.select(nonces.c.nonce, nonces.c.created_at).where(
                nonces.c.node_id == node.id
            )
        ).all()
    return {nonce: created for nonce, created in rows}


def _add_nonce(server: ServerEnv, node: TestNode, nonce: str, age: float) -> None:
    nonces = define_protocol_tables(server.env.db.metadata)
    now = datetime.datetime.now(datetime.timezone.utc)
    with server.env.db.engine.begin() as connection:
        connection.execute(
            nonces.insert().values(
                node_id=node.id,
                nonce=nonce,
                created_at=now - datetime.timedelta(seconds=age),
            )
        )


def _pull(node: TestNode) -> None:
    answer = node.call("POST", "/pull", json={"protocol": PROTOCOL_VERSION, "since": 0})
    assert answer.status_code == 200, answer.text


def test_old_nonces_go_on_a_nodes_first_request_then_once_a_window(
    server: ServerEnv,
) -> None:
    node = server.node()
    _add_nonce(server, node, "expired-long-ago-0001", 2 * MAX_AGE + 60)
    _add_nonce(server, node, "within-two-windows-01", 2 * MAX_AGE - 60)
    _pull(node)  # the node's first request in this process: swept
    left = _nonces(server, node)
    assert "expired-long-ago-0001" not in left
    assert "within-two-windows-01" in left  # could still be within reach
    assert len(left) == 2  # and the request's own

    _add_nonce(server, node, "expired-long-ago-0002", 2 * MAX_AGE + 60)
    _pull(node)  # within the window: no sweep
    assert "expired-long-ago-0002" in _nonces(server, node)

    # A window later (the record says so), the next request sweeps again.
    sweeps = server.env.app.extensions["reflectsync"].nonce_sweeps
    assert isinstance(sweeps, NonceSweeps)
    sweeps._last[node.id] -= MAX_AGE
    _pull(node)
    assert "expired-long-ago-0002" not in _nonces(server, node)
    assert "within-two-windows-01" in _nonces(server, node)
