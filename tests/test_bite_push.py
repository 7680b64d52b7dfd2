"""Pushes (issue 12): exactly-once when the world moved on between the first
attempt and its retry, and refused when they would leave rows pointing at
rows the server does not have."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from .conftest import AppFactory
from .http_server import ServerEnv, database_state, server_env, without_nonces
from .oplog import logged


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


def _population(server: ServerEnv, key: int) -> Any:
    city = server.env.db.metadata.tables["city"]
    with server.env.db.engine.connect() as connection:
        return connection.execute(
            sa.select(city.c.population).where(city.c.id == key)
        ).scalar_one()


def _set_population(key: int, value: int) -> tuple[list[Any], dict[str, Any]]:
    return (
        [{"table": "city", "key": [key], "command": "u"}],
        {"city": {"columns": ["id", "population"], "rows": [[key, value]]}},
    )


@pytest.mark.parametrize(
    "resolution", [None, "server-wins", "node-wins", "last-pusher-wins"]
)
def test_a_retry_after_another_node_changed_the_row_gets_the_stored_answer(
    server: ServerEnv, resolution: str | None
) -> None:
    seeder, first, other = server.node(), server.node(), server.node()
    seeded = seeder.push(
        [{"table": "city", "key": [1], "command": "i"}],
        {
            "city": {
                "columns": ["id", "name", "population"],
                "rows": [[1, "Lima", 1]],
            }
        },
    )
    assert seeded.status_code == 200, seeded.text

    extra = {"resolutions": {"city": resolution}} if resolution else {}
    answer = first.push(*_set_population(1, 10), push_id="p", last_version=1, **extra)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 2
    # Another node, up to date, changes the same column of the same row.
    later = other.push(*_set_population(1, 20), last_version=2)
    assert later.status_code == 200, later.text

    # The first node never saw its answer and sends the same push again,
    # still based on version 1: it is the push already applied, not a stale
    # one to judge again (a conflict, or worse, a second application).
    again = first.push(*_set_population(1, 10), push_id="p", last_version=1, **extra)
    assert again.status_code == 200, again.text
    assert again.json() == answer.json()
    assert _population(server, 1) == 20
    assert [number for number, *_ in logged(server.env.db)] == [1, 2, 3]


def test_a_retry_after_the_log_was_trimmed_past_it_gets_the_stored_answer(
    server: ServerEnv,
) -> None:
    # The unique push id catches a retry that reaches the write; this one
    # would be stopped before it (its last_version now lies in the trimmed
    # part of the log), so only looking the answer up first gives the node
    # the answer it is owed instead of a 410.
    seeder, first, other = server.node(), server.node(), server.node()
    seeded = seeder.push(
        [{"table": "city", "key": [1], "command": "i"}],
        {"city": {"columns": ["id", "name", "population"], "rows": [[1, "Lima", 1]]}},
    )
    assert seeded.status_code == 200, seeded.text
    answer = first.push(*_set_population(1, 10), push_id="p", last_version=1)
    assert answer.status_code == 200, answer.text
    assert other.push(*_set_population(1, 20), last_version=2).status_code == 200
    runner = server.env.app.test_cli_runner()
    trimmed = runner.invoke(args=["reflectsync", "trim", "--through", "3"])
    assert trimmed.exit_code == 0, trimmed.output

    again = first.push(*_set_population(1, 10), push_id="p", last_version=1)
    assert again.status_code == 200, again.text
    # The same version: the node acknowledges its operations as applied.
    # (The answer's operation count is counted from the log, so after a trim
    # it says 0: see docs/mutation.rst.)
    same = ("ok", "push_id", "version")
    assert {k: again.json()[k] for k in same} == {k: answer.json()[k] for k in same}
    assert _population(server, 1) == 20
    # The node's next pull is what tells it to repair.
    assert first.pull(since=1).status_code == 410


def test_a_new_push_from_behind_the_trimmed_mark_is_refused_with_410(
    server: ServerEnv,
) -> None:
    # Its conflicts would be searched in versions the trim emptied: the push
    # must be refused (the node repairs), not judged on a log with holes.
    seeder, behind = server.node(), server.node()
    seeded = seeder.push(
        [{"table": "city", "key": [1], "command": "i"}],
        {"city": {"columns": ["id", "name", "population"], "rows": [[1, "Lima", 1]]}},
    )
    assert seeded.status_code == 200, seeded.text
    assert seeder.push(*_set_population(1, 20), last_version=1).status_code == 200
    runner = server.env.app.test_cli_runner()
    trimmed = runner.invoke(args=["reflectsync", "trim", "--through", "2"])
    assert trimmed.exit_code == 0, trimmed.output

    answer = behind.push(*_set_population(1, 10), last_version=1)
    assert answer.status_code == 410, answer.text
    assert answer.json()["code"] == "log.trimmed"
    assert _population(server, 1) == 20
    at_the_mark = behind.push(*_set_population(1, 30), last_version=2)
    assert at_the_mark.status_code == 200, at_the_mark.text


def _seed_country_and_city(server: ServerEnv) -> None:
    node = server.node()
    answer = node.push(
        [
            {"table": "country", "key": [1], "command": "i"},
            {"table": "city", "key": [1], "command": "i"},
        ],
        {
            "country": {"columns": ["id", "name"], "rows": [[1, "Peru"]]},
            "city": {
                "columns": ["id", "name", "population", "country_id"],
                "rows": [[1, "Lima", 1, 1]],
            },
        },
    )
    assert answer.status_code == 200, answer.text


def test_a_push_of_a_row_pointing_at_a_missing_parent_is_refused(
    server: ServerEnv,
) -> None:
    # SQLite without PRAGMA foreign_keys would store it: the server checks.
    _seed_country_and_city(server)
    node = server.node()
    node.last_version = 1
    before = without_nonces(database_state(server.env))
    answer = node.push(
        [{"table": "city", "key": [2], "command": "i"}],
        {
            "city": {
                "columns": ["id", "name", "population", "country_id"],
                "rows": [[2, "Nowhere", 1, 99]],
            }
        },
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["ok"] is False
    assert without_nonces(database_state(server.env)) == before


def test_a_push_deleting_a_parent_rows_still_point_at_is_refused(
    server: ServerEnv,
) -> None:
    _seed_country_and_city(server)
    node = server.node()
    node.last_version = 1
    before = without_nonces(database_state(server.env))
    answer = node.push([{"table": "country", "key": [1], "command": "d"}], {})
    assert answer.status_code == 409, answer.text
    assert answer.json()["ok"] is False
    assert without_nonces(database_state(server.env)) == before
