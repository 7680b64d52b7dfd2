"""Database-level capture (``REFLECTSYNC_CAPTURE = "triggers"``; PostgreSQL's
statement-level triggers, MariaDB's and SQLite's row-level ones): raw SQL
from another connection is logged exactly as the ORM path logs the same
change, once, in the change's transaction; versions are numbered after
commit (SQLite: at the next commit or pull), never by a trigger."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import track
from flask_reflectsync.errors import ConfigurationError
from flask_reflectsync.tracking.numbering import number_versions
from flask_reflectsync.tracking.registry import untrack
from flask_reflectsync.tracking.triggers import check_backend

from .conftest import AppEnv, AppFactory
from .nodes import cluster

SECRET_KEY = "trigger-capture-tests"


@pytest.fixture
def trig(make_app: AppFactory) -> Iterator[AppEnv]:
    env = make_app(REFLECTSYNC_CAPTURE="triggers")
    with env.app.app_context():
        env.sync.capture_triggers("install")
        yield env
        env.db.session.remove()


def _log(env: AppEnv) -> list[tuple[Any, ...]]:
    """The log's operations in order (within a version, in a canonical
    order: the ORM's flush order of objects is its own)."""
    ops = env.db.metadata.tables["reflectsync_operations"]
    with env.db.engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                ops.c.version_id,
                ops.c.table_name,
                ops.c.row_key,
                ops.c.command,
                ops.c.changed_columns,
            ).order_by(ops.c.id)
        ).all()
    return [
        tuple(row[1:]) for row in sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3]))
    ]


def _versions(env: AppEnv) -> list[tuple[Any, ...]]:
    versions = env.db.metadata.tables["reflectsync_versions"]
    with env.db.engine.connect() as connection:
        return [
            tuple(r)
            for r in connection.execute(
                sa.select(versions.c.id, versions.c.number).order_by(versions.c.id)
            )
        ]


TAG = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
ODD = "é日\U0001f600\x7f"  # escaped in keys as json.dumps does


def _orm_steps(env: AppEnv) -> list[Callable[[], None]]:
    """The changes of _RAW made through the ORM, transaction by transaction."""
    m, s = env.models, env.db.session

    def first() -> None:
        s.add(m.City(id=1, name="Lima", population=5))
        s.add(m.Translation(city_id=1, lang="fr", text="Lima"))
        s.add(m.Translation(city_id=1, lang=ODD, text="x"))
        s.add(m.Tag(id=TAG, label="a"))
        s.commit()

    def second() -> None:
        city = s.get(m.City, 1)
        city.name, city.population = "Lima!", 6
        s.commit()

    def third() -> None:
        s.get(m.City, 1).name = "Lima!"  # no-op
        s.commit()

    def fourth() -> None:
        s.get(m.Tag, TAG).label = "b"
        s.commit()

    def fifth() -> None:
        s.delete(s.get(m.Translation, (1, "fr")))
        s.commit()

    return [first, second, third, fourth, fifth]


def _raw(backend: str) -> list[list[str]]:
    """Transaction by transaction, the changes _orm_steps makes."""
    odd = "U&'\\00E9\\65E5\\+01F600\\007F'" if backend == "postgresql" else f"'{ODD}'"
    # SQLite's Uuid is CHAR(32): the hex, as SQLAlchemy writes it
    tag = TAG.hex if backend == "sqlite" else str(TAG)
    return [
        [
            "INSERT INTO city (id, name, population) VALUES (1, 'Lima', 5)",
            "INSERT INTO translation (city_id, lang, text) VALUES (1, 'fr', 'Lima'),"
            f" (1, {odd}, 'x')",
            f"INSERT INTO tag (id, label) VALUES ('{tag}', 'a')",
        ],
        ["UPDATE city SET name = 'Lima!', population = 6 WHERE id = 1"],
        ["UPDATE city SET name = 'Lima!' WHERE id = 1"],
        [f"UPDATE tag SET label = 'b' WHERE id = '{tag}'"],
        ["DELETE FROM translation WHERE lang = 'fr'"],
    ]


def _per_transaction(
    env: AppEnv, steps: list[Callable[[], None]]
) -> list[list[tuple[Any, ...]]]:
    """The operations each step logged, in a canonical order (the ORM's
    flush order of objects is its own; MariaDB's triggers give each
    statement a version of its own)."""
    ops = env.db.metadata.tables["reflectsync_operations"]
    found = []
    seen = 0
    for step in steps:
        step()
        with env.db.engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    ops.c.id, ops.c.table_name, ops.c.row_key, ops.c.command,
                    ops.c.changed_columns,
                ).where(ops.c.id > seen).order_by(ops.c.id)
            ).all()
        if rows:
            seen = rows[-1][0]
        found.append(sorted(tuple(r[1:]) for r in rows))
    return found


