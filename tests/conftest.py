"""Shared fixtures.

Tests run on SQLite (a fresh file per test) unless
``REFLECTSYNC_TEST_DATABASE_URL`` names another database, for example
``postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_test`` or
``mysql+pymysql://root@127.0.0.1:3306/reflectsync_test``. A database that was
named but cannot be reached stops the run with an error; it never skips.
Under pytest-xdist (``-n``), each worker uses a database of its own beside
the named one (``reflectsync_test_gw0``, ...), dropped and created afresh.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_reflectsync import ReflectSync, signals, track
from flask_reflectsync.client import Conflict

if TYPE_CHECKING:
    from .nodes import Cluster

#: The database named by the environment; under pytest-xdist each worker
#: uses one of its own beside it (see :func:`_worker_database`).
NAMED_URL = os.environ.get("REFLECTSYNC_TEST_DATABASE_URL") or None
SERVER_URL = NAMED_URL


def _worker_database(url: str, worker: str) -> str:
    """A fresh database ``<name>_<worker>`` on the server of ``url`` (dropped
    and created again), for one pytest-xdist worker: the tests of one worker
    create and drop their tables without meeting another's."""
    parsed = sa.make_url(url)
    name = f"{parsed.database}_{worker}"
    backend = parsed.get_backend_name()
    admin = parsed.set(database="postgres" if backend == "postgresql" else None)
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    quoted = engine.dialect.identifier_preparer.quote_identifier(name)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted}"))
            connection.execute(sa.text(f"CREATE DATABASE {quoted}"))
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session", autouse=True)
def _reachable_database() -> None:
    global SERVER_URL
    if NAMED_URL is None:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    try:
        SERVER_URL = _worker_database(NAMED_URL, worker) if worker else NAMED_URL
        engine = sa.create_engine(SERVER_URL)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:  # pragma: no cover - the point is to fail loudly
        pytest.exit(
            f"REFLECTSYNC_TEST_DATABASE_URL={NAMED_URL} cannot be reached"
            f"{f' (worker {worker})' if worker else ''}: {error}",
            returncode=1,
        )


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return SERVER_URL or f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def backend(database_url: str) -> str:
    """``sqlite``, ``postgresql`` or ``mysql``."""
    return sa.make_url(database_url).get_backend_name()


class PlainBase(DeclarativeBase):
    """A plain SQLAlchemy declarative base, not Flask-SQLAlchemy's."""


@track
class Reading(PlainBase):
    """A tracked model on plain declarative, not db.Model."""

    __tablename__ = "plain_reading"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[float]


@dataclass
class Models:
    """The models of one test app, defined on its own ``db``."""

    Country: Any
    City: Any
    Note: Any
    Tag: Any
    Translation: Any


def define_models(db: SQLAlchemy) -> Models:
    @track
    class Country(db.Model):  # type: ignore[name-defined]
        __tablename__ = "country"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100))
        cities: Mapped[list[City]] = relationship(back_populates="country")

    @track
    class City(db.Model):  # type: ignore[name-defined]
        __tablename__ = "city"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100))
        population: Mapped[int] = mapped_column(default=0)
        country_id: Mapped[int | None] = mapped_column(sa.ForeignKey("country.id"))
        country: Mapped[Country | None] = relationship(back_populates="cities")

    class Note(db.Model):  # type: ignore[name-defined]
        """Same shape as City, not tracked."""

        __tablename__ = "note"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100))
        population: Mapped[int] = mapped_column(default=0)

    @track
    class Tag(db.Model):  # type: ignore[name-defined]
        __tablename__ = "tag"
        id: Mapped[uuid.UUID] = mapped_column(
            sa.Uuid, primary_key=True, default=uuid.uuid4
        )
        label: Mapped[str] = mapped_column(sa.String(50))

    @track
    class Translation(db.Model):  # type: ignore[name-defined]
        __tablename__ = "translation"
        city_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        lang: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(100))

    return Models(Country, City, Note, Tag, Translation)


@dataclass
class AppEnv:
    app: Flask
    db: SQLAlchemy
    sync: ReflectSync
    models: Models


AppFactory = Callable[..., AppEnv]


@pytest.fixture
def make_app(database_url: str) -> Iterator[AppFactory]:
    """Build an app with its own ``db``, models and extension; tables are
    created fresh and dropped afterwards."""
    built: list[AppEnv] = []

    def factory(**config: Any) -> AppEnv:
        app = Flask(f"test_app_{len(built)}")
        app.config["SQLALCHEMY_DATABASE_URI"] = database_url
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = (
            {"pool_size": 10} if (not database_url.startswith("sqlite")) else {}
        )
        app.config.update(config)
        db = SQLAlchemy()
        db.init_app(app)
        models = define_models(db)
        sync = ReflectSync()
        sync.init_app(app, db)
        with app.app_context():
            _drop_everything(db)
            db.create_all()
            PlainBase.metadata.create_all(db.engine)
        item = AppEnv(app, db, sync, models)
        built.append(item)
        return item

    yield factory

    for item in built:
        with item.app.app_context():
            item.db.session.remove()
            _drop_everything(item.db)
            item.db.engine.dispose()


def _drop_everything(db: SQLAlchemy) -> None:
    PlainBase.metadata.drop_all(db.engine)
    db.drop_all()


@pytest.fixture
def env(make_app: AppFactory) -> Iterator[AppEnv]:
    """One app, inside its app context."""
    item = make_app()
    with item.app.app_context():
        yield item


@pytest.fixture
def net(make_app: AppFactory, tmp_path: Any) -> Iterator[Cluster]:
    """A served app and the SyncClient nodes made for it (see tests/nodes.py)."""
    from .nodes import cluster  # nodes.py imports this module

    with cluster(make_app, tmp_path) as found:
        yield found


@pytest.fixture
def resolved() -> Iterator[list[Conflict]]:
    """The conflicts announced by ``conflict_resolved`` during the test."""
    found: list[Conflict] = []

    def receive(sender: Any, conflict: Conflict, **extra: Any) -> None:
        found.append(conflict)

    signals.conflict_resolved.connect(receive)
    try:
        yield found
    finally:
        signals.conflict_resolved.disconnect(receive)
