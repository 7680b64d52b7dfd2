"""``flask reflectsync ...``: the server's command line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskCliRunner

from .conftest import AppEnv, AppFactory


@pytest.fixture
def cli_env(make_app: AppFactory) -> Iterator[AppEnv]:
    env = make_app(SECRET_KEY="test", REFLECTSYNC_OPEN_REGISTRATION=True)
    env.sync.catalog_access(lambda: True)
    yield env
    with env.app.app_context(), env.db.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS made_by_hand"))


def _run(env: AppEnv, *args: str) -> str:
    runner: FlaskCliRunner = env.app.test_cli_runner()
    result = runner.invoke(args=["reflectsync", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_help_explains_every_command(cli_env: AppEnv) -> None:
    output = _run(cli_env, "--help")
    for command in ("reflect", "schemas", "tables", "nodes"):
        assert command in output


def test_reflect_prints_a_table_made_by_raw_sql(cli_env: AppEnv) -> None:
    _run(cli_env, "reflect")  # first pass: everything that exists now
    with cli_env.app.app_context(), cli_env.db.engine.begin() as connection:
        connection.execute(
            sa.text("CREATE TABLE made_by_hand (id INTEGER PRIMARY KEY)")
        )
    output = _run(cli_env, "reflect")
    assert "table created:" in output and "made_by_hand" in output
    assert _run(cli_env, "reflect").strip() == "No changes."


def test_schemas_and_tables_list_the_catalog(cli_env: AppEnv) -> None:
    with cli_env.app.app_context():
        default = sa.inspect(cli_env.db.engine).default_schema_name or "main"
    schemas = _run(cli_env, "schemas")
    header, *rows = schemas.splitlines()
    assert header.split()[:2] == ["id", "name"]
    assert default in [row.split()[1] for row in rows]
    tables = _run(cli_env, "tables", default)
    listed = {line.split()[1] for line in tables.splitlines()[1:]}
    assert {"city", "country", "note"} <= listed
    assert not any(name.startswith("reflectsync_") for name in listed)


def test_tables_of_an_unknown_schema_is_a_clear_error(cli_env: AppEnv) -> None:
    result = cli_env.app.test_cli_runner().invoke(
        args=["reflectsync", "tables", "no_such_schema"]
    )
    assert result.exit_code != 0
    assert "No schema 'no_such_schema'" in result.output


def test_nodes_shows_how_far_behind_each_node_is(cli_env: AppEnv) -> None:
    assert "No registered nodes." in _run(cli_env, "nodes")
    client = cli_env.app.test_client()
    answer = client.post("/sync/register", json={"protocol": 2, "name": "field-7"})
    assert answer.status_code == 200, answer.json
    with cli_env.app.app_context():
        cli_env.db.session.add(cli_env.models.City(name="Lima"))
        cli_env.db.session.commit()
    output = _run(cli_env, "nodes")
    header, row = output.splitlines()[:2]
    assert "behind" in header
    assert "field-7" in row and "never" in row
    assert row.split()[-1] == "1"  # one version the node has not pulled
    assert "Server version: 1" in output


def test_the_group_name_is_configurable(make_app: AppFactory) -> None:
    env = make_app(REFLECTSYNC_CLI_GROUP="catalog")
    result = env.app.test_cli_runner().invoke(args=["catalog", "--help"])
    assert result.exit_code == 0 and "nodes" in result.output
