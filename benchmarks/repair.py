"""Cost of a repair over loopback HTTP against a raw local write of the same rows.

    python benchmarks/repair.py
    python benchmarks/repair.py --url postgresql+psycopg://postgres@127.0.0.1/bench

The server (a thread on 127.0.0.1) holds N rows of mixed types (integer,
string, float, date, time zone aware timestamp, boolean). A fresh SQLite node
(:class:`SyncClient`) repairs from it: the time covers the server's read and
encoding, HTTP, the node's reading of the stream, decoding and the local
writes, in one transaction. Two baselines in the same run:

* a raw executemany of the same rows into an identical untracked table of the
  same node database (the write a repair cannot avoid; target <= 3x);
* the node's stream reader alone over the answer's bytes (fed in 64 KiB
  pieces), against one ``json.loads`` of the same lines joined into one JSON
  array (what reading the stream costs over the fastest parse the standard
  library has; target <= 1.5x).

Every timed operation starts after ``gc.collect()`` (as in ``push_pull.py``).
Prints medians of several rounds.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from push_pull import served
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.client import SyncClient
from flask_reflectsync.wire.repair import MEDIA_TYPE, RepairReader
from flask_reflectsync.wire.signing import sign_request

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_srv"
COLUMNS = ["id", "name", "count", "score", "day", "moment", "flag"]
#: What httpx hands over per ``iter_bytes`` step on loopback, about.
CHUNK = 65_536


def build(url: str) -> tuple[Flask, SQLAlchemy, list[Any]]:
    app = Flask("repair_benchmark")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="benchmark",
        REFLECTSYNC_OPEN_REGISTRATION=True,
    )
    db = SQLAlchemy(app)

    class Columns:
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]
        day: Mapped[datetime.date]
        moment: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True))
        flag: Mapped[bool]

    @track
    class Repaired(Columns, db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_repaired"

    class Raw(Columns, db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_repair_raw"

    ReflectSync(app, db)
    return app, db, [Repaired, Raw]


def rows_for(count: int) -> list[dict[str, Any]]:
    day = datetime.date(2024, 1, 1)
    moment = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    return [
        {
            "id": i,
            "name": f"row {i} é",
            "count": i * 7,
            "score": i / 3,
            "day": day + datetime.timedelta(days=i % 1000),
            "moment": moment + datetime.timedelta(seconds=i),
            "flag": i % 2 == 0,
        }
        for i in range(1, count + 1)
    ]


def timed_repair(base: str, engine: sa.Engine, model: Any, size: int) -> float:
    client = SyncClient(base, engine, models=[model])
    client.register()
    try:
        gc.collect()  # nobody pays for garbage made before the timer
        start = time.perf_counter()
        written = client.repair()
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    assert written == size, (written, size)
    return elapsed


def raw_write(engine: sa.Engine, table: sa.Table) -> float:
    """The rows the repair wrote, written again into ``table`` raw."""
    with engine.connect() as connection:
        source = sa.Table("bench_repaired", sa.MetaData(), autoload_with=connection)
        params = [dict(r._mapping) for r in connection.execute(sa.select(source))]
    gc.collect()  # nobody pays for garbage made before the timer
    start = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(table.insert(), params)
    return time.perf_counter() - start


def repair_bytes(base: str) -> bytes:
    """The repair answer's bytes, as a node gets them."""
    with httpx.Client(timeout=600) as http:
        node = http.post(base + "/register", json={"protocol": 2}).json()["node"]
        path = "/sync/repair"
        headers = sign_request(node["id"], node["secret"], "GET", path, "", b"")
        headers["Accept"] = MEDIA_TYPE
        answer = http.get(base + "/repair", headers=headers)
        answer.raise_for_status()
        return answer.content


def pieces(body: bytes) -> Iterator[bytes]:
    return (body[i : i + CHUNK] for i in range(0, len(body), CHUNK))


def timed_reader(body: bytes) -> tuple[float, int]:
    gc.collect()  # nobody pays for garbage made before the timer
    start = time.perf_counter()
    stream = RepairReader(pieces(body), "http://bench")
    count = sum(len(rows) for _, _, chunks in stream.tables() for rows in chunks)
    return time.perf_counter() - start, count


def timed_loads(body: bytes) -> float:
    whole = b"[" + b",".join(body.splitlines()) + b"]"  # one JSON document
    gc.collect()  # nobody pays for garbage made before the timer
    start = time.perf_counter()
    json.loads(whole)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    app, db, models = build(args.url)
    repaired, raw = models[0].__table__, models[1].__table__
    repairs, raws, readers, loads = [], [], [], []
    with app.app_context():
        db.drop_all()
        db.create_all()
        server_url = db.engine.url.render_as_string(hide_password=True)
        with db.engine.begin() as connection:
            connection.execute(repaired.insert(), rows_for(args.rows))
        try:
            with served(app) as base, tempfile.TemporaryDirectory() as directory:
                body = repair_bytes(base)
                for number in range(args.rounds):
                    engine = sa.create_engine(f"sqlite:///{directory}/node{number}.db")
                    repaired.metadata.create_all(engine, tables=[repaired, raw])
                    repairs.append(timed_repair(base, engine, models[0], args.rows))
                    raws.append(raw_write(engine, raw))
                    engine.dispose()
                    elapsed, count = timed_reader(body)
                    assert count == args.rows, (count, args.rows)
                    readers.append(elapsed)
                    loads.append(timed_loads(body))
        finally:
            db.drop_all()

    repair, write = statistics.median(repairs), statistics.median(raws)
    reader, whole = statistics.median(readers), statistics.median(loads)
    print(f"server database: {server_url}")
    print(f"medians of {args.rounds} rounds, {args.rows} rows, {len(body)} bytes")
    print(
        f"repair into a fresh SQLite node: {repair * 1000:.0f}ms; raw local "
        f"executemany {write * 1000:.0f}ms; ratio {repair / write:.2f}x "
        "(target <= 3x)"
    )
    print(
        f"stream reader alone: {reader * 1000:.0f}ms; json.loads of the same "
        f"bytes {whole * 1000:.0f}ms; ratio {reader / whole:.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
