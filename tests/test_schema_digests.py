"""The schema handshake by digest (see :ref:`schema-digests`), over real
HTTP on the test server's database: a node whose schema is the server's
sends one digest and is served; a node whose schema differs is asked once
(``schema.describe``) and then sends the columns of the differing tables
only; digests the server does not have are never taken as a match, and
nothing is applied before the server knows the node's schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

from flask_reflectsync import errors, signals, track
from flask_reflectsync.client import SyncClient
from flask_reflectsync.server.schema import TrackedSchema
from flask_reflectsync.tracking import TrackedTable
from flask_reflectsync.wire.schema import (
    combined_digest,
    describe,
    digest_all,
    digest_table,
    digests,
)

from .conftest import AppFactory
from .http_server import ServerEnv, database_state, server_env, without_nonces
from .test_schema_changes import RENAMED, V1, WITH_SUMMARY, Columns, post_table


@dataclass
class Sent:
    """One request a node sent, and the status it was answered."""

    route: str
    body: dict[str, Any]
    status: int
    size: int


@dataclass
class Recording(httpx.HTTPTransport):
    """A real HTTP transport that keeps what the node sends."""

    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = super().handle_request(request)
        content = request.read()
        body = json.loads(content) if content else {}
        route = request.url.path.rsplit("/", 1)[-1]
        self.sent.append(Sent(route, body, answer.status_code, len(content)))
        return answer


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    """The test server (its ``sample`` table) with a tracked ``post`` of
    :data:`WITH_SUMMARY` columns."""
    with server_env(make_app) as env:
        db = env.env.db

        @track
        class Post(db.Model):  # type: ignore[name-defined]
            __table__ = post_table(db.metadata, WITH_SUMMARY)

        db.create_all()
        yield env


def make_node(
    server: ServerEnv, tmp_path: Path, post: Columns, name: str = "node"
) -> tuple[SyncClient, Recording]:
    """A registered node tracking a copy of each of the server's tables but
    ``post``, which has ``post`` columns, recording its requests."""

    class Base(DeclarativeBase):
        pass

    models: list[Any] = []
    for info in server_tables(server):
        if info.name == "post":
            table = post_table(Base.metadata, post)
        else:
            table = info.table.to_metadata(Base.metadata)
        models.append(track(type(info.name.title(), (Base,), {"__table__": table})))
    engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
    Base.metadata.create_all(engine)
    recording = Recording()
    client = SyncClient(
        server.base, engine, models=models, name=name, transport=recording
    )
    client.register()
    recording.sent.clear()
    return client, recording


def server_tables(server: ServerEnv) -> list[TrackedTable]:
    return list(TrackedSchema.of(server.env.db.metadata).tables.values())


def server_digests(server: ServerEnv) -> dict[str, str]:
    return digests(server_tables(server))


def test_digests_ignore_column_order_and_tell_every_difference() -> None:
    same = {"id": "an integer", "title": "a string"}
    assert digest_table(same) == digest_table(dict(reversed(same.items())))
    assert digest_table(same) != digest_table({**same, "title": "an integer"})
    assert digest_table(same) != digest_table({**same, "lang": "a string"})
    assert digest_table(same) != digest_table({"id": "an integer", "name": "a string"})
    both = {"post": digest_table(same), "tag": digest_table({"id": "an integer"})}
    assert digest_all(both) == digest_all(dict(reversed(both.items())))
    assert digest_all(both) != digest_all({"post": both["post"]})
    assert digest_all(both) != digest_all({"post": both["tag"], "tag": both["post"]})
    # The same columns under another table's name (a table renamed).
    assert digest_all({"post": both["post"]}) != digest_all({"article": both["post"]})


def test_a_node_with_the_servers_schema_sends_one_digest_and_is_served_at_once(
    server: ServerEnv, tmp_path: Path
) -> None:
    node, recording = make_node(server, tmp_path, WITH_SUMMARY)
    try:
        with node.Session() as session:
            Post = node.schema.tables["post"].model
            session.add(Post(id=1, title="t", lang="fr", summary="s"))
            session.commit()
        node.push()
        node.pull()
        node.repair()
        assert [(s.route, s.status) for s in recording.sent] == [
            ("push", 200),
            ("pull", 200),
            ("repair", 200),
        ]
        for sent in recording.sent:
            assert "schema" not in sent.body
            assert len(sent.body["schema_digest"]) == 16
        assert node.unserved == {}
    finally:
        node.close()
        node.engine.dispose()


def test_a_differing_node_is_asked_once_then_sends_only_the_differing_tables(
    server: ServerEnv, tmp_path: Path
) -> None:
    """The node's post lacks summary; its other tables are the server's. The first
    request is answered schema.describe, the same request goes again at once
    with post's columns and sample's digest, and later ones go that way
    straight away; a push asked for the description is applied once."""
    node, recording = make_node(server, tmp_path, V1)
    rejected: list[Any] = []

    def on_rejected(sender: Any, **kwargs: Any) -> None:
        rejected.append(kwargs)

    try:
        with signals.push_rejected.connected_to(on_rejected):
            with node.Session() as session:
                Post = node.schema.tables["post"].model
                session.add(Post(id=1, title="t", lang="fr"))
                session.commit()
            node.push()
        assert rejected == []  # asking for the description is no refusal
        first, second = recording.sent
        assert (first.route, first.status) == ("push", 409)
        assert set(first.body) >= {"schema_digest"} and "schema" not in first.body
        assert (second.route, second.status) == ("push", 200)
        assert second.body["push_id"] == first.body["push_id"]
        theirs = server_digests(server)
        assert second.body["schema"] == {
            **{t: d for t, d in theirs.items() if t != "post"},
            "post": {"id": "an integer", "title": "a string", "lang": "a string"},
        }
        assert "schema_digest" not in second.body
        with server.env.db.engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, title FROM post")).all()
        assert [tuple(r) for r in rows] == [(1, "t")]
        Post = {t.name: t for t in server_tables(server)}["post"].model
        server.env.db.session.add(Post(id=2, title="s", summary="theirs"))
        server.env.db.session.commit()
        recording.sent.clear()
        result = node.pull()
        assert result.unserved == {"post": ["summary"]}
        node.repair()
        assert [(s.route, s.status) for s in recording.sent] == [
            ("pull", 200),
            ("repair", 200),
        ]
        assert all(s.body["schema"] == second.body["schema"] for s in recording.sent)
    finally:
        node.close()
        node.engine.dispose()


def test_a_node_told_of_a_rename_by_digest_gets_the_same_refusal(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The differences are told exactly as with a full description."""
    with server_env(make_app) as env:
        db = env.env.db

        @track
        class Post(db.Model):  # type: ignore[name-defined]
            __table__ = post_table(db.metadata, RENAMED)

        db.create_all()
        db.session.add(Post(id=2, title="theirs", lang_code="en"))
        db.session.commit()
        node, recording = make_node(env, tmp_path, V1)
        try:
            with pytest.raises(
                errors.SchemaMismatchError, match="renamed to lang_code"
            ):
                node.pull()
            assert [(s.route, s.status) for s in recording.sent] == [
                ("pull", 409),
                ("pull", 409),
            ]
            assert recording.sent[1].body["schema"]["post"]["lang"] == "a string"
            assert node.last_version == 0
        finally:
            node.close()
            node.engine.dispose()


