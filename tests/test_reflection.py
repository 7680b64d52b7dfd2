"""Reflection: the catalog follows DDL made by other programs.

Every change here is made through a separate engine and connection, the way
psql or a migration would make it, and then observed through the catalog
routes, ``sync.reflect()`` and the signals.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync import ReflectSync, signals
from flask_reflectsync.errors import CatalogAccessWarning
from flask_reflectsync.reflection import (
    CatalogColumn,
    CatalogSchema,
    CatalogTable,
    Change,
    ColumnChange,
    ColumnSnapshot,
    ForeignKey,
    SchemaCreated,
    SchemaDropped,
    SchemaRenamed,
    TableAltered,
    TableCreated,
    TableDropped,
    TableRenamed,
    UniqueConstraint,
    define_catalog_tables,
)

from .conftest import AppEnv, AppFactory

PREFIX = "/sync"
# In an order that drops referencing tables first.
TABLES = ("rs_child", "rs_renamed", "rs_item", "rs_parent")
PG_SCHEMAS = ("rs_extra", "rs_extra_renamed")

REFLECTION_SIGNALS = {
    "schema_created": signals.schema_created,
    "schema_dropped": signals.schema_dropped,
    "schema_renamed": signals.schema_renamed,
    "table_created": signals.table_created,
    "table_dropped": signals.table_dropped,
    "table_renamed": signals.table_renamed,
    "table_altered": signals.table_altered,
}


@dataclass
class Recorder:
    """Every reflection signal the app sent, with its payload."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [payload for event, payload in self.events if event == name]

    def about(self, name: str, table: str) -> list[dict[str, Any]]:
        return [p for p in self.named(name) if p["table"].name == table]

    def clear(self) -> None:
        self.events.clear()


