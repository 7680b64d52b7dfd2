"""Versions become visible in numbering order, without gaps, under
concurrent writers (some rolling back) and numberers: only committed
versions are numbered, and a reader that pulled "since N" never misses a
version."""

from __future__ import annotations

import random
import threading
import time

import sqlalchemy as sa

from flask_reflectsync.sqlite import use_immediate_transactions
from flask_reflectsync.tracking import define_tables
from flask_reflectsync.tracking.numbering import number_versions

from .conftest import AppEnv, AppFactory

WRITERS = 6
TRANSACTIONS_PER_WRITER = 15


def test_concurrent_writers_never_expose_version_n_plus_1_before_n(
    make_app: AppFactory,
) -> None:
    _check_concurrent_writers(make_app())


def test_raw_sql_and_orm_writers_with_capture_triggers(
    make_app: AppFactory, backend: str
) -> None:
    """Half the writers write raw SQL on connections of their own (as psql
    or another program would), logged by the capture triggers; the other
    half through the ORM: versions stay gap-free and in commit order.
    PostgreSQL's statement-level triggers and MariaDB's and SQLite's
    row-level ones alike leave the numbering to the numberers."""
    env = make_app(REFLECTSYNC_CAPTURE="triggers")
    with env.app.app_context():
        env.sync.capture_triggers("install")
    _check_concurrent_writers(env, raw=True)


def _check_concurrent_writers(env: AppEnv, *, raw: bool = False) -> None:
    app, db, City = env.app, env.db, env.models.City
    versions = db.metadata.tables["reflectsync_versions"]
    tables = define_tables(db.metadata)
    with app.app_context():
        # SQLite needs writers to queue for the write lock (see the docs).
        use_immediate_transactions(db.engine)
    errors: list[BaseException] = []
    committed: list[int] = []
    done = threading.Event()
    start = threading.Barrier(WRITERS + 1)

    def writer(n: int) -> None:
        if raw and n % 2:
            raw_writer(n)
            return
        rng = random.Random(n)
        try:
            with app.app_context():
                start.wait()
                for i in range(TRANSACTIONS_PER_WRITER):
                    db.session.add(City(name=f"w{n}-{i}"))
                    db.session.flush()
                    # Hold the transaction open a little so commits interleave
                    # differently from the order versions rows were created.
                    time.sleep(rng.uniform(0, 0.004))
                    if i % 5 == 4:
                        # Its version row existed, uncommitted: it must
                        # never be numbered.
                        db.session.rollback()
                        continue
                    db.session.commit()
                    committed.append(1)
                    if i % 3 == n % 3:
                        # Other workers' pulls number versions too.
                        number_versions(db.engine, tables)
                db.session.remove()
        except BaseException as error:  # noqa: B036 - reported by the test
            errors.append(error)

    with app.app_context():
        url = db.engine.url

    def raw_writer(n: int) -> None:
        rng = random.Random(n)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        use_immediate_transactions(engine)  # SQLite: writers queue
        try:
            with engine.connect() as connection:
                start.wait()
                for i in range(TRANSACTIONS_PER_WRITER):
                    connection.exec_driver_sql(
                        f"INSERT INTO city (name, population) VALUES ('raw{n}-{i}', 0)"
                    )
                    time.sleep(rng.uniform(0, 0.004))
                    if i % 5 == 4:
                        connection.rollback()
                        continue
                    connection.commit()
                    committed.append(1)
                    if i % 3 == n % 3:
                        number_versions(engine, tables)
        except BaseException as error:  # noqa: B036 - reported by the test
            errors.append(error)
            start.abort()
        finally:
            engine.dispose()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()

    # The reader pulls like a node: "what is after the last version I saw?"
    seen_until = 0
    reads = 0
    with app.app_context():
        start.wait()
        reader = db.engine
        while True:
            finished = done.is_set()
            # As a pull does: committed versions get their numbers first.
            number_versions(reader, tables)
            with reader.connect() as connection:
                numbers = list(
                    connection.execute(
                        sa.select(versions.c.number)
                        .where(versions.c.number > seen_until)
                        .order_by(versions.c.number)
                    ).scalars()
                )
            reads += 1
            expected = list(range(seen_until + 1, seen_until + 1 + len(numbers)))
            assert numbers == expected, (
                f"after version {seen_until} the reader saw {numbers}: "
                "a later version became visible before an earlier one"
            )
            if numbers:
                seen_until = numbers[-1]
            if finished:
                break
            if not any(t.is_alive() for t in threads):
                done.set()
    for thread in threads:
        thread.join()

    assert not errors, errors
    total = len(committed)
    assert total == WRITERS * (TRANSACTIONS_PER_WRITER - TRANSACTIONS_PER_WRITER // 5)
    assert reads > 1
    operations = db.metadata.tables["reflectsync_operations"]
    with app.app_context(), db.engine.connect() as connection:
        rows = connection.execute(
            sa.select(versions.c.number, sa.func.count())
            .select_from(versions)
            .join(operations, operations.c.version_id == versions.c.id)
            .group_by(versions.c.number)
        ).all()
    if raw and sa.make_url(url).get_backend_name() == "sqlite":
        # SQLite's triggers join the newest version while it waits for its
        # number: a raw writer's transactions may share one
        assert [n for n, _ in sorted(rows)] == list(range(1, len(rows) + 1))
        assert sum(count for _, count in rows) == total
        assert seen_until == len(rows)
        return
    assert seen_until == total
    # exactly one version per committed transaction, one insert in each
    assert sorted(rows) == [(n, 1) for n in range(1, total + 1)]
