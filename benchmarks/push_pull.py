"""Cost of a push over loopback HTTP against a raw insert of the same rows.

    python benchmarks/push_pull.py
    python benchmarks/push_pull.py --url postgresql+psycopg://postgres@127.0.0.1/bench

A node pushes N new rows (one operation and one payload row each) to a sync
server running in a thread on 127.0.0.1; the time covers building and signing
the message, HTTP, validation, the per-table executemany, the operations log
and the commit. The baseline is a Core executemany insert of the same rows
into an identical untracked table of the same database, in the same run.
Then a second node pulls those N rows (all pages), for scale.

Every timed operation starts after ``gc.collect()``, so that none pays for
a full collection of garbage made by the setup or by another measure (as in
``reflection.py``). Prints medians of several rounds, the push/raw ratio
(target <= 3x) and the growth from N to 10 N (linear: about 10x).

Last, the offline side: a fresh SQLite node (:class:`SyncClient`) pulls N rows
and merges them into its database; the baseline is a raw executemany of the
same rows into an identical table of the same node database (target <= 3x).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.serving import make_server

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.client import SyncClient
from flask_reflectsync.wire.signing import sign_request

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_srv"
COLUMNS = ["id", "name", "count", "score"]


def build(url: str, page_size: int = 20_000) -> tuple[Flask, SQLAlchemy, list[Any]]:
    app = Flask("push_benchmark")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="benchmark",
        REFLECTSYNC_OPEN_REGISTRATION=True,
        REFLECTSYNC_PULL_PAGE_SIZE=page_size,
    )
    db = SQLAlchemy(app)

    @track
    class Pushed(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_pushed"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]

    class Raw(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_raw"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]

    ReflectSync(app, db)
    return app, db, [Pushed, Raw]


@contextmanager
def served(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/sync"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class Node:
    def __init__(self, client: httpx.Client, base: str) -> None:
        self.client, self.base = client, base
        node = client.post(base + "/register", json={"protocol": 2}).json()["node"]
        self.id, self.secret = node["id"], node["secret"]

    def post(self, route: str, message: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(message, separators=(",", ":")).encode()
        path = "/sync" + route
        headers = sign_request(self.id, self.secret, "POST", path, "", body)
        headers["Content-Type"] = "application/json"
        answer = self.client.post(self.base + route, content=body, headers=headers)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


def rows_for(first: int, count: int) -> list[list[Any]]:
    return [[i, f"row {i}", i, i / 3] for i in range(first, first + count)]


def push(node: Node, rows: list[list[Any]]) -> tuple[float, int]:
    gc.collect()  # nobody pays for garbage made before the timer
    start = time.perf_counter()
    answer = node.post(
        "/push",
        {
            "protocol": 2,
            "push_id": uuid.uuid4().hex,
            "last_version": 0,
            "operations": [
                {"table": "bench_pushed", "key": [row[0]], "command": "i"}
                for row in rows
            ],
            "payloads": {"bench_pushed": {"columns": COLUMNS, "rows": rows}},
        },
    )
    return time.perf_counter() - start, answer["version"]


def raw_insert(engine: sa.Engine, table: sa.Table, rows: list[list[Any]]) -> float:
    params = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    gc.collect()  # nobody pays for garbage made before the timer
    start = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(table.insert(), params)
    return time.perf_counter() - start


def pull(node: Node, since: int) -> tuple[float, int]:
    gc.collect()  # nobody pays for garbage made before the timer
    start = time.perf_counter()
    cursor, count = None, 0
    while True:
        message: dict[str, Any] = {"protocol": 2, "since": since}
        if cursor:
            message["cursor"] = cursor
        page = node.post("/pull", message)
        tables = page["changes"].values()
        count += sum(len(part["commands"]) + len(part["deleted"][0]) for part in tables)
        cursor = page["cursor"]
        if cursor is None:
            return time.perf_counter() - start, count


def node_pull(base: str, models: list[Any], size: int, rounds: int) -> dict[str, float]:
    """A fresh SQLite node pulls ``size`` rows; against a raw local executemany."""
    pushed, raw = models[0].__table__, models[1].__table__
    pulls, raws = [], []
    with tempfile.TemporaryDirectory() as directory:
        for number in range(rounds):
            engine = sa.create_engine(f"sqlite:///{directory}/node{number}.db")
            pushed.metadata.create_all(engine, tables=[pushed, raw])
            client = SyncClient(base, engine, models=[models[0]])
            client.register()
            gc.collect()  # nobody pays for garbage made before the timer
            start = time.perf_counter()
            result = client.pull()
            pulls.append(time.perf_counter() - start)
            assert result.operations == size, (result.operations, size)
            with engine.connect() as connection:
                rows = [list(r) for r in connection.execute(sa.select(pushed))]
            raws.append(raw_insert(engine, raw, rows))
            client.close()
            engine.dispose()
    return {"pull": median(pulls), "raw": median(raws)}


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def measure(
    size: int,
    rounds: int,
    next_id: Callable[[int], int],
    *,
    pusher: Node,
    puller: Node,
    engine: sa.Engine,
    raw: sa.Table,
) -> dict[str, float]:
    pushes, raws, pulls = [], [], []
    for _ in range(rounds):
        rows = rows_for(next_id(size), size)
        raws.append(raw_insert(engine, raw, rows))
        elapsed, version = push(pusher, rows)
        pushes.append(elapsed)
        elapsed, count = pull(puller, version - 1)
        assert count == size, (count, size)
        pulls.append(elapsed)
    return {"push": median(pushes), "raw": median(raws), "pull": median(pulls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large-rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    app, db, models = build(args.url)
    counter = iter(range(1, 10**12, 1))

    def next_id(size: int) -> int:
        first = next(counter)
        for _ in range(size - 1):
            next(counter)
        return first

    with app.app_context():
        db.drop_all()
        db.create_all()
        engine = db.engine
        raw = models[1].__table__
        try:
            with served(app) as base, httpx.Client(timeout=600) as client:
                pusher, puller = Node(client, base), Node(client, base)
                push(pusher, rows_for(next_id(args.rows), args.rows))
                offline = node_pull(base, models, args.rows, args.rounds)
                push(pusher, rows_for(next_id(100), 100))  # warm up
                small = measure(
                    args.rows,
                    args.rounds,
                    next_id,
                    pusher=pusher,
                    puller=puller,
                    engine=engine,
                    raw=raw,
                )
                large = measure(
                    args.rows * 10,
                    args.large_rounds,
                    next_id,
                    pusher=pusher,
                    puller=puller,
                    engine=engine,
                    raw=raw,
                )
        finally:
            db.drop_all()

    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    print(
        f"{'rows':>8} {'raw insert':>11} {'push (HTTP)':>12} {'push/raw':>9}"
        f" {'pull (HTTP)':>12}"
    )
    for size, result in ((args.rows, small), (args.rows * 10, large)):
        print(
            f"{size:>8} {result['raw'] * 1000:>9.0f}ms {result['push'] * 1000:>10.0f}ms"
            f" {result['push'] / result['raw']:>8.2f}x {result['pull'] * 1000:>10.0f}ms"
        )
    print(
        f"growth for 10x the rows: push {large['push'] / small['push']:.1f}x, "
        f"raw {large['raw'] / small['raw']:.1f}x, pull "
        f"{large['pull'] / small['pull']:.1f}x (linear = 10x)"
    )
    print(f"medians of {args.rounds} rounds ({args.large_rounds} for the large size)")
    print(
        f"node pull of {args.rows} rows into a fresh SQLite node: "
        f"{offline['pull'] * 1000:.0f}ms (HTTP, decode, merge, write); raw local "
        f"executemany {offline['raw'] * 1000:.0f}ms; ratio "
        f"{offline['pull'] / offline['raw']:.2f}x (target <= 3x)"
    )


if __name__ == "__main__":
    main()
