"""Reflection of what a UI shows besides columns and keys (issue 18): CHECK
constraints, indexes, view queries, triggers and the connected role's
privileges. Each is created, altered, renamed and dropped through a separate
connection, as psql would, and followed through the listing, the table asked
for by id and ``table_altered``.
"""

# The fixtures cat, psql and recorder come from test_reflection; the test
# parameters that name them shadow the imports on purpose.
# ruff: noqa: F811

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync import signals

from .conftest import AppEnv, AppFactory
from .test_reflection import (  # noqa: F401 (fixtures)
    Psql,
    Recorder,
    cat,
    get_ok,
    psql,
    recorder,
    tables_of,
    the_schema,
)


class Watch:
    """Lists the default schema after each change and says what
    ``table_altered`` reported for one table."""

    def __init__(self, cat: AppEnv, psql: Psql, recorder: Recorder, table: str):
        self.client = cat.app.test_client()
        self.psql = psql
        self.recorder = recorder
        self.table = table
        self.schema_id = the_schema(self.client, psql)["id"]
        self.id = self.listed()["id"]
        recorder.clear()

    def listed(self) -> dict[str, Any]:
        return tables_of(self.client, self.schema_id)[self.table]  # type: ignore[no-any-return]

    def served(self) -> dict[str, Any]:
        return get_ok(self.client, f"/tables/{self.id}")["table"]  # type: ignore[no-any-return]

    def after(self, *statements: str) -> tuple[str, ...]:
        """Run ``statements``, list, and return the attributes the one
        ``table_altered`` of the table named (its payload checked)."""
        self.recorder.clear()
        self.psql.run(*statements)
        listed = self.listed()
        assert listed["id"] == self.id
        (event,) = self.recorder.about("table_altered", self.table)
        assert event["table"].id == self.id
        assert event["changes"] == ()
        for attribute in event["attributes"]:
            assert listed[attribute] == _plain(getattr(event["table"], attribute))
        served = self.served()
        assert served == {**listed, "columns": served["columns"]}
        return tuple(event["attributes"])


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


ITEM = "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER, code VARCHAR(20))"


# -- CHECK constraints --------------------------------------------------------------


def test_check_constraints(cat: AppEnv, psql: Psql, recorder: Recorder) -> None:
    psql.run(
        "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER,"
        " code VARCHAR(20), CONSTRAINT rs_item_positive CHECK (price > 0))"
    )
    watch = Watch(cat, psql, recorder, "rs_item")
    (check,) = watch.listed()["check_constraints"]
    assert check["name"] == "rs_item_positive"
    assert "price" in check["expression"] and "0" in check["expression"]
    assert watch.served()["check_constraints"] == [check]

    if psql.backend == "sqlite":
        # No ALTER TABLE for constraints: the table is rebuilt under its name.
        assert watch.after(
            "DROP TABLE rs_item",
            "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER,"
            " code VARCHAR(20), CONSTRAINT rs_item_small CHECK (price < 100))",
        ) == ("check_constraints",)
        (check,) = watch.listed()["check_constraints"]
        assert check["name"] == "rs_item_small"
        assert watch.after(
            "DROP TABLE rs_item", ITEM
        ) == ("check_constraints",)
        assert watch.listed()["check_constraints"] == []
        return
    assert watch.after(
        "ALTER TABLE rs_item ADD CONSTRAINT rs_item_code CHECK (code <> 'x')"
    ) == ("check_constraints",)
    names = [c["name"] for c in watch.listed()["check_constraints"]]
    assert names == ["rs_item_code", "rs_item_positive"]
    if psql.backend == "postgresql":
        assert watch.after(
            "ALTER TABLE rs_item RENAME CONSTRAINT rs_item_code TO rs_item_coded"
        ) == ("check_constraints",)
        names = [c["name"] for c in watch.listed()["check_constraints"]]
        assert names == ["rs_item_coded", "rs_item_positive"]
        drop = "ALTER TABLE rs_item DROP CONSTRAINT rs_item_coded"
    else:
        drop = "ALTER TABLE rs_item DROP CONSTRAINT rs_item_code"
    assert watch.after(drop) == ("check_constraints",)
    assert [c["name"] for c in watch.listed()["check_constraints"]] == [
        "rs_item_positive"
    ]


# -- indexes ----------------------------------------------------------------------


