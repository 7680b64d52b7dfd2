"""What a row's history costs on the wire: the same final rows after many
updates each, against the same rows written once.

    python benchmarks/history_shape.py [--url postgresql+psycopg://...] \\
        [--rows 10000] [--updates 10] [--rounds 3]

Issue 19 asks that many updates of one row travel and apply as one: the
cost of a history should be close to the one-transaction case. Two shapes
of the same final rows (``--rows`` rows of four columns):

* **once**: the rows inserted in one transaction;
* **history**: the rows inserted, then ``--updates`` transactions that each
  update every row (the last one leaves the values of "once").

Pull: the server's app writes the shape (untimed), then a fresh SQLite
node (:class:`SyncClient`, the server's default page size of 5,000
operations) pulls everything: the time of ``client.pull()``, and how many
pages it took. Push: a fresh node writes the shape offline, then
``client.push()`` sends its queue: the time of the push (reading and
compressing the node's log, HTTP, the server's apply, acknowledging). The
server runs in a thread on 127.0.0.1, its tables dropped and created again
for each measure. The figure is history / once of the same run (medians
of ``--rounds`` rounds, the shapes alternated).
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flask_reflectsync.client import SyncClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from push_pull import build, served  # noqa: E402  (next to this script)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_bench"


def final(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"row {i}", "count": i, "score": i / 3}


def write_shape(session: Any, model: Any, rows: int, updates: int) -> None:
    """Write the rows once, or (``updates`` > 0) with that many updates of
    every row after the insert, each its own transaction."""
    first = {"count": -1} if updates else {}
    session.add_all([model(**{**final(i), **first}) for i in range(1, rows + 1)])
    session.commit()
    for round_ in range(updates):
        last = round_ == updates - 1
        for item in session.scalars(sa.select(model)):
            item.count = item.id if last else -2 - round_
        session.commit()


def pull_once(url: str, rows: int, updates: int, directory: str) -> tuple[float, int]:
    app, db, models = build(url, page_size=5000)
    with app.app_context():
        db.drop_all()
        db.create_all()
        write_shape(db.session, models[0], rows, updates)
        db.session.remove()
    with served(app) as base:
        engine = sa.create_engine(f"sqlite:///{directory}/pull-{time.monotonic_ns()}.db")
        models[0].metadata.create_all(engine, tables=[models[0].__table__])
        client = SyncClient(base, engine, models=[models[0]])
        client.register()
        pages = [0]
        gc.collect()
        start = time.perf_counter()
        result = client.pull(progress=lambda *_: pages.__setitem__(0, pages[0] + 1))
        spent = time.perf_counter() - start
        _check(engine, models[0], rows)
        assert result.version is not None
        client.close()
        engine.dispose()
    with app.app_context():
        db.engine.dispose()
    return spent, pages[0]


def push_once(url: str, rows: int, updates: int, directory: str) -> float:
    app, db, models = build(url, page_size=5000)
    with app.app_context():
        db.drop_all()
        db.create_all()
    with served(app) as base:
        engine = sa.create_engine(f"sqlite:///{directory}/push-{time.monotonic_ns()}.db")
        models[0].metadata.create_all(engine, tables=[models[0].__table__])
        client = SyncClient(base, engine, models=[models[0]])
        client.register()
        with client.Session() as session:
            write_shape(session, models[0], rows, updates)
        gc.collect()
        start = time.perf_counter()
        client.push()
        spent = time.perf_counter() - start
        client.close()
        engine.dispose()
    with app.app_context():
        _check(db.engine, models[0], rows)
        db.engine.dispose()
    return spent


def _check(engine: sa.Engine, model: Any, rows: int) -> None:
    with engine.connect() as connection:
        got = connection.execute(
            sa.select(model.__table__).order_by(model.__table__.c.id)
        ).all()
    expected = [tuple(final(i).values()) for i in range(1, rows + 1)]
    assert [tuple(r) for r in got] == expected, "the rows did not arrive whole"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    name = sa.make_url(args.url).get_backend_name()
    print(
        f"{name}: {args.rows} rows; history = insert + {args.updates} updates "
        f"of every row; medians of {args.rounds} rounds"
    )
    figures: dict[str, list[float]] = {}
    pages: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            for shape, updates in (("once", 0), ("history", args.updates)):
                spent, count = pull_once(args.url, args.rows, updates, directory)
                figures.setdefault(f"pull {shape}", []).append(spent)
                pages[shape] = count
                spent = push_once(args.url, args.rows, updates, directory)
                figures.setdefault(f"push {shape}", []).append(spent)
    medians = {k: statistics.median(v) for k, v in figures.items()}
    print(f"{'':6}  {'once ms':>9}  {'history ms':>10}  {'ratio':>6}")
    for side in ("pull", "push"):
        once, history = medians[f"{side} once"], medians[f"{side} history"]
        print(
            f"{side:6}  {once * 1000:9.0f}  {history * 1000:10.0f}  "
            f"{history / once:5.2f}x"
        )
    print(f"pull progress calls: once {pages['once']}, history {pages['history']}")
    print("target: history close to once (issue 19)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
