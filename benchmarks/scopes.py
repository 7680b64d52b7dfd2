"""What sync scopes cost (issue 14, docs/scopes.rst), on one database server.

    python benchmarks/scopes.py
    python benchmarks/scopes.py --share 10000 --scopes 100 --rounds 3
    python benchmarks/scopes.py --capture-only --capture-rounds 9

1. **A pull costs the node's share, not the server's size.** A fresh SQLite
   node whose principal is team 0 pulls its ``--share`` rows over loopback
   HTTP from a server whose scoped table holds only those rows (*small*),
   and from one holding ``--scopes`` teams of that many rows each (*big*,
   e.g. 10,000 of 1,000,000). Same run, medians; target big/small <= 2x.
2. **Capture with scopes on**: an ORM commit of 10,000 inserts into the
   scoped, tracked table against the same commit into an identical
   untracked table of the same database, alternating, one pair a round
   (target <= 1.3x; the median of the per-round ratios is printed too).
3. The repair query of the share: its plan on PostgreSQL (an index or a
   bitmap scan of team 0's rows, never a scan of every team).
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.serving import make_server

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.client import SyncClient

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def build(url: str) -> tuple[Flask, SQLAlchemy, Any, Any]:
    app = Flask("scopes_benchmark")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="benchmark",
        REFLECTSYNC_PULL_PAGE_SIZE=20_000,
        REFLECTSYNC_REGISTRATIONS_PER_MINUTE=0,
    )
    db = SQLAlchemy()

    @track
    class Visit(db.Model):  # type: ignore[name-defined]
        __tablename__ = "visit"
        id: Mapped[int] = mapped_column(primary_key=True)
        team: Mapped[int] = mapped_column(index=True)
        place: Mapped[str] = mapped_column(sa.String(40))
        count: Mapped[int]

    class RawVisit(db.Model):  # type: ignore[name-defined]
        __tablename__ = "raw_visit"
        id: Mapped[int] = mapped_column(primary_key=True)
        team: Mapped[int] = mapped_column(index=True)
        place: Mapped[str] = mapped_column(sa.String(40))
        count: Mapped[int]

    db.init_app(app)
    sync = ReflectSync(app, db)
    sync.scope(Visit, Visit.team, equals="team")

    @sync.registration_check
    def team(registration: dict[str, Any]) -> dict[str, Any]:
        return {"team": registration.get("info", {}).get("team")}

    with app.app_context():
        db.drop_all()
        db.create_all()
    return app, db, Visit, RawVisit


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


def fill(app: Flask, db: SQLAlchemy, Visit: Any, teams: int, share: int) -> None:
    """``share`` rows for each of ``teams`` teams, interleaved (team 0's rows
    spread over the whole table and log), tracked, in commits of 50,000."""
    total = teams * share
    with app.app_context():
        for start in range(0, total, 50_000):
            rows = [
                {"id": n + 1, "team": n % teams, "place": f"p{n}", "count": n}
                for n in range(start, min(total, start + 50_000))
            ]
            db.session.execute(sa.insert(Visit), rows)
            db.session.commit()
        if db.engine.dialect.name == "postgresql":
            # Statistics as autovacuum would have them by then: planned on
            # an empty log's estimates, the pull's log query walks the tag
            # index once per version (measured 0.77 s instead of 0.12 s).
            with db.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                connection.exec_driver_sql("ANALYZE")


def pull_times(base: str, Visit: Any, share: int, rounds: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as directory:
        for number in range(rounds):
            engine = sa.create_engine(f"sqlite:///{directory}/node{number}.db")
            Visit.metadata.create_all(engine, tables=[Visit.__table__])
            client = SyncClient(base, engine, models=[Visit])
            client.register(info={"team": 0})
            gc.collect()
            start = time.perf_counter()
            result = client.pull()
            times.append(time.perf_counter() - start)
            with engine.connect() as connection:
                count = connection.scalar(
                    sa.select(sa.func.count()).select_from(Visit.__table__)
                )
            assert count == share, (count, share)
            assert result.operations == share, (result.operations, share)
            client.close()
            engine.dispose()
    return times


def capture_times(
    app: Flask, db: SQLAlchemy, model: Any, first: int, rounds: int
) -> list[float]:
    times = []
    with app.app_context():
        for number in range(rounds):
            base = first + number * 10_000
            objects = [
                model(id=base + n, team=n % 100, place=f"c{n}", count=n)
                for n in range(10_000)
            ]
            gc.collect()
            start = time.perf_counter()
            db.session.add_all(objects)
            db.session.commit()
            times.append(time.perf_counter() - start)
    return times


def capture_pairs(
    app: Flask, db: SQLAlchemy, Visit: Any, RawVisit: Any, first: int, rounds: int
) -> tuple[list[float], list[float]]:
    """``rounds`` commits into each table, alternating (so a slow spell of
    a shared machine hits both)."""
    tracked: list[float] = []
    raw: list[float] = []
    for number in range(rounds):
        start = first + number * 10_000
        tracked += capture_times(app, db, Visit, start, 1)
        raw += capture_times(app, db, RawVisit, start, 1)
    return tracked, raw


def repair_plan(app: Flask, db: SQLAlchemy, Visit: Any) -> list[str]:
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            return ["(plans are shown on PostgreSQL)"]
        with db.engine.connect() as connection:
            query = (
                sa.select(Visit.__table__)
                .where(Visit.__table__.c.team.in_([0]))
                .order_by(Visit.__table__.c.id)
            )
            compiled = query.compile(
                dialect=connection.dialect, compile_kwargs={"literal_binds": True}
            )
            return [
                row[0] for row in connection.exec_driver_sql(f"EXPLAIN {compiled}")
            ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="with {name}")
    parser.add_argument("--share", type=int, default=10_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--capture-rounds", type=int, default=7)
    parser.add_argument(
        "--capture-only", action="store_true", help="measure capture only"
    )
    options = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if options.capture_only:
        url = options.url.format(name="reflectsync_bench_scopes_small")
        app, db, Visit, RawVisit = build(url)
        fill(app, db, Visit, 1, 1_000)
        tracked, raw = capture_pairs(
            app, db, Visit, RawVisit, 1_001, options.capture_rounds
        )
        _print_capture(tracked, raw)
        return

    pulls: dict[str, list[float]] = {}
    for label, teams in (("small", 1), ("big", options.scopes)):
        url = options.url.format(name=f"reflectsync_bench_scopes_{label}")
        app, db, Visit, RawVisit = build(url)
        started = time.perf_counter()
        fill(app, db, Visit, teams, options.share)
        print(
            f"{label}: {teams * options.share:,} rows in {teams} teams "
            f"(filled in {time.perf_counter() - started:.0f} s)"
        )
        with served(app) as base:
            pulls[label] = pull_times(base, Visit, options.share, options.rounds)
        if label == "small":
            first = options.share + 1
            tracked, raw = capture_pairs(
                app, db, Visit, RawVisit, first, options.capture_rounds
            )
        else:
            plan = repair_plan(app, db, Visit)
        with app.app_context():
            db.engine.dispose()

    small, big = (statistics.median(pulls[k]) for k in ("small", "big"))
    print(
        f"pull of a {options.share:,}-row share: {small:.2f} s from "
        f"{options.share:,} rows, {big:.2f} s from "
        f"{options.scopes * options.share:,} rows: {big / small:.2f}x "
        "(target <= 2x)"
    )
    _print_capture(tracked, raw)
    print("repair query of the share (PostgreSQL plan):")
    for line in plan:
        print("   ", line)


def _print_capture(tracked: list[float], raw: list[float]) -> None:
    t, r = statistics.median(tracked), statistics.median(raw)
    pairs = statistics.median(a / b for a, b in zip(tracked, raw, strict=True))
    print(
        f"capture, 10,000 ORM inserts in one commit: scoped and tracked "
        f"{t:.2f} s, untracked {r:.2f} s: {t / r:.2f}x (median of the "
        f"{len(raw)} rounds' ratios {pairs:.2f}x; target <= 1.3x)"
    )


if __name__ == "__main__":
    main()