def test_indexes(cat: AppEnv, psql: Psql, recorder: Recorder) -> None:
    psql.run(ITEM, "CREATE INDEX rs_item_code_idx ON rs_item (code, price)")
    watch = Watch(cat, psql, recorder, "rs_item")
    assert watch.listed()["indexes"] == [
        {"name": "rs_item_code_idx", "columns": ["code", "price"], "unique": False,
         "predicate": None}
    ]

    if psql.backend != "mysql":
        # A partial index (MariaDB/MySQL have none).
        assert watch.after(
            "CREATE INDEX rs_item_dear ON rs_item (price) WHERE price > 100"
        ) == ("indexes",)
        (dear,) = [i for i in watch.listed()["indexes"] if i["name"] == "rs_item_dear"]
        assert dear["columns"] == ["price"]
        assert "price" in dear["predicate"] and "100" in dear["predicate"]
        assert watch.after("DROP INDEX rs_item_dear") == ("indexes",)

    # A unique index: on MariaDB/MySQL every unique index is a unique
    # constraint and is listed as one.
    unique = watch.after("CREATE UNIQUE INDEX rs_item_price_u ON rs_item (price)")
    if psql.backend == "mysql":
        assert unique == ("unique_constraints",)
        assert [u["name"] for u in watch.listed()["unique_constraints"]] == [
            "rs_item_price_u"
        ]
    else:
        assert unique == ("indexes",)
        (found,) = [i for i in watch.listed()["indexes"] if i["unique"]]
        assert (found["name"], found["columns"]) == ("rs_item_price_u", ["price"])

    rename = {
        "postgresql": ["ALTER INDEX rs_item_code_idx RENAME TO rs_item_by_code"],
        "mysql": ["ALTER TABLE rs_item RENAME INDEX rs_item_code_idx"
                  " TO rs_item_by_code"],
        "sqlite": ["DROP INDEX rs_item_code_idx",
                   "CREATE INDEX rs_item_by_code ON rs_item (code, price)"],
    }[psql.backend]
    assert watch.after(*rename) == ("indexes",)
    names = [i["name"] for i in watch.listed()["indexes"] if not i["unique"]]
    assert names == ["rs_item_by_code"]

    drop = ("DROP INDEX rs_item_by_code ON rs_item" if psql.backend == "mysql"
            else "DROP INDEX rs_item_by_code")
    assert watch.after(drop) == ("indexes",)
    assert [i for i in watch.listed()["indexes"] if not i["unique"]] == []


def test_the_indexes_behind_keys_are_not_listed_as_indexes(
    cat: AppEnv, psql: Psql
) -> None:
    psql.run(
        "CREATE TABLE rs_parent (id INTEGER PRIMARY KEY, code VARCHAR(12),"
        " CONSTRAINT rs_parent_code UNIQUE (code))",
        "CREATE TABLE rs_child (id INTEGER PRIMARY KEY, parent_id INTEGER,"
        " CONSTRAINT rs_child_parent FOREIGN KEY (parent_id)"
        " REFERENCES rs_parent (id))",
    )
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])
    assert listed["rs_parent"]["indexes"] == []
    assert listed["rs_child"]["indexes"] == []  # MariaDB made one for the key


# -- view queries -----------------------------------------------------------------


def test_view_definitions(cat: AppEnv, psql: Psql, recorder: Recorder) -> None:
    psql.run(ITEM, "CREATE VIEW rs_item_view AS SELECT id, price FROM rs_item"
                   " WHERE price > 10")
    watch = Watch(cat, psql, recorder, "rs_item_view")
    definition = watch.listed()["definition"]
    assert "price" in definition and "10" in definition
    assert tables_of(watch.client, watch.schema_id)["rs_item"]["definition"] is None

    replace = (
        ["DROP VIEW rs_item_view"] if psql.backend == "sqlite" else []
    ) + [
        ("CREATE VIEW" if psql.backend == "sqlite" else "CREATE OR REPLACE VIEW")
        + " rs_item_view AS SELECT id, price FROM rs_item WHERE price > 20"
    ]
    assert watch.after(*replace) == ("definition",)
    assert "20" in watch.listed()["definition"]
    assert "20" in watch.served()["definition"]

    if psql.backend == "postgresql":
        # Renaming a column the view reads changes what its query says,
        # though none of the view's own catalog rows change.
        assert watch.after(
            "ALTER TABLE rs_item RENAME COLUMN price TO amount"
        ) == ("definition",)
        assert "amount" in watch.listed()["definition"]
        recorder.clear()
        psql.run("ALTER VIEW rs_item_view RENAME TO rs_renamed")
        renamed = tables_of(watch.client, watch.schema_id)["rs_renamed"]
        assert renamed["id"] == watch.id
        (event,) = recorder.named("table_renamed")
        assert event["table"].definition == renamed["definition"]
        psql.run("DROP VIEW rs_renamed")
    else:
        psql.run("DROP VIEW rs_item_view")
    recorder.clear()
    assert "rs_item_view" not in tables_of(watch.client, watch.schema_id)
    (dropped,) = recorder.named("table_dropped")
    assert dropped["table"].definition is not None