def _raw_steps(env: AppEnv, backend: str) -> list[Callable[[], None]]:
    # A connection of its own, outside the ORM: as psql would.
    engine = sa.create_engine(env.db.engine.url, poolclass=sa.pool.NullPool)

    def step(transaction: list[str]) -> Callable[[], None]:
        def run() -> None:
            with engine.connect() as connection:
                for statement in transaction:
                    connection.exec_driver_sql(statement)
                connection.commit()
            # SQLite's triggers join an un-numbered version: numbered
            # here, each transaction gets one of its own
            number_versions(env.db.engine, _tables(env))

        return run

    return [step(t) for t in _raw(backend)]


def test_raw_sql_is_logged_as_the_orm_logs_the_same_change(
    make_app: AppFactory, backend: str
) -> None:
    orm = make_app()
    with orm.app.app_context():
        expected = _per_transaction(orm, _orm_steps(orm))
        orm.db.session.remove()
    assert [("city", "[1]", "u", '["name","population"]')] in expected
    assert ("translation", '[1,"\\u00e9\\u65e5\\ud83d\\ude00\\u007f"]', "i", None) in (
        expected[0]
    )
    assert expected[2] == []  # the no-op
    trig = make_app(REFLECTSYNC_CAPTURE="triggers")
    with trig.app.app_context():
        trig.sync.capture_triggers("install")
        assert _per_transaction(trig, _raw_steps(trig, backend)) == expected
        # a version per committed change (on MariaDB per statement), the
        # no-op's none; numbered gap-free
        numbers = [n for _, n in _versions(trig)]
        assert numbers == list(range(1, {"mysql": 7}.get(backend, 5)))


def test_raw_sql_versions_wait_for_the_numbering(trig: AppEnv) -> None:
    """No trigger numbers its version: it is numbered after commit."""
    engine = sa.create_engine(trig.db.engine.url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            _city(connection, 1, "a")
    finally:
        engine.dispose()
    assert [n for _, n in _versions(trig)] == [None]
    number_versions(trig.db.engine, _tables(trig))
    assert [n for _, n in _versions(trig)] == [1]


def _tables(env: AppEnv) -> Any:
    return env.sync.get_state(env.app).tables


def test_orm_writes_are_logged_once_with_triggers_on(
    make_app: AppFactory, backend: str
) -> None:
    orm = make_app()
    with orm.app.app_context():
        expected = _per_transaction(orm, _orm_steps(orm))
        orm.db.session.remove()
    trig = make_app(REFLECTSYNC_CAPTURE="triggers")
    with trig.app.app_context():
        trig.sync.capture_triggers("install")
        assert _per_transaction(trig, _orm_steps(trig)) == expected
        # bulk ORM and Core statements through the session: once too
        s, City = trig.db.session, trig.models.City
        before = len(_log(trig))
        s.execute(sa.update(City).where(City.id == 1).values(population=7))
        s.execute(sa.insert(City.__table__), [{"id": 2, "name": "Cusco"}])
        s.commit()
        assert _log(trig)[before:] == [
            ("city", "[1]", "u", '["population"]'),
            ("city", "[2]", "i", None),
        ]
        # numbered as the ORM path's versions are: SQLite at commit
        if backend == "sqlite":
            assert None not in [n for _, n in _versions(trig)]
        number_versions(trig.db.engine, _tables(trig))
        numbers = [n for _, n in _versions(trig)]
        assert numbers == list(range(1, len(numbers) + 1))
        trig.db.session.remove()


def _city(connection: sa.Connection, key: int, name: str) -> None:
    connection.exec_driver_sql(
        f"INSERT INTO city (id, name, population) VALUES ({key}, '{name}', 0)"
    )


def _number(env: AppEnv) -> None:
    """Number what committed (SQLite's triggers join an un-numbered version,
    so each transaction below gets one of its own)."""
    number_versions(env.db.engine, _tables(env))


def test_a_rollback_leaves_nothing(trig: AppEnv) -> None:
    engine = trig.db.engine
    with engine.connect() as connection:
        _city(connection, 1, "a")
        connection.rollback()
        _city(connection, 2, "b")
        savepoint = connection.begin_nested()
        _city(connection, 3, "c")
        savepoint.rollback()
        connection.commit()
        _number(trig)
        # a savepoint that created the version row, rolled back, then more
        connection.exec_driver_sql("SELECT 1")
        savepoint = connection.begin_nested()
        _city(connection, 4, "d")
        savepoint.rollback()
        _city(connection, 5, "e")
        connection.commit()
    assert _log(trig) == [("city", "[2]", "i", None), ("city", "[5]", "i", None)]
    assert len(_versions(trig)) == 2


def test_key_changes_and_excluded_columns(trig: AppEnv) -> None:
    db = trig.db

    @track(exclude=["seen"])
    class Account(db.Model):  # type: ignore[name-defined]
        __tablename__ = "trig_account"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        seen: Mapped[int | None]

    try:
        Account.__table__.create(db.engine)
        trig.sync.capture_triggers("install")
        _number(trig)
        with db.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO trig_account (id, name, seen) VALUES (1, 'a', 0)"
            )
        _number(trig)
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trig_account SET seen = 5")
        _number(trig)
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trig_account SET id = 2, seen = 6")
        _number(trig)
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE city SET name = 'x' WHERE false")
        assert _log(trig) == [
            ("trig_account", "[1]", "i", None),
            ("trig_account", "[1]", "d", None),
            ("trig_account", "[2]", "i", None),
        ]
        assert len(_versions(trig)) == 2
    finally:
        untrack(Account)
        Account.__table__.drop(db.engine)
        db.metadata.remove(Account.__table__)


