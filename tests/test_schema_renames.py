"""Renames the server made while a node was offline, told apart (see
:doc:`/schema-changes`): two renames in one table, by shape where the types
differ and refused with the candidates named where they do not; on
PostgreSQL, by the catalog (a column's attnum survives ``RENAME COLUMN``),
which also tells a rename from a drop and an add. Over real HTTP, on the
test server's database (``REFLECTSYNC_TEST_DATABASE_URL`` for PostgreSQL
and MariaDB) and SQLite nodes.
"""

# ruff: noqa: F811
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync import errors
from flask_reflectsync.client import SyncClient

from .test_schema_changes import (  # noqa: F401 (world: a fixture)
    Columns,
    ServerFactory,
    World,
    _migrated_app,
    change,
    node_model,
    node_rows,
    world,
    write,
)

V1: Columns = {
    "title": (sa.String(100), {}),
    "lang": (sa.String(8), {"nullable": True}),
    "views": (sa.Integer, {"nullable": True}),
}
#: Both renamed, one holding strings and the other integers.
TWO_RENAMED: Columns = {
    "title": (sa.String(100), {}),
    "lang_code": (sa.String(8), {"nullable": True}),
    "view_count": (sa.Integer, {"nullable": True}),
}
SAME_TYPES: Columns = {
    "title": (sa.String(100), {}),
    "lang": (sa.String(8), {"nullable": True}),
    "region": (sa.String(8), {"nullable": True}),
}
#: Both renamed, of one type: the shape cannot tell which became which.
SAME_TYPES_RENAMED: Columns = {
    "title": (sa.String(100), {}),
    "lang_code": (sa.String(8), {"nullable": True}),
    "area": (sa.String(8), {"nullable": True}),
}


OLD: Columns = {
    "title": (sa.String(100), {}),
    "lang": (sa.String(8), {"nullable": True}),
}


def _rename(w: World, *pairs: tuple[str, str]) -> None:
    """The server's migration: ALTER TABLE ... RENAME COLUMN on its own
    database (PostgreSQL, MariaDB 10.5+ and SQLite 3.25+ all have it)."""
    with w.server.env.db.engine.begin() as connection:
        for old, new in pairs:
            connection.execute(
                sa.text(f"ALTER TABLE post RENAME COLUMN {old} TO {new}")
            )


@contextmanager
def _served_after(
    database_url: str, columns: Columns
) -> Iterator[tuple[str, Any, Any]]:
    """The server's app after its migration, served; yields its URL, its db
    and its tracked post model."""
    from .http_server import served

    app, db, Post = _migrated_app(database_url, columns)
    try:
        with served(app) as url, app.app_context():
            yield url, db, Post
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _server_posts(db: Any) -> list[tuple[Any, ...]]:
    with db.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM post ORDER BY id"))
        return [tuple(r) for r in rows]


def _new_code(url: str, old: SyncClient, columns: Columns) -> SyncClient:
    old.close()
    return SyncClient(url + "/sync", old.engine, models=node_model(columns))


def test_two_renames_of_different_kinds_in_one_table_keep_data_and_queue(
    world: ServerFactory, database_url: str
) -> None:
    """post.lang -> lang_code and post.views -> view_count in one
    migration, while a node is offline with an update of both columns and
    an insert. One migrate renames both in its file (their data and the
    queued change with them), one sync brings both sides level."""
    w = world(V1)
    w.add(id=1, title="first", lang="en", views=3)
    old = w.node(V1)
    old.pull()
    change(old, 1, lang="fr", views=4)
    write(old, {"id": 2, "title": "offline", "lang": "es", "views": 1})
    _rename(w, ("lang", "lang_code"), ("views", "view_count"))
    with _served_after(database_url, TWO_RENAMED) as (url, db, Post):
        node = _new_code(url, old, TWO_RENAMED)
        w.nodes.append(node)
        done = node.migrate()
        assert done.renamed == {"post": {"lang": "lang_code", "views": "view_count"}}
        assert done.added == {}
        assert node.pending_operations() == 2
        node.synchronize()
        expected = [(1, "first", "fr", 4), (2, "offline", "es", 1)]
        assert _server_posts(db) == expected
        assert [tuple(r.values()) for r in node_rows(node)] == expected
        assert node.pending_operations() == 0 and node.set_aside() == []


def test_two_renames_of_strings_of_different_lengths_are_told_by_exact_type(
    world: ServerFactory, database_url: str
) -> None:
    """post.lang VARCHAR(8) -> lang_code and post.notes VARCHAR(200) ->
    summary: one kind of value (strings), so the kind alone cannot pair
    them; the exact types do, and both are renamed with their data."""
    before: Columns = {
        "title": (sa.String(100), {}),
        "lang": (sa.String(8), {"nullable": True}),
        "notes": (sa.String(200), {"nullable": True}),
    }
    after: Columns = {
        "title": (sa.String(100), {}),
        "summary": (sa.String(200), {"nullable": True}),
        "lang_code": (sa.String(8), {"nullable": True}),
    }
    w = world(before)
    w.add(id=1, title="first", lang="en", notes="long")
    old = w.node(before)
    old.pull()
    change(old, 1, lang="fr", notes="longer")
    _rename(w, ("lang", "lang_code"), ("notes", "summary"))
    with _served_after(database_url, after) as (url, db, _Post):
        node = _new_code(url, old, after)
        w.nodes.append(node)
        done = node.migrate()
        assert done.renamed == {"post": {"lang": "lang_code", "notes": "summary"}}
        node.synchronize()
        assert _server_posts(db) == [(1, "first", "fr", "longer")]
        assert node.pending_operations() == 0