def test_the_server_never_takes_a_digest_it_does_not_have_for_a_match(
    server: ServerEnv,
) -> None:
    theirs = server_digests(server)
    node = server.node()
    try:
        before = without_nonces(database_state(server.env))
        # A wrong digest of the whole: asked for the description, with the
        # server's digests; nothing recorded as pulled.
        answer = node.pull(0, schema_digest="0" * 16)
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["code"] == "schema.describe"
        assert body["digests"] == theirs
        # A table's digest that is not the server's, or of a table it lacks.
        for sent in (
            {"sample": theirs["sample"], "post": theirs["sample"]},
            {"sample": theirs["sample"], "draft": theirs["post"]},
        ):
            answer = node.pull(0, schema=sent)
            assert answer.status_code == 409, answer.text
            assert answer.json()["code"] == "schema.describe"
        # A push with a wrong digest: nothing written.
        answer = node.push(
            [{"table": "post", "key": [1], "command": "i"}],
            {"post": {"columns": ["id", "title"], "rows": [[1, "a"]]}},
            schema_digest="f" * 16,
        )
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == "schema.describe"
        # Not a digest at all: a malformed request.
        answer = node.pull(0, schema_digest="not a digest")
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "request.invalid"
        answer = node.pull(0, schema={"post": "xyz"})
        assert answer.status_code == 400, answer.text
        assert without_nonces(database_state(server.env)) == before
        # The server's own digests are a match; a full description is
        # still taken, and so is one table by digest beside the other's
        # columns.
        answer = node.pull(0, schema_digest=digest_all(theirs))
        assert answer.status_code == 200, answer.text
        answer = node.pull(
            0, schema={"sample": theirs["sample"], "post": {"id": "an integer"}}
        )
        assert answer.status_code == 200, answer.text
        answer = node.pull(0, schema=describe(server_tables(server)))
        assert answer.status_code == 200, answer.text
        assert "unserved" not in answer.json()
    finally:
        node.close()


def test_the_combined_digest_is_the_digest_of_the_tables_digests(
    server: ServerEnv,
) -> None:
    tables = server_tables(server)
    assert len(tables) > 2
    assert combined_digest(tables) == digest_all(digests(tables))
    assert combined_digest(tables[:1]) != combined_digest(tables)


# -- checking the schema at start-up -------------------------------------------------


def test_check_schema_says_the_schemas_agree_in_one_digest_request(
    server: ServerEnv, tmp_path: Path
) -> None:
    node, recording = make_node(server, tmp_path, WITH_SUMMARY)
    try:
        check = node.check_schema()
        assert check.same and check.differences == []
        assert check.message == "The node's tracked tables are the server's."
        ((sent),) = recording.sent
        assert (sent.route, sent.status) == ("schema-check", 200)
        assert set(sent.body) == {"protocol", "schema_digest"}
        assert node.last_version == 0  # nothing pulled or recorded
    finally:
        node.close()
        node.engine.dispose()


