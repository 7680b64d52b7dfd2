"""Bulk statements run through ``session.execute`` bypass flush events; they are
captured with the keys they touched, or refused with a clear error."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flask_reflectsync.errors import TrackingError

from .conftest import AppEnv
from .oplog import commands, logged


def _cities(env: AppEnv, *names: str) -> list[int]:
    City = env.models.City
    cities = [City(name=name) for name in names]
    env.db.session.add_all(cities)
    env.db.session.commit()
    return [c.id for c in cities]


def test_bulk_update_logs_exactly_the_matched_rows(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    lima, quito, _ = _cities(env, "Lima", "Quito", "Cusco")

    result = db.session.execute(
        sa.update(City).where(City.name.in_(["Lima", "Quito"])).values(population=7)
    )
    db.session.commit()

    assert result.rowcount == 2  # the caller's result is untouched
    assert sorted(commands(db)[3:]) == [
        ("city", [lima], "u"),
        ("city", [quito], "u"),
    ]
    assert {n for n, *_ in logged(db)[3:]} == {2}
    populations = dict(db.session.execute(sa.select(City.name, City.population)).all())
    assert populations == {"Lima": 7, "Quito": 7, "Cusco": 0}


def test_bulk_delete_logs_deletes(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    lima, _ = _cities(env, "Lima", "Quito")
    db.session.execute(sa.delete(City).where(City.name == "Lima"))
    db.session.commit()
    assert commands(db)[2:] == [("city", [lima], "d")]
    assert db.session.scalars(sa.select(City.name)).all() == ["Quito"]


def test_bulk_statement_matching_nothing_logs_nothing(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    _cities(env, "Lima")
    db.session.execute(sa.delete(City).where(City.name == "nowhere"))
    db.session.commit()
    assert len(logged(db)) == 1


def test_bulk_update_sees_pending_objects(env: AppEnv) -> None:
    # Autoflush runs before the keys are read, as for the statement itself.
    db, City = env.db, env.models.City
    pending = City(name="Lima")
    db.session.add(pending)
    db.session.execute(sa.update(City).where(City.name == "Lima").values(population=1))
    db.session.commit()
    assert commands(db) == [("city", [pending.id], "i"), ("city", [pending.id], "u")]


def test_bulk_update_by_primary_key(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    lima, quito = _cities(env, "Lima", "Quito")
    db.session.execute(
        sa.update(City),
        [{"id": lima, "population": 1}, {"id": quito, "population": 2}],
    )
    db.session.commit()
    assert commands(db)[2:] == [("city", [lima], "u"), ("city", [quito], "u")]


def test_bulk_insert_with_keys(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    db.session.execute(
        sa.insert(City), [{"id": 10, "name": "a"}, {"id": 11, "name": "b"}]
    )
    db.session.commit()
    assert commands(db) == [("city", [10], "i"), ("city", [11], "i")]


def test_bulk_insert_with_generated_keys(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    db.session.execute(sa.insert(City), [{"name": "a"}, {"name": "b"}])
    db.session.commit()
    ids = db.session.scalars(sa.select(City.id).order_by(City.id)).all()
    assert len(ids) == 2
    assert sorted(commands(db)) == [("city", [i], "i") for i in ids]


def test_core_table_statement_through_the_session_is_captured(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    (lima,) = _cities(env, "Lima")
    table = City.__table__
    db.session.execute(table.update().where(table.c.id == lima).values(population=3))
    db.session.commit()
    assert commands(db)[1:] == [("city", [lima], "u")]


def test_bulk_update_of_the_primary_key_is_refused(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    _cities(env, "Lima")
    with pytest.raises(TrackingError, match="primary key"):
        db.session.execute(sa.update(City).values(id=City.id + 100))
    db.session.rollback()
    assert db.session.scalars(sa.select(City.id)).all() == [1]


def test_bulk_statements_on_untracked_models_are_left_alone(env: AppEnv) -> None:
    db, Note = env.db, env.models.Note
    db.session.execute(sa.insert(Note), [{"name": "a"}])
    db.session.execute(sa.update(Note).values(population=1))
    db.session.execute(sa.delete(Note))
    db.session.commit()
    assert logged(db) == []


def test_bulk_changes_roll_back_with_their_operations(env: AppEnv) -> None:
    db, City = env.db, env.models.City
    _cities(env, "Lima")
    db.session.execute(sa.delete(City))
    db.session.rollback()
    assert len(logged(db)) == 1
    assert db.session.scalars(sa.select(City.name)).all() == ["Lima"]


def test_bulk_update_with_uuid_and_composite_keys(env: AppEnv) -> None:
    db, m = env.db, env.models
    red = m.Tag(label="red")
    db.session.add_all(
        [
            red,
            m.Tag(label="blue"),
            m.Translation(city_id=1, lang="fr", text="a"),
            m.Translation(city_id=1, lang="es", text="b"),
        ]
    )
    db.session.commit()
    db.session.execute(sa.update(m.Tag).where(m.Tag.label == "red").values(label="r"))
    db.session.execute(sa.delete(m.Translation).where(m.Translation.lang == "es"))
    db.session.commit()

    assert commands(db)[4:] == [
        ("tag", [str(red.id)], "u"),
        ("translation", [1, "es"], "d"),
    ]
    assert db.session.scalars(sa.select(m.Tag.label).order_by(m.Tag.label)).all() == [
        "blue",
        "r",
    ]
    assert db.session.scalars(sa.select(m.Translation.lang)).all() == ["fr"]


def test_upsert_is_refused(env: AppEnv, backend: str) -> None:
    db, City = env.db, env.models.City
    if backend == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif backend == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:
        from sqlalchemy.dialects.mysql import insert  # type: ignore[assignment]
    statement = insert(City).values(id=1, name="Lima")
    if backend == "mysql":
        statement = statement.on_duplicate_key_update(name="Lima")  # type: ignore[attr-defined]
    else:
        statement = statement.on_conflict_do_nothing()  # type: ignore[attr-defined]
    with pytest.raises(TrackingError, match="upsert"):
        db.session.execute(statement)
    db.session.rollback()
    assert db.session.scalars(sa.select(City)).all() == []
    assert logged(db) == []
