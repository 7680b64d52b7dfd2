"""``reflectsync-node``: the node command line, against a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from example_app import server as survey
from flask_reflectsync.client import SyncClient
from flask_reflectsync.node_cli import cli

from .http_server import served


@pytest.fixture
def survey_url(database_url: str) -> Iterator[str]:
    app = survey.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SECRET_KEY": "node-cli-test",
            "REFLECTSYNC_OPEN_REGISTRATION": True,
            # small pages, so a pull takes several and shows its progress
            "REFLECTSYNC_PULL_PAGE_SIZE": 1,
        }
    )
    with app.app_context():
        survey.db.drop_all()
        survey.db.create_all()
    try:
        with served(app) as url:
            yield url + "/sync"
    finally:
        with app.app_context():
            survey.db.session.remove()
            survey.db.drop_all()
            survey.db.engine.dispose()


@pytest.fixture
def node_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'node.db'}"


def run(server: str | None, database: str, *args: str, input: str | None = None) -> Any:
    options = ["--database", database, "--models", "example_app.server"]
    if server:
        options = ["--server", server, *options]
    result = CliRunner().invoke(cli, [*options, *args], input=input, env={})
    return result


def ok(server: str | None, database: str, *args: str) -> str:
    result = run(server, database, *args)
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_register_push_pull_status_and_repair(survey_url: str, node_url: str) -> None:
    assert "Registered as node" in ok(survey_url, node_url, "register", "--name=f1")
    assert "Already registered" in ok(survey_url, node_url, "register")

    # The node's program edits offline through the client's sessions.
    engine = sa.create_engine(node_url)
    client = SyncClient(survey_url, engine, [survey.Site, survey.Observation])
    with client.Session() as session:
        session.add(survey.Site(name="North marsh"))
        session.commit()
    client.close()
    assert "Changes waiting to be pushed: 1" in ok(None, node_url, "status")

    assert "Pushed 1 operation(s)" in ok(survey_url, node_url, "push")
    assert "Nothing to push." in ok(survey_url, node_url, "push")

    # Another node adds an observation; this one pulls it.
    other = f"sqlite:///{Path(engine.url.database or '').parent / 'other.db'}"
    ok(survey_url, other, "register")
    ok(survey_url, other, "pull")
    other_engine = sa.create_engine(other)
    second = SyncClient(survey_url, other_engine, [survey.Site, survey.Observation])
    with second.Session() as session:
        site = session.scalars(sa.select(survey.Site)).one()
        session.add(survey.Observation(site_id=site.id, species="heron", count=2))
        session.commit()
    second.close()
    assert "Pushed 1 operation(s)" in ok(survey_url, other, "sync")
    pulled = ok(survey_url, node_url, "pull")
    assert "Merged 1 change(s)" in pulled
    assert "Pulling changes" in pulled
    with engine.connect() as connection:
        species = connection.execute(sa.text("SELECT species FROM observation")).all()
    assert species == [("heron",)]

    status = ok(None, node_url, "status")
    assert "Registered as node" in status and "pushed: 0" in status

    repaired = ok(survey_url, node_url, "repair", "--yes")
    assert "Copied 2 row(s) from 2 table(s)" in repaired
    engine.dispose()
    other_engine.dispose()


def test_missing_server_and_models_are_explained(node_url: str) -> None:
    result = CliRunner().invoke(
        cli, ["--database", node_url, "--models", "example_app.server", "push"], env={}
    )
    assert result.exit_code != 0 and "--server" in result.output
    result = CliRunner().invoke(
        cli,
        ["--server", "http://127.0.0.1:9/sync", "--database", node_url, "push"],
        env={},
    )
    assert result.exit_code != 0 and "--models" in result.output


def test_an_unreachable_server_is_a_clear_error(node_url: str) -> None:
    result = run("http://127.0.0.1:9/sync", node_url, "register")
    assert result.exit_code == 1
    assert "Error:" in result.output and "127.0.0.1:9" in result.output


def test_help_explains_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"], env={})
    assert result.exit_code == 0
    for command in ("register", "push", "pull", "sync", "repair", "status"):
        assert f"  {command}" in result.output
        sub = CliRunner().invoke(cli, [command, "--help"], env={})
        assert sub.exit_code == 0 and "Usage:" in sub.output


def test_python_dash_m_runs_the_same_program() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "flask_reflectsync", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "reflectsync-node" in done.stdout and "repair" in done.stdout
