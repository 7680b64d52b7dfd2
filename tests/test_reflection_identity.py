"""Reflection keeps identities through renames on every backend (issue 18).

PostgreSQL knows tables by oid and columns by attnum. SQLite and
MariaDB/MySQL know them by name, so a rename is recognised from what a
rename keeps: SQLite's root page, MariaDB's InnoDB table id, and a column's
place and type. Every change is made through a separate connection, as psql
would make it.
"""

# The fixtures cat, psql and recorder come from test_reflection; the test
# parameters that name them shadow the imports on purpose.
# ruff: noqa: F811

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync.reflection import ColumnSnapshot
from flask_reflectsync.reflection.diff import diff_columns, pair_columns

from .conftest import AppEnv, AppFactory
from .test_reflection import (  # noqa: F401 (fixtures)
    PREFIX,
    Psql,
    Recorder,
    cat,
    column,
    get_ok,
    psql,
    recorder,
    tables_of,
    the_schema,
)


def rename_column(psql: Psql, table: str, old: str, new: str) -> str:
    return f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}"


def kinds(event: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    return {(c.kind, c.name, c.old_name) for c in event["changes"]}


def listed_and_served(client: Any, psql: Psql, name: str) -> dict[str, Any]:
    """List the default schema, then serve ``name`` by id (which gives its
    columns their catalog rows)."""
    listed = tables_of(client, the_schema(client, psql)["id"])
    return get_ok(client, f"/tables/{listed[name]['id']}")["table"]  # type: ignore[no-any-return]


def test_a_table_and_a_column_renamed_between_two_listings_keep_their_ids(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    psql.run(
        "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, label VARCHAR(40),"
        " price INTEGER)"
    )
    client = cat.app.test_client()
    before = listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run(
        "ALTER TABLE rs_item RENAME TO rs_renamed",
        rename_column(psql, "rs_renamed", "label", "title"),
    )
    listed = tables_of(client, the_schema(client, psql)["id"])

    assert "rs_item" not in listed
    assert listed["rs_renamed"]["id"] == before["id"]
    (renamed,) = recorder.named("table_renamed")
    assert (renamed["old_name"], renamed["new_name"]) == ("rs_item", "rs_renamed")
    assert renamed["table"].id == before["id"]
    (altered,) = recorder.named("table_altered")
    assert kinds(altered) == {("renamed", "title", "label")}
    (change,) = altered["changes"]
    assert change.fields == ()
    assert recorder.named("table_dropped") == recorder.named("table_created") == []
    detail = get_ok(client, f"/tables/{before['id']}")["table"]
    assert [c["name"] for c in detail["columns"]] == ["id", "title", "price"]
    # The column keeps its catalog id; so do the others.
    assert column(detail, "title")["id"] == column(before, "label")["id"]
    assert column(detail, "price")["id"] == column(before, "price")["id"]


def test_a_column_renamed_where_another_went_is_told_by_its_place(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """Dropping an earlier column shifts positions; the rename is still
    found between the columns that kept their names."""
    psql.run(
        "CREATE TABLE rs_item (id INTEGER PRIMARY KEY, junk INTEGER,"
        " code VARCHAR(10), label VARCHAR(40))"
    )
    client = cat.app.test_client()
    before = listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run(
        "ALTER TABLE rs_item DROP COLUMN junk",
        rename_column(psql, "rs_item", "label", "title"),
    )
    tables_of(client, the_schema(client, psql)["id"])

    (altered,) = recorder.named("table_altered")
    assert kinds(altered) == {("dropped", "junk", None),
                              ("renamed", "title", "label")}
    detail = get_ok(client, f"/tables/{before['id']}")["table"]
    assert column(detail, "title")["id"] == column(before, "label")["id"]
    assert column(detail, "title")["position"] == 3


def test_what_the_shape_cannot_tell_is_a_drop_and_an_add(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """Two neighbouring columns renamed at once: by name, nothing says which
    became which, so only PostgreSQL (attnum) reports renames."""
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER)")
    client = cat.app.test_client()
    listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run(
        rename_column(psql, "rs_item", "a", "x"),
        rename_column(psql, "rs_item", "b", "y"),
    )
    tables_of(client, the_schema(client, psql)["id"])

    (altered,) = recorder.named("table_altered")
    if psql.backend == "postgresql":
        assert kinds(altered) == {("renamed", "x", "a"), ("renamed", "y", "b")}
    else:
        assert kinds(altered) == {
            ("dropped", "a", None), ("dropped", "b", None),
            ("added", "x", None), ("added", "y", None),
        }


def test_a_rename_that_also_changes_the_type_is_a_drop_and_an_add_by_name(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    if psql.backend == "sqlite":
        pytest.skip("SQLite cannot change a column's type")
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, label VARCHAR(40))")
    client = cat.app.test_client()
    listed_and_served(client, psql, "rs_item")
    recorder.clear()

    if psql.backend == "postgresql":
        psql.run(
            rename_column(psql, "rs_item", "label", "title"),
            "ALTER TABLE rs_item ALTER COLUMN title TYPE VARCHAR(80)",
        )
    else:
        psql.run("ALTER TABLE rs_item CHANGE label title VARCHAR(80)")
    tables_of(client, the_schema(client, psql)["id"])

    (altered,) = recorder.named("table_altered")
    if psql.backend == "postgresql":
        assert kinds(altered) == {("renamed", "title", "label")}
        assert altered["changes"][0].fields == ("type",)
    else:
        assert kinds(altered) == {("dropped", "label", None),
                                  ("added", "title", None)}


def test_a_mariadb_rename_that_also_changes_nullability_is_a_rename(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    if psql.backend != "mysql":
        pytest.skip("CHANGE is MariaDB/MySQL's")
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, label VARCHAR(40))")
    client = cat.app.test_client()
    before = listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run("ALTER TABLE rs_item CHANGE label title VARCHAR(40) NOT NULL")
    tables_of(client, the_schema(client, psql)["id"])

    (altered,) = recorder.named("table_altered")
    (change,) = altered["changes"]
    assert (change.kind, change.name, change.old_name) == ("renamed", "title", "label")
    assert change.fields == ("nullable",)
    detail = get_ok(client, f"/tables/{before['id']}")["table"]
    assert column(detail, "title")["id"] == column(before, "label")["id"]
    assert column(detail, "title")["nullable"] is False


def test_a_table_renamed_with_every_column_renamed(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """SQLite's root page is handed to the next table created after a drop,
    so a table sharing it must keep at least one column name to be the same
    table; MariaDB's InnoDB id and PostgreSQL's oid are never reused."""
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, label VARCHAR(40))")
    client = cat.app.test_client()
    before = listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run(
        "ALTER TABLE rs_item RENAME TO rs_renamed",
        rename_column(psql, "rs_renamed", "id", "ident"),
        rename_column(psql, "rs_renamed", "label", "title"),
    )
    listed = tables_of(client, the_schema(client, psql)["id"])

    if psql.backend == "sqlite":
        assert listed["rs_renamed"]["id"] != before["id"]
        assert [p["table"].name for p in recorder.named("table_dropped")] == [
            "rs_item"
        ]
        assert [p["table"].name for p in recorder.named("table_created")] == [
            "rs_renamed"
        ]
    else:
        assert listed["rs_renamed"]["id"] == before["id"]
        (renamed,) = recorder.named("table_renamed")
        assert renamed["table"].id == before["id"]
        (altered,) = recorder.named("table_altered")
        expected = {("renamed", "ident", "id"), ("renamed", "title", "label")}
        if psql.backend == "mysql":
            # No column kept its name: nothing to place the renames by.
            expected = {("dropped", "id", None), ("dropped", "label", None),
                        ("added", "ident", None), ("added", "title", None)}
        assert kinds(altered) == expected


def test_a_table_of_one_column_renamed_with_its_column(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """No column keeps its name: on SQLite nothing tells it from a new table
    given the dropped one's root page. The column itself is a rename where
    the table is known (nothing else went or came)."""
    psql.run("CREATE TABLE rs_item (label VARCHAR(40))")
    client = cat.app.test_client()
    before = listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run(
        "ALTER TABLE rs_item RENAME TO rs_renamed",
        rename_column(psql, "rs_renamed", "label", "title"),
    )
    listed = tables_of(client, the_schema(client, psql)["id"])

    if psql.backend == "sqlite":
        assert listed["rs_renamed"]["id"] != before["id"]
        assert recorder.named("table_renamed") == []
        assert len(recorder.named("table_dropped")) == 1
    else:
        assert listed["rs_renamed"]["id"] == before["id"]
        (altered,) = recorder.named("table_altered")
        assert kinds(altered) == {("renamed", "title", "label")}


def test_a_column_dropped_and_another_added_in_its_place(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """PostgreSQL tells them apart by attnum. By name, a column of the same
    type arriving where one went looks exactly like a rename (documented)."""
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, label VARCHAR(40))")
    client = cat.app.test_client()
    before = listed_and_served(client, psql, "rs_item")
    recorder.clear()

    psql.run(
        "ALTER TABLE rs_item DROP COLUMN label",
        "ALTER TABLE rs_item ADD COLUMN title VARCHAR(40)",
    )
    tables_of(client, the_schema(client, psql)["id"])

    (altered,) = recorder.named("table_altered")
    detail = get_ok(client, f"/tables/{before['id']}")["table"]
    if psql.backend == "postgresql":
        assert kinds(altered) == {("dropped", "label", None),
                                  ("added", "title", None)}
        assert column(detail, "title")["id"] != column(before, "label")["id"]
    else:
        assert kinds(altered) == {("renamed", "title", "label")}


def test_a_table_rebuilt_under_its_name_is_followed_through_a_later_rename(
    cat: AppEnv, psql: Psql, recorder: Recorder
) -> None:
    """A copying ALTER and TRUNCATE give a MariaDB table a new InnoDB id
    under the same name; the catalog must learn it, or the next rename would
    look like a drop and a create."""
    if psql.backend == "sqlite":
        pytest.skip("SQLite has neither TRUNCATE nor ALTER COLUMN TYPE")
    psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY, price INTEGER)")
    client = cat.app.test_client()
    schema_id = the_schema(client, psql)["id"]
    before = tables_of(client, schema_id)["rs_item"]

    if psql.backend == "postgresql":
        psql.run("ALTER TABLE rs_item ALTER COLUMN price TYPE BIGINT")
    else:
        psql.run("ALTER TABLE rs_item MODIFY price BIGINT")
    tables_of(client, schema_id)
    psql.run("ALTER TABLE rs_item RENAME TO rs_renamed")
    assert tables_of(client, schema_id)["rs_renamed"]["id"] == before["id"]

    # Nothing a listing shows changes with TRUNCATE; the id does.
    psql.run("TRUNCATE TABLE rs_renamed")
    tables_of(client, schema_id)
    recorder.clear()
    psql.run("ALTER TABLE rs_renamed RENAME TO rs_item")
    assert tables_of(client, schema_id)["rs_item"]["id"] == before["id"]
    (renamed,) = recorder.named("table_renamed")
    assert renamed["old_name"] == "rs_renamed"
    assert recorder.named("table_dropped") == []


NO_PROCESS_USER = "rs_noprocess"


def test_without_the_process_privilege_a_mariadb_rename_is_a_drop_and_a_create(
    make_app: AppFactory, psql: Psql, database_url: str
) -> None:
    """The InnoDB id needs PROCESS; a role without it still gets a catalog,
    in which identity is the name alone (the behaviour before issue 18)."""
    if psql.backend != "mysql":
        pytest.skip("the InnoDB dictionary is MariaDB/MySQL's")
    url = sa.make_url(database_url)
    psql.run(
        f"CREATE USER IF NOT EXISTS '{NO_PROCESS_USER}'@'%%' IDENTIFIED BY 'pw'",
        f"GRANT ALL ON `{url.database}`.* TO '{NO_PROCESS_USER}'@'%%'",
    )
    limited = url.set(username=NO_PROCESS_USER, password="pw")
    env = make_app(SQLALCHEMY_DATABASE_URI=limited.render_as_string(False))
    env.sync.catalog_access(lambda: True)
    heard = Recorder()
    from flask_reflectsync import signals

    def receive(name: str) -> Any:
        def hear(sender: Any, **payload: Any) -> None:
            heard.events.append((name, payload))
        return hear

    receivers = {name: receive(name) for name in ("table_dropped", "table_created",
                                                  "table_renamed")}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver, sender=env.app)
    try:
        with env.app.app_context():
            client = env.app.test_client()
            psql.run("CREATE TABLE rs_item (id INTEGER PRIMARY KEY)")
            schema_id = the_schema(client, psql)["id"]
            before = tables_of(client, schema_id)["rs_item"]
            heard.clear()
            psql.run("ALTER TABLE rs_item RENAME TO rs_renamed")
            after = tables_of(client, schema_id)
            assert after["rs_renamed"]["id"] != before["id"]
            assert client.get(f"{PREFIX}/tables/{before['id']}").status_code == 410
            env.db.engine.dispose()
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver, sender=env.app)
    assert [p["table"].name for p in heard.named("table_dropped")] == ["rs_item"]
    assert [p["table"].name for p in heard.named("table_created")] == ["rs_renamed"]
    assert heard.named("table_renamed") == []


# -- pairing columns by shape (units) ---------------------------------------------


def columns(*spec: str) -> tuple[ColumnSnapshot, ...]:
    """``"name:type"`` columns, identity by name."""
    found = []
    for position, item in enumerate(spec, start=1):
        name, type_ = item.split(":")
        found.append(ColumnSnapshot(name, name, position, type_, True))
    return tuple(found)


@pytest.mark.parametrize(
    ("old", "new", "renamed"),
    [
        (("a:int", "b:int", "c:text"), ("a:int", "x:int", "c:text"), {"x": "b"}),
        (("a:int", "b:int"), ("x:int", "b:int"), {"x": "a"}),
        (("a:int", "b:int"), ("a:int", "x:int"), {"x": "b"}),
        # an earlier column dropped: still between the same anchors
        (("j:int", "a:int", "b:int"), ("a:int", "x:int"), {"x": "b"}),
        # a column added after the renamed one: two came between a and the end
        (("a:int", "b:int"), ("a:int", "x:int", "y:int"), {}),
        # another type
        (("a:int", "b:int"), ("a:int", "x:text"), {}),
        # two went and two came between the same anchors
        (("a:int", "b:int", "c:int"), ("a:int", "x:int", "y:int"), {}),
        # renames in two gaps
        (("a:int", "b:int", "c:int", "d:int"), ("x:int", "b:int", "y:int", "d:int"),
         {"x": "a", "y": "c"}),
        # anchors that changed order pair nothing across them
        (("a:int", "b:int", "c:int"), ("b:int", "x:int", "a:int"), {}),
        # nothing renamed
        (("a:int",), ("a:int",), {}),
    ],
)
def test_pair_columns(
    old: tuple[str, ...], new: tuple[str, ...], renamed: dict[str, str]
) -> None:
    assert pair_columns(columns(*old), columns(*new)) == renamed


def test_diff_columns_pairs_only_by_name() -> None:
    old, new = columns("a:int", "b:int"), columns("a:int", "x:int")
    assert [(c.kind, c.name) for c in diff_columns(old, new)] == [
        ("added", "x"), ("dropped", "b")
    ]
    (change,) = diff_columns(old, new, by_name=True)
    assert (change.kind, change.name, change.old_name) == ("renamed", "x", "b")
