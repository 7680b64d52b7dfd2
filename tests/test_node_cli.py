"""``reflectsync-node``: the node command line, against a live server."""

from __future__ import annotations

import inspect
import io
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask, jsonify, request

from example_app import server as survey
from flask_reflectsync.client import SyncClient
from flask_reflectsync.node.cli import _Bar, cli
from flask_reflectsync.node.transport import Transport

from .http_server import served


@contextmanager
def serve_survey(
    database_url: str, hook: Callable[[Flask], Any] | None = None, **config: Any
) -> Iterator[tuple[Flask, str]]:
    settings = {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SECRET_KEY": "node-cli-test",
        "REFLECTSYNC_OPEN_REGISTRATION": True,
        # small pages, so a pull takes several and shows its progress
        "REFLECTSYNC_PULL_PAGE_SIZE": 1,
        **config,
    }
    app = survey.create_app(settings)
    if hook is not None:
        hook(app)
    with app.app_context():
        survey.db.drop_all()
        survey.db.create_all()
    try:
        with served(app) as url:
            yield app, url + "/sync"
    finally:
        with app.app_context():
            survey.db.session.remove()
            survey.db.drop_all()
            survey.db.engine.dispose()


@pytest.fixture
def survey_url(database_url: str) -> Iterator[str]:
    with serve_survey(database_url) as (_, url):
        yield url


@pytest.fixture
def node_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'node.db'}"


def run(
    server: str | None,
    database: str,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> Any:
    options = ["--database", database, "--models", "example_app.models"]
    if server:
        options = ["--server", server, *options]
    result = _runner().invoke(cli, [*options, *args], input=input, env=env or {})
    return _Output(result) if _OLD_CLICK else result


def _runner() -> CliRunner:
    """A runner that keeps stderr apart (click before 8.2 needs asking)."""
    if _OLD_CLICK:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


# Before click 8.2 a runner keeping stderr apart leaves it out of ``output``.
_OLD_CLICK = "mix_stderr" in inspect.signature(CliRunner).parameters


class _Output:
    """A click < 8.2 result read as click 8.2 reads it: ``output`` holds what
    went to stderr too (the error lines), ``stdout`` and ``stderr`` apart."""

    def __init__(self, result: Any) -> None:
        self._result = result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)

    @property
    def output(self) -> str:
        return str(self._result.stdout) + str(self._result.stderr)


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