def test_check_schema_names_a_rename_an_untracked_table_and_an_old_file(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """What the first pull would refuse, told at start-up: the server's
    rename, its tables the node does not track, and model code newer than
    the node's own file."""
    from flask_reflectsync.node.schema import check_local

    with server_env(make_app) as env:
        db = env.env.db

        @track
        class Post(db.Model):  # type: ignore[name-defined]
            __table__ = post_table(db.metadata, RENAMED)

        db.create_all()
        node, recording = make_node(env, tmp_path, V1)
        try:
            with node.engine.begin() as connection:
                connection.execute(sa.text("DROP TABLE tag"))
            check = node.check_schema()
            assert not check.same
            problems = {
                (d["table"], d["column"], d["problem"]) for d in check.differences
            }
            assert ("tag", None, "not_in_database") in problems
            assert ("post", "lang", "node_only_column") in problems
            assert ("post", "lang_code", "server_only_column") in problems
            (renamed,) = [d for d in check.differences if d.get("renamed_to")]
            assert renamed["renamed_to"] == "lang_code"
            assert "renamed to lang_code" in check.message
            assert "table tag is not in the node's database" in check.message
            assert check.server_only_tables == []
            assert [(s.route, s.status) for s in recording.sent] == [
                ("schema-check", 409),
                ("schema-check", 200),
            ]
            with pytest.raises(errors.SchemaMismatchError, match="table tag"):
                check_local(node)  # the pulls and pushes still refuse
        finally:
            node.close()
            node.engine.dispose()


def test_check_schema_tells_the_tables_the_node_does_not_track(
    server: ServerEnv, tmp_path: Path
) -> None:
    node, _ = make_node(server, tmp_path, WITH_SUMMARY)
    try:
        node._models = [node.schema.tables["post"].model]
        node._schema = None
        node._description = node._digests = None
        check = node.check_schema()
        assert check.differences == []
        assert "post" not in check.server_only_tables
        assert set(check.server_only_tables) == {
            t.name for t in server_tables(server)
        } - {"post"}
        assert "which this node does not track" in check.message
    finally:
        node.close()
        node.engine.dispose()


def test_the_schema_check_route_refuses_a_message_without_a_schema(
    server: ServerEnv,
) -> None:
    node = server.node()
    try:
        answer = node.call("POST", "/schema-check", json={"protocol": 2})
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "request.invalid"
        answer = node.call(
            "POST", "/schema-check", json={"protocol": 2, "schema_digest": "0" * 16}
        )
        assert answer.status_code == 409
        assert answer.json()["code"] == "schema.describe"
        answer = node.call(
            "POST",
            "/schema-check",
            json={"protocol": 2, "schema": describe(server_tables(server))},
        )
        assert answer.json()["same"] is True, answer.text
        answer = node.call(
            "POST", "/schema-check", json={"protocol": 2, "schema": {"draft": {}}}
        )
        body = answer.json()
        assert body["same"] is False
        assert body["differences"][0]["problem"] == "node_only_table"
        # A subset of the server's tables, each the same: not the same.
        post = {"post": describe(server_tables(server))["post"]}
        body = node.call(
            "POST", "/schema-check", json={"protocol": 2, "schema": post}
        ).json()
        assert (body["same"], body["differences"]) == (False, [])
        assert set(body["server_only_tables"]) == set(server_digests(server)) - {
            "post"
        }
    finally:
        node.close()


def test_reflectsync_node_status_schema_and_watch_say_the_schema(
    server: ServerEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from click.testing import CliRunner

    from flask_reflectsync.node.cli import _say_schema, cli

    from .test_schema_changes import MODELS_MODULE

    (tmp_path / "schema_check_models.py").write_text(MODELS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    database = f"sqlite:///{tmp_path / 'cli-node.db'}"
    options = [
        "--server", server.base, "--database", database,
        "--models", "schema_check_models",
    ]
    runner = CliRunner()
    assert runner.invoke(cli, [*options, "register"]).exit_code == 0
    result = runner.invoke(cli, [*options, "status", "--schema"])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Schema")]
    assert line.startswith("Schema differs from the server's: post.lang_code")
    assert "reflectsync-node migrate" in line
    plain = runner.invoke(cli, [*options, "status"])
    assert "Schema" not in plain.output
    # Starting a watch with the server gone: said, and not fatal.
    node, _ = make_node(server, tmp_path, WITH_SUMMARY, name="gone")
    try:
        node._transport.base_url = "http://127.0.0.1:9/sync"
        node.retries = 0
        capsys.readouterr()
        _say_schema(node, starting=True)
        assert capsys.readouterr().err.startswith("Schema not checked: Cannot reach")
    finally:
        node.close()
        node.engine.dispose()
