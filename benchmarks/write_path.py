"""Cost of tracking on an app's write path: small transactions, many writers.

    python benchmarks/write_path.py                     # SQLite file (1 writer)
    python benchmarks/write_path.py \\
        --url postgresql+psycopg://postgres@127.0.0.1/bench \\
        --url mysql+pymysql://root@127.0.0.1/bench

For each database, in the same run, against an identical untracked model:

* single-row commit latency (median per commit): an insert, an update of a
  loaded row (``session.get``, change, commit), and a transaction writing a
  tracked and an untracked row (against two untracked rows);
* throughput (commits/s, median of rounds) of 1, 4, 8 and 16 writer threads,
  each with its own session and connection, one small commit per
  transaction (inserts; updates of the writer's own rows). SQLite, which has
  one writer at a time, is measured at 1 writer only.

Every figure is printed beside its untracked baseline, as a ratio
(targets: latency <= 1.3x, 16-writer throughput >= 0.7x).

``--capture triggers`` measures the same with ``REFLECTSYNC_CAPTURE =
"triggers"`` and the capture triggers installed (the database writes the
log in the app's own statements; see docs/tracking.rst).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.sqlite import use_immediate_transactions
from flask_reflectsync.tracking.numbering import settle_numbering

WRITERS = (1, 4, 8, 16)


def build(
    url: str, capture: str
) -> tuple[Flask, SQLAlchemy, ReflectSync, Any, Any, Any]:
    app = Flask("write_path_benchmark")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["REFLECTSYNC_CAPTURE"] = capture
    if not url.startswith("sqlite"):
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_size": max(WRITERS) + 4,
            "max_overflow": 0,
        }
    db = SQLAlchemy(app)

    @track
    class Tracked(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_w_tracked"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]

    class Untracked(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_w_untracked"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]

    class Other(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_w_other"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]

    sync = ReflectSync(app, db)
    return app, db, sync, Tracked, Untracked, Other


# -- single-row latency -----------------------------------------------------------


def _insert(db: SQLAlchemy, model: Any, n: int) -> float:
    start = time.perf_counter()
    db.session.add(model(name=f"r{n}", count=n))
    db.session.commit()
    return time.perf_counter() - start


def _update(db: SQLAlchemy, model: Any, n: int) -> float:
    start = time.perf_counter()
    row = db.session.get(model, 1 + n % 50)
    row.count += 1
    db.session.commit()
    return time.perf_counter() - start


def _pair(db: SQLAlchemy, first: Any, second: Any, n: int) -> float:
    start = time.perf_counter()
    db.session.add(first(name=f"p{n}", count=n))
    db.session.add(second(name=f"p{n}", count=n))
    db.session.commit()
    return time.perf_counter() - start


def latency(
    db: SQLAlchemy, tracked: Any, untracked: Any, other: Any, commits: int, rounds: int
) -> None:
    for model in (tracked, untracked):
        db.session.add_all([model(name=f"u{i}", count=0) for i in range(50)])
    db.session.commit()
    cases: list[tuple[str, Callable[[int], float], Callable[[int], float]]] = [
        (
            "insert",
            lambda n: _insert(db, tracked, n),
            lambda n: _insert(db, untracked, n),
        ),
        (
            "update",
            lambda n: _update(db, tracked, n),
            lambda n: _update(db, untracked, n),
        ),
        (
            "tracked+untracked",
            lambda n: _pair(db, tracked, other, n),
            lambda n: _pair(db, untracked, other, n),
        ),
    ]
    print(
        f"  single-row commit latency (median of {commits * rounds} commits "
        "each, interleaved):"
    )
    for name, with_tracking, without in cases:
        timings: dict[str, list[float]] = {"tracked": [], "untracked": []}
        for n in range(20):  # warm-up
            with_tracking(n)
            without(n)
        # Interleaved, one commit of each in turn (which goes first
        # alternating), so that load from elsewhere hits both alike.
        counter = 1000
        for round_ in range(rounds * commits):
            pair = [("untracked", without), ("tracked", with_tracking)]
            for label, function in pair if round_ % 2 else pair[::-1]:
                counter += 1
                timings[label].append(function(counter))
        base = statistics.median(timings["untracked"])
        cost = statistics.median(timings["tracked"])
        print(
            f"    {name:18} tracked {cost * 1000:6.3f} ms, untracked "
            f"{base * 1000:6.3f} ms: {cost / base:.2f}x  (target <= 1.3x)"
        )
        floor(db, name, with_tracking, without, commits * rounds)


# -- the statements alone ----------------------------------------------------------

Statement = tuple[str, Any, bool]


def _statements_of(db: SQLAlchemy, commit: Callable[[int], float]) -> list[Statement]:
    """The driver statements one commit of ``commit`` sends on the session's
    own connection (not the numbering thread's), with their parameters."""
    connection = db.session.connection().connection.dbapi_connection
    sent: list[Statement] = []

    def record(
        conn: Any, cursor: Any, text: str, params: Any, context: Any, many: bool
    ) -> None:
        if conn.connection.dbapi_connection is connection:
            sent.append((text, params, many))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        commit(10_000_000)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    return sent


_bumps = iter(range(10**9))


def _bumped(params: Any) -> Any:
    """The benchmark's ``UPDATE ... SET count = ...`` with a fresh count."""
    if isinstance(params, dict):
        return {**params, "count": next(_bumps)}
    return (next(_bumps), *params[1:])  # SET count = ? WHERE id = ?


def _replay(raw: Any, statements: list[Statement], sqlite: bool) -> float:
    start = time.perf_counter()
    cursor = raw.cursor()
    if sqlite and raw.isolation_level is None:
        # SQLite under use_immediate_transactions: the driver leaves the
        # transaction to us, as the engine's begin event does
        cursor.execute("BEGIN IMMEDIATE")
    for text, params, many in statements:
        if text.startswith("UPDATE bench_w_"):
            # a new value each time: SQLite and InnoDB skip writing an
            # UPDATE that changes nothing (SET count = the same)
            params = _bumped(params)
        if many:
            cursor.executemany(text, params)
        else:
            cursor.execute(text, params)
        if cursor.description is not None:
            cursor.fetchall()
    cursor.close()
    raw.commit()
    return time.perf_counter() - start


def floor(
    db: SQLAlchemy,
    name: str,
    with_tracking: Callable[[int], float],
    without: Callable[[int], float],
    commits: int,
) -> None:
    """The same commits' SQL sent straight through the driver, with no ORM
    and no listeners: the part of the ratio the database and the round
    trips set, which no Python on our side can take away."""
    tracked = _statements_of(db, with_tracking)
    untracked = _statements_of(db, without)
    raw = db.engine.raw_connection()
    sqlite = db.engine.dialect.name == "sqlite"
    try:
        timings: dict[str, list[float]] = {"tracked": [], "untracked": []}
        for round_ in range(commits):
            pair = [("untracked", untracked), ("tracked", tracked)]
            for label, statements in pair if round_ % 2 else pair[::-1]:
                timings[label].append(_replay(raw, statements, sqlite))
    finally:
        raw.close()
    base = statistics.median(timings["untracked"])
    cost = statistics.median(timings["tracked"])
    print(
        f"    {'':18} its SQL alone: {len(tracked)} statements {cost * 1000:6.3f} "
        f"ms, {len(untracked)} statements {base * 1000:6.3f} ms: {cost / base:.2f}x"
    )


# -- concurrent writers ------------------------------------------------------------


def _writers(
    app: Flask, db: SQLAlchemy, model: Any, kind: str, count: int, seconds: float
) -> float:
    """Commits per second of ``count`` threads writing for ``seconds``."""
    start = threading.Barrier(count + 1)
    stop = threading.Event()
    done = [0] * count
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with app.app_context():
                session = db.session
                base = 100_000 * (index + 1)
                ids = [base + i for i in range(20)]
                if kind == "update":
                    session.add_all([model(id=i, name="w", count=0) for i in ids])
                    session.commit()
                start.wait()
                n = 0
                while not stop.is_set():
                    if kind == "insert":
                        session.add(model(name=f"t{index}", count=n))
                    else:
                        row = session.get(model, ids[n % len(ids)])
                        row.count += 1
                    session.commit()
                    n += 1
                done[index] = n
                if kind == "update":
                    session.execute(sa.delete(model).where(model.id.in_(ids)))
                    session.commit()
                session.remove()
        except BaseException as error:  # noqa: B036 - reported below
            errors.append(error)
            stop.set()
            if not start.broken:
                start.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - began
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done) / elapsed


