"""Nodes whose tracked tables differ from the server's (see
:doc:`/schema-changes`), over real HTTP on the test server's database and
SQLite nodes: the server's renamed, added, retyped and untracked columns
and tables, and nodes newer than the server. In each: no value lost, no
queue stuck, a clear message with a code, nothing applied of a refused page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_reflectsync import errors, track
from flask_reflectsync.client import SyncClient

from .conftest import AppFactory
from .http_server import ServerEnv, server_env

#: A column of a test model: name -> (type, options).
Columns = dict[str, tuple[Any, dict[str, Any]]]

V1: Columns = {
    "title": (sa.String(100), {}),
    "lang": (sa.String(8), {"nullable": True}),
}


def post_table(metadata: sa.MetaData, columns: Columns) -> sa.Table:
    return sa.Table(
        "post",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        *[sa.Column(name, kind, **extra) for name, (kind, extra) in columns.items()],
    )


def node_model(columns: Columns, *, extra_table: bool = False) -> list[Any]:
    """The node's tracked models: a post with ``columns`` (on a base of its
    own), and a draft table the server does not have."""

    class Base(DeclarativeBase):
        pass

    @track
    class Post(Base):
        __table__ = post_table(Base.metadata, columns)

    models: list[Any] = [Post]
    if extra_table:

        @track
        class Draft(Base):
            __tablename__ = "draft"
            id: Mapped[int] = mapped_column(primary_key=True)
            text: Mapped[str] = mapped_column(sa.String(100))

        models.append(Draft)
    return models


@dataclass
class World:
    server: ServerEnv
    Post: Any
    directory: Path
    nodes: list[SyncClient] = field(default_factory=list)
    extra: Any = None

    @property
    def table(self) -> sa.Table:
        return self.Post.__table__  # type: ignore[no-any-return]

    def add(self, **values: Any) -> None:
        """A post written by the server's app."""
        db = self.server.env.db
        db.session.add(self.Post(**values))
        db.session.commit()

    def server_rows(self) -> list[dict[str, Any]]:
        with self.server.env.db.engine.connect() as connection:
            rows = connection.execute(sa.select(self.table).order_by(self.table.c.id))
            return [dict(r._mapping) for r in rows]

    def node(
        self,
        columns: Columns,
        *,
        name: str | None = None,
        extra_table: bool = False,
        file_columns: Columns | None = None,
    ) -> SyncClient:
        """A registered node whose post has ``columns`` (its file made with
        ``file_columns``, default the same)."""
        name = name or f"node{len(self.nodes) + 1}"
        engine = sa.create_engine(f"sqlite:///{self.directory / name}.db")
        models = node_model(columns, extra_table=extra_table)
        on_file = node_model(file_columns) if file_columns is not None else models
        on_file[0].__table__.metadata.create_all(engine)
        if extra_table:
            models[1].__table__.create(engine, checkfirst=True)
        client = SyncClient(self.server.base, engine, models=models, name=name)
        self.nodes.append(client)
        client.register()
        return client


def node_rows(node: SyncClient) -> list[dict[str, Any]]:
    table = node.schema.tables["post"].table
    with node.engine.connect() as connection:
        rows = connection.execute(sa.select(table).order_by(table.c.id))
        return [dict(r._mapping) for r in rows]


def write(node: SyncClient, *posts: dict[str, Any], model: int = 0) -> None:
    Post = node.schema.tables["post"].model
    with node.Session() as session:
        for values in posts:
            session.add(Post(**values))
        session.commit()


def change(node: SyncClient, key: int, **values: Any) -> None:
    Post = node.schema.tables["post"].model
    with node.Session() as session:
        post = session.get(Post, key)
        assert post is not None
        for name, value in values.items():
            setattr(post, name, value)
        session.commit()


ServerFactory = Callable[[Columns], World]


@pytest.fixture
def world(make_app: AppFactory, tmp_path: Path) -> Iterator[ServerFactory]:
    """Makes the served app with a tracked post of the given columns."""
    stack: list[Any] = []
    made: list[World] = []

    def make(columns: Columns, *, comment_table: bool = False) -> World:
        context = server_env(make_app)
        server = context.__enter__()
        stack.append(context)
        db = server.env.db

        @track
        class Post(db.Model):  # type: ignore[name-defined]
            __table__ = post_table(db.metadata, columns)

        if comment_table:

            @track
            class Comment(db.Model):  # type: ignore[name-defined]
                __tablename__ = "comment"
                id: Mapped[int] = mapped_column(primary_key=True)
                text: Mapped[str] = mapped_column(sa.String(100))

        db.create_all()
        found = World(server, Post, tmp_path)
        if comment_table:
            found.extra = Comment
        made.append(found)
        return found

    yield make  # type: ignore[misc]
    for found in made:
        for node in found.nodes:
            node.close()
            node.engine.dispose()
    for context in reversed(stack):
        context.__exit__(None, None, None)


