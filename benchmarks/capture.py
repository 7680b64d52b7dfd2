"""Cost of change capture: commit N inserts of a tracked model, and the same
inserts of an identical untracked model, in the same run.

    python benchmarks/capture.py                       # SQLite file
    python benchmarks/capture.py --url postgresql+psycopg://postgres@127.0.0.1/bench

Prints the median of several rounds for each, and their ratio (target <= 1.3x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import ReflectSync, track


def build(url: str) -> tuple[Flask, SQLAlchemy, Any, Any]:
    app = Flask("capture_benchmark")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(app)

    @track
    class Tracked(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_tracked"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]

    class Untracked(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_untracked"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]

    ReflectSync(app, db)
    return app, db, Tracked, Untracked


def timed_commit(db: SQLAlchemy, model: Any, rows: int) -> float:
    objects = [model(name=f"row {i}", count=i, score=i / 3) for i in range(rows)]
    start = time.perf_counter()
    db.session.add_all(objects)
    db.session.commit()
    elapsed = time.perf_counter() - start
    db.session.expunge_all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{Path(folder) / 'bench.db'}"
        app, db, tracked, untracked = build(url)
        with app.app_context():
            db.drop_all()
            db.create_all()
            try:
                run(db, tracked, untracked, args.rows, args.rounds)
            finally:
                db.session.remove()
                db.drop_all()
                db.engine.dispose()


def run(db: SQLAlchemy, tracked: Any, untracked: Any, rows: int, rounds: int) -> None:
    print(
        f"backend: {db.engine.dialect.name}, {rows:,} inserts per commit, "
        f"{rounds} rounds (alternating, after one warm-up each)"
    )
    timings: dict[str, list[float]] = {"untracked": [], "tracked": []}
    runs: list[tuple[str, Callable[[], float]]] = [
        ("untracked", lambda: timed_commit(db, untracked, rows)),
        ("tracked", lambda: timed_commit(db, tracked, rows)),
    ]
    for _, function in runs:
        function()  # warm-up: first-use costs (compiled statements, pool)
    for _ in range(rounds):
        for name, function in runs:
            timings[name].append(function())
    base = statistics.median(timings["untracked"])
    cost = statistics.median(timings["tracked"])
    print(f"  untracked (baseline): {base * 1000:8.1f} ms median")
    print(f"  tracked             : {cost * 1000:8.1f} ms median")
    print(f"  ratio tracked/untracked: {cost / base:.2f}x  (target <= 1.3x)")


if __name__ == "__main__":
    main()
