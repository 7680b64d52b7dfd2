"""Concurrent pushes, and several server processes sharing one database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync import ReflectSync
from flask_reflectsync.sqlite import use_immediate_transactions

from .conftest import AppFactory, define_models
from .http_server import (
    SECRET_KEY,
    ServerEnv,
    TestNode,
    define_sample,
    served,
    server_env,
)

NODES = 20
CITIES = 10


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        # SQLite writers must queue for the write lock (flask_reflectsync.sqlite).
        use_immediate_transactions(found.env.db.engine)
        yield found


def _push_message(n: int) -> dict[str, Any]:
    # Nodes n and n + 10 update the same city: one of each pair must lose.
    city = n % CITIES + 1
    return {
        "protocol": 2,
        "push_id": f"push-{n}",
        "last_version": 1,
        "operations": [
            {"table": "city", "key": [city], "command": "u"},
            {"table": "country", "key": [100 + n], "command": "i"},
        ],
        "payloads": {
            "city": {"columns": ["id", "name"], "rows": [[city, f"by node {n}"]]},
            "country": {"columns": ["id", "name"], "rows": [[100 + n, f"c{n}"]]},
        },
    }


def test_concurrent_pushes_apply_once_or_are_cleanly_rejected(
    server: ServerEnv,
) -> None:
    seeder = server.node()
    seed = seeder.push(
        [{"table": "city", "key": [i], "command": "i"} for i in range(1, CITIES + 1)],
        {
            "city": {
                "columns": ["id", "name"],
                "rows": [[i, f"city {i}"] for i in range(1, CITIES + 1)],
            }
        },
    )
    assert seed.json()["version"] == 1
    nodes = [server.node() for _ in range(NODES)]
    answers: dict[int, httpx.Response] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(NODES)

    def run(n: int) -> None:
        try:
            start.wait()
            answers[n] = nodes[n].call("POST", "/push", json=_push_message(n))
        except BaseException as error:  # noqa: B036 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(NODES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors

    statuses = {n: answer.status_code for n, answer in answers.items()}
    assert set(statuses.values()) <= {200, 409}, {n: a.text for n, a in answers.items()}
    accepted = sorted(n for n, status in statuses.items() if status == 200)
    # exactly one push per contested city wins
    assert sorted({n % CITIES for n in accepted}) == list(range(CITIES))
    assert len(accepted) == CITIES

    db = server.env.db
    versions = db.metadata.tables["reflectsync_versions"]
    countries = db.metadata.tables["country"]
    with db.engine.connect() as connection:
        rows = connection.execute(
            sa.select(versions.c.number, versions.c.push_id).order_by(versions.c.number)
        ).all()
        stored_countries = set(connection.execute(sa.select(countries.c.id)).scalars())
    # versions are gap-free and in commit order
    assert [number for number, _ in rows] == list(range(1, CITIES + 2))
    by_push = {push_id: number for number, push_id in rows}
    for n in range(NODES):
        body = answers[n].json()
        key = f"{nodes[n].id}:push-{n}"
        if n in accepted:
            assert by_push[key] == body["version"]
            assert body["operations"] == 2
            assert 100 + n in stored_countries
        else:
            assert key not in by_push
            assert 100 + n not in stored_countries
            assert body["conflicts"][0]["table"] == "city"

    # every push retried (a lost answer): the same answer, nothing applied twice
    for n in range(NODES):
        again = nodes[n].call("POST", "/push", json=_push_message(n))
        assert again.status_code == statuses[n]
        if n in accepted:
            assert again.json() == answers[n].json()
    with db.engine.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count()).select_from(versions)
        ).scalar()
    assert count == CITIES + 1


def test_concurrent_retries_of_one_push_apply_it_once(server: ServerEnv) -> None:
    node = server.node()
    message = _push_message(0)
    message["operations"] = message["operations"][1:]
    del message["payloads"]["city"]
    message["last_version"] = 0
    answers: list[httpx.Response] = []
    start = threading.Barrier(5)

    def run() -> None:
        start.wait()
        answers.append(node.call("POST", "/push", json=message))

    threads = [threading.Thread(target=run) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.text for a in answers}) == 1
    assert answers[0].json()["version"] == 1


def _second_worker(database_url: str) -> tuple[Flask, list[Any]]:
    """Another server process on the same database: its own app, db and
    extension, nothing shared in memory with the first."""
    app = Flask("second_worker")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        SECRET_KEY=SECRET_KEY,
        REFLECTSYNC_OPEN_REGISTRATION=True,
    )
    db = SQLAlchemy()
    db.init_app(app)
    # Tracking holds models weakly: keep them alive as long as the app.
    models = [define_models(db), define_sample(db)]
    ReflectSync().init_app(app, db)
    return app, models


def test_workers_share_nothing_but_the_database(
    server: ServerEnv, database_url: str
) -> None:
    worker, _models = _second_worker(database_url)
    try:
        with served(worker) as other_url:
            node = server.node()  # registered with the first worker
            node_b = TestNode(other_url + "/sync")
            node_b.id, node_b.secret = node.id, node.secret

            push = node_b.call(
                "POST",
                "/push",
                json=_push_message(1)
                | {
                    "last_version": 0,
                    "operations": _push_message(1)["operations"][1:],
                    "payloads": {"country": _push_message(1)["payloads"]["country"]},
                },
            )
            assert push.status_code == 200, push.text

            reader = server.node()
            page = reader.pull().json()
            assert list(page["changes"]) == ["country"]
            assert page["changes"]["country"]["values"] == [[101], ["c1"]]
            # a request seen by one worker is a replay for the other
            signed = reader.sign(
                reader.build("POST", "/pull", json={"protocol": 2, "since": 0})
            )
            assert reader.send(signed).status_code == 200
            headers = {k: v for k, v in signed.headers.items() if k.lower() != "host"}
            replay = node_b.client.post(
                other_url + "/sync/pull", content=signed.content, headers=headers
            )
            assert replay.status_code == 401
            assert "replayed" in replay.json()["error"]
            node_b.close()
    finally:
        with worker.app_context():
            worker.extensions["sqlalchemy"].engine.dispose()
