"""Database-level capture (``REFLECTSYNC_CAPTURE = "triggers"``, PostgreSQL):
raw SQL from another connection is logged exactly as the ORM path logs the
same change, once, in the change's transaction; versions are numbered after
commit as before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import track
from flask_reflectsync.errors import ConfigurationError
from flask_reflectsync.tracking.numbering import number_versions
from flask_reflectsync.tracking.registry import untrack

from .conftest import AppEnv, AppFactory
from .nodes import cluster

SECRET_KEY = "trigger-capture-tests"


@pytest.fixture
def postgresql(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("trigger capture is PostgreSQL-only for now")


@pytest.fixture
def trig(make_app: AppFactory, postgresql: None) -> Iterator[AppEnv]:
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


def _orm_changes(env: AppEnv) -> None:
    m, s = env.models, env.db.session
    s.add(m.City(id=1, name="Lima", population=5))
    s.add(m.Translation(city_id=1, lang="fr", text="Lima"))
    s.add(m.Translation(city_id=1, lang="é日\U0001f600\x7f", text="x"))
    s.add(m.Tag(id=TAG, label="a"))
    s.commit()
    city = s.get(m.City, 1)
    city.name, city.population = "Lima!", 6
    s.commit()
    city.name = "Lima!"  # no-op
    s.commit()
    s.get(m.Tag, TAG).label = "b"
    s.commit()
    s.delete(s.get(m.Translation, (1, "fr")))
    s.commit()


# Transaction by transaction, as _orm_changes commits them.
_RAW = [
    [
        "INSERT INTO city (id, name, population) VALUES (1, 'Lima', 5)",
        "INSERT INTO translation (city_id, lang, text) VALUES (1, 'fr', 'Lima'),"
        " (1, U&'\\00E9\\65E5\\+01F600\\007F', 'x')",
        f"INSERT INTO tag (id, label) VALUES ('{TAG}', 'a')",
    ],
    ["UPDATE city SET name = 'Lima!', population = 6 WHERE id = 1"],
    ["UPDATE city SET name = 'Lima!' WHERE id = 1"],
    [f"UPDATE tag SET label = 'b' WHERE id = '{TAG}'"],
    ["DELETE FROM translation WHERE lang = 'fr'"],
]


def _raw_changes(env: AppEnv) -> None:
    # A connection of its own, outside the ORM: as psql would.
    engine = sa.create_engine(env.db.engine.url)
    try:
        with engine.connect() as connection:
            for transaction in _RAW:
                for statement in transaction:
                    connection.exec_driver_sql(statement)
                connection.commit()
    finally:
        engine.dispose()


def test_raw_sql_is_logged_as_the_orm_logs_the_same_change(
    make_app: AppFactory, postgresql: None
) -> None:
    orm = make_app()
    with orm.app.app_context():
        _orm_changes(orm)
        expected = _log(orm)
        orm.db.session.remove()
    assert ("city", "[1]", "u", '["name","population"]') in expected
    assert ("translation", '[1,"\\u00e9\\u65e5\\ud83d\\ude00\\u007f"]', "i", None) in (
        expected
    )
    trig = make_app(REFLECTSYNC_CAPTURE="triggers")
    with trig.app.app_context():
        trig.sync.capture_triggers("install")
        _raw_changes(trig)
        assert _log(trig) == expected
        # one version per committed change, the no-op's none, unnumbered
        # until the numbering after commit
        assert [n for _, n in _versions(trig)] == [None] * 4
        number_versions(trig.db.engine, _tables(trig))
        assert [n for _, n in _versions(trig)] == [1, 2, 3, 4]


def _tables(env: AppEnv) -> Any:
    return env.sync.get_state(env.app).tables


def test_orm_writes_are_logged_once_with_triggers_on(
    make_app: AppFactory, postgresql: None
) -> None:
    orm = make_app()
    with orm.app.app_context():
        _orm_changes(orm)
        expected = _log(orm)
        orm.db.session.remove()
    trig = make_app(REFLECTSYNC_CAPTURE="triggers")
    with trig.app.app_context():
        trig.sync.capture_triggers("install")
        _orm_changes(trig)
        assert _log(trig) == expected
        # bulk ORM and Core statements through the session: once too
        s, City = trig.db.session, trig.models.City
        s.execute(sa.update(City).where(City.id == 1).values(population=7))
        s.execute(sa.insert(City.__table__), [{"id": 2, "name": "Cusco"}])
        s.commit()
        assert _log(trig)[len(expected) :] == [
            ("city", "[1]", "u", '["population"]'),
            ("city", "[2]", "i", None),
        ]
        trig.db.session.remove()


def _city(connection: sa.Connection, key: int, name: str) -> None:
    connection.exec_driver_sql(
        f"INSERT INTO city (id, name, population) VALUES ({key}, '{name}', 0)"
    )


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
        with db.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO trig_account (id, name, seen) VALUES (1, 'a', 0)"
            )
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trig_account SET seen = 5")
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE trig_account SET id = 2, seen = 6")
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


def test_truncate_is_refused_unless_capture_is_off(trig: AppEnv) -> None:
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
    make_app: AppFactory, postgresql: None
) -> None:
    env = make_app(REFLECTSYNC_CAPTURE="triggers")
    with env.app.app_context():
        env.sync.reflect(force=True)
        env.sync.capture_triggers("install")
        assert env.sync.reflect() == []
        assert env.sync.reflect(force=True) == []
        env.sync.capture_triggers("remove")
        assert env.sync.reflect(force=True) == []


def test_trigger_capture_is_postgresql_only(make_app: AppFactory, backend: str) -> None:
    if backend == "postgresql":
        pytest.skip("refused on the other backends only")
    with pytest.raises(ConfigurationError, match="PostgreSQL-only"):
        make_app(REFLECTSYNC_CAPTURE="triggers")


def test_an_unknown_capture_mode_is_refused(make_app: AppFactory) -> None:
    with pytest.raises(ConfigurationError, match="REFLECTSYNC_CAPTURE"):
        make_app(REFLECTSYNC_CAPTURE="trigger")


def test_routing_scopes_are_refused_with_triggers(trig: AppEnv) -> None:
    City = trig.models.City
    with pytest.raises(ConfigurationError, match="share tags"):
        trig.sync.scope(City, City.name, equals="region")
    trig.sync.scope(trig.models.Tag, read_only=True)  # not routed: fine


def test_raw_sql_reaches_a_node_and_a_push_is_logged_once(
    make_app: AppFactory, tmp_path: Path, postgresql: None
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
