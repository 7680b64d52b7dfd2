"""Reflection on PostgreSQL: catalog listings against their baselines.

Creates a schema with many tables (keys, defaults, a CHECK constraint and
indexes on each, triggers on some), then measures in the same run, several
times each:

- ``MetaData.reflect()`` of the schema (SQLAlchemy's own reflection);
- the one ``pg_catalog`` query the catalog reader uses, executed raw;
- a cold listing (empty catalog: read, diff, write everything), without
  and with a ``table_created`` receiver (with one, every new table is loaded
  back with its columns for the signal);
- the first ``get_table`` of a table after a cold listing (it checks the
  table's digest and writes its column rows) and the next one (cached);
- a cold listing with the optional event trigger installed (the epoch
  replaces the fingerprint);
- a warm listing (nothing changed: the probe, then the cached rows);
- a listing after one ``ALTER TABLE`` (probe, read, diff, write one table).

Prints medians and the ratios the design promises against the one
describing catalog query of the same run (issue 18: cold <= 1.5x, warm
<= 0.5x), and the cold listing against ``MetaData.reflect``::

    python benchmarks/reflection.py --tables 1000 --runs 5

The database comes from ``--url`` or ``REFLECTSYNC_BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

import sqlalchemy as sa

from flask_reflectsync import signals
from flask_reflectsync.reflection import (
    Catalog,
    CatalogTable,
    define_catalog_tables,
    event_trigger,
)
from flask_reflectsync.reflection._postgresql import TABLES_QUERY

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_test"
SCHEMA = "rs_bench"


def timed(action: Callable[[], object]) -> float:
    # Collect first, so no measure pays for the garbage of the one before
    # (MetaData.reflect leaves thousands of cyclic objects behind).
    gc.collect()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def drop_schema(engine: sa.Engine) -> None:
    # In slices: one transaction dropping 1,000 tables runs out of lock slots.
    with engine.connect() as connection:
        names = (
            connection.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = %(schema)s"
                " ORDER BY tablename DESC",
                {"schema": SCHEMA},
            )
            .scalars()
            .all()
        )
    for start in range(0, len(names), 100):
        with engine.begin() as connection:
            for name in names[start : start + 100]:
                connection.exec_driver_sql(
                    f"DROP TABLE IF EXISTS {SCHEMA}.{name} CASCADE"
                )
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def create_schema(engine: sa.Engine, count: int) -> None:
    drop_schema(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
    for start in range(0, count, 100):
        with engine.begin() as connection:
            create_tables(connection, range(start, min(start + 100, count)))


def create_tables(connection: sa.Connection, numbers: range) -> None:
    connection.exec_driver_sql(
        f"CREATE OR REPLACE FUNCTION {SCHEMA}.touch() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    )
    for number in numbers:
        name = f"{SCHEMA}.t{number:04d}"
        reference = (
            f", parent_id INTEGER REFERENCES {SCHEMA}.t{number - 1:04d} (id)"
            if number % 10
            else ""
        )
        # What issue 18 reflects besides columns and keys: a CHECK constraint
        # and an index on every table, a partial index on every fifth, a
        # trigger on every tenth.
        connection.exec_driver_sql(
            f"CREATE TABLE {name} ("
            " id SERIAL PRIMARY KEY,"
            " code VARCHAR(20) NOT NULL UNIQUE,"
            " label VARCHAR(100) DEFAULT 'none',"
            " amount NUMERIC(12, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0),"
            " created_at TIMESTAMPTZ NOT NULL DEFAULT now()"
            f"{reference})"
        )
        connection.exec_driver_sql(
            f"CREATE INDEX t{number:04d}_label ON {name} (label)"
        )
        if number % 5 == 0:
            connection.exec_driver_sql(
                f"CREATE INDEX t{number:04d}_dear ON {name} (amount)"
                " WHERE amount > 1000"
            )
        if number % 10 == 0:
            connection.exec_driver_sql(
                f"CREATE TRIGGER t{number:04d}_touch BEFORE UPDATE ON {name}"
                f" FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.touch()"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("REFLECTSYNC_BENCH_DATABASE_URL", DEFAULT_URL)
    )
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    engine = sa.create_engine(args.url)
    if engine.dialect.name != "postgresql":
        raise SystemExit("This benchmark needs PostgreSQL.")
    metadata = sa.MetaData()
    tables = define_catalog_tables(metadata)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    print(f"creating {args.tables} tables in schema {SCHEMA} ...")
    create_schema(engine, args.tables)
    catalog = Catalog(engine, tables, exclude=("reflectsync_*",))
    try:
        (schema,) = [s for s in catalog.list_schemas() if s.name == SCHEMA]
        # Outside a transaction, ANALYZE takes one table at a time; inside one
        # it holds a lock per table and runs out of lock slots at 5,000.
        with engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.exec_driver_sql("ANALYZE")

        def forget() -> None:
            with engine.begin() as connection:
                for table in (tables.columns, tables.tables):
                    connection.execute(table.delete())
                connection.execute(
                    tables.probes.delete().where(
                        tables.probes.c.scope != event_trigger.DDL_SCOPE
                    )
                )

        def reflect_metadata() -> None:
            sa.MetaData().reflect(engine, schema=SCHEMA)

        def raw_query() -> None:
            with engine.connect() as connection:
                connection.execute(TABLES_QUERY, {"schema": int(schema.oid)}).all()

        listed: list[CatalogTable] = []

        def listing() -> None:
            listed[:] = catalog.list_tables(schema.id)
            assert len(listed) == args.tables, len(listed)

        def get_one() -> None:
            table = catalog.get_table(listed[len(listed) // 2].id)
            assert table.columns, table

        created: list[object] = []

        def receive(sender: object, **payload: object) -> None:
            created.append(payload)

        results: dict[str, list[float]] = {
            "MetaData.reflect()": [],
            "raw pg_catalog query": [],
            "cold listing": [],
            "cold, table_created receiver": [],
            "first get_table after cold": [],
            "get_table, cached": [],
            "cold, event trigger": [],
            "warm listing": [],
            "listing after one change": [],
        }
        for run in range(args.runs):
            results["MetaData.reflect()"].append(timed(reflect_metadata))
            results["raw pg_catalog query"].append(timed(raw_query))
            forget()
            results["cold listing"].append(timed(listing))
            results["first get_table after cold"].append(timed(get_one))
            results["get_table, cached"].append(timed(get_one))
            forget()
            created.clear()
            signals.table_created.connect(receive)
            try:
                results["cold, table_created receiver"].append(timed(listing))
            finally:
                signals.table_created.disconnect(receive)
            assert len(created) == args.tables, len(created)
            with engine.begin() as connection:
                event_trigger.install(connection, tables.probes)
            try:
                forget()
                results["cold, event trigger"].append(timed(listing))
            finally:
                with engine.begin() as connection:
                    event_trigger.uninstall(connection, tables.probes)
            listing()  # let the probe settle
            results["warm listing"].append(timed(listing))
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    f"ALTER TABLE {SCHEMA}.t0500 ADD COLUMN extra_{run} INTEGER"
                )
            results["listing after one change"].append(timed(listing))

        median = {name: statistics.median(times) for name, times in results.items()}
        print(
            f"\n{args.tables} tables, median of {args.runs} runs "
            f"(PostgreSQL {engine.dialect.server_version_info}):"
        )
        for name, value in median.items():
            print(f"  {name:28s} {value * 1000:9.1f} ms")
        reflect = median["MetaData.reflect()"]
        raw = median["raw pg_catalog query"]
        print("\nratios:")
        rows = [
            ("cold / raw catalog query", median["cold listing"] / raw, "<= 1.5x"),
            ("warm / raw catalog query", median["warm listing"] / raw, "<= 0.5x"),
            ("one change / raw query",
             median["listing after one change"] / raw, ""),
            ("cold with trigger / raw", median["cold, event trigger"] / raw, ""),
            ("cold with receiver / raw",
             median["cold, table_created receiver"] / raw, ""),
            ("cold / MetaData.reflect", median["cold listing"] / reflect, ""),
            ("raw query / MetaData.reflect", raw / reflect, ""),
        ]
        for name, ratio, target in rows:
            suffix = f"  (target {target})" if target else ""
            print(f"  {name:30s} {ratio:6.3f}x{suffix}")
    finally:
        drop_schema(engine)
        metadata.drop_all(engine)
        engine.dispose()


if __name__ == "__main__":
    main()
