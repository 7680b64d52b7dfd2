"""A SyncClient built with the documented default ``models=None``."""

from __future__ import annotations

import gc
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_reflectsync import track
from flask_reflectsync.client import SyncClient

from .nodes import Cluster


class _Base(DeclarativeBase):
    pass


@track
class Parcel(_Base):
    """A table name no other test uses, so ``models=None`` finds only it."""

    __tablename__ = "default_models_parcel"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(40))


def test_first_session_reads_then_adds_without_locking_itself(tmp_path: Path) -> None:
    # The client used to look up table names on a second connection while
    # the session held SQLite's write lock: 5 s, then "database is locked".
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'node.db'}", connect_args={"timeout": 0.5}
    )
    _Base.metadata.create_all(engine)
    client = SyncClient("http://127.0.0.1:9/sync", engine)
    try:
        with client.Session() as session:
            assert session.scalars(sa.select(Parcel)).all() == []
            session.add(Parcel(label="first"))
            session.commit()
        with client.Session() as session:
            assert [p.label for p in session.scalars(sa.select(Parcel))] == ["first"]
        assert client.pending_operations() == 1
        assert list(client.schema.tables) == ["default_models_parcel"]
    finally:
        client.close()
        engine.dispose()


def test_a_fresh_client_pushes_the_queue_of_an_earlier_one(
    net: Cluster, tmp_path: Path
) -> None:
    # A new process's first call may be a push: its schema lookup must not
    # wait for the write lock the push's own transaction holds.
    gc.collect()  # earlier tests' apps mapped tracked classes to these names
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'node.db'}", connect_args={"timeout": 0.5}
    )
    net.server.env.db.metadata.create_all(engine, tables=net.tables)
    Country = net.server.env.models.Country
    first = SyncClient(net.server.base, engine)
    first.register()
    with first.Session() as session:
        session.add(Country(id=7, name="Peru"))
        session.commit()
    first.close()
    again = SyncClient(net.server.base, engine)
    try:
        assert again.push().operations == 1
    finally:
        again.close()
        engine.dispose()
    assert net.server_rows()["country"] == [(7, "Peru")]