class Psql:
    """A separate connection to the same database, like a psql session."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.backend = self.engine.dialect.name

    def run(self, *statements: str) -> None:
        with self.engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)

    def cleanup(self) -> None:
        with self.engine.begin() as connection:
            if self.backend == "postgresql":
                for schema in PG_SCHEMAS:
                    connection.exec_driver_sql(
                        f"DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )
                connection.exec_driver_sql("DROP MATERIALIZED VIEW IF EXISTS rs_mat")
            connection.exec_driver_sql("DROP VIEW IF EXISTS rs_item_view")
            for table in TABLES:
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def psql(database_url: str) -> Iterator[Psql]:
    other = Psql(database_url)
    other.cleanup()
    try:
        yield other
    finally:
        other.cleanup()
        other.engine.dispose()


@pytest.fixture
def cat(make_app: AppFactory, psql: Psql) -> Iterator[AppEnv]:
    """An app whose catalog routes are open to everyone (a check that says
    yes), inside its app context."""
    item = make_app()
    item.sync.catalog_access(lambda: True)
    with item.app.app_context():
        yield item


@pytest.fixture
def recorder(cat: AppEnv) -> Iterator[Recorder]:
    found = Recorder()
    receivers = []
    for name, signal in REFLECTION_SIGNALS.items():

        def receive(sender: Any, _name: str = name, **payload: Any) -> None:
            assert sender is cat.app
            found.events.append((_name, payload))

        receivers.append(receive)
        signal.connect(receive, sender=cat.app)
    try:
        yield found
    finally:
        for signal, receive in zip(REFLECTION_SIGNALS.values(), receivers, strict=True):
            signal.disconnect(receive, sender=cat.app)


def get_ok(client: FlaskClient, path: str) -> dict[str, Any]:
    response = client.get(PREFIX + path)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["ok"] is True
    return body  # type: ignore[no-any-return]


def the_schema(
    client: FlaskClient, psql: Psql, name: str | None = None
) -> dict[str, Any]:
    """The listed schema called ``name`` (default: where tables go by default)."""
    wanted = name or {"postgresql": "public", "sqlite": "main"}.get(
        psql.backend, psql.engine.url.database
    )
    schemas = get_ok(client, "/schemas")["schemas"]
    found = [schema for schema in schemas if schema["name"] == wanted]
    assert len(found) == 1, schemas
    return found[0]


def tables_of(client: FlaskClient, schema_id: int, **query: str) -> dict[str, Any]:
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    listed = get_ok(client, f"/schemas/{schema_id}/tables{suffix}")["tables"]
    by_name = {table["name"]: table for table in listed if not table["deleted"]}
    return by_name


def column(table: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in table["columns"] if c["name"] == name]
    assert len(found) == 1, table["columns"]
    return found[0]


def create_family(psql: Psql) -> None:
    psql.run(
        "CREATE TABLE rs_parent (id INTEGER PRIMARY KEY, code VARCHAR(12) NOT NULL,"
        " label VARCHAR(40) DEFAULT 'none', CONSTRAINT rs_parent_code UNIQUE (code))",
        "CREATE TABLE rs_child (id INTEGER PRIMARY KEY, parent_id INTEGER,"
        " CONSTRAINT rs_child_parent FOREIGN KEY (parent_id)"
        " REFERENCES rs_parent (id) ON DELETE CASCADE)",
    )


# -- listing and get-by-id -------------------------------------------------------


def test_created_tables_are_listed_and_served_with_their_columns(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    client = cat.app.test_client()
    schema = the_schema(client, psql)
    assert {"id", "name", "oid", "last_synced", "deleted"} <= schema.keys()
    tables_of(client, schema["id"])
    recorder.clear()

    create_family(psql)
    listed = tables_of(client, schema["id"])

    assert {"rs_parent", "rs_child"} <= listed.keys()
    parent = listed["rs_parent"]
    assert parent["kind"] == "table"
    assert parent["deleted"] is False
    assert {"id", "name", "oid", "last_synced", "deleted"} <= parent.keys()
    assert "columns" not in parent  # listings are summaries

    created = {p["table"].name: p["table"] for p in recorder.named("table_created")}
    assert set(created) == {"rs_parent", "rs_child"}
    assert created["rs_parent"].id == parent["id"]
    assert [c.name for c in created["rs_parent"].columns] == ["id", "code", "label"]

    detail = get_ok(client, f"/tables/{parent['id']}")["table"]
    assert [c["name"] for c in detail["columns"]] == ["id", "code", "label"]
    assert detail["primary_key"] == ["id"]
    assert column(detail, "id")["primary_key"] is True
    assert column(detail, "code")["nullable"] is False
    assert column(detail, "label")["nullable"] is True
    assert "varchar" in column(detail, "code")["type"].lower().replace(
        "character varying", "varchar"
    )
    assert "'none'" in column(detail, "label")["default"]
    assert [u["columns"] for u in detail["unique_constraints"]] == [["code"]]

    child = get_ok(client, f"/tables/{listed['rs_child']['id']}")["table"]
    (key,) = child["foreign_keys"]
    assert key["columns"] == ["parent_id"]
    assert key["referred_table"] == "rs_parent"
    assert key["referred_columns"] == ["id"]
    assert key["on_delete"] == "CASCADE"


def test_composite_keys_keep_their_order_past_a_dropped_column(
    cat: AppEnv, psql: Psql
) -> None:
    psql.run(
        "CREATE TABLE rs_parent (a INTEGER NOT NULL, b INTEGER NOT NULL,"
        " CONSTRAINT rs_parent_pk PRIMARY KEY (b, a))",
        "CREATE TABLE rs_child (junk INTEGER, id INTEGER PRIMARY KEY, x INTEGER,"
        " y INTEGER, CONSTRAINT rs_child_uq UNIQUE (y, x),"
        " CONSTRAINT rs_child_fk FOREIGN KEY (y, x) REFERENCES rs_parent (b, a))",
        "ALTER TABLE rs_child DROP COLUMN junk",
    )
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])

    assert listed["rs_parent"]["primary_key"] == ["b", "a"]
    child = get_ok(client, f"/tables/{listed['rs_child']['id']}")["table"]
    assert child == {**listed["rs_child"], "columns": child["columns"]}
    assert [c["name"] for c in child["columns"]] == ["id", "x", "y"]
    assert [c["position"] for c in child["columns"]] == [1, 2, 3]
    assert child["primary_key"] == ["id"]
    (key,) = child["foreign_keys"]
    assert (key["columns"], key["referred_columns"]) == (["y", "x"], ["b", "a"])
    assert [u["columns"] for u in child["unique_constraints"]] == [["y", "x"]]


def test_the_extensions_own_tables_are_not_listed(cat: AppEnv, psql: Psql) -> None:
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])
    assert "city" in listed  # the app's models are
    assert not [name for name in listed if name.startswith("reflectsync_")]


def test_views_are_listed_with_their_kind(cat: AppEnv, psql: Psql) -> None:
    psql.run(
        "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER)",
        "CREATE VIEW rs_item_view AS SELECT id, price FROM rs_item",
    )
    if psql.backend == "postgresql":
        psql.run("CREATE MATERIALIZED VIEW rs_mat AS SELECT id FROM rs_item")
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])

    assert listed["rs_item"]["kind"] == "table"
    assert listed["rs_item_view"]["kind"] == "view"
    view = get_ok(client, f"/tables/{listed['rs_item_view']['id']}")["table"]
    assert [c["name"] for c in view["columns"]] == ["id", "price"]
    if psql.backend == "postgresql":
        assert listed["rs_mat"]["kind"] == "materialized_view"


def test_comments_are_reflected(cat: AppEnv, psql: Psql) -> None:
    if psql.backend == "sqlite":
        pytest.skip("SQLite has no comments")
    if psql.backend == "postgresql":
        psql.run(
            "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER)",
            "COMMENT ON TABLE rs_item IS 'Things we sell'",
            "COMMENT ON COLUMN rs_item.price IS 'In cents'",
        )
    else:
        psql.run(
            "CREATE TABLE rs_item (id INTEGER PRIMARY KEY,"
            " price INTEGER COMMENT 'In cents') COMMENT 'Things we sell'"
        )
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])
    detail = get_ok(client, f"/tables/{listed['rs_item']['id']}")["table"]
    assert detail["comment"] == "Things we sell"
    assert column(detail, "price")["comment"] == "In cents"


def test_unknown_ids_are_404_json(cat: AppEnv, psql: Psql) -> None:
    client = cat.app.test_client()
    for path in ("/tables/999999", "/schemas/999999/tables"):
        response = client.get(PREFIX + path)
        assert response.status_code == 404
        body = response.get_json()
        assert body["ok"] is False and body["status"] == 404
        assert "999999" in body["error"]


# -- the probe: unchanged means nothing rebuilt ------------------------------------


@pytest.fixture
def writes(cat: AppEnv) -> Iterator[list[str]]:
    """Every INSERT/UPDATE/DELETE the app's engine runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().split(" ", 1)[0].upper() in (
            "INSERT",
            "UPDATE",
            "DELETE",
        ):
            seen.append(statement)

    sa.event.listen(cat.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(cat.db.engine, "before_cursor_execute", record)


def test_listing_an_unchanged_schema_rebuilds_nothing(
    cat: AppEnv, psql: Psql, recorder: Recorder, writes: list[str]
) -> None:
    create_family(psql)
    client = cat.app.test_client()
    schema = the_schema(client, psql)
    first = tables_of(client, schema["id"])
    writes.clear()
    recorder.clear()

    assert the_schema(client, psql) == schema
    again = tables_of(client, schema["id"])
    detail = get_ok(client, f"/tables/{first['rs_parent']['id']}")["table"]

    assert again == first
    assert detail["name"] == "rs_parent"
    assert writes == []
    assert recorder.events == []


def test_a_refresh_moves_last_synced_of_every_compared_table_only(
    cat: AppEnv, psql: Psql, writes: list[str]
) -> None:
    create_family(psql)
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER)")
    client = cat.app.test_client()
    schema = the_schema(client, psql)
    first = tables_of(client, schema["id"])
    psql.run("DROP TABLE rs_item")
    tables_of(client, schema["id"])
    dropped = tables_of(client, schema["id"], include_deleted="1")
    gone = [t for t in get_ok(client, f"/schemas/{schema['id']}/tables"
                              "?include_deleted=1")["tables"]
            if t["name"] == "rs_item" and t["deleted"]]
    assert len(gone) == 1
    writes.clear()

    psql.run("ALTER TABLE rs_parent ADD COLUMN extra INTEGER")
    after = tables_of(client, schema["id"])

    # Every live table was compared: all share the comparison's time, later
    # than before; only the altered table's rows were written.
    tables_written = [w for w in writes if "reflectsync_catalog_tables" in w
                      and w.lstrip().upper().startswith("UPDATE")]
    assert len(tables_written) == 1, tables_written
    synced = {table["last_synced"] for table in after.values()}
    assert len(synced) == 1
    assert synced.pop() >= first["rs_child"]["last_synced"]
    assert dropped.keys() == after.keys()
    # Columns served later say when they were seen: at that same comparison.
    detail = get_ok(client, f"/tables/{after['rs_child']['id']}")["table"]
    assert {c["last_synced"] for c in detail["columns"]} == {
        after["rs_child"]["last_synced"]
    }
    # The dropped table keeps the time it was found gone.
    (still_gone,) = [
        t for t in get_ok(client, f"/schemas/{schema['id']}/tables"
                          "?include_deleted=1")["tables"]
        if t["name"] == "rs_item" and t["deleted"]
    ]
    assert still_gone["last_synced"] == gone[0]["last_synced"]