def test_two_renames_of_one_type_are_refused_with_the_candidates_or_told_by_the_catalog(
    world: ServerFactory, database_url: str, backend: str
) -> None:
    """post.lang -> lang_code and post.region -> area, all VARCHAR(8): the
    shape cannot tell which became which. On SQLite and MariaDB servers
    (identity is the name) ``migrate`` refuses, naming each column and its
    candidates, and changes nothing; ``renames=`` then says it. A
    PostgreSQL server knows from its catalog (the attnums kept), and the
    same ``migrate()`` just works."""
    w = world(SAME_TYPES)
    w.add(id=1, title="first", lang="en", region="eu")
    old = w.node(SAME_TYPES)
    old.pull()  # the server (before its migration) records its columns
    change(old, 1, lang="fr", region="us")
    _rename(w, ("lang", "lang_code"), ("region", "area"))
    with _served_after(database_url, SAME_TYPES_RENAMED) as (url, db, Post):
        node = _new_code(url, old, SAME_TYPES_RENAMED)
        w.nodes.append(node)
        if backend == "postgresql":
            done = node.migrate()
        else:
            with pytest.raises(errors.ConfigurationError) as refused:
                node.migrate()
            message = str(refused.value)
            assert "post.lang to lang_code or area" in message
            assert "post.region to lang_code or area" in message
            assert "renames=" in message and "--rename" in message
            with node.engine.connect() as connection:
                found = sa.inspect(connection).get_columns("post")
            columns = [c["name"] for c in found]
            assert columns == ["id", "title", "lang", "region"]  # unchanged
            done = node.migrate(
                renames={"post": {"lang": "lang_code", "region": "area"}}
            )
        assert done.renamed == {"post": {"lang": "lang_code", "region": "area"}}
        node.synchronize()
        assert _server_posts(db) == [(1, "first", "fr", "us")]
        assert [tuple(r.values()) for r in node_rows(node)] == _server_posts(db)


def test_renames_the_app_gives_are_checked_against_the_file_and_models(
    world: ServerFactory, database_url: str
) -> None:
    w = world(SAME_TYPES)
    old = w.node(SAME_TYPES)
    old.pull()
    _rename(w, ("lang", "lang_code"), ("region", "area"))
    with _served_after(database_url, SAME_TYPES_RENAMED) as (url, _db, _Post):
        node = _new_code(url, old, SAME_TYPES_RENAMED)
        w.nodes.append(node)
        for renames, said in (
            ({"post": {"nope": "area"}}, "post.nope is not a column of the node's"),
            ({"post": {"lang": "nope"}}, "post.nope is not a column the models"),
            ({"draft": {"a": "b"}}, "draft, which this node does not track"),
        ):
            with pytest.raises(errors.ConfigurationError, match=said):
                node.migrate(renames=renames)
        # None: not renamed (area added and filled from the server).
        done = node.migrate(renames={"post": {"region": None, "lang": "lang_code"}})
        assert done.renamed == {"post": {"lang": "lang_code"}}
        assert done.added == {"post": ["area"]}


def test_postgresql_tells_a_rename_from_a_drop_and_an_add(
    world: ServerFactory, database_url: str, backend: str
) -> None:
    """The server drops post.lang and adds post.lang_code, of the same type,
    in one migration. By shape that is a rename (the old node's pulls of
    whole rows refused, "renamed to lang_code on the server?"), on SQLite
    and MariaDB. PostgreSQL's catalog says the column was dropped (its
    attnum is gone): the old node's pull passes, storing its own default
    for lang and leaving lang_code out (unserved), and ``migrate`` adds
    lang_code (filled from the server) rather than renaming lang."""
    w = world(OLD)
    w.add(id=1, title="first", lang="en")
    old = w.node(OLD)
    old.pull()
    with w.server.env.db.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE post DROP COLUMN lang"))
        connection.execute(
            sa.text("ALTER TABLE post ADD COLUMN lang_code VARCHAR(8)")
        )
    renamed: Columns = {
        "title": (sa.String(100), {}),
        "lang_code": (sa.String(8), {"nullable": True}),
    }
    with _served_after(database_url, renamed) as (url, db, Post):
        db.session.add(Post(id=2, title="second", lang_code="de"))
        db.session.commit()
        old.base_url = url + "/sync"
        check = old.check_schema()
        (said,) = [d for d in check.differences if d["column"] == "lang"]
        before = old.last_version
        if backend == "postgresql":
            assert said["known"] is True and "renamed_to" not in said
            assert said["message"] == (
                "post.lang is not a column on the server: dropped on the "
                "server"
            )
            pulled = old.pull()
            assert pulled.unserved == {"post": ["lang_code"]}
            assert [tuple(r.values()) for r in node_rows(old)] == [
                (1, "first", "en"),
                (2, "second", None),
            ]
        else:
            assert said["renamed_to"] == "lang_code" and "known" not in said
            with pytest.raises(
                errors.SchemaMismatchError, match="lang_code on the server?"
            ):
                old.pull()
            assert old.last_version == before
        node = _new_code(url, old, renamed)
        w.nodes.append(node)
        if backend == "postgresql":
            done = node.migrate()
        else:
            # By shape ``migrate()`` would rename lang (its values living on
            # under lang_code on this node only): the app that knows says so.
            done = node.migrate(renames={"post": {"lang": None}})
        assert done.renamed == {} and done.added == {"post": ["lang_code"]}
        node.synchronize()
        server = _server_posts(db)
        assert server == [(1, "first", None), (2, "second", "de")]
        assert [tuple(r.values()) for r in node_rows(node)] == server


