"""The extension object: registration, per-app state, configuration, tables."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.extension import CONFIG_DEFAULTS

from .conftest import AppEnv, AppFactory
from .oplog import commands


def test_second_registration_on_one_app_is_refused(env: AppEnv) -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        env.sync.init_app(env.app, env.db)
    with pytest.raises(RuntimeError, match="already registered"):
        ReflectSync().init_app(env.app, env.db)


def test_state_lives_in_app_extensions(env: AppEnv) -> None:
    state = env.app.extensions["reflectsync"]
    assert state.extension is env.sync
    assert state.db is env.db
    assert env.sync.get_state() is state
    assert not hasattr(env.sync, "app")


def test_accessor_without_registration_explains(env: AppEnv) -> None:
    other = ReflectSync()
    with pytest.raises(RuntimeError, match="did you call sync.init_app"):
        other.get_state()


def test_one_extension_serves_several_apps_with_their_own_state(
    make_app: AppFactory,
) -> None:
    first, second = make_app(), make_app(REFLECTSYNC_URL_PREFIX="/replica")
    shared = ReflectSync()
    apps = []
    for n in range(2):
        app = Flask(f"shared_{n}")
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
        db = SQLAlchemy(app)
        shared.init_app(app, db)
        apps.append((app, db))
    (app_a, db_a), (app_b, db_b) = apps
    assert shared.get_state(app_a).db is db_a
    assert shared.get_state(app_b).db is db_b
    assert shared.get_state(app_a) is not shared.get_state(app_b)
    # and the apps built by the fixture kept their own settings
    assert (
        first.app.extensions["reflectsync"].config["REFLECTSYNC_URL_PREFIX"] == "/sync"
    )
    assert second.app.extensions["reflectsync"].config["REFLECTSYNC_URL_PREFIX"] == (
        "/replica"
    )


def test_changes_in_one_app_are_logged_in_that_apps_log_only(
    make_app: AppFactory,
) -> None:
    first, second = make_app(), make_app()
    with first.app.app_context():
        first.db.session.add(first.models.City(name="only here"))
        first.db.session.commit()
        assert commands(first.db) == [("city", [1], "i")]
    with second.app.app_context():
        # Same database, other db object: it sees the row written by the first
        # app's session, but its own session logged nothing.
        assert second.db.session.scalars(sa.select(second.models.City.name)).all() == [
            "only here"
        ]


def test_config_defaults_are_set_without_overriding(make_app: AppFactory) -> None:
    env = make_app(REFLECTSYNC_URL_PREFIX="/api/sync")
    assert env.app.config["REFLECTSYNC_URL_PREFIX"] == "/api/sync"
    for key, default in CONFIG_DEFAULTS.items():
        if key != "REFLECTSYNC_URL_PREFIX":
            assert env.app.config[key] == default


def test_constructor_options_default_the_config() -> None:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy(app)
    ReflectSync(app, db, url_prefix="/elsewhere")
    assert app.config["REFLECTSYNC_URL_PREFIX"] == "/elsewhere"


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="url_prefx"):
        ReflectSync(url_prefx="/x")


def test_db_is_found_on_the_app_when_not_given() -> None:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy(app)
    sync = ReflectSync(app)
    assert sync.get_state(app).db is db


def test_missing_db_is_explained() -> None:
    with pytest.raises(RuntimeError, match="db.init_app"):
        ReflectSync(Flask(__name__))


def test_tables_are_on_db_metadata_with_the_prefix(env: AppEnv) -> None:
    names = {n for n in env.db.metadata.tables if n.startswith("reflectsync_")}
    assert {
        "reflectsync_nodes",
        "reflectsync_versions",
        "reflectsync_operations",
        "reflectsync_version_counter",
    } <= names
    inspector = sa.inspect(env.db.engine)
    assert names <= set(inspector.get_table_names())
    # pulling by version reads operations by version row, versions by number
    op_indexes = inspector.get_indexes("reflectsync_operations")
    assert any(ix["column_names"][:1] == ["version_id"] for ix in op_indexes)
    version_unique = [
        u["column_names"]
        for u in inspector.get_unique_constraints("reflectsync_versions")
    ] + [
        ix["column_names"]
        for ix in inspector.get_indexes("reflectsync_versions")
        if ix.get("unique")
    ]
    assert ["number"] in version_unique


def test_sync_track_is_track(env: AppEnv) -> None:
    class Free:
        pass

    assert env.sync.track(Free) is Free
    assert track(Free) is Free


def test_json_error_envelope_inside_the_prefix_only(env: AppEnv) -> None:
    client = env.app.test_client()
    inside = client.get("/sync/no-such-route")
    assert inside.status_code == 404
    assert inside.json is not None
    assert inside.json["ok"] is False and inside.json["status"] == 404
    assert inside.json["error"]
    outside = client.get("/elsewhere")
    assert outside.status_code == 404
    assert outside.json is None  # the app's own error pages are left alone
