"""The optional PostgreSQL event trigger: DDL is noticed from one row instead
of the catalog fingerprint, and the fingerprint takes over again without it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from flask_reflectsync.errors import ConfigurationError
from flask_reflectsync.reflection import event_trigger

from .conftest import AppEnv
from .test_reflection import Psql, Recorder, cat, get_ok, psql, recorder, the_schema

__all__ = ["cat", "psql", "recorder"]  # fixtures used by name below


@pytest.fixture
def triggered(cat: AppEnv, psql: Psql) -> Iterator[AppEnv]:
    if psql.backend != "postgresql":
        pytest.skip("event triggers exist only on PostgreSQL")
    cat.sync.install_event_trigger()
    try:
        yield cat
    finally:
        cat.sync.uninstall_event_trigger()


@contextmanager
def _statements(env: AppEnv) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(env.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(env.db.engine, "before_cursor_execute", record)


def _table_names(env: AppEnv, psql: Psql) -> set[str]:
    client = env.app.test_client()
    schema = the_schema(client, psql)
    tables = get_ok(client, f"/schemas/{schema['id']}/tables")["tables"]
    return {t["name"] for t in tables}


def test_ddl_is_noticed_through_the_trigger(
    triggered: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    assert "rs_item" not in _table_names(triggered, psql)
    recorder.clear()
    with triggered.db.engine.connect() as connection:
        assert event_trigger.is_installed(connection)
        before = event_trigger.current_epoch(
            connection, triggered.db.metadata.tables["reflectsync_catalog_probes"]
        )
    psql.run("CREATE TABLE rs_item (id integer PRIMARY KEY)")
    with triggered.db.engine.connect() as connection:
        after = event_trigger.current_epoch(
            connection, triggered.db.metadata.tables["reflectsync_catalog_probes"]
        )
    assert before is not None and after is not None and int(after) > int(before)
    assert "rs_item" in _table_names(triggered, psql)
    assert [p["table"].name for p in recorder.named("table_created")] == ["rs_item"]


def test_an_unchanged_listing_skips_the_catalog_fingerprint(
    triggered: AppEnv, psql: Psql
) -> None:
    _table_names(triggered, psql)  # first listing: full comparison
    with _statements(triggered) as statements:
        _table_names(triggered, psql)
    assert statements, "the listing ran no SQL at all"
    assert not [s for s in statements if "pg_attribute" in s], statements
    assert any("pg_event_trigger" in s for s in statements)


def test_a_trigger_dropped_by_hand_falls_back_to_the_fingerprint(
    triggered: AppEnv, psql: Psql
) -> None:
    _table_names(triggered, psql)
    psql.run(*(f"DROP EVENT TRIGGER {name}" for name in event_trigger.TRIGGERS))
    psql.run("CREATE TABLE rs_item (id integer PRIMARY KEY)")
    # The epoch row is still there but no longer trusted.
    assert "rs_item" in _table_names(triggered, psql)


def test_listeners_hear_of_ddl_at_once(triggered: AppEnv, psql: Psql) -> None:
    import psycopg

    url = psql.engine.url.set(drivername="postgresql")
    with psycopg.connect(
        url.render_as_string(hide_password=False), autocommit=True
    ) as listener:
        listener.execute(f"LISTEN {event_trigger.CHANNEL}")
        psql.run("CREATE TABLE rs_item (id integer PRIMARY KEY)")
        heard = [n.channel for n in listener.notifies(timeout=5, stop_after=1)]
    assert heard == [event_trigger.CHANNEL]


def test_uninstall_removes_everything(triggered: AppEnv, psql: Psql) -> None:
    triggered.sync.uninstall_event_trigger()
    triggered.sync.uninstall_event_trigger()  # idempotent
    with psql.engine.connect() as connection:
        assert not event_trigger.is_installed(connection)
        functions = connection.execute(
            sa.text("SELECT count(*) FROM pg_proc WHERE proname = :name"),
            {"name": event_trigger.FUNCTION},
        ).scalar()
    assert functions == 0
    psql.run("CREATE TABLE rs_item (id integer PRIMARY KEY)")
    assert "rs_item" in _table_names(triggered, psql)


def test_other_backends_are_told_clearly(cat: AppEnv, psql: Psql) -> None:
    if psql.backend == "postgresql":
        pytest.skip("PostgreSQL has event triggers")
    with pytest.raises(ConfigurationError, match="only on PostgreSQL"):
        cat.sync.install_event_trigger()
