"""POST /push over real HTTP: validated before writing, atomic, exactly once,
rejected on conflicts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import signals, track
from flask_reflectsync.wire.codec import table_codecs

from .conftest import AppFactory
from .http_server import (
    ServerEnv,
    TestNode,
    database_state,
    insert,
    server_env,
    without_nonces,
)
from .oplog import logged


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


def _versions(server: ServerEnv) -> list[tuple[Any, ...]]:
    versions = server.env.db.metadata.tables["reflectsync_versions"]
    with server.env.db.engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.select(versions.c.number, versions.c.node_id, versions.c.push_id)
                .where(versions.c.number.isnot(None))
                .order_by(versions.c.number)
            )
        ]


def _rows(server: ServerEnv, table: str) -> list[tuple[Any, ...]]:
    return [row for row in database_state(server.env)[table]]


def _country_and_cities() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    operations = [
        {"table": "city", "key": [11], "command": "i"},
        {"table": "city", "key": [12], "command": "i"},
        {"table": "country", "key": [1], "command": "i"},
    ]
    payloads = {
        # children listed before parents: the server orders by foreign keys
        "city": {
            "columns": ["id", "name", "population", "country_id"],
            "rows": [[11, "Lima", 10, 1], [12, "Cusco", 5, 1]],
        },
        "country": {"columns": ["id", "name"], "rows": [[1, "Peru"]]},
    }
    return operations, payloads


def test_push_applies_every_table_in_one_version(server: ServerEnv) -> None:
    node = server.node()
    answer = node.push(*_country_and_cities(), push_id="first")

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "ok": True,
        "protocol": 2,
        "push_id": "first",
        "version": 1,
        "operations": 3,
    }
    assert _rows(server, "country") == [(1, "Peru")]
    assert _rows(server, "city") == [(11, "Lima", 10, 1), (12, "Cusco", 5, 1)]
    assert sorted(logged(server.env.db)) == [
        (1, "city", [11], "i"),
        (1, "city", [12], "i"),
        (1, "country", [1], "i"),
    ]
    assert _versions(server) == [(1, node.id, f"{node.id}:first")]


def test_push_updates_and_deletes(server: ServerEnv) -> None:
    node = server.node()
    assert node.push(*_country_and_cities()).status_code == 200
    node.last_version = 1
    answer = node.push(
        [
            {"table": "city", "key": [11], "command": "u"},
            {"table": "city", "key": [12], "command": "d"},
        ],
        {"city": {"columns": ["id", "population"], "rows": [[11, 99]]}},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 2
    assert _rows(server, "city") == [(11, "Lima", 99, 1)]
    assert logged(server.env.db)[3:] == [(2, "city", [11], "u"), (2, "city", [12], "d")]


def test_a_push_whose_answer_is_lost_is_applied_once(server: ServerEnv) -> None:
    node = server.node()
    operations, payloads = _country_and_cities()
    first = node.push(operations, payloads, push_id="retry-me")
    # The answer never reached the node: it signs and sends the push again.
    again = node.push(operations, payloads, push_id="retry-me")

    assert again.status_code == 200
    assert again.json() == first.json()
    assert _rows(server, "city") == [(11, "Lima", 10, 1), (12, "Cusco", 5, 1)]
    assert len(logged(server.env.db)) == 3
    assert [number for number, *_ in _versions(server)] == [1]


def test_push_ids_belong_to_their_node(server: ServerEnv) -> None:
    first, second = server.node(), server.node()
    op, payload = insert("country", {"id": 1, "name": "Peru"})
    assert first.push([op], payload, push_id="same").json()["version"] == 1
    op, payload = insert("country", {"id": 2, "name": "Chile"})
    answer = second.push([op], payload, push_id="same")
    assert answer.json()["version"] == 2
    assert len(_rows(server, "country")) == 2


def test_push_accepted_signal(server: ServerEnv) -> None:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        assert sender is server.env.app
        received.append(kwargs)

    node = server.node()
    signals.push_accepted.connect(receiver, server.env.app)
    try:
        node.push(*_country_and_cities(), push_id="p1")
        node.push(*_country_and_cities(), push_id="p1")  # a retry: not again
    finally:
        signals.push_accepted.disconnect(receiver, server.env.app)
    assert received == [
        {"node": node.id, "push_id": "p1", "version": 1, "operations": 3}
    ]


def test_a_receiver_that_raises_does_not_fail_the_answer(
    server: ServerEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The registration and the push are committed: a receiver's bug is
    logged, the other receivers hear the signal, and the node gets its
    answer (a 500 after registering left a node row whose secret nobody
    got)."""
    heard: list[str] = []

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    def working(sender: Any, **kwargs: Any) -> None:
        heard.append("working")

    app = server.env.app
    for signal in (signals.node_registered, signals.push_accepted):
        signal.connect(broken, app)
        signal.connect(working, app)
    try:
        with caplog.at_level("ERROR", logger="flask_reflectsync"):
            node = server.node()  # registers
            answer = node.push(*_country_and_cities())
    finally:
        for signal in (signals.node_registered, signals.push_accepted):
            signal.disconnect(broken, app)
            signal.disconnect(working, app)
    assert node.id is not None
    assert answer.status_code == 200, answer.text
    assert heard == ["working", "working"]
    assert [r.getMessage() for r in caplog.records].count(
        "A receiver of push-accepted raised; the request is answered anyway."
    ) == 1
    assert "receiver bug" in caplog.text


def test_a_push_without_operations_creates_no_version(server: ServerEnv) -> None:
    node = server.node()
    answer = node.push([])
    assert answer.json()["version"] is None
    assert _versions(server) == []


