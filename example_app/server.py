"""The example server: survey sites and the observations made at them.

Run it with ``flask --app example_app.server run``; by default it keeps its
data in ``survey.db`` (SQLite) in the current directory.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_reflectsync import ReflectSync, track


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
sync = ReflectSync()


@track
class Site(db.Model):  # type: ignore[name-defined,misc]
    """A place surveyed in the field."""

    __tablename__ = "site"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    observations: Mapped[list[Observation]] = relationship(
        back_populates="site", cascade="all, delete-orphan"
    )


@track
class Observation(db.Model):  # type: ignore[name-defined,misc]
    """A count of one species at a site."""

    __tablename__ = "observation"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id"))
    species: Mapped[str] = mapped_column(sa.String(100))
    count: Mapped[int] = mapped_column(default=0)
    seen_on: Mapped[datetime.date] = mapped_column(default=datetime.date.today)
    site: Mapped[Site] = relationship(back_populates="observations")


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
        db.create_all()
    return app
