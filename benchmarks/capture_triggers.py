"""Cost of database-level capture (``REFLECTSYNC_CAPTURE = "triggers"``) next
to ORM capture and no capture, on PostgreSQL, MariaDB / MySQL or SQLite, in
the same run:

* bulk: 10,000 inserts in one commit, through the ORM (``add_all``) and as
  one raw SQL statement (``INSERT ... SELECT`` over ``generate_series``,
  MariaDB's ``seq_1_to_N`` or a recursive CTE on SQLite);
* single-row commit latency: one insert and its commit, through the ORM and
  as raw SQL.

Each is measured on an untracked table and on an identical tracked one,
with the capture triggers installed ("triggers") and removed (the ORM path
logs then, exactly as with ``REFLECTSYNC_CAPTURE = "orm"``; raw SQL is not
logged at all in that mode, so its row is the untracked cost).

    python benchmarks/capture_triggers.py --url postgresql+psycopg://postgres@127.0.0.1/bench
    python benchmarks/capture_triggers.py --url mysql+pymysql://root@127.0.0.1/bench
    python benchmarks/capture_triggers.py --url sqlite:////tmp/bench.db

Prints medians and ratios against untracked (targets: <= 1.5x). A last
line measures the floor under the raw bulk figure: the same raw insert on
the untracked table followed, in its transaction, by one ``INSERT ...
SELECT`` of its 10,000 operation rows straight into the log table (no
trigger, nothing computed): what one log row per changed row costs by
itself, whoever writes it. The
numbering of the versions after commit (PostgreSQL, MariaDB; SQLite's
raw SQL versions at the next pull) is not in the figures: it runs outside
the writer's transaction, as it does in an app.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import ReflectSync, track

ROWS = 10_000


def build(url: str) -> tuple[Flask, SQLAlchemy, ReflectSync, Any, Any]:
    app = Flask("capture_triggers_benchmark")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["REFLECTSYNC_CAPTURE"] = "triggers"
    db = SQLAlchemy(app)

    @track
    class Tracked(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_trig_tracked"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]

    class Untracked(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "bench_trig_untracked"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        count: Mapped[int]
        score: Mapped[float]

    sync = ReflectSync(app, db)
    return app, db, sync, Tracked, Untracked


def orm_bulk(db: SQLAlchemy, model: Any) -> float:
    objects = [model(name=f"row {i}", count=i, score=i / 3) for i in range(ROWS)]
    start = time.perf_counter()
    db.session.add_all(objects)
    db.session.commit()
    elapsed = time.perf_counter() - start
    db.session.expunge_all()
    return elapsed


def _numbers(dialect: str) -> tuple[str, str, str]:
    """1 to :data:`ROWS` on ``dialect``: what goes before the ``INSERT``
    (SQLite's recursive CTE), the ``FROM`` source, and the number."""
    if dialect == "postgresql":
        return "", f"generate_series(1, {ROWS}) AS g", "g"
    if dialect == "mysql":
        return "", f"seq_1_to_{ROWS}", "seq"
    recursive = (
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g "
        f"WHERE n < {ROWS}) "
    )
    return recursive, "g", "n"


def _text(dialect: str, *parts: str) -> str:
    """The concatenation of SQL strings ``parts`` on ``dialect``."""
    if dialect == "mysql":
        return f"CONCAT({', '.join(parts)})"
    return " || ".join(parts)


def _bulk_sql(dialect: str, table: str) -> str:
    before, source, n = _numbers(dialect)
    name = _text(dialect, "'row '", n)
    return (
        f"{before}INSERT INTO {table} (name, count, score) "
        f"SELECT {name}, {n}, {n} / 3.0 FROM {source}"
    )


def _log_rows_sql(dialect: str, operations: str) -> str:
    """The 10,000 operation rows of a raw bulk insert, as one statement
    (``%s``/``?``: the version row's id)."""
    mark = "?" if dialect == "sqlite" else "%s"
    before, source, n = _numbers(dialect)
    key = _text(dialect, "'['", n, "']'")
    return (
        f"{before}INSERT INTO {operations} "
        "(version_id, table_name, row_key, command) "
        f"SELECT {mark}, 'bench_floor', {key}, 'i' FROM {source}"
    )


def raw_bulk(engine: sa.Engine, table: str) -> float:
    statement = _bulk_sql(engine.dialect.name, table)
    with engine.connect() as connection:
        start = time.perf_counter()
        connection.exec_driver_sql(statement)
        connection.commit()
        return time.perf_counter() - start


def raw_bulk_with_log_rows(engine: sa.Engine, table: str, tables: Any) -> float:
    """:func:`raw_bulk` and its operation rows written straight into the
    log, in one transaction (the rows are deleted again, untimed)."""
    operations, versions = tables.operations, tables.versions
    rows = _log_rows_sql(engine.dialect.name, operations.name)
    with engine.connect() as connection:
        start = time.perf_counter()
        connection.exec_driver_sql(_bulk_sql(engine.dialect.name, table))
        version = connection.execute(
            versions.insert().values(created_at=sa.func.now())
        ).inserted_primary_key[0]
        connection.exec_driver_sql(rows, (version,))
        connection.commit()
        elapsed = time.perf_counter() - start
        connection.execute(
            operations.delete().where(operations.c.version_id == version)
        )
        connection.execute(versions.delete().where(versions.c.id == version))
        connection.commit()
    return elapsed


def orm_single(db: SQLAlchemy, model: Any, commits: int = 50) -> float:
    times = []
    for i in range(commits):
        start = time.perf_counter()
        db.session.add(model(name=f"one {i}", count=i, score=0.5))
        db.session.commit()
        times.append(time.perf_counter() - start)
    db.session.expunge_all()
    return statistics.median(times)


def raw_single(engine: sa.Engine, table: str, commits: int = 50) -> float:
    times = []
    with engine.connect() as connection:
        for i in range(commits):
            start = time.perf_counter()
            connection.exec_driver_sql(
                f"INSERT INTO {table} (name, count, score) VALUES ('one', {i}, 0.5)"
            )
            connection.commit()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", required=True, help="a PostgreSQL, MariaDB or SQLite database URL"
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    app, db, sync, Tracked, Untracked = build(args.url)
    tracked, untracked = Tracked.__tablename__, Untracked.__tablename__
    with app.app_context():
        sync.capture_triggers("remove")
        db.drop_all()
        db.create_all()
        engine = db.engine
        runs: dict[str, Callable[[Any, str], float]] = {
            "ORM 10,000 inserts": lambda model, _: orm_bulk(db, model),
            "raw SQL 10,000 inserts": lambda _, table: raw_bulk(engine, table),
            "ORM single-row commit": lambda model, _: orm_single(db, model),
            "raw SQL single-row commit": lambda _, table: raw_single(engine, table),
        }
        samples: dict[str, dict[str, list[float]]] = {
            mode: {name: [] for name in runs}
            for mode in ("untracked", "orm", "triggers")
        }
        floor: list[float] = []
        log_tables = sync.get_state().tables
        # Interleaved round by round (the machine is shared: a slow spell
        # then hits every column alike); untracked once in each mode.
        for _ in range(args.rounds):
            floor.append(raw_bulk_with_log_rows(engine, untracked, log_tables))
            for mode in ("orm", "triggers"):
                sync.capture_triggers("install" if mode == "triggers" else "remove")
                for name, run in runs.items():
                    samples["untracked"][name].append(run(Untracked, untracked))
                    samples[mode][name].append(run(Tracked, tracked))
        results = {
            mode: {name: statistics.median(v) for name, v in found.items()}
            for mode, found in samples.items()
        }
        baseline = results["untracked"]
        logged = sa.select(sa.func.count()).select_from(
            db.metadata.tables["reflectsync_operations"]
        )
        operations = db.session.execute(logged).scalar()
        db.session.remove()
        sync.capture_triggers("remove")
        db.drop_all()
    backend = {"postgresql": "PostgreSQL", "mysql": "MariaDB / MySQL"}.get(
        sa.make_url(args.url).get_backend_name(), "SQLite"
    )
    print(
        f"{backend}, medians of {args.rounds} interleaved rounds "
        f"({operations} operations logged)"
    )
    print(f"{'':28}{'untracked':>12}{'orm mode':>18}{'triggers mode':>18}")
    for name, base in baseline.items():
        orm, trig = results["orm"][name], results["triggers"][name]
        orm_text = (
            "not logged"
            if name.startswith("raw")
            else f"{orm * 1000:.2f} {orm / base:.2f}x"
        )
        print(
            f"{name:28}{base * 1000:10.2f}ms{orm_text:>18}"
            f"{f'{trig * 1000:.2f} {trig / base:.2f}x':>18}"
        )
    raw = baseline["raw SQL 10,000 inserts"]
    low = statistics.median(floor)
    print(
        f"{'raw SQL 10,000 + log rows':28}{raw * 1000:10.2f}ms"
        f"{'(no trigger)':>18}{f'{low * 1000:.2f} {low / raw:.2f}x':>18}"
    )


if __name__ == "__main__":
    main()