def test_truncate_is_refused_unless_capture_is_off(trig: AppEnv, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's TRUNCATE trigger (MariaDB's fires none)")
    with trig.db.engine.connect() as connection:
        _city(connection, 1, "a")
        connection.commit()
        with pytest.raises(sa.exc.NotSupportedError, match="use DELETE"):
            connection.exec_driver_sql("TRUNCATE city")
        connection.rollback()
        connection.exec_driver_sql("SET LOCAL reflectsync.capture = 'off'")
        connection.exec_driver_sql("TRUNCATE city")
        connection.commit()
    assert _log(trig) == [("city", "[1]", "i", None)]


def test_install_status_remove_are_idempotent(trig: AppEnv) -> None:
    sync = trig.sync
    assert {t.state for t in sync.capture_triggers("status")} == {"installed"}
    sync.capture_triggers("install")  # again: an upgrade, nothing doubled
    with trig.db.engine.begin() as connection:
        _city(connection, 1, "a")
    assert _log(trig) == [("city", "[1]", "i", None)]
    sync.capture_triggers("remove")
    sync.capture_triggers("remove")
    assert {t.state for t in sync.capture_triggers("status")} == {"missing"}
    with trig.db.engine.begin() as connection:
        _city(connection, 2, "b")
    assert len(_log(trig)) == 1
    # without the triggers, the ORM path logs again
    trig.db.session.add(trig.models.City(id=3, name="c"))
    trig.db.session.commit()
    assert _log(trig)[-1] == ("city", "[3]", "i", None)


