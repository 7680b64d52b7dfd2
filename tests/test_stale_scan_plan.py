"""How PostgreSQL plans the conflict scan of a push, on a log it has no
statistics for yet (a new server; autovacuum analyses a table after its
first minute of changes at the earliest, never where it is off).

The scan runs under the counter lock, so reading the whole log there stalls
every other push: with 30 nodes pushing, a sequential scan of 18,000
operations took a third of the time the lock was held (issue 19). The scan
bounded by the newest number (what the push's counter lock returns) is read
by the versions' ``number`` index however large the log grows."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync.server.stale import stale_rows
from flask_reflectsync.tracking import LogTables
from flask_reflectsync.tracking.keys import encode_key

from .conftest import AppEnv, AppFactory
from .http_server import server_env

VERSIONS = 2_000
PER_VERSION = 10


def _log(env: AppEnv) -> LogTables:
    tables = env.db.metadata.tables
    return LogTables(
        versions=tables["reflectsync_versions"],
        operations=tables["reflectsync_operations"],
        counter=tables["reflectsync_version_counter"],
    )


def _fill(env: AppEnv) -> None:
    """VERSIONS versions of other writers, PER_VERSION city inserts each,
    written straight into the log (no ANALYZE)."""
    log = _log(env)
    now = sa.func.current_timestamp()
    with env.db.engine.begin() as connection:
        connection.execute(
            sa.insert(log.versions).values(created_at=now),
            [{"number": n} for n in range(1, VERSIONS + 1)],
        )
        numbered = sa.select(log.versions.c.number, log.versions.c.id)
        ids = {number: id_ for number, id_ in connection.execute(numbered)}
        connection.execute(
            sa.insert(log.operations),
            [
                {
                    "version_id": ids[1 + (n - 1) // PER_VERSION],
                    "table_name": "city",
                    "row_key": encode_key((n,)),
                    "command": "i",
                }
                for n in range(1, VERSIONS * PER_VERSION + 1)
            ],
        )


class _Explained:
    """EXPLAIN of every conflict scan ``engine`` sends, exactly as sent, in
    whichever thread (the test server's too)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.plans: list[str] = []

    def __enter__(self) -> list[str]:
        sa.event.listen(self.engine, "before_cursor_execute", self._explain)
        return self.plans

    def __exit__(self, *_: Any) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._explain)

    def _explain(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any
    ) -> None:
        if "reflectsync_operations.row_key" in statement:
            cursor.execute("EXPLAIN " + statement, parameters)
            self.plans.extend(row[0] for row in cursor.fetchall())


def _sequential(plans: list[str]) -> list[str]:
    return [p for p in plans if "Seq Scan on reflectsync_operations" in p]


def _plans(env: AppEnv, **bounds: Any) -> tuple[list[str], dict[Any, Any]]:
    """The stale rows among ten keys of the newest versions, and the plan
    PostgreSQL chose for the scan's statement (EXPLAIN of exactly what was
    sent)."""
    keys = range(VERSIONS * PER_VERSION - 9, VERSIONS * PER_VERSION + 1)
    wanted = {"city": {encode_key((k,)): (k,) for k in keys}}
    with _Explained(env.db.engine) as plans:
        try:
            found = stale_rows(
                env.db.session(), _log(env), wanted, 1, VERSIONS - 30, **bounds
            )
        finally:
            env.db.session.rollback()
    return plans, found


def test_the_scan_under_the_counter_lock_reads_no_whole_log(
    env: AppEnv, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's planner (MariaDB and SQLite use the index)")
    _fill(env)
    plans, found = _plans(env, upto=VERSIONS)
    assert plans, "the scan was not seen"
    assert not _sequential(plans), "\n".join(plans)
    # And it still finds what it must: the ten rows, in the last version.
    assert sorted(found) == [("city", (k,)) for k in range(19_991, 20_001)]
    assert {row.version for row in found.values()} == {VERSIONS}
    assert all(row.inserted for row in found.values())


def test_the_bound_leaves_out_nothing_up_to_the_newest_number(
    env: AppEnv,
) -> None:
    """On every backend: the bounded scan finds what the open one finds
    when ``upto`` is the newest number, and nothing numbered above it."""
    _fill(env)
    _, open_ended = _plans(env)
    _, bounded = _plans(env, upto=VERSIONS)
    _, short = _plans(env, upto=VERSIONS - 1)
    assert bounded == open_ended and len(bounded) == 10
    assert short == {}


def test_a_push_scans_for_conflicts_by_the_versions_index(
    make_app: AppFactory, backend: str
) -> None:
    """The same, through a push: the scan under the counter lock is given
    the newest number the lock returned."""
    if backend != "postgresql":
        pytest.skip("PostgreSQL's planner (MariaDB and SQLite use the index)")
    with server_env(make_app) as server:
        env = server.env
        _fill(env)
        with env.db.engine.begin() as connection:
            connection.execute(sa.update(_log(env).counter).values(value=VERSIONS))
        node = server.node()
        keys = range(30_001, 30_011)
        with _Explained(env.db.engine) as plans:
            answer = node.push(
                [{"table": "city", "key": [k], "command": "i"} for k in keys],
                {
                    "city": {
                        "columns": ["id", "name", "population"],
                        "rows": [[k, f"c{k}", k] for k in keys],
                    }
                },
                last_version=VERSIONS - 30,
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == VERSIONS + 1
        assert plans, "the scan was not seen"
        assert not _sequential(plans), "\n".join(plans)
