"""A large push is decoded, hashed and inserted in pieces (issue 19: the
server worker's memory): the pieces must add up to exactly what one pass
did. Each test shrinks the piece sizes so a few rows cross several pieces,
over HTTP against the test database."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_reflectsync.server import push as push_module
from flask_reflectsync.server import push_apply, push_decode

from .conftest import AppFactory
from .http_server import ServerEnv, database_state, server_env, without_nonces

COLUMNS = ["id", "code", "flag"]


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as env:
        yield env


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push_decode, "DECODE_CHUNK", 3)
    monkeypatch.setattr(push_apply, "INSERT_BATCH", 3)


def _inserts(rows: list[list[Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    operations = [{"table": "sample", "key": [r[0]], "command": "i"} for r in rows]
    return operations, {"sample": {"columns": COLUMNS, "rows": rows}}


def _rows(count: int) -> list[list[Any]]:
    return [[k, f"c{k}", k % 2 == 0] for k in range(1, count + 1)]


def _logged(server: ServerEnv) -> list[tuple[str, str]]:
    """The logged (key, command) of every operation of table ``sample``."""
    state = database_state(server.env)
    log = server.env.db.metadata.tables["reflectsync_operations"]
    names = [c.name for c in log.columns]
    key, command, table = (names.index(n) for n in ("row_key", "command", "table_name"))
    return sorted(
        (row[key], row[command])
        for row in state["reflectsync_operations"]
        if row[table] == "sample"
    )


def test_a_push_inserted_in_batches_writes_and_logs_each_row_once(
    server: ServerEnv, small_pieces: None
) -> None:
    node = server.node()
    rows = _rows(10)
    answer = node.push(*_inserts(rows))
    assert answer.status_code == 200, answer.text
    assert answer.json()["operations"] == 10
    stored = database_state(server.env)["sample"]
    assert sorted((r[0], r[1]) for r in stored) == [(k, f"c{k}") for k in range(1, 11)]
    logged = _logged(server)
    assert [command for _, command in logged] == ["i"] * 10
    assert len({key for key, _ in logged}) == 10


def test_a_bad_value_in_a_later_piece_is_refused_and_nothing_is_written(
    server: ServerEnv, small_pieces: None
) -> None:
    node = server.node()
    before = without_nonces(database_state(server.env))
    rows = _rows(10)
    rows[7][1] = "x" * 21  # code is a String(20)
    answer = node.push(*_inserts(rows))
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["key"] == [8] and error["column"] == "code"
    assert without_nonces(database_state(server.env)) == before


def test_a_key_sent_twice_across_pieces_is_named_by_its_place(
    server: ServerEnv, small_pieces: None
) -> None:
    node = server.node()
    before = without_nonces(database_state(server.env))
    rows = _rows(10)
    rows[7][0] = 2  # the same key as rows[1], three pieces apart
    operations, payloads = _inserts(rows)
    answer = node.push(operations[:7] + operations[8:], payloads)
    assert answer.status_code == 400, answer.text
    assert "payloads.sample.rows[7]: a second row for key" in answer.json()["error"]
    assert without_nonces(database_state(server.env)) == before


def test_a_push_busy_after_its_decode_is_applied_whole_on_the_next_try(
    server: ServerEnv, small_pieces: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's message is taken apart as it is decoded: a try that
    meets a deadlock in its writes must start again from the body, not from
    what the first try left of the message."""
    real = push_module._apply
    tries: list[int] = []

    def deadlocked_once(*args: Any) -> Any:
        tries.append(1)
        if len(tries) == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("deadlock"))
        return real(*args)

    monkeypatch.setattr(push_module, "_apply", deadlocked_once)
    node = server.node()
    answer = node.push(*_inserts(_rows(10)))
    assert answer.status_code == 200, answer.text
    assert len(tries) == 2
    assert answer.json()["operations"] == 10
    assert len(database_state(server.env)["sample"]) == 10


def test_a_message_given_to_push_is_left_whole(
    server: ServerEnv, small_pieces: None
) -> None:
    """Only the route's own message is taken apart: an app calling
    ``push()`` keeps what it passed."""
    from flask_reflectsync.blueprints.sync import current_schema

    env = server.env
    node = server.node()
    operations, payloads = _inserts(_rows(7))
    message = {
        "protocol": 2,
        "push_id": "whole",
        "last_version": 0,
        "operations": operations,
        "payloads": payloads,
    }
    copy = json.loads(json.dumps(message))
    state = env.app.extensions["reflectsync"]
    with env.app.test_request_context():
        outcome = push_module.push(
            env.db.session, state.tables, current_schema(), node.id, message
        )
    assert outcome.applied and outcome.answer["operations"] == 7
    assert message == copy


def _plain_digest(content: Any) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=8)
    | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(
    operations=st.lists(_json, max_size=12),
    payloads=st.dictionaries(st.text(max_size=3), _json, max_size=3),
    patches=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), _json)),
)
def test_the_digest_in_pieces_is_the_digest_of_the_whole_text(
    operations: list[Any], payloads: dict[str, Any], patches: Any
) -> None:
    """Pushes stored by earlier releases are recognised by this digest: it
    must stay ``sha256`` of the canonical text of the whole content."""
    request: dict[str, Any] = {"operations": operations, "payloads": payloads}
    content: list[Any] = [operations, payloads]
    if patches:
        request["patches"] = patches
        content.append(patches)
    old_chunk, old_few = push_module._DIGEST_CHUNK, push_module._FEW
    try:
        push_module._DIGEST_CHUNK, push_module._FEW = 3, 2
        assert push_module.content_digest(request) == _plain_digest(content)
    finally:
        push_module._DIGEST_CHUNK, push_module._FEW = old_chunk, old_few