def test_materialized_view_definitions(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    if psql.backend != "postgresql":
        pytest.skip("materialized views are PostgreSQL's")
    psql.run(ITEM, "CREATE MATERIALIZED VIEW rs_mat AS SELECT id FROM rs_item")
    client = cat.app.test_client()
    listed = tables_of(client, the_schema(client, psql)["id"])["rs_mat"]
    assert listed["kind"] == "materialized_view"
    assert "rs_item" in listed["definition"]
    recorder.clear()
    psql.run("REFRESH MATERIALIZED VIEW rs_mat")  # new storage, same description
    tables_of(client, the_schema(client, psql)["id"])
    assert recorder.events == []


# -- triggers ---------------------------------------------------------------------


@pytest.fixture
def trigger_sql(psql: Psql) -> Iterator[dict[str, str]]:
    """How to create the same triggers on each backend."""
    if psql.backend == "postgresql":
        psql.run(
            "CREATE OR REPLACE FUNCTION rs_touch() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
        )
        yield {
            "before": "CREATE TRIGGER rs_item_before BEFORE INSERT OR UPDATE"
                      " ON rs_item FOR EACH ROW EXECUTE FUNCTION rs_touch()",
            "after": "CREATE TRIGGER rs_item_after AFTER DELETE ON rs_item"
                     " FOR EACH ROW EXECUTE FUNCTION rs_touch()",
            "drop": "DROP TRIGGER {name} ON rs_item",
        }
        psql.run("DROP TABLE IF EXISTS rs_item", "DROP FUNCTION IF EXISTS rs_touch()")
    elif psql.backend == "mysql":
        yield {
            "before": "CREATE TRIGGER rs_item_before BEFORE INSERT ON rs_item"
                      " FOR EACH ROW SET NEW.price = COALESCE(NEW.price, 0)",
            "after": "CREATE TRIGGER rs_item_after AFTER DELETE ON rs_item"
                     " FOR EACH ROW SET @rs_deleted = OLD.id",
            "drop": "DROP TRIGGER {name}",
        }
    else:
        yield {
            "before": "CREATE TRIGGER rs_item_before BEFORE INSERT ON rs_item"
                      " BEGIN SELECT 1; END",
            "after": "CREATE TRIGGER rs_item_after AFTER DELETE ON rs_item"
                     " BEGIN SELECT 1; END",
            "drop": "DROP TRIGGER {name}",
        }


def test_triggers(
    cat: AppEnv, psql: Psql, recorder: Recorder, trigger_sql: dict[str, str]
) -> None:
    psql.run(ITEM, trigger_sql["before"])
    watch = Watch(cat, psql, recorder, "rs_item")
    (trigger,) = watch.listed()["triggers"]
    assert (trigger["name"], trigger["timing"]) == ("rs_item_before", "BEFORE")
    assert trigger["events"][0] == "INSERT"
    assert trigger["definition"]

    assert watch.after(trigger_sql["after"]) == ("triggers",)
    after = [t for t in watch.listed()["triggers"] if t["name"] == "rs_item_after"]
    assert [(t["timing"], t["events"]) for t in after] == [("AFTER", ["DELETE"])]

    if psql.backend == "postgresql":
        assert watch.after(
            "ALTER TRIGGER rs_item_after ON rs_item RENAME TO rs_item_gone"
        ) == ("triggers",)
        last = "rs_item_gone"
    else:
        last = "rs_item_after"
    assert sorted(t["name"] for t in watch.listed()["triggers"]) == sorted(
        ["rs_item_before", last]
    )
    assert watch.after(trigger_sql["drop"].format(name=last)) == ("triggers",)
    assert [t["name"] for t in watch.served()["triggers"]] == ["rs_item_before"]


# -- privileges of the connected role ---------------------------------------------

APP_ROLE = "rs_app_role"


@pytest.fixture
def limited(make_app: AppFactory, psql: Psql, database_url: str) -> Iterator[AppEnv]:
    """An app connected as a role that may create its own tables but has no
    privilege on tables others made unless granted."""
    url = sa.make_url(database_url)
    if psql.backend == "postgresql":
        psql.run(
            "DO $$ BEGIN CREATE ROLE " + APP_ROLE + " LOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$",
            f"GRANT USAGE, CREATE ON SCHEMA public TO {APP_ROLE}",
        )
        limited_url = url.set(username=APP_ROLE)
    elif psql.backend == "mysql":
        psql.run(
            f"CREATE USER IF NOT EXISTS '{APP_ROLE}'@'%%' IDENTIFIED BY 'pw'",
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX,"
            f" REFERENCES ON `{url.database}`.* TO '{APP_ROLE}'@'%%'",
        )
        # Table grants outlive DROP TABLE here: forget one a failed run left.
        try:
            psql.run(f"REVOKE TRIGGER ON `{url.database}`.rs_item"
                     f" FROM '{APP_ROLE}'@'%%'")
        except sa.exc.DBAPIError:
            pass
        limited_url = url.set(username=APP_ROLE, password="pw")
    else:
        pytest.skip("SQLite has no privileges")
    env = make_app(SQLALCHEMY_DATABASE_URI=limited_url.render_as_string(False))
    env.sync.catalog_access(lambda: True)
    with env.app.app_context():
        yield env
        env.db.engine.dispose()


def test_privileges_of_the_connected_role(limited: AppEnv, psql: Psql) -> None:
    heard: list[dict[str, Any]] = []

    def altered(sender: Any, **payload: Any) -> None:
        heard.append(payload)

    signals.table_altered.connect(altered, sender=limited.app)
    try:
        client = limited.app.test_client()
        psql.run(ITEM)
        schema_id = the_schema(client, psql)["id"]
        if psql.backend == "postgresql":
            assert tables_of(client, schema_id)["rs_item"]["privileges"] == []
            psql.run(f"GRANT SELECT, UPDATE ON rs_item TO {APP_ROLE}")
            expected = ["SELECT", "UPDATE"]
        else:
            # Granted on the whole database, all but TRIGGER.
            before = tables_of(client, schema_id)["rs_item"]["privileges"]
            assert "TRIGGER" not in before and "SELECT" in before
            psql.run(f"GRANT TRIGGER ON rs_item TO '{APP_ROLE}'@'%%'")
            expected = [*before, "TRIGGER"]
        item = tables_of(client, schema_id)["rs_item"]
        assert item["privileges"] == expected
        (event,) = heard
        assert event["attributes"] == ("privileges",)
        assert list(event["table"].privileges) == expected
        assert get_ok(client, f"/tables/{item['id']}")["table"]["privileges"] == (
            expected
        )
        heard.clear()
        if psql.backend == "postgresql":
            psql.run(f"REVOKE UPDATE ON rs_item FROM {APP_ROLE}")
            expected = ["SELECT"]
        else:
            psql.run(f"REVOKE TRIGGER ON rs_item FROM '{APP_ROLE}'@'%%'")
            expected = expected[:-1]
        assert tables_of(client, schema_id)["rs_item"]["privileges"] == expected
        (event,) = heard
        assert event["attributes"] == ("privileges",)
        # Its own tables: everything.
        own = tables_of(client, schema_id)["city"]["privileges"]
        assert "SELECT" in own and "INSERT" in own
    finally:
        signals.table_altered.disconnect(altered, sender=limited.app)


def test_sqlite_has_no_privileges(cat: AppEnv, psql: Psql) -> None:
    if psql.backend != "sqlite":
        pytest.skip("SQLite's")
    psql.run(ITEM)
    client = cat.app.test_client()
    assert tables_of(client, the_schema(client, psql)["id"])["rs_item"][
        "privileges"
    ] is None


# -- schema-level objects: enum and domain types, sequences -----------------------

OBJECT_SIGNALS = {
    "object_created": signals.object_created,
    "object_dropped": signals.object_dropped,
    "object_renamed": signals.object_renamed,
    "object_altered": signals.object_altered,
}


@pytest.fixture
def heard_objects(cat: AppEnv) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    receivers = []
    for name, signal in OBJECT_SIGNALS.items():

        def receive(sender: Any, _name: str = name, **payload: Any) -> None:
            assert sender is cat.app
            found.append((_name, payload))

        receivers.append((signal, receive))
        signal.connect(receive, sender=cat.app)
    try:
        yield found
    finally:
        for signal, receive in receivers:
            signal.disconnect(receive, sender=cat.app)


def objects_of(client: Any, schema_id: int, **query: str) -> dict[str, Any]:
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    listed = get_ok(client, f"/schemas/{schema_id}/objects{suffix}")["objects"]
    return {item["name"]: item for item in listed if not item["deleted"]}


@pytest.fixture
def clean_objects(psql: Psql) -> Iterator[None]:
    statements = {
        "postgresql": ["DROP TABLE IF EXISTS rs_item",
                       "DROP SEQUENCE IF EXISTS rs_seq",
                       "DROP SEQUENCE IF EXISTS rs_seq2",
                       "DROP TYPE IF EXISTS rs_mood", "DROP TYPE IF EXISTS rs_feeling",
                       "DROP DOMAIN IF EXISTS rs_positive"],
        "mysql": ["DROP SEQUENCE IF EXISTS rs_seq", "DROP SEQUENCE IF EXISTS rs_seq2"],
        "sqlite": [],
    }[psql.backend]
    psql.run(*statements)
    yield
    psql.run(*statements)


def test_sequences(
    cat: AppEnv, psql: Psql, heard_objects: list[Any], clean_objects: None
) -> None:
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    if psql.backend == "sqlite":
        assert objects_of(client, schema_id) == {}
        return
    objects_of(client, schema_id)
    heard_objects.clear()

    psql.run("CREATE SEQUENCE rs_seq START WITH 10 INCREMENT BY 5")
    seq = objects_of(client, schema_id)["rs_seq"]
    assert seq["kind"] == "sequence"
    assert (seq["details"]["start"], seq["details"]["increment"]) == ("10", "5")
    assert [(n, p["object"].id) for n, p in heard_objects] == [
        ("object_created", seq["id"])
    ]
    heard_objects.clear()

    # Taking values changes no definition: nothing to announce.
    psql.run("SELECT nextval('rs_seq')" if psql.backend == "postgresql"
             else "SELECT NEXTVAL(rs_seq)")
    objects_of(client, schema_id)
    assert heard_objects == []

    psql.run("ALTER SEQUENCE rs_seq INCREMENT BY 7")
    altered = objects_of(client, schema_id)["rs_seq"]
    assert altered["id"] == seq["id"] and altered["details"]["increment"] == "7"
    ((name, payload),) = heard_objects
    assert name == "object_altered" and payload["fields"] == ("increment",)
    heard_objects.clear()

    psql.run("ALTER SEQUENCE rs_seq RENAME TO rs_seq2" if psql.backend == "postgresql"
             else "RENAME TABLE rs_seq TO rs_seq2")
    after = objects_of(client, schema_id)
    if psql.backend == "postgresql":
        assert after["rs_seq2"]["id"] == seq["id"]
        ((name, payload),) = heard_objects
        assert name == "object_renamed"
        assert (payload["old_name"], payload["new_name"]) == ("rs_seq", "rs_seq2")
    else:
        # Identity is the name.
        assert after["rs_seq2"]["id"] != seq["id"]
        assert sorted(n for n, _ in heard_objects) == ["object_created",
                                                       "object_dropped"]
    heard_objects.clear()

    psql.run("DROP SEQUENCE rs_seq2")
    assert "rs_seq2" not in objects_of(client, schema_id)
    ((name, payload),) = heard_objects
    assert name == "object_dropped" and payload["object"].deleted is True
    listed = get_ok(client, f"/schemas/{schema_id}/objects?include_deleted=1")
    assert any(o["name"] == "rs_seq2" and o["deleted"] for o in listed["objects"])


def test_sequence_owned_by_a_column(
    cat: AppEnv, psql: Psql, clean_objects: None
) -> None:
    if psql.backend != "postgresql":
        pytest.skip("OWNED BY and serial columns are PostgreSQL's")
    psql.run("CREATE TABLE rs_item (id SERIAL PRIMARY KEY)")
    client = cat.app.test_client()
    found = objects_of(client, the_schema(client, psql)["id"])["rs_item_id_seq"]
    assert found["details"]["owned_by"] == {"table": "rs_item", "column": "id"}
    assert found["details"]["owner"]
    # The catalog's own tables' sequences are not listed.
    assert not [n for n in objects_of(client, the_schema(client, psql)["id"])
                if n.startswith("reflectsync_")]


def test_enum_and_domain_types(
    cat: AppEnv, psql: Psql, heard_objects: list[Any], clean_objects: None
) -> None:
    if psql.backend != "postgresql":
        pytest.skip("enum and domain types are PostgreSQL's (MariaDB's enums"
                    " are column types)")
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    objects_of(client, schema_id)
    heard_objects.clear()

    psql.run(
        "CREATE TYPE rs_mood AS ENUM ('ok', 'bad')",
        "CREATE DOMAIN rs_positive AS INTEGER NOT NULL DEFAULT 1"
        " CONSTRAINT rs_positive_check CHECK (VALUE > 0)",
    )
    found = objects_of(client, schema_id)
    assert found["rs_mood"]["kind"] == "enum"
    assert found["rs_mood"]["details"] == {"labels": ["ok", "bad"]}
    domain = found["rs_positive"]["details"]
    assert domain["type"] == "integer" and domain["nullable"] is False
    assert domain["default"] == "1"
    assert domain["check_constraints"] == [
        {"name": "rs_positive_check", "expression": "VALUE > 0"}
    ]
    assert sorted(n for n, _ in heard_objects) == ["object_created"] * 2
    heard_objects.clear()

    psql.run("ALTER TYPE rs_mood ADD VALUE 'great'")
    assert objects_of(client, schema_id)["rs_mood"]["details"]["labels"] == [
        "ok", "bad", "great"
    ]
    ((name, payload),) = heard_objects
    assert (name, payload["fields"]) == ("object_altered", ("labels",))
    heard_objects.clear()

    psql.run("ALTER DOMAIN rs_positive DROP NOT NULL",
             "ALTER DOMAIN rs_positive DROP CONSTRAINT rs_positive_check")
    objects_of(client, schema_id)
    ((name, payload),) = heard_objects
    assert (name, payload["fields"]) == (
        "object_altered", ("check_constraints", "nullable")
    )
    heard_objects.clear()

    psql.run("ALTER TYPE rs_mood RENAME TO rs_feeling")
    after = objects_of(client, schema_id)
    assert after["rs_feeling"]["id"] == found["rs_mood"]["id"]
    ((name, payload),) = heard_objects
    assert (name, payload["old_name"], payload["new_name"]) == (
        "object_renamed", "rs_mood", "rs_feeling"
    )
    heard_objects.clear()

    psql.run("DROP TYPE rs_feeling", "DROP DOMAIN rs_positive")
    assert not [name for name in objects_of(client, schema_id)
                if name.startswith("rs_")]
    assert sorted(n for n, _ in heard_objects) == ["object_dropped"] * 2
    # reflect() returns the same records, JSON-ready.
    psql.run("CREATE TYPE rs_mood AS ENUM ('x')")
    (created,) = [c for c in cat.sync.reflect() if c.signal is signals.object_created]
    assert created.to_dict()["event"] == "object_created"
    assert created.to_dict()["object"]["details"] == {"labels": ["x"]}


def test_a_dropped_schema_drops_its_objects(
    cat: AppEnv, psql: Psql, heard_objects: list[Any]
) -> None:
    if psql.backend != "postgresql":
        pytest.skip("only PostgreSQL has schemas inside a database")
    client = cat.app.test_client()
    psql.run("CREATE SCHEMA rs_extra", "CREATE SEQUENCE rs_extra.rs_seq")
    extra = the_schema(client, psql, "rs_extra")
    assert list(objects_of(client, extra["id"])) == ["rs_seq"]
    heard_objects.clear()
    psql.run("DROP SCHEMA rs_extra CASCADE")
    get_ok(client, "/schemas")
    ((name, payload),) = heard_objects
    assert name == "object_dropped" and payload["object"].name == "rs_seq"
    assert client.get(f"/sync/schemas/{extra['id']}/objects").status_code == 410