# -- a renamed column ----------------------------------------------------------------

RENAMED: Columns = {
    "title": (sa.String(100), {}),
    "lang_code": (sa.String(8), {"nullable": True}),
}


def test_an_old_nodes_pull_is_refused_not_cut_when_a_column_was_renamed(
    world: ServerFactory,
) -> None:
    """The measured loss: the old node's pull stored the new post with
    lang NULL and moved its version. Now it is refused, with the column
    named and the probable new name, before anything is applied."""
    w = world(RENAMED)
    old = w.node(V1)
    write(old, {"id": 1, "title": "mine", "lang": "fr"})
    w.add(id=2, title="theirs", lang_code="en")
    before = old.last_version
    with pytest.raises(errors.SchemaMismatchError) as caught:
        old.pull()
    error = caught.value
    assert error.code == "schema.mismatch"
    assert "post.lang is not a column on the server: renamed to lang_code" in str(
        error
    )
    assert any(d.get("renamed_to") == "lang_code" for d in error.differences)
    assert old.last_version == before
    assert [r["id"] for r in node_rows(old)] == [1]
    assert old.pending_operations() == 1  # the queue is intact


def test_an_old_nodes_insert_with_a_renamed_column_is_set_aside_and_the_rest_syncs(
    world: ServerFactory,
) -> None:
    w = world(RENAMED)
    w.add(id=1, title="first", lang_code="en")
    old = w.node(V1)
    # Pulled before its rows carried the renamed column: none yet.
    write(old, {"id": 10, "title": "kept", "lang": "fr"}, {"id": 11, "title": "plain"})
    result = old.push()
    (aside,) = result.set_aside
    assert aside.table == "post" and aside.key == (10,)
    assert "post.lang is not a column on the server" in aside.reason
    # The row whose lang is null went: the server has no lang to keep.
    assert [r["id"] for r in w.server_rows()] == [1, 11]
    assert old.pending_operations() == 0
    assert node_rows(old)[0]["lang"] == "fr"  # kept, not lost


def test_a_repair_of_an_old_node_is_refused_and_its_data_kept(
    world: ServerFactory,
) -> None:
    w = world(RENAMED)
    w.add(id=1, title="first", lang_code="en")
    old = w.node(V1)
    write(old, {"id": 5, "title": "local", "lang": "fr"})
    with pytest.raises(
        errors.SchemaMismatchError,
        match="post.lang is not a column on the server: renamed to lang_code",
    ) as caught:
        old.repair()
    # Refused by the server, before anything was streamed.
    assert "Nothing was sent" in str(caught.value)
    assert [r["id"] for r in node_rows(old)] == [5]
    assert old.pending_operations() == 1


# -- added columns -------------------------------------------------------------------

WITH_SUMMARY: Columns = {
    **V1,
    "summary": (sa.String(200), {"nullable": True}),
}


