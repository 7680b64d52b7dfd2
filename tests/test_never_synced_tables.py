"""A tracked table that appears on a node that has pulled already (the
app's own ``create_all`` of a new model on an old node file) gets the
server's rows at the next push or pull, though they are older than the
node's version; what the app wrote into it meanwhile is kept (see
:doc:`/schema-changes`, :mod:`flask_reflectsync.node.catch_up`). Over real
HTTP on the test server's database and SQLite nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_reflectsync import errors, track
from flask_reflectsync.client import SyncClient

from .conftest import AppFactory
from .http_server import ServerEnv, server_env


class _Models:
    """A node app's models: a post, and (in its new code) a comment."""

    def __init__(self) -> None:
        class Base(DeclarativeBase):
            pass

        @track
        class Post(Base):
            __tablename__ = "post"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(100))

        @track
        class Comment(Base):
            __tablename__ = "comment"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(sa.String(100))

        self.Post, self.Comment = Post, Comment


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[tuple[ServerEnv, Any, Any]]:
    """The served app, tracking a post and a comment, with two comments and
    a post written before any node existed."""
    with server_env(make_app) as found:
        db = found.env.db

        @track
        class Post(db.Model):  # type: ignore[name-defined]
            __tablename__ = "post"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(100))

        @track
        class Comment(db.Model):  # type: ignore[name-defined]
            __tablename__ = "comment"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(sa.String(100))

        db.create_all()
        db.session.add_all(
            [
                Post(id=1, title="first"),
                Comment(id=1, text="c1"),
                Comment(id=2, text="c2"),
            ]
        )
        db.session.commit()
        yield found, Post, Comment


def _server_rows(found: ServerEnv, model: Any) -> list[tuple[Any, ...]]:
    table = model.__table__
    with found.env.db.engine.connect() as connection:
        rows = connection.execute(sa.select(table).order_by(table.c.id))
        return [tuple(r) for r in rows]


def _node_rows(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY id"))
        return [tuple(r) for r in rows]


def _old_node(found: ServerEnv, path: Path, models: _Models) -> SyncClient:
    """A node whose app tracked only the post: registered, pulled, closed."""
    engine = sa.create_engine(f"sqlite:///{path}")
    models.Post.__table__.create(engine)
    old = SyncClient(found.base, engine, models=[models.Post], name="field")
    old.register()
    old.pull()
    assert old.last_version > 0
    old.close()
    return old


def _new_code(
    found: ServerEnv, old: SyncClient, models: _Models
) -> SyncClient:
    """The node app's new code on the old file: its own create_all makes
    the comment table (empty), then the client tracks both."""
    models.Comment.metadata.create_all(old.engine)
    return SyncClient(
        found.base, old.engine, models=[models.Post, models.Comment], name="field"
    )


def test_a_table_created_on_a_synced_node_gets_the_servers_rows_and_keeps_its_own(
    server: tuple[ServerEnv, Any, Any], tmp_path: Path
) -> None:
    """The gap: the node's version is past the server's comments, so its
    pulls never brought them, and its own comment (key 1, the server's
    comment 1's key) was pushed over them. Now the next synchronize fetches
    the server's comments first; the node's comment is re-keyed, pushed as
    a new row, and nothing is lost on either side."""
    found, _, ServerComment = server
    models = _Models()
    old = _old_node(found, tmp_path / "node.db", models)
    node = _new_code(found, old, models)
    try:
        with node.Session() as session:
            session.add(models.Comment(text="mine"))
            session.add(models.Post(title="offline"))
            session.commit()
        version = node.last_version
        node.synchronize()
        assert _server_rows(found, ServerComment) == [
            (1, "c1"),
            (2, "c2"),
            (3, "mine"),
        ]
        assert _node_rows(node.engine, "comment") == _server_rows(found, ServerComment)
        assert [r[1] for r in _node_rows(node.engine, "post")] == ["first", "offline"]
        assert node.pending_operations() == 0 and node.set_aside() == []
        assert node.last_version > version
        state = node._state()
        assert state.synced_tables == {"post", "comment"}
        # Recorded: nothing is fetched again (the server's comment 2,
        # deleted on the node now, stays deleted and goes to the server).
        with node.Session() as session:
            session.delete(session.get(models.Comment, 2))
            session.commit()
        node.synchronize()
        assert [r[0] for r in _server_rows(found, ServerComment)] == [1, 3]
        assert [r[0] for r in _node_rows(node.engine, "comment")] == [1, 3]
    finally:
        node.close()
        node.engine.dispose()


def test_a_pull_alone_fetches_the_new_tables_rows(
    server: tuple[ServerEnv, Any, Any], tmp_path: Path
) -> None:
    """A node that only pulls gets them too, and its version is the one
    the pull reaches (the fetch itself does not move it)."""
    found, _, ServerComment = server
    models = _Models()
    old = _old_node(found, tmp_path / "node.db", models)
    node = _new_code(found, old, models)
    try:
        result = node.pull()
        assert result.version == old.last_version
        assert _node_rows(node.engine, "comment") == [(1, "c1"), (2, "c2")]
        assert node.pending_operations() == 0
    finally:
        node.close()
        node.engine.dispose()


def test_a_push_alone_fetches_first_and_pushes_the_nodes_row_as_a_new_one(
    server: tuple[ServerEnv, Any, Any], tmp_path: Path
) -> None:
    """``push()`` by itself (no synchronize to retry it): the server's
    comments are fetched before the node's comment is pushed, so it goes
    re-keyed, as a new row, and is not refused."""
    found, _, ServerComment = server
    models = _Models()
    old = _old_node(found, tmp_path / "node.db", models)
    node = _new_code(found, old, models)
    try:
        with node.Session() as session:
            session.add(models.Comment(text="mine"))
            session.commit()
        result = node.push()
        assert result.operations == 1 and result.set_aside == []
        assert _server_rows(found, ServerComment) == [(1, "c1"), (2, "c2"), (3, "mine")]
        assert _node_rows(node.engine, "comment") == _server_rows(found, ServerComment)
    finally:
        node.close()
        node.engine.dispose()


def test_a_file_of_an_earlier_release_is_caught_up_by_its_tables_rows(
    server: tuple[ServerEnv, Any, Any], tmp_path: Path
) -> None:
    """A node file from before the list was kept (``synced_tables`` NULL):
    a table holding only rows the node inserted and has not pushed is
    taken as never synchronised and fetched; the post, holding the
    server's row, is not."""
    found, _, ServerComment = server
    models = _Models()
    old = _old_node(found, tmp_path / "node.db", models)
    with old.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE reflectsync_node_state SET synced_tables = NULL")
        )
    node = _new_code(found, old, models)
    try:
        with node.Session() as session:
            session.add(models.Comment(text="mine"))
            session.commit()
        assert node._state().synced_tables is None
        node.synchronize()
        assert _server_rows(found, ServerComment) == [(1, "c1"), (2, "c2"), (3, "mine")]
        assert _node_rows(node.engine, "comment") == _server_rows(found, ServerComment)
        assert node._state().synced_tables == {"post", "comment"}
    finally:
        node.close()
        node.engine.dispose()