def test_cli(trig: AppEnv) -> None:
    runner = trig.app.test_cli_runner()
    result = runner.invoke(args=["reflectsync", "triggers", "status"])
    assert result.exit_code == 0, result.output
    assert "city" in result.output and "installed" in result.output
    result = runner.invoke(args=["reflectsync", "triggers", "remove"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["reflectsync", "triggers", "status"])
    assert "missing" in result.output and "installed" not in result.output
    for _ in range(2):
        result = runner.invoke(args=["reflectsync", "triggers", "install"])
        assert result.exit_code == 0, result.output
        assert "installed on" in result.output


def test_reflection_reports_no_change_for_the_triggers(
    make_app: AppFactory
) -> None:
    env = make_app(REFLECTSYNC_CAPTURE="triggers")
    with env.app.app_context():
        env.sync.reflect(force=True)
        env.sync.capture_triggers("install")
        assert env.sync.reflect() == []
        assert env.sync.reflect(force=True) == []
        env.sync.capture_triggers("remove")
        assert env.sync.reflect(force=True) == []


def test_trigger_capture_is_refused_on_other_backends() -> None:
    for name in ("postgresql", "mysql", "sqlite"):
        check_backend(name)
    with pytest.raises(ConfigurationError, match="MariaDB"):
        check_backend("oracle")


def test_an_unknown_capture_mode_is_refused(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="REFLECTSYNC_CAPTURE"):
        make_app(REFLECTSYNC_CAPTURE="trigger")


def test_routing_scopes_are_refused_with_triggers(trig: AppEnv) -> None:
    City = trig.models.City
    with pytest.raises(ConfigurationError, match="share tags"):
        trig.sync.scope(City, City.name, equals="region")
    trig.sync.scope(trig.models.Tag, read_only=True)  # not routed: fine


def test_raw_sql_reaches_a_node_and_a_push_is_logged_once(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with cluster(
        make_app,
        tmp_path,
        SECRET_KEY=SECRET_KEY,
        REFLECTSYNC_OPEN_REGISTRATION=True,
        REFLECTSYNC_CAPTURE="triggers",
    ) as net:
        env = net.server.env
        with env.app.app_context():
            env.sync.capture_triggers("install")
        node = net.node()
        raw = sa.create_engine(env.db.engine.url)
        try:
            with raw.begin() as connection:
                connection.exec_driver_sql(
                    "INSERT INTO city (id, name, population) VALUES "
                    "(10, 'Lima', 1), (11, 'Cusco', 2), (12, 'Puno', 3)"
                )
            node.synchronize()
            net.assert_converged()
            with raw.begin() as connection:
                connection.exec_driver_sql(
                    "UPDATE city SET population = 9 WHERE id = 11"
                )
                connection.exec_driver_sql("DELETE FROM city WHERE id = 12")
            node.synchronize()
            rows = net.assert_converged()["city"]
            assert [(r[0], r[2]) for r in rows] == [(10, 1), (11, 9)]
            # the node's own change, pushed: logged once, with its node
            with node.Session() as session:
                session.add(net.server.env.models.City(id=20, name="Node"))
                session.commit()
            node.synchronize()
            rows = net.assert_converged()["city"]
            assert (20, "Node") in [(r[0], r[1]) for r in rows]
            log = _log(env)
            assert log.count(("city", "[20]", "i", None)) == 1
            versions = env.db.metadata.tables["reflectsync_versions"]
            with env.db.engine.connect() as connection:
                pushed = connection.execute(
                    sa.select(sa.func.count()).where(versions.c.node_id.is_not(None))
                ).scalar()
            assert pushed == 1
        finally:
            raw.dispose()


def test_a_change_of_case_or_of_trailing_spaces_is_logged(trig: AppEnv) -> None:
    """Compared byte for byte, as Python compares (MariaDB's collations
    fold case and pad spaces)."""
    with trig.db.engine.begin() as connection:
        _city(connection, 1, "Lima")
    for name in ("LIMA", "LIMA "):
        with trig.db.engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE city SET name = '{name}'")
    assert _log(trig) == [("city", "[1]", "i", None)] + [
        ("city", "[1]", "u", '["name"]')
    ] * 2


def test_a_fixed_clock_never_numbers_a_version_before_it_committed(
    trig: AppEnv, backend: str
) -> None:
    """MariaDB's triggers tell statements apart by their start time: with
    the session's clock fixed (SET timestamp), a second transaction joins
    the first one's version, which then waits to be numbered until the
    second commits."""
    if backend != "mysql":
        pytest.skip("MariaDB's version per statement")
    engine = sa.create_engine(trig.db.engine.url, poolclass=sa.pool.NullPool)
    numbering = threading.Thread(
        target=number_versions, args=(trig.db.engine, _tables(trig))
    )
    try:
        with engine.connect() as connection:
            # as a replayed dump or binary log does; without foreign key
            # checks and with plain reads (READ COMMITTED), whose shared
            # locks on the version row would hide a missing lock of the
            # trigger's own
            connection.exec_driver_sql(
                "SET timestamp = 1000000, foreign_key_checks = 0, "
                "SESSION tx_isolation = 'READ-COMMITTED'"
            )
            _city(connection, 1, "a")
            connection.commit()
            _city(connection, 2, "b")
            numbering.start()
            time.sleep(0.5)
            assert numbering.is_alive()  # waits for this transaction
            assert [n for _, n in _versions(trig)] == [None]
            connection.commit()
            numbering.join(10)
            # numbered after the commit, with both changes in it
            assert [n for _, n in _versions(trig)] == [1]
            assert len(_log(trig)) == 2
            _city(connection, 3, "c")  # the version is numbered: a new one
            connection.commit()
    finally:
        if numbering.ident is not None:
            numbering.join(10)
        engine.dispose()
    number_versions(trig.db.engine, _tables(trig))
    assert [n for _, n in _versions(trig)] == [1, 2]
