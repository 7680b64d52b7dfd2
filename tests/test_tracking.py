"""Every insert, update and delete of a tracked row is logged, in the change's
transaction, and nothing else is."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync.errors import ConfigurationError
from flask_reflectsync.sqlite import use_immediate_transactions
from flask_reflectsync.tracking import start_tracking, stop_tracking

from .conftest import AppEnv, Reading
from .oplog import commands, logged, version_numbers


def test_insert_update_delete_are_logged_with_key_and_command(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    city = City(name="Lima")
    db.session.add(city)
    db.session.commit()
    city.population = 10
    db.session.commit()
    db.session.delete(city)
    db.session.commit()

    assert logged(db) == [
        (1, "city", [city.id], "i"),
        (2, "city", [city.id], "u"),
        (3, "city", [city.id], "d"),
    ]


def test_update_that_changes_nothing_logs_nothing(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    city = City(name="Lima", population=5)
    db.session.add(city)
    db.session.commit()

    city.name = "Lima"
    city.population = 5
    assert city in db.session.dirty  # the ORM saw attribute sets...
    db.session.commit()

    assert commands(db) == [("city", [city.id], "i")]  # ...but nothing changed
    assert version_numbers(db) == [1]


def test_untracked_model_logs_nothing(env: AppEnv) -> None:
    db, Note = env.db, env.models.Note
    note = Note(name="x")
    db.session.add(note)
    db.session.commit()
    note.population = 3
    db.session.commit()
    db.session.delete(note)
    db.session.commit()

    assert logged(db) == []
    assert version_numbers(db) == []


def test_uuid_and_composite_keys(env: AppEnv) -> None:
    db, m = env.db, env.models
    tag_id = uuid.uuid4()
    db.session.add(m.Tag(id=tag_id, label="red"))
    db.session.add(m.Translation(city_id=4, lang="fr", text="Lima"))
    db.session.commit()

    assert sorted(commands(db)) == [
        ("tag", [str(tag_id)], "i"),
        ("translation", [4, "fr"], "i"),
    ]


def test_plain_declarative_model_is_tracked(env: AppEnv) -> None:
    db = env.db
    reading = Reading(value=1.5)
    db.session.add(reading)
    db.session.commit()
    reading.value = 2.5
    db.session.commit()

    assert commands(db) == [
        ("plain_reading", [reading.id], "i"),
        ("plain_reading", [reading.id], "u"),
    ]


def test_primary_key_change_logs_delete_and_insert(env: AppEnv) -> None:
    db, Translation = env.db, env.models.Translation
    row = Translation(city_id=1, lang="fr", text="x")
    db.session.add(row)
    db.session.commit()
    row.lang = "es"
    db.session.commit()

    assert commands(db) == [
        ("translation", [1, "fr"], "i"),
        ("translation", [1, "fr"], "d"),
        ("translation", [1, "es"], "i"),
    ]


def test_relationship_change_logs_the_child_update(env: AppEnv) -> None:
    db, m = env.db, env.models
    peru, chile = m.Country(name="Peru"), m.Country(name="Chile")
    city = m.City(name="Arica", country=peru)
    db.session.add_all([peru, chile, city])
    db.session.commit()
    city.country = chile
    db.session.commit()

    assert commands(db)[-1] == ("city", [city.id], "u")
    assert logged(db)[-1][0] == 2


def test_rollback_leaves_no_operation(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    db.session.add(City(name="Lima"))
    db.session.flush()
    db.session.rollback()

    assert logged(db) == []
    assert version_numbers(db) == []
    # The session is usable afterwards and logs normally.
    db.session.add(City(name="Quito"))
    db.session.commit()
    assert version_numbers(db) == [1]


def test_savepoint_rollback_removes_only_its_operations(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    kept = City(name="kept")
    db.session.add(kept)
    db.session.flush()
    with pytest.raises(RuntimeError):
        with db.session.begin_nested():
            db.session.add(City(name="discarded"))
            db.session.flush()
            raise RuntimeError("undo the savepoint")
    db.session.commit()

    assert logged(db) == [(1, "city", [kept.id], "i")]
    names = db.session.scalars(sa.select(City.name)).all()
    assert names == ["kept"]


def test_savepoint_rollback_of_the_first_change_then_more_changes(
    env: AppEnv,
) -> None:
    # The version row is created inside the savepoint and rolled back with it;
    # later changes in the same transaction must get a new one.
    db, City = env.db, env.models.City
    with db.session.begin_nested() as savepoint:
        db.session.add(City(name="discarded"))
        db.session.flush()
        savepoint.rollback()
    later = City(name="later")
    db.session.add(later)
    db.session.commit()

    assert logged(db) == [(1, "city", [later.id], "i")]


def test_released_savepoint_keeps_its_operations(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    with db.session.begin_nested():
        inner = City(name="inner")
        db.session.add(inner)
    outer = City(name="outer")
    db.session.add(outer)
    db.session.commit()

    assert logged(db) == [
        (1, "city", [inner.id], "i"),
        (1, "city", [outer.id], "i"),
    ]


def test_one_version_per_transaction_however_many_flushes(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    a, b = City(name="a"), City(name="b")
    db.session.add(a)
    db.session.flush()
    db.session.add(b)
    db.session.flush()
    a.population = 2
    db.session.commit()
    db.session.add(City(name="c"))
    db.session.commit()

    numbers = [number for number, *_ in logged(db)]
    assert numbers == [1, 1, 1, 2]
    assert version_numbers(db) == [1, 2]


def test_transaction_without_tracked_changes_gets_no_version(env: AppEnv) -> None:
    db, m = env.db, env.models
    db.session.add(m.Note(name="n"))
    db.session.commit()
    db.session.add(m.City(name="c"))
    db.session.commit()
    assert version_numbers(db) == [1]


def test_changes_flushed_by_commit_itself_are_numbered(env: AppEnv) -> None:
    # No explicit flush: the objects are only written by commit().
    db, City = env.db, env.models.City
    db.session.add(City(name="late"))
    db.session.commit()
    assert [number for number, *_ in logged(db)] == [1]


def test_other_sessionmakers_are_not_tracked(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    other = sa.orm.sessionmaker(bind=db.engine)
    with other() as session:
        session.add(City(name="invisible"))
        session.commit()
    assert logged(db) == []


def test_listening_on_the_global_session_class_is_refused() -> None:
    from flask_reflectsync.tracking import OperationLog, define_tables, start_tracking

    log = OperationLog(define_tables(sa.MetaData()))
    with pytest.raises(ConfigurationError, match="global Session"):
        start_tracking(sa.orm.Session, log)


def test_session_bound_to_an_outer_connection(env: AppEnv) -> None:
    # The usual test-suite pattern: a session joined to a connection's
    # transaction, rolled back at the end.
    db, City = env.db, env.models.City
    maker = sa.orm.sessionmaker()
    # pysqlite's own transaction handling breaks a SAVEPOINT that comes
    # first in a transaction; this also fixes that.
    use_immediate_transactions(db.engine)
    start_tracking(maker, env.app.extensions["reflectsync"].log)
    try:
        with db.engine.connect() as connection:
            outer = connection.begin()
            with maker(
                bind=connection, join_transaction_mode="create_savepoint"
            ) as session:
                session.add(City(name="inside"))
                session.commit()
                ops = db.metadata.tables["reflectsync_operations"]
                assert (
                    connection.execute(
                        sa.select(sa.func.count()).select_from(ops)
                    ).scalar()
                    == 1
                )
                # Numbered inside the outer transaction, which never
                # commits: a numberer of its own could not see the version.
                versions = db.metadata.tables["reflectsync_versions"]
                assert connection.execute(
                    sa.select(versions.c.number)
                ).scalars().all() == [1]
            outer.rollback()
    finally:
        stop_tracking(maker)
    assert logged(db) == []


def test_string_keys_with_quotes_backslashes_and_unicode(env: AppEnv) -> None:
    db, Translation = env.db, env.models.Translation
    awkward = ["it's", 'a"b', "c\\d", "été", "日本"]
    db.session.add_all(
        [Translation(city_id=n, lang=lang, text="x") for n, lang in enumerate(awkward)]
    )
    db.session.commit()
    assert sorted(key for _, key, _ in commands(db)) == sorted(
        [n, lang] for n, lang in enumerate(awkward)
    )


def _changed(db: Any) -> list[tuple[str, Any]]:
    ops = db.metadata.tables["reflectsync_operations"]
    with db.engine.connect() as connection:
        found = connection.execute(
            sa.select(ops.c.command, ops.c.changed_columns).order_by(ops.c.id)
        ).all()
    return [(c, None if w is None else json.loads(w)) for c, w in found]


def test_an_update_logs_the_columns_it_changed(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    city = City(name="Lima", population=5)
    db.session.add(city)
    db.session.commit()
    city.population = 6
    city.name = "Lima"  # set to the value it had: not a change
    db.session.commit()
    db.session.expire(city)
    city.name = "Cusco"  # on an expired object: compared with the database
    db.session.commit()
    db.session.execute(
        sa.update(City).where(City.id == city.id).values(population=7, name="Puno")
    )
    db.session.execute(sa.update(City), [{"id": city.id, "population": 8}])
    db.session.commit()
    db.session.delete(city)
    db.session.commit()
    assert _changed(db) == [
        ("i", None),
        ("u", ["population"]),
        ("u", ["name"]),
        ("u", ["name", "population"]),
        ("u", ["population"]),
        ("d", None),
    ]
