"""``REFLECTSYNC_TRACK_CHANGES`` is a setting of each app, not of the process.

Apps built by one factory share the module's ``db`` (and so its session
class); an app that turned tracking off must not log because another app in
the process tracks, whichever was made first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync import ReflectSync

from .conftest import Models, define_models
from .oplog import commands


@pytest.fixture
def shared(database_url: str) -> Iterator[tuple[SQLAlchemy, Models]]:
    """One ``db`` and its models, as a module of a real app would hold them."""
    db = SQLAlchemy()
    models = define_models(db)
    yield db, models


def _app(db: SQLAlchemy, database_url: str, name: str, **config: object) -> Flask:
    app = Flask(name)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, **config)
    db.init_app(app)
    ReflectSync(app, db)
    return app


@pytest.mark.parametrize("first", ["tracking", "not-tracking"])
def test_an_app_with_tracking_off_logs_nothing(
    shared: tuple[SQLAlchemy, Models], database_url: str, first: str
) -> None:
    db, models = shared
    made = {}
    for kind in (first, "tracking" if first != "tracking" else "not-tracking"):
        made[kind] = _app(
            db,
            database_url,
            f"app_{kind}",
            REFLECTSYNC_TRACK_CHANGES=kind == "tracking",
        )
    on, off = made["tracking"], made["not-tracking"]
    with on.app_context():
        db.drop_all()
        db.create_all()
    try:
        with off.app_context():
            db.session.add(models.Country(id=1, name="Peru"))
            db.session.commit()
            db.session.get(models.Country, 1).name = "Perú"
            db.session.commit()
            assert commands(db) == []
        with on.app_context():
            db.session.add(models.Country(id=2, name="Chile"))
            db.session.commit()
            assert commands(db) == [("country", [2], "i")]
        with off.app_context():
            db.session.delete(db.session.get(models.Country, 2))
            db.session.commit()
            assert commands(db) == [("country", [2], "i")]
    finally:
        with on.app_context():
            db.session.remove()
            db.drop_all()
        for app in (on, off):
            with app.app_context():
                db.engine.dispose()