def test_an_unreachable_server_is_a_clear_error(
    node_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every try is made and reported; only the backoff between them (up to
    # the client's 10 s retry_within, which the CLI does not set) is cut.
    monkeypatch.setattr(Transport, "delay", lambda self, attempt, asked: 0.01)
    result = run("http://127.0.0.1:9/sync", node_url, "register")
    assert result.exit_code == 1
    assert "Error:" in result.output and "127.0.0.1:9" in result.output
    assert "(tried 4 times)" in result.output  # --retries 3 by default


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


# -- issue 10: the node's first hour ------------------------------------------------


def _node_secret(node_url: str) -> Any:
    engine = sa.create_engine(node_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                sa.text("SELECT secret FROM reflectsync_node_state")
            ).scalar()
    finally:
        engine.dispose()


def test_the_node_file_is_readable_by_its_owner_only(
    survey_url: str, node_url: str
) -> None:
    ok(survey_url, node_url, "register")
    path = Path(sa.make_url(node_url).database or "")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_secret_can_live_outside_the_database(
    survey_url: str, node_url: str
) -> None:
    registered = ok(survey_url, node_url, "register", "--print-secret")
    assert "REFLECTSYNC_NODE_SECRET" in registered
    secret = registered.split(": ")[-1].splitlines()[0].strip()
    assert len(secret) > 20
    assert _node_secret(node_url) is None
    # Without the secret the node cannot sign; with it, it can.
    refused = run(survey_url, node_url, "pull")
    assert refused.exit_code == 1
    assert "set REFLECTSYNC_NODE_SECRET" in refused.output
    assert "REFLECTSYNC_NODE_SECRET is not set" in ok(None, node_url, "status")
    pulled = run(survey_url, node_url, "pull", env={"REFLECTSYNC_NODE_SECRET": secret})
    assert pulled.exit_code == 0, pulled.output
    assert "now at version 0" in pulled.output


def test_messages_name_the_command_lines_flags(
    node_url: str, database_url: str
) -> None:
    unregistered = run("http://127.0.0.1:9/sync", node_url, "pull")
    assert "run `reflectsync-node register` first" in unregistered.output
    assert "client.register" not in unregistered.output
    with serve_survey(database_url, REFLECTSYNC_OPEN_REGISTRATION=False) as (_, url):
        result = run(url, node_url, "register")
        assert result.exit_code == 1
        assert "--token" in result.output and "register(token" not in result.output
        wrong_prefix = run(url.removesuffix("/sync") + "/nope", node_url, "register")
        assert "--server" in wrong_prefix.output
        assert "base_url" not in wrong_prefix.output


def test_register_force_after_the_server_forgot_the_node(
    database_url: str, node_url: str
) -> None:
    with serve_survey(database_url) as (app, url):
        first = ok(url, node_url, "register")
        with app.app_context():
            nodes = survey.db.metadata.tables["reflectsync_nodes"]
            with survey.db.engine.begin() as connection:
                connection.execute(sa.delete(nodes))  # the server was reset
        forgotten = run(url, node_url, "pull")
        assert forgotten.exit_code == 1
        assert "reflectsync-node register --force" in forgotten.output
        assert "--force" in ok(url, node_url, "register")  # says how
        again = ok(url, node_url, "register", "--force")
        assert "Registered again as node" in again and again != first
        assert "now at version" in ok(url, node_url, "pull")


@pytest.mark.parametrize(
    "url",
    ["not a url", "nosuchdialect://x", "postgresql+nosuchdriver://h/db"],
)
def test_a_bad_database_url_is_one_clear_line(url: str) -> None:
    result = run("http://127.0.0.1:9/sync", url, "status")
    assert result.exit_code == 2
    assert "--database" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unopenable_database_file_is_one_clear_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    result = run("http://127.0.0.1:9/sync", url, "status")
    assert result.exit_code == 1
    assert "Cannot open the node's database" in result.output
    assert isinstance(result.exception, SystemExit)


def _busy_first_pull(app: Flask) -> None:
    left = [1]

    @app.before_request
    def busy() -> Any:
        if request.path.endswith("/pull") and left[0]:
            left[0] -= 1
            body = {"ok": False, "error": "The database is busy.", "status": 503}
            return jsonify(body), 503, {"Retry-After": "0"}
        return None


def test_each_retry_is_a_line_on_stderr(database_url: str, node_url: str) -> None:
    with serve_survey(database_url, hook=_busy_first_pull) as (_, url):
        ok(url, node_url, "register")
        result = run(url, node_url, "pull")
        assert result.exit_code == 0, result.output
        assert "Trying /pull again in 0.0 s (try 2 of 4)" in result.stderr
        assert "Trying" not in result.stdout
        refused = run(url, node_url, "--retries", "-1", "pull")
        assert refused.exit_code == 2


def test_progress_bars_show_a_real_total_or_none() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with _Bar("Repairing", file=screen) as bar:
        bar.show(0, 20013)
        bar.show(20013, 20013)
    assert "20013/20013" in screen.getvalue()
    screen = Terminal()
    with _Bar("Repairing", file=screen) as bar:
        bar.show(1000, None)
        bar.show(20013, None)
    assert "20013" in screen.getvalue() and "/0" not in screen.getvalue()


def test_a_node_runs_from_a_models_module_alone(tmp_path: Path) -> None:
    """``--models example_app.models``: neither the server app nor Flask is
    imported."""
    code = (
        "import sys\n"
        "from flask_reflectsync.node_cli import cli\n"
        "try:\n"
        f"    cli(['--database', 'sqlite:///{tmp_path / 'n.db'}', '--models',"
        " 'example_app.models', 'status'])\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert 'example_app.server' not in sys.modules, 'the app'\n"
        "assert not loaded & {'flask', 'flask_sqlalchemy'}, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Not registered" in done.stdout


def test_a_refused_change_is_set_aside_listed_and_discarded(
    survey_url: str, node_url: str
) -> None:
    ok(survey_url, node_url, "register")
    engine = sa.create_engine(node_url)
    client = SyncClient(
        survey_url, engine, [survey.Site, survey.Observation], check_values=False
    )
    with client.Session() as session:
        session.add_all([survey.Site(name="x" * 101), survey.Site(name="Bay")])
        session.commit()
    client.close()
    pushed = ok(survey_url, node_url, "sync")
    assert "Pushed 1 operation(s)" in pushed
    assert "set aside: site [1]" in pushed and "100 characters" in pushed
    assert "set aside (refused by the server): 1" in ok(None, node_url, "status")
    listed = ok(None, node_url, "set-aside")
    assert listed.startswith("1: insert of site [1]: ")
    assert "Discarded 1 change(s)" in ok(
        survey_url, node_url, "set-aside", "--discard", "all"
    )
    assert "Nothing is set aside." in ok(None, node_url, "set-aside")
    with engine.connect() as connection:
        names = connection.execute(sa.text("SELECT name FROM site")).scalars().all()
    assert names == ["Bay"]
    engine.dispose()


def test_a_revoked_node_is_told_in_one_line(database_url: str, node_url: str) -> None:
    with serve_survey(database_url) as (app, url):
        ok(url, node_url, "register", "--name=lost")
        with app.app_context():
            (node,) = survey.sync.nodes()
            survey.sync.revoke_node(node.id)
        for command in ("pull", "sync"):
            result = run(url, node_url, command)
            assert result.exit_code == 1, result.output
            (line,) = result.output.strip().splitlines()
            assert "revoked node" in line and "register" in line.lower()


# -- issue 17: sync --watch ------------------------------------------------------


def test_sync_watch_runs_until_sigterm_and_stops_cleanly(
    survey_url: str, node_url: str
) -> None:
    import signal
    import time

    options = ["--server", survey_url, "--database", node_url,
               "--models", "example_app.models"]
    base = [sys.executable, "-m", "flask_reflectsync", *options]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [*base, "register"], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert done.returncode == 0, done.stderr
    watching = subprocess.Popen(
        [*base, "sync", "--watch", "--wait", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    try:
        assert watching.stderr is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = watching.stderr.readline()
            lines.append(line)
            if line.startswith("[connected]"):
                break
        assert lines[-1].startswith("[connected]"), lines
        watching.send_signal(signal.SIGTERM)
        out, err = watching.communicate(timeout=60)
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.wait()
    assert watching.returncode == 0, err
    assert "Stopped at version" in out


def test_a_new_model_on_a_synchronised_node_is_migrated_not_created_empty(
    database_url: str, node_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node first syncs sites only; its next model code adds observations,
    # which the server already holds. Created empty by the command, the table
    # would never receive them (they are behind the node's version): the
    # command refuses and names migrate, which creates it and fetches them.
    (tmp_path / "cli_sites_only.py").write_text("from example_app.models import Site\n")
    (tmp_path / "cli_sites_and_observations.py").write_text(
        "from example_app.models import Observation, Site\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with serve_survey(database_url) as (app, url):
        with app.app_context():
            site = survey.Site(name="Marsh")
            survey.db.session.add(site)
            survey.db.session.flush()
            survey.db.session.add(survey.Observation(site_id=site.id, species="heron"))
            survey.db.session.commit()

        def node(models: str, *args: str) -> Any:
            options = ["--server", url, "--database", node_url, "--models", models]
            result = _runner().invoke(cli, [*options, *args])
            return _Output(result) if _OLD_CLICK else result

        assert node("cli_sites_only", "register").exit_code == 0
        assert node("cli_sites_only", "sync").exit_code == 0
        refused = node("cli_sites_and_observations", "pull")
        assert refused.exit_code == 1, refused.output
        assert "reflectsync-node migrate" in refused.output
        assert "observation" in refused.output
        engine = sa.create_engine(node_url)
        try:
            assert not sa.inspect(engine).has_table("observation")
            migrated = node("cli_sites_and_observations", "migrate")
            assert migrated.exit_code == 0, migrated.output
            assert "Created table observation." in migrated.output
            with engine.connect() as connection:
                found = connection.execute(sa.text("SELECT species FROM observation"))
                assert found.all() == [("heron",)]
            assert node("cli_sites_and_observations", "sync").exit_code == 0
        finally:
            engine.dispose()