def test_get_by_id_serves_the_cached_table_until_it_changes(
    cat: AppEnv, psql: Psql, recorder: Recorder, writes: list[str]
) -> None:
    create_family(psql)
    client = cat.app.test_client()
    parent_id = tables_of(client, the_schema(client, psql)["id"])["rs_parent"]["id"]
    writes.clear()
    get_ok(client, f"/tables/{parent_id}")
    assert writes == []

    psql.run("ALTER TABLE rs_parent ADD COLUMN extra INTEGER")
    detail = get_ok(client, f"/tables/{parent_id}")["table"]

    assert [c["name"] for c in detail["columns"]] == ["id", "code", "label", "extra"]
    (altered,) = recorder.about("table_altered", "rs_parent")
    assert [(c.kind, c.name) for c in altered["changes"]] == [("added", "extra")]


def column_rows(env: AppEnv, table_id: int) -> list[tuple[int, str]]:
    """The catalog's column rows of a table, as (id, name)."""
    columns = env.db.metadata.tables["reflectsync_catalog_columns"]
    with env.db.engine.connect() as connection:
        found = connection.execute(
            sa.select(columns.c.id, columns.c.name)
            .where(columns.c.table_id == table_id, sa.not_(columns.c.deleted))
            .order_by(columns.c.position)
        )
        return [(row.id, row.name) for row in found]


def test_column_rows_are_written_once_when_first_served(
    cat: AppEnv, psql: Psql, writes: list[str], database_url: str
) -> None:
    """A listing writes one row per table; the columns get their catalog rows
    (and ids) the first time the table is asked for, and keep them, in every
    process."""
    create_family(psql)
    client = cat.app.test_client()
    parent_id = tables_of(client, the_schema(client, psql)["id"])["rs_parent"]["id"]
    assert column_rows(cat, parent_id) == []

    first = get_ok(client, f"/tables/{parent_id}")["table"]
    stored = column_rows(cat, parent_id)
    assert [name for _, name in stored] == ["id", "code", "label"]
    assert [(c["id"], c["name"]) for c in first["columns"]] == stored

    writes.clear()
    other_app = Flask("other_worker")
    other_app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    other_db = SQLAlchemy()
    other_db.init_app(other_app)
    ReflectSync(other_app, other_db).catalog_access(lambda: True)
    with other_app.app_context():
        again = get_ok(other_app.test_client(), f"/tables/{parent_id}")["table"]
        other_db.engine.dispose()
    assert again["columns"] == first["columns"]
    assert get_ok(client, f"/tables/{parent_id}")["table"] == first
    assert column_rows(cat, parent_id) == stored
    assert writes == []


