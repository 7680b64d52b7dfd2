"""The example server: survey sites and the observations made at them.

Run it from the checkout's root with ``flask --app example_app.server run``;
by default it keeps its data in ``instance/survey.db`` (SQLite): Flask-SQLAlchemy
puts a relative SQLite path in the app's instance folder, ``instance/`` beside
``example_app/``. ``SURVEY_DATABASE_URL`` chooses another database.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync import ReflectSync

# The models live in their own module, free of Flask, so that the tablets
# (example_app.node, or `reflectsync-node --models example_app.models`)
# import them without building this app.
from .models import Base, Observation, Site

__all__ = ["Base", "Observation", "Site", "create_app", "db", "sync"]

db = SQLAlchemy(model_class=Base)
sync = ReflectSync()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the survey server app.

    :param config: settings that override the defaults, e.g.
        ``{"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://..."}``.
    """
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "SURVEY_DATABASE_URL", "sqlite:///survey.db"
    )
    # Node secrets derive from the secret key; tablets register with the token.
    # Both defaults are for trying the example only: set your own.
    app.config["SECRET_KEY"] = os.environ.get("SURVEY_SECRET_KEY", "dev only")
    app.config["REFLECTSYNC_REGISTRATION_TOKEN"] = os.environ.get(
        "SURVEY_REGISTRATION_TOKEN", "survey"
    )
    app.config.update(config or {})
    db.init_app(app)
    sync.init_app(app, db)
    with app.app_context():
        _create_tables()
    return app


def _create_tables(tries: int = 5) -> None:
    """``db.create_all()``, safe when several processes start at once (say
    gunicorn's workers): two creating one table race, and the loser's error
    just means the table now exists, so try again. A real app would rather
    create its tables once, with its migrations, before starting workers."""
    for attempt in range(1, tries + 1):
        try:
            db.create_all()
            return
        except sa.exc.DatabaseError:
            db.session.rollback()
            if attempt == tries:
                raise
            time.sleep(0.05 * attempt)
