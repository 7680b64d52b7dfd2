"""The README's demo runs by itself, shows the merge and the reflected table,
and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).parent.parent


def test_the_demo_runs_and_shows_what_merged() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "example_app.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "primary-key conflict on site [1]: both rows were kept" in out
    assert "update/update conflict on observation [1]" in out
    # The re-keyed egret observation moved to a key of tablet B's block.
    assert re.search(r"update/delete conflict on observation \[\d+\]", out)
    assert "Both tablets hold exactly the same rows: True." in out
    assert "signal table_created: main.weather_log" in out
    assert "Done." in out


def test_the_node_program_records_offline_and_syncs(
    tmp_path: Path, database_url: str
) -> None:
    from click.testing import CliRunner

    from example_app import node, server

    from .http_server import served

    app = server.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SECRET_KEY": "example-node-test",
            "REFLECTSYNC_OPEN_REGISTRATION": True,
        }
    )
    with app.app_context():
        server.db.drop_all()
        server.db.create_all()
    try:
        with served(app) as url:

            def tablet(name: str, *args: str) -> str:
                options = [
                    "--server",
                    url + "/sync",
                    "--name",
                    name,
                    "--database",
                    f"sqlite:///{tmp_path / name}.db",
                ]
                result = CliRunner().invoke(node.cli, [*options, *args])
                assert result.exit_code == 0, result.output
                return str(result.output)

            assert "2 change(s) wait" in tablet(
                "a", "record", "North marsh", "heron", "3"
            )
            assert "Registered as node" in tablet("a", "sync")
            tablet("b", "record", "Reed bed", "egret", "1")
            assert "Pushed 2" in tablet("b", "sync")
            tablet("a", "sync")
            listing = tablet("a", "list")
            assert "North marsh" in listing and "Reed bed" in listing
            assert listing == tablet("b", "list")
    finally:
        with app.app_context():
            server.db.session.remove()
            server.db.drop_all()
            server.db.engine.dispose()


def test_each_tablet_name_gets_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--name tablet-a`` and ``--name tablet-b`` (the tutorial's commands,
    no ``--database``) must not share one database file."""
    from click.testing import CliRunner

    from example_app import node

    monkeypatch.chdir(tmp_path)

    def tablet(name: str, *args: str) -> str:
        result = CliRunner().invoke(node.cli, ["--name", name, *args])
        assert result.exit_code == 0, result.output
        return str(result.output)

    tablet("tablet-a", "record", "North marsh", "heron", "3")
    tablet("tablet-b", "record", "Reed bed", "egret", "1")
    assert {p.name for p in tmp_path.glob("*.db")} == {"tablet-a.db", "tablet-b.db"}
    assert "Reed bed" not in tablet("tablet-a", "list")
    assert "North marsh" not in tablet("tablet-b", "list")


def test_the_node_program_closes_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection the tablet program opens is closed when it exits (a
    leaked one is a ResourceWarning on Python 3.13, an error here)."""
    from click.testing import CliRunner

    from example_app import node

    opened: list[object] = []
    closed: list[object] = []

    def on_connect(connection: object, record: object) -> None:
        opened.append(connection)

    def on_close(connection: object, record: object) -> None:
        closed.append(connection)

    monkeypatch.chdir(tmp_path)
    sa.event.listen(sa.pool.Pool, "connect", on_connect)
    sa.event.listen(sa.pool.Pool, "close", on_close)
    try:
        result = CliRunner().invoke(node.cli, ["record", "North marsh", "heron", "3"])
    finally:
        sa.event.remove(sa.pool.Pool, "connect", on_connect)
        sa.event.remove(sa.pool.Pool, "close", on_close)
    assert result.exit_code == 0, result.output
    assert opened and len(closed) == len(opened)


def test_the_example_server_starts_in_several_processes_at_once(
    database_url: str, tmp_path: Path
) -> None:
    """gunicorn starts its workers together, and each builds the app: the
    table creation of one must not fail on the tables another is creating
    (it did on PostgreSQL with 4 workers)."""
    from .conftest import _worker_database

    # A database of its own, fresh: the race is on the first start.
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{tmp_path / 'survey.db'}"
    else:
        database_url = _worker_database(database_url, "race")
    # Each process imports everything, then waits for the same moment.
    code = (
        "import sys, time\n"
        "from example_app.server import create_app\n"
        "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
        "create_app({'SQLALCHEMY_DATABASE_URI': sys.argv[1]})\n"
    )
    start = str(time.time() + 4)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, database_url, start],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    failures = []
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        if worker.returncode != 0:
            failures.append(err[-2000:])
    assert failures == []
    engine = sa.create_engine(database_url)
    try:
        assert {"site", "observation"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
