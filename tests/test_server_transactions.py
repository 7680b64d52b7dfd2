"""The server's handlers leave the transaction to their caller (the views
commit), except push, which owns its transactions and refuses a session
holding writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync.errors import AuthenticationError, ConfigurationError
from flask_reflectsync.server import nodes
from flask_reflectsync.server.pull import read_page, record_pulled
from flask_reflectsync.server.push import push
from flask_reflectsync.server.query import query
from flask_reflectsync.server.schema import TrackedSchema
from flask_reflectsync.server.settings import ServerSettings, define_protocol_tables

from .conftest import AppFactory
from .http_server import ServerEnv, insert, server_env


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


def _settings(server: ServerEnv) -> ServerSettings:
    app = server.env.app
    state = app.extensions["reflectsync"]
    return ServerSettings.from_config(
        {**state.config, "SECRET_KEY": app.config["SECRET_KEY"]}
    )


def _tables(server: ServerEnv) -> Any:
    return server.env.app.extensions["reflectsync"].tables


def _node_row(server: ServerEnv, node_id: int) -> Any:
    table = nodes.nodes_table(_tables(server))
    with server.env.db.engine.connect() as connection:
        return connection.execute(
            sa.select(table).where(table.c.id == node_id)
        ).first()


def test_register_node_writes_nothing_until_the_caller_commits(
    server: ServerEnv,
) -> None:
    session = server.env.db.session
    node = nodes.register_node(
        session, _tables(server), {"protocol": 2, "name": "n"}, _settings(server)
    )
    session.rollback()
    assert _node_row(server, node["id"]) is None


def test_authenticate_leaves_the_nonce_to_the_caller(server: ServerEnv) -> None:
    node = server.node()
    request = node.sign(node.build("POST", "/pull", json={"protocol": 2, "since": 0}))
    session = server.env.db.session
    nonces = define_protocol_tables(server.env.db.metadata)

    def check() -> int:
        return nodes.authenticate(
            session,
            _tables(server),
            nonces,
            _settings(server),
            method="POST",
            path=request.url.path,
            query="",
            headers=request.headers,
            body=request.content,
        )

    assert check() == node.id
    session.rollback()  # the nonce was not committed: the same request passes
    assert check() == node.id
    session.commit()
    with pytest.raises(AuthenticationError) as refused:
        check()
    assert refused.value.code == "auth.replayed"
    session.rollback()


def test_a_page_is_read_without_a_side_effect(server: ServerEnv) -> None:
    node = server.node()
    operation, payloads = insert("country", {"id": 1, "name": "Peru"})
    assert node.push([operation], payloads).status_code == 200
    reader = server.node()
    assert reader.id is not None
    before = _node_row(server, reader.id)
    session = server.env.db.session
    schema = TrackedSchema.of(server.env.db.metadata)
    message = {"protocol": 2, "since": 0, "keys": ["country"]}

    page = read_page(
        session, _tables(server), schema, reader.id, message, page_size=100
    )
    assert "country" in page["changes"] and page["until"] > 0
    assert "keys" not in page
    session.commit()  # whatever read_page did would be kept now
    assert _node_row(server, reader.id) == before

    record_pulled(session, _tables(server), schema, reader.id, page, message)
    session.commit()
    assert _node_row(server, reader.id).last_pulled_version == page["until"]
    assert "country" in page["keys"]


def test_query_leaves_its_transaction_to_the_caller(server: ServerEnv) -> None:
    session = server.env.db.session
    schema = TrackedSchema.of(server.env.db.metadata)
    answer = query(session, schema, {"model": ["country"]}, page_size=10)
    assert answer["rows"] == []
    assert session().in_transaction()
    session.rollback()


def _push_message() -> dict[str, Any]:
    operation, payloads = insert("country", {"id": 7, "name": "Chile"})
    return {
        "protocol": 2,
        "push_id": "owned",
        "last_version": 0,
        "operations": [operation],
        "payloads": payloads,
    }


def test_push_refuses_a_session_that_holds_writes(server: ServerEnv) -> None:
    node = server.node()
    assert node.id is not None
    env = server.env
    session = env.db.session
    schema = TrackedSchema.of(env.db.metadata)
    session.add(env.models.Country(id=8, name="pending"))
    with pytest.raises(ConfigurationError, match="uncommitted writes"):
        push(session, _tables(server), schema, node.id, _push_message())
    session.rollback()
    with env.db.engine.connect() as connection:
        names = connection.execute(sa.text("SELECT name FROM country")).all()
    assert names == []


def test_push_ends_a_transaction_that_only_read(server: ServerEnv) -> None:
    node = server.node()
    assert node.id is not None
    env = server.env
    session = env.db.session
    session.execute(sa.text("SELECT 1"))
    outcome = push(
        session,
        _tables(server),
        TrackedSchema.of(env.db.metadata),
        node.id,
        _push_message(),
    )
    assert outcome.applied
    with env.db.engine.connect() as connection:
        names = connection.execute(sa.text("SELECT name FROM country")).all()
    assert names == [("Chile",)]