def test_postgresql_says_a_rename_for_certain(
    world: ServerFactory, database_url: str, backend: str
) -> None:
    """A rename on a PostgreSQL server is told as a fact (``known``, no
    question mark) to the old node's start-up check and refused pull; by
    shape elsewhere, as a question."""
    w = world(OLD)
    old = w.node(OLD)
    old.pull()
    _rename(w, ("lang", "lang_code"))
    renamed: Columns = {
        "title": (sa.String(100), {}),
        "lang_code": (sa.String(8), {"nullable": True}),
        "notes": (sa.String(8), {"nullable": True}),
    }
    with w.server.env.db.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE post ADD COLUMN notes VARCHAR(8)"))
    with _served_after(database_url, renamed) as (url, db, Post):
        db.session.add(Post(id=1, title="a", lang_code="en", notes="n"))
        db.session.commit()
        old.base_url = url + "/sync"
        (said,) = [d for d in old.check_schema().differences if d["column"] == "lang"]
        if backend == "postgresql":
            assert said["renamed_to"] == "lang_code" and said["known"] is True
            assert said["message"].endswith(": renamed to lang_code on the server")
            match = "renamed to lang_code on the server[^?]"
        else:
            # Two candidates of one kind: no guess, both named.
            assert "renamed_to" not in said
            assert said["candidates"] == ["lang_code", "notes"]
            match = "renamed on the server to one of lang_code, notes"
        with pytest.raises(errors.SchemaMismatchError, match=match):
            old.pull()
        # The old node's insert carrying lang is set aside, with its reason.
        write(old, {"id": 9, "title": "offline", "lang": "fr"})
        (aside,) = old.push().set_aside
        fate = (
            "(renamed to lang_code on the server)"
            if backend == "postgresql"
            else "(renamed or dropped there, or added on the node first)"
        )
        assert f"post.lang is not a column on the server {fate}" in aside.reason


CLI_MODELS = '''
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
        sa.Column("area", sa.String(8), nullable=True),
    )
'''


def test_reflectsync_node_migrate_takes_renames_from_the_command_line(
    world: ServerFactory,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``reflectsync-node migrate --rename post.lang=lang_code --rename
    post.region=area`` says which became which (on any server); a value
    that is not TABLE.OLD=NEW is a usage error, nothing changed."""
    from click.testing import CliRunner

    from flask_reflectsync.node.cli import cli

    w = world(SAME_TYPES)
    w.add(id=1, title="first", lang="en", region="eu")
    database = f"sqlite:///{tmp_path / 'cli-node.db'}"
    engine = sa.create_engine(database)
    old = SyncClient(w.server.base, engine, models=node_model(SAME_TYPES))
    node_model(SAME_TYPES)[0].__table__.metadata.create_all(engine)
    old.register()
    old.pull()
    old.close()
    _rename(w, ("lang", "lang_code"), ("region", "area"))
    (tmp_path / "renamed_models.py").write_text(CLI_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with _served_after(database_url, SAME_TYPES_RENAMED) as (url, db, _Post):
        options = [
            "--server", url + "/sync", "--database", database,
            "--models", "renamed_models",
        ]
        runner = CliRunner()
        bad = runner.invoke(cli, [*options, "migrate", "--rename", "lang=lang_code"])
        assert bad.exit_code == 2 and "TABLE.OLD=NEW" in bad.output
        done = runner.invoke(
            cli,
            [
                *options, "migrate",
                "--rename", "post.lang=lang_code", "--rename", "post.region=area",
            ],
        )
        assert done.exit_code == 0, done.output
        assert "Renamed post.lang to lang_code" in done.output
        assert "Renamed post.region to area" in done.output
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT * FROM post")).all()
        assert [tuple(r) for r in rows] == [(1, "first", "en", "eu")]
    engine.dispose()