def throughput(
    app: Flask,
    db: SQLAlchemy,
    tracked: Any,
    untracked: Any,
    writers: tuple[int, ...],
    seconds: float,
    rounds: int,
) -> None:
    print(f"  throughput, commits/s ({rounds} rounds of {seconds:g} s, median):")
    for kind in ("insert", "update"):
        for count in writers:
            rates: dict[str, list[float]] = {"tracked": [], "untracked": []}
            for _ in range(rounds):
                for label, model in (("untracked", untracked), ("tracked", tracked)):
                    rates[label].append(_writers(app, db, model, kind, count, seconds))
            base = statistics.median(rates["untracked"])
            cost = statistics.median(rates["tracked"])
            print(
                f"    {kind:6} {count:2} writer(s): tracked {cost:7.0f}/s, "
                f"untracked {base:7.0f}/s: {cost / base:.2f}x"
                + ("  (target >= 0.7x)" if count == 16 else "")
            )


def run_one(url: str, args: argparse.Namespace) -> None:
    app, db, sync, tracked, untracked, other = build(url, args.capture)
    with app.app_context():
        db.drop_all()
        db.create_all()
        if args.capture == "triggers":
            sync.capture_triggers("install")
        sqlite = db.engine.dialect.name == "sqlite"
        if sqlite:
            use_immediate_transactions(db.engine)
        dialect = db.engine.dialect
        print(
            f"backend: {dialect.name} {dialect.server_version_info}, "
            f"capture: {args.capture}"
        )
        try:
            latency(db, tracked, untracked, other, args.commits, args.rounds)
            db.session.remove()
            writers = (1,) if sqlite else tuple(args.writers)
            throughput(app, db, tracked, untracked, writers, args.seconds, args.rounds)
        finally:
            db.session.remove()
            settle_numbering(db.engine)  # its thread reads the tables dropped next
            if args.capture == "triggers":
                sync.capture_triggers("remove")  # and their functions
            db.drop_all()
            db.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        action="append",
        help="database URL, repeatable (default: a temporary SQLite file)",
    )
    parser.add_argument("--commits", type=int, default=200, help="per latency round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="per throughput round"
    )
    parser.add_argument("--writers", type=int, nargs="+", default=list(WRITERS))
    parser.add_argument(
        "--capture",
        choices=("orm", "triggers"),
        default="orm",
        help="REFLECTSYNC_CAPTURE of the tracked model (default: orm)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for url in args.url or [f"sqlite:///{Path(folder) / 'bench.db'}"]:
            run_one(url, args)


if __name__ == "__main__":
    main()