def test_a_new_nullable_column_keeps_old_nodes_pulling_and_says_what_is_left_out(
    world: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    w = world(WITH_SUMMARY)
    old = w.node(V1)
    w.add(id=1, title="first", lang="en", summary="a summary")
    with caplog.at_level(logging.WARNING, "flask_reflectsync.client"):
        result = old.pull()
    assert result.unserved == {"post": ["summary"]}
    assert old.unserved == {"post": ["summary"]}
    assert "summary" in caplog.text
    assert node_rows(old) == [{"id": 1, "title": "first", "lang": "en"}]
    # The old node's update never writes NULL into the column it lacks.
    change(old, 1, title="edited")
    old.synchronize()
    assert w.server_rows() == [
        {"id": 1, "title": "edited", "lang": "en", "summary": "a summary"}
    ]
    # Its insert gets the column's default (none: NULL).
    write(old, {"id": 2, "title": "second", "lang": "de"})
    old.synchronize()
    assert w.server_rows()[1] == {
        "id": 2,
        "title": "second",
        "lang": "de",
        "summary": None,
    }
    # A patch of only the column it lacks is left out of its pages.
    db = w.server.env.db
    db.session.get(w.Post, 1).summary = "changed"
    db.session.commit()
    result = old.pull()
    assert result.operations == 0
    assert node_rows(old)[0]["title"] == "edited"


WITH_VIEWS: Columns = {
    **V1,
    "views": (sa.Integer, {"nullable": False, "server_default": sa.text("7")}),
}


def test_a_new_not_null_column_with_a_default_takes_the_default_for_old_inserts(
    world: ServerFactory,
) -> None:
    w = world(WITH_VIEWS)
    old = w.node(V1)
    write(old, {"id": 1, "title": "t", "lang": "en"})
    old.synchronize()
    assert w.server_rows() == [{"id": 1, "title": "t", "lang": "en", "views": 7}]
    assert old.set_aside() == []


WITH_RATING: Columns = {
    **V1,
    "rating": (sa.Integer, {"nullable": False}),
}


def test_a_new_not_null_column_without_default_sets_old_inserts_aside_only(
    world: ServerFactory,
) -> None:
    """One refused insert among many good changes: the rest syncs, the one
    is kept with its reason."""
    w = world(WITH_RATING)
    db = w.server.env.db
    db.session.add_all(
        [w.Post(id=key, title=f"p{key}", lang="en", rating=3) for key in range(1, 1000)]
    )
    db.session.commit()
    old = w.node(V1)
    old.pull()
    Post = old.schema.tables["post"].model
    with old.Session() as session:
        for post in session.scalars(sa.select(Post)):
            post.title = f"edited {post.id}"
        session.commit()
    write(old, {"id": 5000, "title": "new", "lang": "en"})
    result = old.push()
    (aside,) = result.set_aside
    assert aside.key == (5000,) and aside.command == "i"
    assert "rating" in aside.reason and "NOT NULL" in aside.reason
    assert result.operations == 999
    rows = w.server_rows()
    assert len(rows) == 999
    assert all(r["title"] == f"edited {r['id']}" and r["rating"] == 3 for r in rows)
    assert old.pending_operations() == 0
    # The app resolves it: given up, the row takes the server's copy (none).
    assert old.discard_set_aside() == 1
    assert old.set_aside() == [] and len(node_rows(old)) == 999
    old.synchronize()
    assert len(w.server_rows()) == 999


# -- a changed type ------------------------------------------------------------------

RETYPED: Columns = {
    "title": (sa.String(100), {}),
    "lang": (sa.Integer, {"nullable": True}),
}


def test_a_type_change_refuses_values_of_the_other_kind_both_ways(
    world: ServerFactory,
) -> None:
    w = world(RETYPED)
    old = w.node(V1)
    write(old, {"id": 1, "title": "t", "lang": "en"}, {"id": 2, "title": "u"})
    result = old.push()
    (aside,) = result.set_aside
    assert aside.key == (1,)
    assert "holds an integer on the server and a string on this node" in aside.reason
    assert [r["id"] for r in w.server_rows()] == [2]
    w.add(id=3, title="server", lang=44)
    before = old.last_version
    with pytest.raises(errors.SchemaMismatchError, match="post.lang holds an integer"):
        old.pull()
    assert old.last_version == before
    assert [r["id"] for r in node_rows(old)] == [1, 2]


# -- tables one side does not track -------------------------------------------------


def test_a_new_server_table_is_named_to_old_nodes_and_never_blocks_them(
    world: ServerFactory,
) -> None:
    w = world(V1, comment_table=True)  # type: ignore[call-arg]
    old = w.node(V1)
    db = w.server.env.db
    db.session.add(w.extra(id=1, text="hello"))
    db.session.commit()
    w.add(id=1, title="t", lang="en")
    result = old.pull()
    assert result.unserved == {"comment": ["id", "text"]}
    assert [r["id"] for r in node_rows(old)] == [1]


def test_a_node_newer_than_the_server_sets_its_new_rows_aside_not_stuck(
    world: ServerFactory,
) -> None:
    w = world(V1)
    w.add(id=1, title="t", lang="en")
    newer = w.node(WITH_SUMMARY, extra_table=True)
    newer.pull()
    Draft = newer.schema.tables["draft"].model
    with newer.Session() as session:
        session.add(Draft(id=1, text="draft"))
        session.commit()
    write(
        newer,
        {"id": 2, "title": "with summary", "summary": "s"},
        {"id": 3, "title": "without"},
    )
    change(newer, 1, title="edited")
    result = newer.push()
    assert sorted((a.table, a.key) for a in result.set_aside) == [
        ("draft", (1,)),
        ("post", (2,)),
    ]
    reasons = {a.table: a.reason for a in result.set_aside}
    assert "draft is not a table the server synchronises" in reasons["draft"]
    assert "post.summary is not a column on the server" in reasons["post"]
    assert [(r["id"], r["title"]) for r in w.server_rows()] == [
        (1, "edited"),
        (3, "without"),
    ]
    assert newer.pending_operations() == 0
    # Its pulls go on: the server has no summary to lose, the node stores
    # its own default.
    w.add(id=9, title="server")
    newer.pull()
    assert node_rows(newer)[-1] == {
        "id": 9, "title": "server", "lang": None, "summary": None
    }


DROPPED: Columns = {"title": (sa.String(100), {})}


def test_a_dropped_column_keeps_old_nodes_pulling_and_sets_aside_its_values(
    world: ServerFactory,
) -> None:
    w = world(DROPPED)
    old = w.node(V1)
    w.add(id=1, title="server")
    old.pull()
    assert node_rows(old) == [{"id": 1, "title": "server", "lang": None}]
    write(old, {"id": 2, "title": "a", "lang": "fr"}, {"id": 3, "title": "b"})
    result = old.push()
    assert [a.key for a in result.set_aside] == [(2,)]
    assert [r["id"] for r in w.server_rows()] == [1, 3]


# -- new model code on an old file ---------------------------------------------------


def test_new_model_code_on_an_old_file_gives_one_line_not_a_traceback(
    world: ServerFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = world(RENAMED)
    w.add(id=1, title="t", lang_code="en")
    node = w.node(RENAMED, file_columns=V1)
    for action in (node.pull, node.repair, node.push):
        with pytest.raises(errors.SchemaMismatchError) as caught:
            action()
        assert caught.value.code == "node.schema_mismatch"
        assert "post.lang_code" in str(caught.value)
    assert node_rows_raw(node) == []


def node_rows_raw(node: SyncClient) -> list[Any]:
    with node.engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT * FROM post")))


# -- the server's checks without a node's description --------------------------------


def test_a_push_without_description_naming_an_unknown_column_is_refused_per_row(
    world: ServerFactory,
) -> None:
    """A node from before the handshake: the unknown column is still found
    in its rows, refused per row (422 schema.refused), never 400 whole."""
    w = world(RENAMED)
    node = w.server.node()
    try:
        answer = node.push(
            [
                {"table": "post", "key": [1], "command": "i"},
                {"table": "post", "key": [2], "command": "i"},
            ],
            {
                "post": {
                    "columns": ["id", "title", "lang"],
                    "rows": [[1, "a", "en"], [2, "b", None]],
                }
            },
        )
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert body["code"] == "schema.refused"
        assert [r["key"] for r in body["rows"]] == [[1]]
        assert w.server_rows() == []
    finally:
        node.close()


def test_a_pull_without_description_is_served_as_before(world: ServerFactory) -> None:
    w = world(RENAMED)
    w.add(id=1, title="t", lang_code="en")
    node = w.server.node()
    try:
        page = node.pull(0).json()
        assert page["changes"]["post"]["columns"] == ["id", "title", "lang_code"]
        assert "unserved" not in page
    finally:
        node.close()


# -- the node's own guard, for a server that does not cut pages ---------------------


def test_the_node_refuses_a_page_or_copy_it_cannot_store_by_itself() -> None:
    from flask_reflectsync.node.schema import check_copy, check_page
    from flask_reflectsync.tracking.registry import tracked_table_for

    Post = node_model({**V1, "score": (sa.Integer, {"nullable": False})})[0]
    info = tracked_table_for(sa.inspect(Post))
    assert info is not None
    # Values of a column the node lacks: refused when one is not null.
    check_page(info, ["id", "title", "lang", "score", "extra"],
               [[1], ["t"], [None], [2], [None]], "i", None)
    with pytest.raises(errors.SchemaMismatchError, match="post.extra"):
        check_page(info, ["id", "title", "lang", "score", "extra"],
                   [[1], ["t"], [None], [2], ["x"]], "i", None)
    # Whole rows without a column the node's table requires: refused;
    # patches without it pass.
    with pytest.raises(errors.SchemaMismatchError, match="score"):
        check_page(info, ["id", "title", "lang"], [[1], ["t"], [None]], "i", None)
    check_page(info, ["id", "title", "lang"], [[1], ["t"], [None]], "u", [[1]])
    check_page(info, ["id", "title", "score"], [[1], ["t"], [3]], "i", None)
    # A copy missing a node column beside a column the node lacks: renamed.
    with pytest.raises(errors.SchemaMismatchError, match="renamed to lang_code"):
        check_copy(info, ["id", "title", "lang_code", "score"])
    check_copy(info, ["id", "title", "score"])  # lang dropped: nothing lost
    check_copy(info, ["id", "title", "lang", "score", "summary"])
    with pytest.raises(errors.SchemaMismatchError, match="post.score"):
        check_copy(info, ["id", "title", "lang"])


MODELS_MODULE = '''
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

from flask_reflectsync import track


class Base(DeclarativeBase):
    pass


@track
class Post(Base):
    __table__ = sa.Table(
        "post",
        Base.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(100)),
        sa.Column("lang_code", sa.String(8), nullable=True),
    )
'''


def test_reflectsync_node_pull_and_repair_say_one_line_for_new_models_on_an_old_file(
    world: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from flask_reflectsync.node.cli import cli

    w = world(RENAMED)
    w.add(id=1, title="t", lang_code="en")
    (tmp_path / "schema_models_v2.py").write_text(MODELS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    database = f"sqlite:///{tmp_path / 'cli-node.db'}"
    engine = sa.create_engine(database)
    node_model(V1)[0].__table__.metadata.create_all(engine)  # the old file
    engine.dispose()
    options = [
        "--server", w.server.base, "--database", database,
        "--models", "schema_models_v2",
    ]
    runner = CliRunner()
    registered = runner.invoke(cli, [*options, "register"])
    assert registered.exit_code == 0, registered.output
    for command in (["pull"], ["repair", "--yes"], ["sync"]):
        result = runner.invoke(cli, [*options, *command])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("Error: The node's models name post.lang_code")
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, errors.SyncError)
    migrated = runner.invoke(cli, [*options, "migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert "Renamed post.lang to lang_code" in migrated.output
    pulled = runner.invoke(cli, [*options, "pull"])
    assert pulled.exit_code == 0, pulled.output
    engine = sa.create_engine(database)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, title, lang_code FROM post"))
        assert rows.all() == [(1, "t", "en")]
    engine.dispose()


# -- a real migration of the server, the node offline across it --------------------


def _migrated_app(database_url: str, columns: Columns) -> Any:
    """The server's app after its migration: new model code on the same
    database (nothing created or dropped)."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_reflectsync import ReflectSync

    from .http_server import SECRET_KEY

    app = Flask("migrated")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        SECRET_KEY=SECRET_KEY,
        REFLECTSYNC_OPEN_REGISTRATION=True,
    )
    db = SQLAlchemy()
    db.init_app(app)

    @track
    class Post(db.Model):  # type: ignore[name-defined]
        __table__ = post_table(db.metadata, columns)

    ReflectSync().init_app(app, db)
    return app, db, Post


def test_a_node_offline_across_a_rename_loses_nothing_and_catches_up(
    world: ServerFactory, database_url: str
) -> None:
    """The server renames post.lang to lang_code (ALTER TABLE on its own
    database, new model code) while a node is offline with queued changes.
    Its edit of another column syncs, its insert carrying the old name is
    set aside, its pull is refused with the column named and its version
    kept; once the node has migrated too (the column renamed, keeping its
    data), the set-aside insert is resolved by a retry and the node catches
    up."""
    from .http_server import served

    w = world(V1)
    w.add(id=1, title="first", lang="en")
    node = w.node(V1)
    node.pull()
    change(node, 1, title="edited offline")
    write(node, {"id": 2, "title": "offline", "lang": "fr"})
    with w.server.env.db.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE post RENAME COLUMN lang TO lang_code"))
    app, db, Post = _migrated_app(database_url, RENAMED)
    try:
        with served(app) as url, app.app_context():
            db.session.add(Post(id=3, title="after", lang_code="de"))
            db.session.commit()
            node.base_url = url + "/sync"
            result = node.push()
            assert [(a.key, a.command) for a in result.set_aside] == [((2,), "i")]
            before = node.last_version
            renamed = "renamed to lang_code"
            with pytest.raises(errors.SchemaMismatchError, match=renamed):
                node.pull()
            assert node.last_version == before
            # The node's own migration: new model code, then migrate (the
            # column renamed with its data, the set-aside row with it).
            node.close()
            migrated = SyncClient(
                url + "/sync", node.engine, models=node_model(RENAMED), name="again"
            )
            w.nodes.append(migrated)
            assert migrated.migrate().renamed == {"post": {"lang": "lang_code"}}
            (aside,) = migrated.set_aside()
            assert aside.row == {"id": 2, "title": "offline", "lang_code": "fr"}
            assert migrated.retry_set_aside() == 1
            migrated.synchronize()
            with db.engine.connect() as connection:
                rows = connection.execute(
                    sa.select(Post.__table__).order_by(Post.__table__.c.id)
                ).all()
            assert [tuple(r) for r in rows] == [
                (1, "edited offline", "en"),
                (2, "offline", "fr"),
                (3, "after", "de"),
            ]
            assert [tuple(r.values()) for r in node_rows(migrated)] == [
                tuple(r) for r in rows
            ]
            assert migrated.pending_operations() == 0
            assert migrated.set_aside() == []
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# -- migrate -------------------------------------------------------------------------

FINAL: Columns = {
    "title": (sa.String(100), {}),
    "lang_code": (sa.String(8), {"nullable": True}),
    "summary": (sa.String(200), {"nullable": True}),
}


def test_a_node_offline_across_two_migrations_catches_up_with_one_migrate_and_one_sync(
    world: ServerFactory, database_url: str
) -> None:
    """The server adds post.summary, then renames post.lang to lang_code and
    tracks a new table, while a node is offline with queued changes; the
    node's app then gets the new model code, its file and queue still from
    before. One migrate (the column renamed with its data and its queued
    change, the new column and table fetched) and one sync bring it level,
    nothing lost."""
    from .http_server import served

    w = world(V1)
    w.add(id=1, title="first", lang="en")
    w.add(id=2, title="second", lang="de")
    old = w.node(V1, name="field")
    old.pull()
    change(old, 1, lang="fr")
    write(old, {"id": 3, "title": "offline", "lang": "es"})
    old.close()
    with w.server.env.db.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE post ADD COLUMN summary VARCHAR(200)"))
        connection.execute(sa.text("ALTER TABLE post RENAME COLUMN lang TO lang_code"))
    app, db, ServerPost = _migrated_app(database_url, FINAL)

    @track
    class ServerComment(db.Model):  # type: ignore[name-defined]
        __tablename__ = "comment"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(100))

    # New model code on the node's file.
    (Post,) = node_model(FINAL)

    class CommentBase(DeclarativeBase):
        pass

    @track
    class Comment(CommentBase):
        __tablename__ = "comment"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(100))

    try:
        with served(app) as url, app.app_context():
            db.create_all()
            for key, summary in ((1, "s1"), (2, "s2")):
                db.session.get(ServerPost, key).summary = summary
            db.session.add(ServerComment(id=1, text="a comment"))
            db.session.commit()
            node = SyncClient(url + "/sync", old.engine, models=[Post, Comment])
            w.nodes.append(node)
            with pytest.raises(errors.SchemaMismatchError):
                node.pull()
            done = node.migrate()
            assert done.created == ["comment"]
            assert done.renamed == {"post": {"lang": "lang_code"}}
            assert done.added == {"post": ["summary"]}
            assert done.fetched == 3  # the summaries of two posts, one comment
            assert node.pending_operations() == 2
            node.synchronize()
            with db.engine.connect() as connection:
                table = ServerPost.__table__
                server = [
                    dict(r._mapping)
                    for r in connection.execute(sa.select(table).order_by(table.c.id))
                ]
            assert server == [
                {"id": 1, "title": "first", "lang_code": "fr", "summary": "s1"},
                {"id": 2, "title": "second", "lang_code": "de", "summary": "s2"},
                {"id": 3, "title": "offline", "lang_code": "es", "summary": None},
            ]
            assert node_rows(node) == server
            with node.engine.connect() as connection:
                found = connection.execute(sa.text("SELECT id, text FROM comment"))
                assert found.all() == [(1, "a comment")]
            assert node.pending_operations() == 0 and node.set_aside() == []
            assert node.migrate().changed is False
    finally:
        with app.app_context():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()
