"""Capture cases that mutation testing showed unguarded (issue 12): nested
savepoints several levels deep, and objects added by the app's own
``before_commit`` listener."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event

from .conftest import AppEnv
from .oplog import logged, version_numbers


def test_outer_savepoint_rollback_after_inner_release_drops_the_inner_changes(
    env: AppEnv,
) -> None:
    # The version row is created inside the inner savepoint. Releasing the
    # inner one hands its work to the outer one; rolling the outer one back
    # removes the row, so the capture must walk up from the inner savepoint
    # to see that it is gone and start a new version for later changes.
    db, City = env.db, env.models.City
    outer = db.session.begin_nested()
    with db.session.begin_nested():
        db.session.add(City(name="discarded"))
        db.session.flush()
    outer.rollback()
    later = City(name="later")
    db.session.add(later)
    db.session.commit()

    assert logged(db) == [(1, "city", [later.id], "i")]
    assert version_numbers(db) == [1]
    assert db.session.scalars(sa.select(City.name)).all() == ["later"]


def test_three_levels_deep_then_outer_rollback_keeps_the_changes_before_it(
    env: AppEnv,
) -> None:
    db, City = env.db, env.models.City
    kept = City(name="kept")
    db.session.add(kept)
    db.session.flush()  # the version row belongs to the root transaction
    outer = db.session.begin_nested()
    with db.session.begin_nested():
        with db.session.begin_nested():
            db.session.add(City(name="discarded"))
            db.session.flush()
    outer.rollback()
    db.session.commit()

    assert logged(db) == [(1, "city", [kept.id], "i")]
    assert db.session.scalars(sa.select(City.name)).all() == ["kept"]


def test_deep_first_change_rolled_back_by_the_outermost_savepoint(
    env: AppEnv,
) -> None:
    db, City = env.db, env.models.City
    outer = db.session.begin_nested()
    with db.session.begin_nested():
        with db.session.begin_nested():
            db.session.add(City(name="discarded"))
            db.session.flush()
    outer.rollback()
    later = City(name="later")
    db.session.add(later)
    db.session.commit()

    assert logged(db) == [(1, "city", [later.id], "i")]


def test_objects_added_by_the_apps_before_commit_listener_get_a_version(
    env: AppEnv,
) -> None:
    # The app's listener runs after the extension's (registered later), so
    # the extension's own numbering has already run when these objects are
    # flushed by the commit's final flush.
    db, City, Country = env.db, env.models.City, env.models.Country
    added = []

    def audit(session: sa.orm.Session) -> None:
        if not added:
            country = Country(name="added at commit")
            session.add(country)
            added.append(country)

    session_class = db.session.session_factory.class_
    event.listen(session_class, "before_commit", audit)
    try:
        db.session.commit()  # nothing tracked changed before the listener ran
    finally:
        event.remove(session_class, "before_commit", audit)

    assert logged(db) == [(1, "country", [added[0].id], "i")]
    assert version_numbers(db) == [1]
    # The next transaction is numbered after it.
    db.session.add(City(name="next"))
    db.session.commit()
    assert version_numbers(db) == [1, 2]


def test_before_commit_additions_join_the_transactions_version(env: AppEnv) -> None:
    db, City, Country = env.db, env.models.City, env.models.Country
    added = []

    def audit(session: sa.orm.Session) -> None:
        if not added:
            country = Country(name="audit")
            session.add(country)
            added.append(country)

    session_class = db.session.session_factory.class_
    event.listen(session_class, "before_commit", audit)
    try:
        city = City(name="Lima")
        db.session.add(city)
        db.session.commit()
    finally:
        event.remove(session_class, "before_commit", audit)

    assert logged(db) == [
        (1, "city", [city.id], "i"),
        (1, "country", [added[0].id], "i"),
    ]