# -- validation: a 4xx naming the problem, and the database untouched ---------------

CITY_COLUMNS = ["id", "name", "population", "country_id"]


def _city_push(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "protocol": 2,
        "push_id": "bad",
        "last_version": 0,
        "operations": [{"table": "city", "key": [5], "command": "i"}],
        "payloads": {"city": {"columns": CITY_COLUMNS, "rows": [[5, "Lima", 1, None]]}},
    }
    message.update(changes)
    return message


BAD_PUSHES = {
    "unknown table": (
        _city_push(operations=[{"table": "note", "key": [5], "command": "i"}]),
        "note is not a table the server synchronises",
    ),
    "unknown column": (
        _city_push(
            payloads={"city": {"columns": ["id", "nme"], "rows": [[5, "Lima"]]}}
        ),
        "city.nme is not a column on the server",
    ),
    "wrong type": (
        _city_push(
            payloads={
                "city": {"columns": CITY_COLUMNS, "rows": [[5, "Lima", "many", None]]}
            }
        ),
        "column 'population' expects an integer",
    ),
    "string too long": (
        _city_push(
            payloads={
                "city": {"columns": CITY_COLUMNS, "rows": [[5, "x" * 101, 1, None]]}
            }
        ),
        "column 'name' holds at most 100 characters",
    ),
    "null in a non-null column": (
        _city_push(
            payloads={"city": {"columns": CITY_COLUMNS, "rows": [[5, None, 1, None]]}}
        ),
        "column 'name' cannot be null",
    ),
    "missing key column": (
        _city_push(payloads={"city": {"columns": ["name"], "rows": [["Lima"]]}}),
        "primary key column(s) id must be sent",
    ),
    "row of the wrong width": (
        _city_push(payloads={"city": {"columns": CITY_COLUMNS, "rows": [[5, "L"]]}}),
        "has 2 values for 4 columns",
    ),
    "insert without payload": (
        _city_push(payloads={}),
        "has no row in payloads",
    ),
    "payload without operation": (
        _city_push(operations=[]),
        "but no insert or update of it",
    ),
    "bad command": (
        _city_push(operations=[{"table": "city", "key": [5], "command": "x"}]),
        "message.operations[0].command must be one of",
    ),
    "key of the wrong length": (
        _city_push(operations=[{"table": "city", "key": [5, 6], "command": "i"}]),
        "has a key of 1 column(s), got 2",
    ),
    "unknown field": (_city_push(extra=1), "unknown field 'extra'"),
    "missing push id": (
        {k: v for k, v in _city_push().items() if k != "push_id"},
        "required field 'push_id'",
    ),
    "other protocol": (_city_push(protocol=1), "Unsupported protocol version 1"),
    "future version": (_city_push(last_version=7), "newer than the server's"),
    "not an object": ([1, 2], "must be a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_PUSHES), ids=list(BAD_PUSHES))
def test_an_invalid_push_is_refused_and_writes_nothing(
    server: ServerEnv, case: str
) -> None:
    message, expected = BAD_PUSHES[case]
    node = server.node()
    before = without_nonces(database_state(server.env))
    answer = node.call("POST", "/push", json=message)

    # A value the column cannot take is 422 and named, as is a row the
    # server's schema cannot take (schema.refused, set aside by the node);
    # a malformed push 400.
    status = 422 if case in VALUE_CASES | SCHEMA_CASES else 400
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["ok"] is False and body["status"] == status
    assert expected in body["error"]
    if case in SCHEMA_CASES:
        assert body["code"] == "schema.refused"
        assert [r["key"] for r in body["rows"]] == [[5]]
    elif status == 422:
        assert body["code"] == "push.invalid_value"
        assert (body["table"], body["key"]) == ("city", [5])
    assert without_nonces(database_state(server.env)) == before


VALUE_CASES = {"wrong type", "string too long", "null in a non-null column"}
SCHEMA_CASES = {"unknown table", "unknown column"}


def test_malformed_json_is_refused(server: ServerEnv) -> None:
    node = server.node()
    before = without_nonces(database_state(server.env))
    answer = node.call("POST", "/push", content=b'{"protocol": 2,')
    assert answer.status_code == 400
    assert answer.json()["error"] == "The request body is not valid JSON."
    assert without_nonces(database_state(server.env)) == before


def test_an_oversized_body_is_refused(make_app: AppFactory) -> None:
    with server_env(make_app, REFLECTSYNC_MAX_BODY_SIZE=2000) as server:
        node = server.node()
        before = database_state(server.env)
        rows = [[n, f"city {n}", n, None] for n in range(100)]
        answer = node.push(
            [{"table": "city", "key": [n], "command": "i"} for n in range(100)],
            {"city": {"columns": CITY_COLUMNS, "rows": rows}},
        )
        assert answer.status_code == 413
        assert "REFLECTSYNC_MAX_BODY_SIZE" in answer.json()["error"]
        assert database_state(server.env) == before


def test_a_failing_push_is_all_or_nothing(server: ServerEnv) -> None:
    # Valid as a message; the second city points at a country that does not
    # exist, so the database refuses it after the first rows were written.
    node = server.node()
    before = without_nonces(database_state(server.env))
    answer = node.push(
        [
            {"table": "country", "key": [1], "command": "i"},
            {"table": "city", "key": [1], "command": "i"},
            {"table": "city", "key": [2], "command": "i"},
        ],
        {
            "country": {"columns": ["id", "name"], "rows": [[1, "Peru"]]},
            "city": {
                "columns": CITY_COLUMNS,
                "rows": [[1, "Lima", 1, 1], [2, "Nowhere", 1, 999]],
            },
        },
    )
    if server.env.db.engine.dialect.name == "sqlite":
        # SQLite does not enforce foreign keys unless asked to.
        pytest.skip("SQLite accepts the dangling foreign key")
    assert answer.status_code == 409, answer.text
    assert "nothing was written" in answer.json()["error"]
    assert without_nonces(database_state(server.env)) == before


# -- conflicts ----------------------------------------------------------------------


def test_push_touching_rows_changed_since_last_version_is_rejected(
    server: ServerEnv,
) -> None:
    writer, stale = server.node(), server.node()
    assert writer.push(*_country_and_cities()).status_code == 200  # version 1
    stale.last_version = 1
    assert (
        writer.push(
            [{"table": "city", "key": [11], "command": "u"}],
            {"city": {"columns": ["id", "population"], "rows": [[11, 20]]}},
            last_version=1,
        ).status_code
        == 200
    )  # version 2 changes city 11
    before = without_nonces(database_state(server.env))
    rejected: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        rejected.append(kwargs)

    signals.push_rejected.connect(receiver, server.env.app)
    try:
        answer = stale.push(
            [{"table": "city", "key": [11], "command": "u"}],
            {"city": {"columns": ["id", "population"], "rows": [[11, 30]]}},
            push_id="stale",
        )
    finally:
        signals.push_rejected.disconnect(receiver, server.env.app)

    assert answer.status_code == 409
    body = answer.json()
    assert body["ok"] is False and body["status"] == 409
    assert body["conflicts"] == [{"table": "city", "key": [11], "version": 2}]
    assert "pull" in body["error"]
    assert without_nonces(database_state(server.env)) == before
    assert rejected == [
        {
            "node": stale.id,
            "push_id": "stale",
            "reason": body["error"],
            "status": 409,
        }
    ]


def test_newer_versions_on_other_rows_do_not_block_a_push(server: ServerEnv) -> None:
    writer, behind = server.node(), server.node()
    assert writer.push(*_country_and_cities()).status_code == 200  # version 1
    behind.last_version = 1
    op, payload = insert("country", {"id": 2, "name": "Chile"})
    assert writer.push([op], payload, last_version=1).status_code == 200
    answer = behind.push(
        [{"table": "city", "key": [12], "command": "u"}],
        {"city": {"columns": ["id", "name"], "rows": [[12, "Cuzco"]]}},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 3


def test_a_conflict_past_the_first_thousand_keys_is_found(server: ServerEnv) -> None:
    # The conflict scan names the pushed keys in its WHERE, a batch of 1,000
    # at a time: a stale row in a later batch, or in another table of the
    # same batch, must still be found.
    writer, behind = server.node(), server.node()
    rows = [[i, f"c{i}"] for i in range(1, 1501)]
    ops = [{"table": "city", "key": [i], "command": "i"} for i, _ in rows]
    country, payload = insert("country", {"id": 1, "name": "Peru"})
    answer = writer.push(
        [*ops, country],
        {**payload, "city": {"columns": ["id", "name"], "rows": rows}},
    )
    assert answer.status_code == 200, answer.text
    behind.last_version = 1
    changed = [{"table": "city", "key": [1400], "command": "u"}]
    changed_rows = {"city": {"columns": ["id", "name"], "rows": [[1400, "x"]]}}
    assert writer.push(changed, changed_rows, last_version=1).status_code == 200
    op, payload = insert("country", {"id": 1, "name": "Peru?"})
    assert (
        writer.push([{**op, "command": "u"}], payload, last_version=1).status_code
        == 200
    )

    updates = [{"table": "city", "key": [i], "command": "u"} for i, _ in rows]
    answer = behind.push(
        [*updates, {"table": "country", "key": [1], "command": "u"}],
        {
            "city": {"columns": ["id", "name"], "rows": [[i, "y"] for i, _ in rows]},
            "country": {"columns": ["id", "name"], "rows": [[1, "Chile"]]},
        },
    )
    assert answer.status_code == 409, answer.text
    assert sorted(
        (c["table"], c["key"], c["version"]) for c in answer.json()["conflicts"]
    ) == [("city", [1400], 2), ("country", [1], 3)]


def test_changes_made_by_the_app_on_the_server_conflict_too(server: ServerEnv) -> None:
    node = server.node()
    assert node.push(*_country_and_cities()).status_code == 200
    node.last_version = 1
    env = server.env
    with env.app.app_context():
        env.db.session.get(env.models.City, 12).name = "Qosqo"
        env.db.session.commit()
    answer = node.push([{"table": "city", "key": [12], "command": "d"}])
    assert answer.status_code == 409
    assert answer.json()["conflicts"][0]["key"] == [12]


def test_a_node_own_pushes_never_conflict_with_it(server: ServerEnv) -> None:
    node = server.node()
    assert node.push(*_country_and_cities()).status_code == 200
    answer = node.push(  # still at last_version 0: version 1 is its own
        [{"table": "city", "key": [11], "command": "d"}]
    )
    assert answer.status_code == 200, answer.text


def test_updating_a_row_the_server_does_not_have_restores_it(
    server: ServerEnv,
) -> None:
    """A node that kept a row the server deleted pushes it as an update of
    its key (a restore, see conflicts.rst): the row returns, logged as an
    update, so other nodes restoring it meet the same row."""
    node = server.node()
    answer = node.push(
        [{"table": "city", "key": [404], "command": "u"}],
        {"city": {"columns": ["id", "name"], "rows": [[404, "Atlantis"]]}},
    )
    assert answer.status_code == 200, answer.text
    assert _rows(server, "city") == [(404, "Atlantis", 0, None)]
    assert [op[1:] for op in logged(server.env.db)] == [("city", [404], "u")]


def test_updating_a_row_deleted_in_a_version_not_pulled_is_rejected(
    server: ServerEnv,
) -> None:
    node = server.node()
    first, payload = insert("city", {"id": 404, "name": "Atlantis"})
    assert node.push([first], payload).status_code == 200
    other = server.node()
    other.last_version = 1
    assert (
        other.push([{"table": "city", "key": [404], "command": "d"}], {}).status_code
        == 200
    )
    before = without_nonces(database_state(server.env))
    node.last_version = 1  # has not pulled the delete (version 2)
    answer = node.push(
        [{"table": "city", "key": [404], "command": "u"}],
        {"city": {"columns": ["id", "name"], "rows": [[404, "Atlantis II"]]}},
    )
    assert answer.status_code == 409
    assert answer.json()["conflicts"] == [{"table": "city", "key": [404], "version": 2}]
    assert without_nonces(database_state(server.env)) == before


def test_unique_violation_names_table_key_and_columns(server: ServerEnv) -> None:
    node = server.node()
    first, payload = insert("sample", {"id": 1, "code": "A-1"})
    assert node.push([first], payload).status_code == 200
    node.last_version = 1
    before = without_nonces(database_state(server.env))
    answer = node.push(
        [
            {"table": "sample", "key": [2], "command": "i"},
            {"table": "sample", "key": [3], "command": "i"},
        ],
        {"sample": {"columns": ["id", "code"], "rows": [[2, "B-2"], [3, "A-1"]]}},
    )
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["conflicts"] == [
        {"table": "sample", "key": [3], "columns": ["code"], "existing_key": [1]}
    ]
    assert "unique constraint" in body["error"]
    assert without_nonces(database_state(server.env)) == before


def _sample_codes(server: ServerEnv) -> list[tuple[int, str]]:
    return sorted((r[0], r[1]) for r in database_state(server.env)["sample"])


def test_a_unique_value_freed_and_taken_in_one_push_is_applied(
    server: ServerEnv,
) -> None:
    """The node deleted a row and gave its code to a new one, and changed
    another row's code and gave the old code away (its database accepted
    both): the server writes the givers first, instead of refusing the push
    for good (seen in the soak as a row set aside)."""
    node = server.node()
    seed = [{"table": "sample", "key": [k], "command": "i"} for k in (1, 2)]
    rows = {"sample": {"columns": ["id", "code"], "rows": [[1, "A"], [2, "B"]]}}
    assert node.push(seed, rows).status_code == 200
    node.last_version = 1
    answer = node.push(
        [
            {"table": "sample", "key": [1], "command": "d"},
            {"table": "sample", "key": [2], "command": "u"},
            {"table": "sample", "key": [3], "command": "i"},
            {"table": "sample", "key": [4], "command": "i"},
        ],
        {
            "sample": {
                "columns": ["id", "code"],
                "rows": [[2, "B2"], [3, "A"], [4, "B"]],
            }
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["operations"] == 4
    assert _sample_codes(server) == [(2, "B2"), (3, "A"), (4, "B")]


def test_a_deleted_giver_with_children_deleted_in_the_same_push(
    make_app: AppFactory,
) -> None:
    """The node deleted a survey and its answer and gave the survey's code
    to a new survey, in one push: the answer must go before the survey
    that gives the code up (soak, MariaDB: the giver's delete broke the
    foreign key, the push was refused as a unique violation)."""
    from .http_server import served

    env = make_app(SECRET_KEY="test", REFLECTSYNC_OPEN_REGISTRATION=True)

    @track
    class Survey(env.db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "giver_survey"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        code: Mapped[str] = mapped_column(sa.String(20), unique=True)

    @track
    class Answer(env.db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "giver_answer"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        survey_id: Mapped[int] = mapped_column(sa.ForeignKey("giver_survey.id"))

    with env.app.app_context():
        env.db.create_all()
    with served(env.app) as url, env.app.app_context():
        node = TestNode(url + "/sync")
        assert node.register().status_code == 200
        seed = [
            {"table": "giver_survey", "key": [1], "command": "i"},
            {"table": "giver_answer", "key": [10], "command": "i"},
        ]
        rows = {
            "giver_survey": {"columns": ["id", "code"], "rows": [[1, "A"]]},
            "giver_answer": {"columns": ["id", "survey_id"], "rows": [[10, 1]]},
        }
        assert node.push(seed, rows).status_code == 200
        node.last_version = 1
        answer = node.push(
            [
                {"table": "giver_answer", "key": [10], "command": "d"},
                {"table": "giver_survey", "key": [1], "command": "d"},
                {"table": "giver_survey", "key": [2], "command": "i"},
            ],
            {"giver_survey": {"columns": ["id", "code"], "rows": [[2, "A"]]}},
        )
        assert answer.status_code == 200, answer.text
        state = database_state(env)
        assert state["giver_survey"] == [(2, "A")]
        assert state["giver_answer"] == []
        env.db.session.remove()
        env.db.drop_all()


def test_a_unique_value_taken_from_a_row_that_keeps_it_is_still_refused(
    server: ServerEnv,
) -> None:
    node = server.node()
    seed = [{"table": "sample", "key": [k], "command": "i"} for k in (1, 2)]
    rows = {"sample": {"columns": ["id", "code"], "rows": [[1, "A"], [2, "B"]]}}
    assert node.push(seed, rows).status_code == 200
    node.last_version = 1
    before = without_nonces(database_state(server.env))
    answer = node.push(
        [
            {"table": "sample", "key": [2], "command": "u"},
            {"table": "sample", "key": [3], "command": "i"},
        ],
        {"sample": {"columns": ["id", "code"], "rows": [[2, "B2"], [3, "A"]]}},
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["conflicts"] == [
        {"table": "sample", "key": [3], "columns": ["code"], "existing_key": [1]}
    ]
    assert without_nonces(database_state(server.env)) == before


def test_inserting_an_existing_key_is_a_unique_violation(server: ServerEnv) -> None:
    node = server.node()
    op, payload = insert("country", {"id": 1, "name": "Peru"})
    assert node.push([op], payload).status_code == 200
    node.last_version = 1
    op, payload = insert("country", {"id": 1, "name": "Peru again"})
    answer = node.push([op], payload)
    assert answer.status_code == 409
    assert answer.json()["conflicts"] == [
        {"table": "country", "key": [1], "columns": ["id"], "existing_key": [1]}
    ]


def test_push_body_is_compact_json(server: ServerEnv) -> None:
    # The node may send any JSON spacing; what is signed is the exact bytes.
    node = server.node()
    operations, payloads = _country_and_cities()
    message = {
        "protocol": 2,
        "push_id": uuid.uuid4().hex,
        "last_version": 0,
        "operations": operations,
        "payloads": payloads,
    }
    content = json.dumps(message, indent=4).encode()
    answer = node.call("POST", "/push", content=content)
    assert answer.status_code == 200, answer.text


def test_push_needs_a_node(server: ServerEnv) -> None:
    stranger = TestNode(server.base)
    answer = stranger.client.post(
        server.base + "/push", json=_city_push(push_id="anonymous")
    )
    assert answer.status_code == 401
    assert _rows(server, "city") == []


def test_a_push_that_changes_nothing_is_still_recorded_once(server: ServerEnv) -> None:
    # Deleting a row the server no longer has changes nothing, but the push
    # must still be answered (not a 500) and a retry answered the same way.
    node = server.node()
    gone = [{"table": "city", "key": [404], "command": "d"}]
    first = node.push(gone, {}, push_id="nothing")
    assert first.status_code == 200, first.text
    assert first.json()["operations"] == 0
    assert first.json()["version"] == 1
    again = node.push(gone, {}, push_id="nothing")
    assert again.json() == first.json()
    assert [number for number, *_ in _versions(server)] == [1]
    assert logged(server.env.db) == []


def test_large_pushes_of_every_plain_type_arrive_exactly(server: ServerEnv) -> None:
    # On PostgreSQL inserts go through one unnest(arrays) statement: every
    # plain type, NULLs included, must arrive exactly as sent, and be logged.
    import base64
    import datetime
    import decimal

    columns = ["id", "code", "day", "moment", "amount", "blob", "ref", "flag"]
    rows: list[list[Any]] = []
    for i in range(1, 121):
        rows.append(
            [
                i,
                None if i % 7 == 0 else f"c-{i}",
                None if i % 5 == 0 else f"2024-02-{1 + i % 28:02d}",
                None if i % 6 == 0 else f"2024-03-10T0{i % 10}:15:30.250000+02:00",
                None if i % 4 == 0 else f"{i}.{i:04d}",
                None if i % 3 == 0 else base64.b64encode(bytes([i, 0, 255])).decode(),
                None if i % 8 == 0 else str(uuid.UUID(int=i)),
                i % 2 == 0,
            ]
        )
    operations = [{"table": "sample", "key": [row[0]], "command": "i"} for row in rows]
    node = server.node()
    answer = node.push(operations, {"sample": {"columns": columns, "rows": rows}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["operations"] == 120

    pulled = server.node().pull(0).json()
    payload = pulled["changes"]["sample"]
    assert payload["commands"] == "i" * 120
    served = {
        row[0]: dict(zip(payload["columns"], row, strict=True))
        for row in zip(*payload["values"], strict=True)
    }
    assert len(served) == 120

    def same(name: str, got: Any, sent: Any) -> bool:
        if got is None or sent is None:
            return got is sent
        if name == "moment":
            return bool(
                datetime.datetime.fromisoformat(got)
                == datetime.datetime.fromisoformat(sent)
            )
        if name == "amount":
            return decimal.Decimal(got) == decimal.Decimal(sent)
        if name == "blob":
            return base64.b64decode(got) == base64.b64decode(sent)
        return bool(got == sent)

    for row in rows:
        got = served[row[0]]
        for name, sent in zip(columns, row, strict=True):
            assert same(name, got[name], sent), (name, got[name], sent)
    assert len([op for op in logged(server.env.db) if op[1] == "sample"]) == 120


@pytest.mark.parametrize("fast_path", [True, False], ids=["unnest", "executemany"])
def test_the_server_app_adds_rows_after_pushed_keys(
    server: ServerEnv, fast_path: bool
) -> None:
    """Nodes choose integer keys; the server's own app, adding a row with
    the database's autoincrement afterwards, must not collide with them
    (PostgreSQL's sequences do not see explicit keys by themselves)."""
    operations, payloads = _country_and_cities()
    if not fast_path:  # a column the node leaves out makes push take the ORM path
        payloads["city"]["columns"].remove("population")
        for row in payloads["city"]["rows"]:
            del row[2]
    assert server.node().push(operations, payloads).status_code == 200
    env = server.env
    with env.app.app_context():
        env.db.session.add(env.models.Country(name="Chile"))
        city = env.models.City(name="Santiago", country_id=1)
        env.db.session.add(city)
        env.db.session.commit()
        assert city.id > 12
    assert _rows(server, "country") == [(1, "Peru"), (2, "Chile")]


def test_sequences_are_advanced_only_where_allowed(
    database_url: str, backend: str
) -> None:
    """The statement that moves a key's sequence never fails a push: not for
    a role without UPDATE on the sequence, nor for a key past its bounds."""
    if backend != "postgresql":
        pytest.skip("sequences: PostgreSQL")
    from flask_reflectsync.server.push import _ADVANCE_SEQUENCE

    engine = sa.create_engine(database_url)
    role = f"rs_limited_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_seq_sample")
            connection.exec_driver_sql(
                'CREATE TABLE rs_seq_sample ("Id" serial PRIMARY KEY, note text)'
            )
            connection.exec_driver_sql(
                'ALTER SEQUENCE "rs_seq_sample_Id_seq" MAXVALUE 1000'
            )

            def advance(key: int) -> tuple[Any, ...]:
                params = {"table": "rs_seq_sample", "column": "Id", "key": key}
                return tuple(connection.execute(_ADVANCE_SEQUENCE, params).one())

            assert advance(5_000) == (False, None)  # past MAXVALUE: left alone
            assert advance(40) == (False, 40)
            assert advance(30) == (False, None)  # already past it
            connection.exec_driver_sql(f"CREATE ROLE {role}")
            connection.exec_driver_sql(f"GRANT SELECT ON rs_seq_sample TO {role}")
            connection.exec_driver_sql(f"SET LOCAL ROLE {role}")
            assert advance(50) == (True, None)
            connection.exec_driver_sql("RESET ROLE")
            assert (
                connection.exec_driver_sql(
                    "INSERT INTO rs_seq_sample (note) VALUES ('app') RETURNING \"Id\""
                ).scalar()
                == 41
            )
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_seq_sample")
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        engine.dispose()


def test_advancing_a_sequence_waits_for_another_push_advancing_it(
    database_url: str, backend: str
) -> None:
    """The check of a sequence's value and its ``setval`` are two steps, so
    the statement that does both first takes the sequence's lock, held
    until commit: a second push raising the same sequence meanwhile waits
    (here: runs into a lock timeout) instead of moving it back. A push
    whose keys the sequence is already past neither waits nor moves it."""
    if backend != "postgresql":
        pytest.skip("sequences: PostgreSQL")
    from flask_reflectsync.server.push import _ADVANCE_SEQUENCE

    engine = sa.create_engine(database_url)
    params = {"table": "rs_seq_race", "column": "id"}
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_seq_race")
            connection.exec_driver_sql(
                "CREATE TABLE rs_seq_race (id serial PRIMARY KEY)"
            )
        with engine.connect() as first, engine.connect() as second:
            first.begin()
            assert first.execute(_ADVANCE_SEQUENCE, {**params, "key": 100}).one()[
                1
            ] == 100
            second.begin()
            second.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                second.execute(_ADVANCE_SEQUENCE, {**params, "key": 150})
            second.rollback()
            # Below what the first push raised it to: no wait, no move
            # (setval is not transactional: the first's 100 is visible).
            second.begin()
            second.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            assert second.execute(_ADVANCE_SEQUENCE, {**params, "key": 50}).one()[
                1
            ] is None
            second.commit()
            first.commit()
            second.begin()
            assert second.execute(_ADVANCE_SEQUENCE, {**params, "key": 150}).one()[
                1
            ] == 150
            second.commit()
            with engine.connect() as connection:
                # the app's next key is past every pushed one
                assert connection.exec_driver_sql(
                    "SELECT nextval(pg_get_serial_sequence('rs_seq_race', 'id'))"
                ).scalar() == 151
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_seq_race")
        engine.dispose()


def test_a_push_waiting_for_the_sequence_lock_checks_the_sequence_again(
    database_url: str, backend: str
) -> None:
    """Two pushes both find the sequence below their keys; the second
    waits for the first's lock, and once it is granted finds the sequence
    past its own keys: it leaves it there rather than moving it back."""
    if backend != "postgresql":
        pytest.skip("sequences: PostgreSQL")
    import threading

    from flask_reflectsync.server.push import _ADVANCE_SEQUENCE

    engine = sa.create_engine(database_url)
    params = {"table": "rs_seq_recheck", "column": "id"}
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_seq_recheck")
            connection.exec_driver_sql(
                "CREATE TABLE rs_seq_recheck (id serial PRIMARY KEY)"
            )
        answers: list[Any] = []
        with engine.connect() as first, engine.connect() as second:
            first.begin()
            # The first takes the lock (the sequence was never used) and
            # holds it; it raises the sequence only after the second waits.
            first.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(1920295280, "
                "pg_get_serial_sequence('rs_seq_recheck', 'id')::regclass"
                "::oid::int)"
            )
            second.begin()

            def waiting() -> None:
                answers.append(
                    second.execute(_ADVANCE_SEQUENCE, {**params, "key": 120}).one()
                )
                second.commit()

            thread = threading.Thread(target=waiting)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the lock
            first.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('rs_seq_recheck', 'id'), 150)"
            )
            first.commit()
            thread.join(10)
        assert answers and answers[0][1] is None  # not moved back to 120
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT nextval(pg_get_serial_sequence('rs_seq_recheck', 'id'))"
            ).scalar() == 151
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_seq_recheck")
        engine.dispose()


# -- values the server's columns cannot store (issue 11 item 5) -----------------


def test_one_value_beyond_its_column_refuses_the_whole_push(server: ServerEnv) -> None:
    """A hundred rows, one population past 32 bits: nothing is written, and
    the envelope names the table, the row's key and the column."""
    node = server.node()
    rows = [[n, f"city {n}", 2**31 if n == 57 else n, None] for n in range(1, 101)]
    before = without_nonces(database_state(server.env))
    answer = node.push(
        [{"table": "city", "key": [n], "command": "i"} for n in range(1, 101)],
        {"city": {"columns": CITY_COLUMNS, "rows": rows}},
    )
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("code", "table", "key", "column", "status")} == {
        "code": "push.invalid_value",
        "table": "city",
        "key": [57],
        "column": "population",
        "status": 422,
    }
    assert body["error"].startswith("city [57]: column 'population' holds integers")
    assert without_nonces(database_state(server.env)) == before


def test_the_node_is_told_which_value_the_server_cannot_store(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """SQLite keeps a 101-character name in a String(100); the server does
    not. The real client reads the error's fields, sets that row aside and
    pushes the rest (see test_client_set_aside.py)."""
    from .nodes import cluster

    with cluster(make_app, tmp_path) as net:
        node = net.node(check_values=False)  # the server is to refuse
        m = net.server.env.models
        with node.Session() as session:
            session.add(m.Country(id=1, name="Peru"))
            session.add(m.City(id=8, name="x" * 101, country_id=1))
            session.commit()
        [entry] = node.push().set_aside
        assert (entry.table, entry.key, entry.command) == ("city", (8,), "i")
        assert "holds at most 100 characters, got 101" in entry.reason
        assert net.server_rows()["country"] == [(1, "Peru")]
        assert net.server_rows()["city"] == []


# -- the key space (issue 11 item 6) ----------------------------------------------


def _app_adds_a_country(server: ServerEnv) -> int:
    env = server.env
    with env.app.app_context():
        country = env.models.Country(name="added by the app")
        env.db.session.add(country)
        env.db.session.commit()
        return int(country.id)


def test_a_key_that_would_exhaust_the_key_space_is_refused(server: ServerEnv) -> None:
    """Pushed, key 2**31 - 1 would raise the sequence to its end: the app's
    next insert, and every node's next key (2**31), would fail."""
    node = server.node()
    before = without_nonces(database_state(server.env))
    answer = node.push(*_one_country(2**31 - 1))

    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert (body["code"], body["table"], body["key"], body["column"]) == (
        "push.invalid_key",
        "country",
        [2**31 - 1],
        "id",
    )
    assert "kept for the server's own keys" in body["error"]
    assert without_nonces(database_state(server.env)) == before
    assert _app_adds_a_country(server) == 1


def test_keys_up_to_the_reserve_are_accepted(server: ServerEnv) -> None:
    from flask_reflectsync.server.push import key_ceiling

    ceiling = 2**31 - 1 - 2**21
    codec = table_codecs(server.env.models.Country.__table__)["id"]
    assert key_ceiling(codec) == ceiling
    node = server.node()
    assert node.push(*_one_country(ceiling + 1)).status_code == 422
    assert node.push(*_one_country(ceiling)).status_code == 200
    assert _app_adds_a_country(server) == ceiling + 1
    # Keys a node chooses without a sequence behind them are not limited.
    op, payload = insert(
        "translation",
        {"city_id": 2**31 - 1, "lang": "es", "text": "x"},
        key=["city_id", "lang"],
    )
    assert node.push([op], payload).status_code == 200


def _one_country(key: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    op, payload = insert("country", {"id": key, "name": f"country {key}"})
    return [op], payload


def test_the_sequence_never_hands_the_app_a_key_a_push_is_writing(
    server: ServerEnv, backend: str
) -> None:
    """The push raises the sequence before writing its rows. Raised after
    (as it was), an app insert in between drew the pushed key, waited for
    the push's row and failed with a duplicate key once the push committed
    (4 such failures of the server app under load)."""
    if backend != "postgresql":
        pytest.skip("sequences: PostgreSQL")
    import threading

    engine = server.env.db.engine
    node = server.node()
    answers: list[Any] = []
    # Holding the counter lock stops the push after its writes, before commit.
    with engine.connect() as holder:
        holder.exec_driver_sql(
            "SELECT value FROM reflectsync_version_counter WHERE id = 1 FOR UPDATE"
        )
        pushing = threading.Thread(
            target=lambda: answers.append(node.push(*_one_country(1)))
        )
        pushing.start()
        _wait_for_a_lock_wait(engine)
        with engine.connect() as app:
            app.exec_driver_sql("SET lock_timeout = '3s'")
            added = app.exec_driver_sql(
                "INSERT INTO country (name) VALUES ('app') RETURNING id"
            ).scalar()
            app.commit()
        holder.rollback()
        pushing.join()
    assert answers[0].status_code == 200, answers[0].text
    assert added == 2
    assert sorted(r[0] for r in _rows(server, "country")) == [1, 2]


def _wait_for_a_lock_wait(engine: sa.Engine) -> None:
    import time

    with engine.connect() as probe:
        for _ in range(200):
            # This database's sessions only: the server may be shared.
            waiting = probe.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar()
            probe.rollback()
            if waiting:
                return
            time.sleep(0.025)
    raise AssertionError("the push never waited for the counter lock")  # X


# -- push ids (issue 11 item 9) ---------------------------------------------------


def test_a_reused_push_id_with_other_content_is_refused(server: ServerEnv) -> None:
    node = server.node()
    first = node.push(*_one_country(1), push_id="same")
    assert first.status_code == 200
    before = without_nonces(database_state(server.env))

    other = node.push(*_one_country(2), push_id="same")

    assert other.status_code == 409, other.text
    body = other.json()
    assert (body["code"], body["push_id"]) == ("push.id_reused", "same")
    assert (
        "already applied (version 1) with other operations or rows" in (body["error"])
    )
    assert without_nonces(database_state(server.env)) == before
    assert [r[0] for r in _rows(server, "country")] == [1]


def test_a_retry_with_the_same_content_in_another_form_is_a_retry(
    server: ServerEnv,
) -> None:
    """The digest is of the content, not of the bytes: key order and spacing
    do not matter."""
    node = server.node()
    operations, payloads = _country_and_cities()
    first = node.push(operations, payloads, push_id="p1")
    reordered = [dict(reversed(list(op.items()))) for op in operations]
    again = node.push(reordered, dict(reversed(list(payloads.items()))), push_id="p1")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


def test_a_push_id_stored_before_digests_matches_any_content(
    server: ServerEnv,
) -> None:
    """Versions written before push_digest existed keep answering retries."""
    node = server.node()
    assert node.push(*_one_country(1), push_id="old").status_code == 200
    versions = server.env.db.metadata.tables["reflectsync_versions"]
    with server.env.db.engine.begin() as connection:
        connection.execute(sa.update(versions).values(push_digest=None))
    again = node.push(*_one_country(2), push_id="old")
    assert again.status_code == 200
    assert again.json()["version"] == 1


def test_a_node_retry_sends_what_it_first_sent(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """The answer is lost, then the row changes before the retry. The retry
    must carry the first content (rebuilt from the live row it would be
    another push under the same id, refused); the change follows in the next
    push."""
    from flask_reflectsync import errors

    from .nodes import cluster
    from .test_client_sync import LoseAnswers

    with cluster(make_app, tmp_path) as net:
        m = net.server.env.models
        transport = LoseAnswers()
        # Every try is made; only the waits between them are short (the
        # default 10 s is what the test would otherwise sleep).
        node = net.node(transport=transport, retry_within=0.3)
        with node.Session() as session:
            session.add(m.Country(id=1, name="Peru"))
            session.commit()
        transport.lose = True
        with pytest.raises(errors.ServerUnreachableError):
            node.push()
        with node.Session() as session:
            session.get(m.Country, 1).name = "Perú"
            session.commit()
        transport.lose = False

        again = node.push()

        assert (again.version, again.operations) == (1, 1)
        node.synchronize()
        assert net.server_rows()["country"] == [(1, "Perú")]
        net.assert_converged()


def test_a_node_file_from_before_push_messages_is_upgraded(
    make_app: AppFactory, tmp_path: Any
) -> None:
    from flask_reflectsync.client import SyncClient

    from .nodes import cluster

    with cluster(make_app, tmp_path) as net:
        m = net.server.env.models
        node = net.node()
        with node.engine.begin() as connection:
            connection.exec_driver_sql(
                "ALTER TABLE reflectsync_node_state DROP COLUMN push_message"
            )
        reopened = SyncClient(node.base_url, node.engine, models=net.models)
        with reopened.Session() as session:
            session.add(m.Country(id=1, name="Peru"))
            session.commit()
        assert reopened.push().version == 1


def test_a_version_committed_while_a_push_waits_for_the_counter_is_checked(
    server: ServerEnv, backend: str
) -> None:
    """On PostgreSQL and MySQL the app's versions are numbered after commit.
    One that committed after the push's early numbering, before it locked
    the counter, must still be numbered and checked by the push's conflict
    scan: the push numbers what committed once it holds the lock."""
    if backend == "sqlite":
        pytest.skip("numbered at commit on SQLite")
    import threading

    env = server.env
    node = server.node()
    assert node.push(*_country_and_cities()).status_code == 200
    node.last_version = 1
    answers: list[Any] = []
    # Holding the counter lock: the push's early numbering skips, and the
    # push then waits for the lock after its writes.
    with env.db.engine.connect() as holder:
        holder.exec_driver_sql(
            "SELECT value FROM reflectsync_version_counter WHERE id = 1 FOR UPDATE"
        )
        with env.app.app_context():
            env.db.session.get(env.models.City, 12).name = "Qosqo"
            env.db.session.commit()
        pushing = threading.Thread(
            target=lambda: answers.append(
                node.push(
                    [{"table": "city", "key": [12], "command": "u"}],
                    {"city": {"columns": ["id", "name"], "rows": [[12, "Cuzco"]]}},
                )
            )
        )
        pushing.start()
        _wait_for_a_push_lock_wait(env.db.engine, backend)
        holder.rollback()
        pushing.join()
    assert answers[0].status_code == 409, answers[0].text
    assert answers[0].json()["conflicts"][0]["key"] == [12]
    with env.app.app_context():
        assert env.db.session.get(env.models.City, 12).name == "Qosqo"


def _wait_for_a_push_lock_wait(engine: sa.Engine, backend: str) -> None:
    import time

    probe_sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        if backend == "postgresql"
        # MariaDB may wait for the row lock while it plans the statement
        # (state "Statistics"), before INNODB_TRX lists the transaction: look
        # for another connection's locking read of the counter still running.
        else "SELECT count(*) FROM information_schema.PROCESSLIST "
        "WHERE DB = DATABASE() AND ID <> CONNECTION_ID() "
        "AND INFO LIKE '%%reflectsync_version_counter%%FOR UPDATE%%'"
    )
    with engine.connect() as probe:
        for _ in range(800):
            waiting = probe.exec_driver_sql(probe_sql).scalar()
            probe.rollback()
            if waiting:
                return
            time.sleep(0.025)
    raise AssertionError("the push never waited for the counter lock")
