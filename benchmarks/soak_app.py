"""The server app of the soak (``benchmarks/soak.py``), served by gunicorn.

    SOAK_DATABASE_URL=postgresql+psycopg://... gunicorn -w 4 'soak_app:create_app()'

Two tracked models with integer keys: a survey (the parent, with a unique
``code``) and its answers (the children, a foreign key to the survey).
Every text a writer commits carries a tag of its own, so the soak can
account for each change (see :mod:`soak`). The factory never creates
tables: the soak creates them once before it starts the workers, since
``create_all`` in each of several workers races on PostgreSQL.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import ReflectSync, track

db = SQLAlchemy()
sync = ReflectSync()


@track
class Survey(db.Model):  # type: ignore[name-defined,misc]
    """A parent row; ``title`` is ``"<row tag>"`` or ``"<row tag>~<edit tag>"``."""

    __tablename__ = "soak_survey"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(60), unique=True)
    title: Mapped[str] = mapped_column(sa.String(200))


@track
class Answer(db.Model):  # type: ignore[name-defined,misc]
    """A child row; ``note`` is tagged like :attr:`Survey.title`."""

    __tablename__ = "soak_answer"
    id: Mapped[int] = mapped_column(primary_key=True)
    survey_id: Mapped[int] = mapped_column(sa.ForeignKey("soak_survey.id"))
    value: Mapped[int] = mapped_column(default=0)
    note: Mapped[str] = mapped_column(sa.String(200))


MODELS: list[Any] = [Survey, Answer]


def create_app(database_url: str | None = None) -> Flask:
    """The soak's server app on ``database_url`` (default: the
    ``SOAK_DATABASE_URL`` environment variable)."""
    app = Flask("soak_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url or os.environ["SOAK_DATABASE_URL"],
        SECRET_KEY=os.environ.get("SOAK_SECRET_KEY", "soak-secret"),
        REFLECTSYNC_OPEN_REGISTRATION=True,
        # benchmarks/watch.py registers hundreds of nodes from one address
        REFLECTSYNC_REGISTRATIONS_PER_MINUTE=int(
            os.environ.get("SOAK_REGISTRATIONS_PER_MINUTE", "120")
        ),
    )
    db.init_app(app)
    sync.init_app(app, db)
    return app