def test_a_table_the_server_does_not_track_is_not_recorded_and_blocks_nothing(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A node newer than the server tracks a table the server lacks: the
    server says so (``query.unknown_model``); the node's other changes sync
    and the table is asked for again by a later client, once the server may
    track it."""
    with server_env(make_app) as found:
        db = found.env.db

        @track
        class Post(db.Model):  # type: ignore[name-defined]
            __tablename__ = "post"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str] = mapped_column(sa.String(100))

        db.create_all()
        db.session.add(Post(id=5, title="server"))
        db.session.commit()
        models = _Models()
        old = _old_node(found, tmp_path / "node.db", models)
        node = _new_code(found, old, models)
        try:
            with node.Session() as session:
                session.add(models.Post(title="offline"))
                session.commit()
            node.synchronize()
            assert node.pending_operations() == 0
            assert node._state().synced_tables == {"post"}
            assert node._not_on_server == {"comment"}
            posts = sorted(r[1] for r in _node_rows(node.engine, "post"))
            assert posts == ["offline", "server"]
        finally:
            node.close()
            node.engine.dispose()


def test_server_rows_the_node_cannot_store_hold_up_the_pull_not_the_push(
    server: tuple[ServerEnv, Any, Any], tmp_path: Path
) -> None:
    """The node's new comment model requires a column the server's lacks
    (NOT NULL without a default): the server's comments cannot be stored.
    The push of the node's other changes goes on; the pull refuses with the
    column named, its version kept; the table stays unrecorded."""
    found, ServerPost, _ = server
    models = _Models()
    old = _old_node(found, tmp_path / "node.db", models)

    class Base(DeclarativeBase):
        pass

    @track
    class Comment(Base):
        __tablename__ = "comment"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(100))
        rating: Mapped[int] = mapped_column()

    Base.metadata.create_all(old.engine)
    node = SyncClient(found.base, old.engine, models=[models.Post, Comment])
    try:
        with node.Session() as session:
            session.add(models.Post(title="offline"))
            session.commit()
        version = node.last_version
        assert node.push().operations == 1
        assert [r[1] for r in _server_rows(found, ServerPost)] == ["first", "offline"]
        with pytest.raises(errors.SchemaMismatchError, match="without rating"):
            node.pull()
        assert node.last_version == version
        assert node._state().synced_tables == {"post"}
    finally:
        node.close()
        node.engine.dispose()