def test_a_table_altered_before_it_was_ever_served_is_served_as_it_is_now(
    cat: AppEnv, psql: Psql
) -> None:
    """Nobody receives signals here, so no refresh writes column rows: the
    first GET writes the columns the database has now."""
    create_family(psql)
    client = cat.app.test_client()
    parent_id = tables_of(client, the_schema(client, psql)["id"])["rs_parent"]["id"]
    psql.run("ALTER TABLE rs_parent ADD COLUMN extra INTEGER")

    detail = get_ok(client, f"/tables/{parent_id}")["table"]

    assert [c["name"] for c in detail["columns"]] == ["id", "code", "label", "extra"]
    assert [(c["id"], c["name"]) for c in detail["columns"]] == column_rows(
        cat, parent_id
    )


def test_a_table_never_served_is_altered_and_dropped_with_its_columns(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """The columns a listing saw are the ``before`` of the next change even if
    nobody ever asked for the table, and the last columns of a dropped one."""
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    parent = tables_of(client, schema_id)["rs_parent"]
    recorder.clear()

    psql.run("ALTER TABLE rs_parent DROP COLUMN label")
    tables_of(client, schema_id)
    (event,) = recorder.named("table_altered")
    (change,) = event["changes"]
    assert (change.kind, change.name) == ("dropped", "label")
    assert change.before is not None and "'none'" in (change.before.default or "")
    assert [c.name for c in event["table"].columns] == ["id", "code"]

    psql.run("DROP TABLE rs_child")
    tables_of(client, schema_id)
    (dropped,) = recorder.named("table_dropped")
    assert [c.name for c in dropped["table"].columns] == ["id", "parent_id"]
    served = get_ok(client, f"/tables/{parent['id']}")["table"]["columns"]
    assert [(c["id"], c["name"]) for c in served] == [
        (c.id, c.name) for c in event["table"].columns
    ]


def catalog_rows(env: AppEnv) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the catalog tables hold, without what differs between two
    runs of the same DDL (ids, oids, digests, versions, times)."""
    tables = define_catalog_tables(env.db.metadata)
    s, t, c, p = tables.schemas, tables.tables, tables.columns, tables.probes
    with env.db.engine.connect() as connection:
        schema_names = {row.id: row.name for row in connection.execute(sa.select(s))}
        table_names = {
            row.id: (schema_names[row.schema_id], row.name)
            for row in connection.execute(sa.select(t))
        }
        return {
            "schemas": sorted(
                (row.name, row.comment, bool(row.deleted))
                for row in connection.execute(sa.select(s))
            ),
            "tables": sorted(
                (
                    table_names[row.id], row.kind, row.comment, bool(row.deleted),
                    bool(row.columns_written), row.columns_json,
                    json.dumps(row.primary_key), json.dumps(row.foreign_keys),
                    json.dumps(row.unique_constraints),
                )
                for row in connection.execute(sa.select(t))
            ),
            "columns": sorted(
                (
                    table_names[row.table_id], row.oid, row.name, row.position,
                    row.type, bool(row.nullable), row.default,
                    bool(row.primary_key), row.comment, bool(row.deleted),
                )
                for row in connection.execute(sa.select(c))
            ),
            "probes": sorted(
                scope if ":" not in scope
                else f"tables:{schema_names[int(scope.split(':')[1])]}"
                for scope in connection.execute(sa.select(p.c.scope)).scalars()
            ),
        }


def test_the_catalog_rows_written_do_not_depend_on_who_listens(
    cat: AppEnv, psql: Psql
) -> None:
    """The same DDL, listed once with nobody listening and once with a
    receiver on every reflection signal, leaves the same catalog rows."""
    client = cat.app.test_client()

    def run(listen: bool) -> tuple[dict[str, list[tuple[Any, ...]]], Recorder]:
        psql.cleanup()
        with cat.db.engine.begin() as connection:
            tables = define_catalog_tables(cat.db.metadata)
            for table in (tables.columns, tables.tables, tables.probes, tables.schemas):
                connection.execute(table.delete())
        create_family(psql)
        psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, name VARCHAR(20))")
        schema_id = the_schema(client, psql)["id"]
        tables_of(client, schema_id)  # the first comparison of the schema
        heard = Recorder()
        receivers = []
        if listen:
            for name, signal in REFLECTION_SIGNALS.items():

                def receive(sender: Any, _name: str = name, **payload: Any) -> None:
                    heard.events.append((_name, payload))

                receivers.append((signal, receive))
                signal.connect(receive, sender=cat.app)
        try:
            # Tables of the first comparison, never served: altered, dropped,
            # renamed; and a view created after it.
            psql.run(
                "ALTER TABLE rs_parent ADD COLUMN extra INTEGER",
                "DROP TABLE rs_item",
                "CREATE VIEW rs_item_view AS SELECT id, code FROM rs_parent",
            )
            tables_of(client, schema_id)
            psql.run("ALTER TABLE rs_child RENAME TO rs_renamed")
            tables_of(client, schema_id)
        finally:
            for signal, receive in receivers:
                signal.disconnect(receive, sender=cat.app)
        return catalog_rows(cat), heard

    unheard, _ = run(listen=False)
    heard_rows, heard = run(listen=True)

    (created,) = heard.about("table_created", "rs_item_view")
    assert [c.name for c in created["table"].columns] == ["id", "code"]
    (altered,) = heard.about("table_altered", "rs_parent")
    assert [c.name for c in altered["table"].columns][-1] == "extra"
    (dropped,) = heard.about("table_dropped", "rs_item")
    assert [c.name for c in dropped["table"].columns] == ["id", "name"]
    assert heard_rows == unheard


def test_tables_a_first_listing_finds_are_announced_with_their_columns(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """The first listing of a schema leaves column rows for later, yet a
    ``table_created`` receiver gets each table with its columns and the ids
    ``GET /tables/<id>`` serves."""
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    recorder.clear()

    parent = tables_of(client, schema_id)["rs_parent"]

    (event,) = recorder.about("table_created", "rs_parent")
    announced = [(c.id, c.name) for c in event["table"].columns]
    assert [name for _, name in announced] == ["id", "code", "label"]
    served = get_ok(client, f"/tables/{parent['id']}")["table"]["columns"]
    assert [(c["id"], c["name"]) for c in served] == announced


def test_unusual_text_survives_the_catalog(cat: AppEnv, psql: Psql) -> None:
    """Names and comments with quotes, backslashes, control characters and
    non-ASCII letters come back exactly as the database has them."""
    name = "rs_item"
    odd_column = 'wéird "col'
    label = "Ünïcode 'quoted' back\\slash \x1e\x1f"
    if psql.backend == "mysql":
        quoted = f"`{odd_column}`"
    else:
        quoted = '"' + odd_column.replace('"', '""') + '"'
    psql.run(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, {quoted} INTEGER)")
    if psql.backend == "postgresql":
        literal = (
            label.replace("\\", "\\\\").replace("'", "''")
            .replace("\x1e", "\\x1e").replace("\x1f", "\\x1f")
        )
        psql.run(f"COMMENT ON TABLE {name} IS E'{literal}'")
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])[name]
    detail = get_ok(client, f"/tables/{listed['id']}")["table"]
    assert [c["name"] for c in detail["columns"]] == ["id", odd_column]
    if psql.backend == "postgresql":
        assert listed["comment"] == detail["comment"] == label


# -- renames, alters, drops --------------------------------------------------------


def test_table_rename(cat: AppEnv, psql: Psql, recorder: Recorder) -> None:
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    before = tables_of(client, schema_id)["rs_child"]
    recorder.clear()

    psql.run("ALTER TABLE rs_child RENAME TO rs_renamed")
    after = tables_of(client, schema_id)

    assert "rs_child" not in after
    renamed = after["rs_renamed"]
    # PostgreSQL: same oid. SQLite: same root page and columns. MariaDB/MySQL:
    # same InnoDB table id (issue 18; without the PROCESS privilege a rename
    # is still a drop + create: test_reflection_identity.py).
    assert renamed["id"] == before["id"]
    (event,) = recorder.named("table_renamed")
    assert (event["old_name"], event["new_name"]) == ("rs_child", "rs_renamed")
    assert event["table"].id == before["id"]
    assert event["table"].name == "rs_renamed"
    assert recorder.named("table_dropped") == []
    assert (
        get_ok(client, f"/tables/{before['id']}")["table"]["name"] == "rs_renamed"
    )


def test_table_alter_reports_column_changes(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    parent = tables_of(client, schema_id)["rs_parent"]
    before = get_ok(client, f"/tables/{parent['id']}")["table"]
    recorder.clear()

    statements = [
        "ALTER TABLE rs_parent ADD COLUMN weight INTEGER",
        "ALTER TABLE rs_parent RENAME COLUMN label TO title",
    ]
    if psql.backend == "postgresql":
        statements.append("ALTER TABLE rs_parent ALTER COLUMN weight SET NOT NULL")
    elif psql.backend == "mysql":
        statements.append("ALTER TABLE rs_parent MODIFY weight INTEGER NOT NULL")
    psql.run(*statements)
    listed = tables_of(client, schema_id)

    assert listed["rs_parent"]["id"] == parent["id"]
    (event,) = recorder.named("table_altered")
    assert event["table"].id == parent["id"]
    assert [c.name for c in event["table"].columns] == ["id", "code", "title", "weight"]
    changes = {(c.kind, c.name, c.old_name) for c in event["changes"]}
    if psql.backend == "postgresql":
        # Columns keep their attnum across a rename.
        assert changes == {("added", "weight", None), ("renamed", "title", "label")}
        (rename,) = [c for c in event["changes"] if c.kind == "renamed"]
        assert rename.fields == ()
        title = column(get_ok(client, f"/tables/{parent['id']}")["table"], "title")
        assert title["id"] == column(before, "label")["id"]
    else:
        # Name identity: a renamed column is a dropped and an added one.
        assert changes == {
            ("added", "weight", None),
            ("added", "title", None),
            ("dropped", "label", None),
        }
    detail = get_ok(client, f"/tables/{parent['id']}")["table"]
    assert column(detail, "weight")["nullable"] is (psql.backend == "sqlite")
    assert recorder.named("table_renamed") == []


def test_alter_type_and_nullability(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    if psql.backend == "sqlite":
        pytest.skip("SQLite cannot alter a column in place")
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    tables_of(client, schema_id)
    recorder.clear()

    if psql.backend == "postgresql":
        psql.run(
            "ALTER TABLE rs_parent ALTER COLUMN label TYPE VARCHAR(80),"
            " ALTER COLUMN label SET NOT NULL"
        )
    else:
        psql.run(
            "ALTER TABLE rs_parent MODIFY label VARCHAR(80) NOT NULL DEFAULT 'none'"
        )
    tables_of(client, schema_id)

    (event,) = recorder.named("table_altered")
    (change,) = event["changes"]
    assert (change.kind, change.name) == ("altered", "label")
    assert set(change.fields) == {"type", "nullable"}
    assert change.before.nullable is True and change.after.nullable is False
    assert "80" in change.after.type


def test_constraint_changes_are_attributes(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    if psql.backend == "sqlite":
        pytest.skip("SQLite cannot add constraints to an existing table")
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    tables_of(client, schema_id)
    recorder.clear()

    psql.run("ALTER TABLE rs_parent ADD CONSTRAINT rs_parent_label UNIQUE (label)")
    tables_of(client, schema_id)

    (event,) = recorder.named("table_altered")
    assert event["attributes"] == ("unique_constraints",)
    assert event["changes"] == ()
    uniques = event["table"].unique_constraints
    assert sorted(u["columns"] for u in uniques) == [["code"], ["label"]]


def test_renaming_what_a_foreign_key_refers_to_alters_the_referring_table(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """The child's own catalog rows do not change when its parent (or the
    parent's key column) is renamed, yet what the child shows does."""
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    child_id = tables_of(client, schema_id)["rs_child"]["id"]
    recorder.clear()

    psql.run("ALTER TABLE rs_parent RENAME COLUMN id TO pid")
    # The listing itself notices (asking by id would compare the child anyway).
    (key,) = tables_of(client, schema_id)["rs_child"]["foreign_keys"]
    assert (key["referred_table"], key["referred_columns"]) == ("rs_parent", ["pid"])
    (event,) = recorder.about("table_altered", "rs_child")
    assert event["attributes"] == ("foreign_keys",)
    recorder.clear()

    psql.run("ALTER TABLE rs_parent RENAME TO rs_renamed")
    (key,) = tables_of(client, schema_id)["rs_child"]["foreign_keys"]
    assert key["referred_table"] == "rs_renamed"
    (event,) = recorder.about("table_altered", "rs_child")
    assert event["attributes"] == ("foreign_keys",)
    (key,) = get_ok(client, f"/tables/{child_id}")["table"]["foreign_keys"]
    assert key["referred_table"] == "rs_renamed"


def test_catalog_changes_nobody_sees_announce_nothing(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    if psql.backend != "postgresql":
        pytest.skip("privileges are catalog rows only on PostgreSQL here")
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    before = tables_of(client, schema_id)
    recorder.clear()

    psql.run(
        "GRANT SELECT ON rs_parent TO PUBLIC",
        "ALTER TABLE rs_child ALTER COLUMN parent_id SET STATISTICS 500",
    )
    after = tables_of(client, schema_id)
    psql.run("ALTER TABLE rs_parent ADD COLUMN extra INTEGER")
    tables_of(client, schema_id)

    assert {name: t["id"] for name, t in after.items()} == {
        name: t["id"] for name, t in before.items()
    }
    # Only the real change is announced, against the columns seen before.
    (event,) = recorder.events
    assert event[0] == "table_altered"
    assert [(c.kind, c.name) for c in event[1]["changes"]] == [("added", "extra")]


def test_a_renamed_column_type_is_served_and_announced_when_asked_for(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """Renaming a type touches no row of the table: the listing (which shows
    no column types) stays as it is, the table asked for by id is compared in
    full."""
    if psql.backend != "postgresql":
        pytest.skip("named types are PostgreSQL's")
    psql.run(
        "DROP TYPE IF EXISTS rs_mood CASCADE",
        "DROP TYPE IF EXISTS rs_feeling CASCADE",
        "CREATE TYPE rs_mood AS ENUM ('ok', 'bad')",
        "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, mood rs_mood)",
        "CREATE TABLE rs_parent (id INTEGER PRIMARY KEY)",
    )
    try:
        client = cat.app.test_client()
        schema_id = the_schema(client, psql)["id"]
        item_id = tables_of(client, schema_id)["rs_item"]["id"]
        recorder.clear()

        psql.run(
            "ALTER TYPE rs_mood RENAME TO rs_feeling",
            "ALTER TABLE rs_parent ADD COLUMN extra INTEGER",
        )
        tables_of(client, schema_id)
        assert recorder.about("table_altered", "rs_item") == []
        detail = get_ok(client, f"/tables/{item_id}")["table"]

        assert column(detail, "mood")["type"] == "rs_feeling"
        (event,) = recorder.about("table_altered", "rs_item")
        (change,) = event["changes"]
        assert (change.name, change.fields) == ("mood", ("type",))
    finally:
        psql.run("DROP TABLE IF EXISTS rs_item", "DROP TYPE IF EXISTS rs_feeling")


def test_dropped_table_is_gone_by_id_and_signalled(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    child = tables_of(client, schema_id)["rs_child"]
    recorder.clear()

    psql.run("DROP TABLE rs_child")
    # Asked by id first, without listing: the answer must already know.
    response = client.get(f"{PREFIX}/tables/{child['id']}")

    assert response.status_code == 410
    body = response.get_json()
    assert body == {"ok": False, "error": body["error"], "status": 410, "code": "gone"}
    assert "rs_child" in body["error"] and "dropped" in body["error"]
    (event,) = recorder.named("table_dropped")
    assert event["table"].id == child["id"]
    assert event["table"].deleted is True
    assert "rs_child" not in tables_of(client, schema_id)
    with_deleted = get_ok(client, f"/schemas/{schema_id}/tables?include_deleted=1")
    (gone,) = [t for t in with_deleted["tables"] if t["id"] == child["id"]]
    assert gone["deleted"] is True


def test_drop_and_recreate(cat: AppEnv, psql: Psql, recorder: Recorder) -> None:
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    child = tables_of(client, schema_id)["rs_child"]
    recorder.clear()

    psql.run(
        "DROP TABLE rs_child",
        "CREATE TABLE rs_child (id INTEGER PRIMARY KEY, note VARCHAR(10))",
    )
    response = client.get(f"{PREFIX}/tables/{child['id']}")
    listed = tables_of(client, schema_id)

    if psql.backend == "postgresql":
        # A new oid: a new object, and the old id says where to look.
        assert response.status_code == 410
        new_id = listed["rs_child"]["id"]
        assert new_id != child["id"]
        assert f"id {new_id}" in response.get_json()["error"]
        assert [p["table"].id for p in recorder.named("table_dropped")] == [child["id"]]
        assert [p["table"].id for p in recorder.named("table_created")] == [new_id]
    else:
        # Identity is the name: the same table, altered.
        assert response.status_code == 200
        assert listed["rs_child"]["id"] == child["id"]
        assert [c["name"] for c in response.get_json()["table"]["columns"]] == [
            "id",
            "note",
        ]
        (event,) = recorder.named("table_altered")
        assert {(c.kind, c.name) for c in event["changes"]} == {
            ("added", "note"),
            ("dropped", "parent_id"),
        }
        assert event["attributes"] == ("foreign_keys",)


# -- schemas (PostgreSQL) --------------------------------------------------------


def test_schema_create_rename_drop(cat: AppEnv, psql: Psql, recorder: Recorder) -> None:
    if psql.backend != "postgresql":
        pytest.skip("only PostgreSQL has schemas inside a database")
    client = cat.app.test_client()
    get_ok(client, "/schemas")
    recorder.clear()

    psql.run("CREATE SCHEMA rs_extra", "CREATE TABLE rs_extra.rs_item (id INTEGER)")
    extra = the_schema(client, psql, "rs_extra")
    (created,) = recorder.named("schema_created")
    assert created["schema"].id == extra["id"]
    item = tables_of(client, extra["id"])["rs_item"]
    assert item["schema"] == "rs_extra"

    psql.run("ALTER SCHEMA rs_extra RENAME TO rs_extra_renamed")
    renamed = the_schema(client, psql, "rs_extra_renamed")
    assert renamed["id"] == extra["id"] and renamed["oid"] == extra["oid"]
    (event,) = recorder.named("schema_renamed")
    assert (event["old_name"], event["new_name"]) == ("rs_extra", "rs_extra_renamed")
    assert event["schema"].name == "rs_extra_renamed"
    # Tables keep their identity too.
    assert tables_of(client, extra["id"])["rs_item"]["id"] == item["id"]

    psql.run("DROP SCHEMA rs_extra_renamed CASCADE")
    response = client.get(f"{PREFIX}/schemas/{extra['id']}/tables")
    assert response.status_code == 410
    assert "rs_extra_renamed" in response.get_json()["error"]
    (dropped,) = recorder.named("schema_dropped")
    assert dropped["schema"].deleted is True
    assert [p["table"].id for p in recorder.named("table_dropped")] == [item["id"]]
    assert client.get(f"{PREFIX}/tables/{item['id']}").status_code == 410
    names = [s["name"] for s in get_ok(client, "/schemas")["schemas"]]
    assert "rs_extra_renamed" not in names


# -- reflect() -------------------------------------------------------------------


def test_reflect_returns_typed_changes_in_signal_order(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    first = cat.sync.reflect()
    assert any(isinstance(change, SchemaCreated) for change in first)
    assert cat.sync.reflect() == []  # nothing changed since
    recorder.clear()

    create_family(psql)
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY)")
    changes = cat.sync.reflect()

    assert all(isinstance(change, TableCreated) for change in changes)
    assert sorted(c.table.name for c in changes) == ["rs_child", "rs_item", "rs_parent"]
    assert [name for name, _ in recorder.events] == ["table_created"] * 3
    data = changes[0].to_dict()
    assert data["event"] == "table_created"
    assert data["table"]["columns"]

    psql.run("ALTER TABLE rs_item ADD COLUMN size INTEGER")
    (altered,) = cat.sync.reflect()
    assert isinstance(altered, TableAltered)
    assert altered.to_dict()["changes"][0]["after"]["name"] == "size"


def test_catalog_is_shared_by_processes(
    cat: AppEnv, psql: Psql, recorder: Recorder, database_url: str
) -> None:
    """A second app (another worker) on the same database sees the same ids
    and does not announce changes the first one already announced."""
    create_family(psql)
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    listed = tables_of(client, schema_id)

    other_app = Flask("other_worker")
    other_app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    other_db = SQLAlchemy()
    other_db.init_app(other_app)
    other_sync = ReflectSync(other_app, other_db)
    other_sync.catalog_access(lambda: True)
    heard: list[str] = []

    def hear(sender: Any, **payload: Any) -> None:
        heard.append("event")

    signals.table_created.connect(hear, sender=other_app)
    try:
        with other_app.app_context():
            other = other_app.test_client()
            assert tables_of(other, schema_id) == listed
            psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY)")
            item = tables_of(other, schema_id)["rs_item"]
            other_db.engine.dispose()
    finally:
        signals.table_created.disconnect(hear, sender=other_app)
    assert heard == ["event"]
    recorder.clear()
    assert tables_of(client, schema_id)["rs_item"]["id"] == item["id"]
    assert recorder.events == []


# -- access ----------------------------------------------------------------------


def test_routes_without_a_check_are_closed_by_default(
    make_app: AppFactory, psql: Psql
) -> None:
    env = make_app()
    client = env.app.test_client()
    for path in ("/schemas", "/schemas/1/tables", "/tables/1"):
        response = client.get(PREFIX + path)
        assert response.status_code == 403
        body = response.get_json()
        assert body == {
            "ok": False,
            "error": body["error"],
            "status": 403,
            "code": "catalog.closed",
        }
        assert "REFLECTSYNC_OPEN_CATALOG" in body["error"]
        assert "@sync.catalog_access" in body["error"]


def test_routes_opened_without_a_check_warn_once(
    make_app: AppFactory, psql: Psql
) -> None:
    env = make_app(REFLECTSYNC_OPEN_CATALOG=True)
    client = env.app.test_client()
    with pytest.warns(CatalogAccessWarning, match="catalog_access"):
        assert client.get(PREFIX + "/schemas").status_code == 200
    # Once per app: the next request is quiet (warnings are errors here).
    assert client.get(PREFIX + "/schemas").status_code == 200


def test_access_check_refusal_is_403_json(make_app: AppFactory, psql: Psql) -> None:
    env = make_app()
    allowed = {"value": False}

    @env.sync.catalog_access
    def may_browse() -> bool:
        return allowed["value"]

    client = env.app.test_client()
    for path in ("/schemas", "/schemas/1/tables", "/tables/1"):
        response = client.get(PREFIX + path)
        assert response.status_code == 403
        assert response.get_json() == {
            "ok": False,
            "error": "You are not allowed to browse the database catalog.",
            "status": 403,
            "code": "forbidden",
        }
    allowed["value"] = True
    assert client.get(PREFIX + "/schemas").status_code == 200


# -- signal payloads and failing receivers -----------------------------------------


def _records_of_every_kind() -> list[Change]:
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    schema = CatalogSchema(1, "2200", "public", None, when, False)
    column = CatalogColumn(3, "1", "id", 1, "INTEGER", False, None, True, None,
                           when, False)
    fk = ForeignKey("fk", ("parent_id",), None, "rs_parent", ("id",), None, "CASCADE")
    table = CatalogTable(2, 1, "public", "16384", "rs_child", "table", "a note",
                         ("id",), (fk.to_dict(),),
                         (UniqueConstraint("u", ("id",)).to_dict(),), when, False,
                         (column,))
    added = ColumnChange("added", "size", None, (), None,
                         ColumnSnapshot("2", "size", 2, "INTEGER", True))
    return [
        SchemaCreated(schema),
        SchemaDropped(schema),
        SchemaRenamed(schema, "old", "public"),
        TableCreated(table),
        TableDropped(table),
        TableRenamed(table, "old", "rs_child"),
        TableAltered(table, (added,), ("foreign_keys",)),
    ]


def test_every_record_kind_is_json_ready_and_sends_its_documented_payload() -> None:
    documented = {
        "schema_created": {"schema"},
        "schema_dropped": {"schema"},
        "schema_renamed": {"schema", "old_name", "new_name"},
        "table_created": {"table"},
        "table_dropped": {"table"},
        "table_renamed": {"table", "old_name", "new_name"},
        "table_altered": {"table", "changes", "attributes"},
    }
    records = _records_of_every_kind()
    assert {r.signal.name.replace("-", "_") for r in records} == set(documented)
    for record in records:
        data = json.loads(json.dumps(record.to_dict()))
        event = data.pop("event")
        assert set(record.payload()) == documented[event] == set(data)


def test_receivers_without_extra_keywords_hear_reflect(
    cat: AppEnv, psql: Psql
) -> None:
    heard: list[tuple[str, str]] = []

    def created(sender: Any, table: CatalogTable) -> None:
        heard.append(("created", table.name))

    def altered(
        sender: Any, table: CatalogTable, changes: Any, attributes: Any
    ) -> None:
        heard.append(("altered", table.name))

    def dropped(sender: Any, table: CatalogTable) -> None:
        heard.append(("dropped", table.name))

    cat.sync.reflect()
    pairs = [(signals.table_created, created), (signals.table_altered, altered),
             (signals.table_dropped, dropped)]
    for signal, receiver in pairs:
        signal.connect(receiver, sender=cat.app)
    try:
        psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY)")
        created_records = cat.sync.reflect()
        psql.run("ALTER TABLE rs_item ADD COLUMN size INTEGER")
        altered_records = cat.sync.reflect()
        psql.run("DROP TABLE rs_item")
        dropped_records = cat.sync.reflect()
    finally:
        for signal, receiver in pairs:
            signal.disconnect(receiver, sender=cat.app)
    assert heard == [("created", "rs_item"), ("altered", "rs_item"),
                     ("dropped", "rs_item")]
    for record in [*created_records, *altered_records, *dropped_records]:
        json.dumps(record.to_dict())


def test_a_failing_receiver_does_not_silence_the_rest_of_the_refresh(
    cat: AppEnv, psql: Psql, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    cat.sync.reflect()
    recorder.clear()
    failures: list[str] = []

    def broken(sender: Any, table: CatalogTable, **extra: Any) -> None:
        failures.append(table.name)
        raise ValueError(f"receiver bug on {table.name}")

    signals.table_created.connect(broken, sender=cat.app)
    try:
        create_family(psql)
        psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY)")
        with pytest.raises(ValueError, match="receiver bug"):
            cat.sync.reflect()
    finally:
        signals.table_created.disconnect(broken, sender=cat.app)
    names = ["rs_child", "rs_item", "rs_parent"]
    # Every signal reached every receiver, the failing one included...
    assert sorted(failures) == names
    assert sorted(p["table"].name for p in recorder.named("table_created")) == names
    # ...each failure was logged, and the catalog kept the committed changes.
    logged = [r for r in caplog.records if "receiver of table-created" in r.message]
    assert len(logged) == 3
    assert cat.sync.reflect() == []
