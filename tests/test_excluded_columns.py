"""Columns kept out of sync (``track(exclude=...)``, ``track(only=...)``),
over real HTTP: they never leave the server (pull, repair, query), a push or
a query filter naming one is refused with 400 ``request.excluded_column``
and nothing is written, the node never sends them and keeps its own values
through pulls and repairs, and an update that changes only them makes no
version."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_reflectsync import errors, track
from flask_reflectsync.client import SyncClient
from flask_reflectsync.node.pull import decode_page
from flask_reflectsync.node.push import push_message
from flask_reflectsync.server.schema import TrackedSchema
from flask_reflectsync.tracking.columns import decode_columns
from flask_reflectsync.tracking.registry import tracked_table_for
from flask_reflectsync.wire.messages import PROTOCOL_VERSION

from .conftest import AppFactory
from .http_server import (
    ServerEnv,
    database_state,
    read_repair,
    server_env,
    without_nonces,
)

HASH = "pbkdf2:sha256$server-secret-hash"
NODE_HASH = "node-own-hash"


def define_account(db: Any) -> Any:
    @track(exclude=["password_hash", "last_seen"])
    class Account(db.Model):  # type: ignore[name-defined]
        __tablename__ = "account"
        id: Mapped[int] = mapped_column(primary_key=True)
        username: Mapped[str] = mapped_column(sa.String(40))
        about: Mapped[str] = mapped_column(sa.String(200), default="")
        # A server default: pushes to the table are read back (triggers,
        # defaults) with the excluded column in the row.
        password_hash: Mapped[str] = mapped_column(sa.String(200), server_default="")
        last_seen: Mapped[datetime.datetime | None]

    return Account


@dataclass
class Served:
    server: ServerEnv
    Account: Any
    directory: Path

    @property
    def db(self) -> Any:
        return self.server.env.db

    def add(self, **values: Any) -> None:
        """Insert an account through the server app's own session."""
        self.db.session.add(self.Account(**values))
        self.db.session.commit()

    def versions(self) -> int:
        versions = self.db.metadata.tables["reflectsync_versions"]
        with self.db.engine.connect() as connection:
            return int(
                connection.scalar(sa.select(sa.func.count()).select_from(versions))
            )

    def row(self, key: int) -> tuple[Any, ...] | None:
        table = self.Account.__table__
        with self.db.engine.connect() as connection:
            found = connection.execute(
                sa.select(table).where(table.c.id == key)
            ).first()
        return None if found is None else tuple(found)

    def node(self, name: str = "node") -> SyncClient:
        engine = sa.create_engine(f"sqlite:///{self.directory / name}.db")
        self.db.metadata.create_all(engine, tables=[self.Account.__table__])
        client = SyncClient(self.server.base, engine, name=name, models=[self.Account])
        client.register()
        return client


@pytest.fixture
def served(make_app: AppFactory, tmp_path: Path) -> Iterator[Served]:
    with server_env(make_app) as server:
        Account = define_account(server.env.db)
        server.env.db.create_all()
        found = Served(server, Account, tmp_path)
        nodes: list[SyncClient] = []
        original = found.node

        def node(name: str = "node") -> SyncClient:
            client = original(name)
            nodes.append(client)
            return client

        found.node = node  # type: ignore[method-assign]
        try:
            yield found
        finally:
            for client in nodes:
                client.close()
                client.engine.dispose()


def _node_row(node: SyncClient, Account: Any, key: int) -> dict[str, Any] | None:
    table = Account.__table__
    with node.engine.connect() as connection:
        found = connection.execute(sa.select(table).where(table.c.id == key)).first()
    return None if found is None else dict(found._mapping)


# -- the server's routes --------------------------------------------------------------


def test_a_pull_page_leaves_excluded_columns_out(served: Served) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        answer = node.pull(0)
        assert answer.status_code == 200, answer.text
        changes = answer.json()["changes"]["account"]
        assert changes["columns"] == ["id", "username", "about"]
        assert changes["values"] == [[1], ["alice"], [""]]
        assert HASH not in answer.text
    finally:
        node.close()


def test_the_repair_stream_leaves_excluded_columns_out(served: Served) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        answer = node.repair()
        assert HASH not in answer.text
        table = read_repair(answer)["tables"]["account"]
        assert table == {
            "columns": ["id", "username", "about"],
            "rows": [[1, "alice", ""]],
        }
    finally:
        node.close()


def test_query_answers_leave_excluded_columns_out(served: Served) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        answer = node.call(
            "GET", "/query", params={"model": "account", "username": "alice"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == [{"id": 1, "username": "alice", "about": ""}]
        assert HASH not in answer.text
    finally:
        node.close()


@pytest.mark.parametrize(
    "name", ["password_hash", "password_hash__isnull", "last_seen__gt"]
)
def test_a_query_filter_on_an_excluded_column_is_refused(
    served: Served, name: str
) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        text = "true" if name.endswith("isnull") else HASH
        if name.startswith("last_seen"):
            text = "2024-01-01T00:00:00"
        answer = node.call("GET", "/query", params={"model": "account", name: text})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        column = name.partition("__")[0]
        assert body["code"] == "request.excluded_column"
        assert (body["table"], body["column"]) == ("account", column)
        assert column in body["error"]
        assert "rows" not in body
    finally:
        node.close()


@pytest.mark.parametrize("command", ["i", "u", "patch"])
def test_a_push_naming_an_excluded_column_is_refused(
    served: Served, command: str
) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        before = database_state(served.server.env)
        key = 2 if command == "i" else 1
        block = {
            "columns": ["id", "username", "password_hash"],
            "rows": [[key, "mallory", "forged"]],
        }
        payloads: dict[str, Any] = {"sample": {"columns": ["id"], "rows": [[5]]}}
        extra: dict[str, Any] = {}
        if command == "patch":
            extra["patches"] = {"account": [block]}
        else:
            payloads["account"] = block
        answer = node.push(
            [
                {
                    "table": "account",
                    "key": [key],
                    "command": "i" if command == "i" else "u",
                },
                {"table": "sample", "key": [5], "command": "i"},
            ],
            payloads,
            **extra,
        )
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["code"] == "request.excluded_column"
        assert (body["table"], body["column"]) == ("account", "password_hash")
        assert "password_hash" in body["error"] and "account" in body["error"]
        assert without_nonces(database_state(served.server.env)) == without_nonces(
            before
        )
        assert served.row(1) == (1, "alice", "", HASH, None)
    finally:
        node.close()


def test_a_push_without_the_excluded_columns_leaves_them_alone(served: Served) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        node.pull_all()
        answer = node.push(
            [{"table": "account", "key": [1], "command": "u"}],
            {"account": {"columns": ["id", "about"], "rows": [[1, "hi"]]}},
        )
        assert answer.status_code == 200, answer.text
        assert served.row(1) == (1, "alice", "hi", HASH, None)
    finally:
        node.close()


def test_the_openapi_document_names_no_excluded_column(served: Served) -> None:
    import httpx

    answer = httpx.get(served.server.base + "/openapi.json")
    assert answer.status_code == 200
    assert "password_hash" not in answer.text


# -- a real node ----------------------------------------------------------------------


def test_a_node_keeps_its_own_values_and_never_sends_them(served: Served) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.node()
    node.synchronize()
    # The row arrived without the hash: the node's column has its default.
    assert _node_row(node, served.Account, 1) == {
        "id": 1,
        "username": "alice",
        "about": "",
        "password_hash": "",
        "last_seen": None,
    }
    with node.Session() as session:
        account = session.get(served.Account, 1)
        account.password_hash = NODE_HASH  # changes nothing that travels
        session.commit()
    assert node.pending_operations() == 0
    with node.Session() as session:
        account = session.get(served.Account, 1)
        account.about = "from the node"
        account.last_seen = datetime.datetime(2024, 5, 1, 12, 0)
        session.commit()
    assert node.pending_operations() == 1
    node.push()
    assert served.row(1) == (1, "alice", "from the node", HASH, None)

    # The server changes the row: the pull writes what travels and leaves
    # the node's own hash and last_seen alone.
    account = served.db.session.get(served.Account, 1)
    account.username = "alice2"
    account.password_hash = HASH + "-changed"
    served.db.session.commit()
    node.synchronize()
    assert _node_row(node, served.Account, 1) == {
        "id": 1,
        "username": "alice2",
        "about": "from the node",
        "password_hash": NODE_HASH,
        "last_seen": datetime.datetime(2024, 5, 1, 12, 0),
    }


def test_the_nodes_push_message_has_no_excluded_column(served: Served) -> None:
    node = served.node()
    with node.Session() as session:
        session.add(served.Account(id=7, username="bob", password_hash=NODE_HASH))
        session.commit()
    from flask_reflectsync.node.push import start_push

    assert start_push(node)
    message = push_message(node, node._state())
    assert message["payloads"]["account"]["columns"] == ["id", "username", "about"]
    assert NODE_HASH not in json.dumps(message)
    node.push()
    # The server's column gets its default.
    assert served.row(7) == (7, "bob", "", "", None)


def test_a_repair_keeps_the_nodes_own_values(served: Served) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    served.add(id=2, username="bob", password_hash=HASH)
    node = served.node()
    node.synchronize()
    with node.Session() as session:
        session.get(served.Account, 1).password_hash = NODE_HASH
        session.commit()
    served.db.session.delete(served.db.session.get(served.Account, 2))
    served.db.session.commit()
    served.add(id=3, username="carol", password_hash=HASH)
    node.repair()
    rows = {key: _node_row(node, served.Account, key) for key in (1, 2, 3)}
    assert rows[1] is not None and rows[1]["password_hash"] == NODE_HASH
    assert rows[2] is None
    assert rows[3] == {
        "id": 3,
        "username": "carol",
        "about": "",
        "password_hash": "",
        "last_seen": None,
    }


def test_client_query_leaves_excluded_columns_out_and_refuses_filters(
    served: Served,
) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.node()
    (found,) = node.query(served.Account, username="alice")
    assert (found.id, found.username) == (1, "alice")
    assert "password_hash" not in found.__dict__
    with pytest.raises(errors.ExcludedColumnError) as caught:
        node.query(served.Account, password_hash=HASH)
    assert (caught.value.table, caught.value.column) == ("account", "password_hash")
    assert caught.value.code == "request.excluded_column"


# -- updates of excluded columns only -------------------------------------------------


def test_heartbeat_updates_make_no_version(served: Served) -> None:
    served.add(id=1, username="alice")
    start = served.versions()
    session = served.db.session
    for minute in range(10):  # a page view each: last_seen bumped
        account = session.get(served.Account, 1)
        account.last_seen = datetime.datetime(2024, 5, 1, 12, minute)
        session.commit()
    # The same as a bulk UPDATE, with a WHERE clause and by primary key.
    session.execute(
        sa.update(served.Account)
        .where(served.Account.id == 1)
        .values(last_seen=datetime.datetime(2024, 5, 2))
    )
    session.commit()
    session.execute(
        sa.update(served.Account),
        [{"id": 1, "last_seen": datetime.datetime(2024, 5, 3), "password_hash": "x"}],
    )
    session.commit()
    assert served.versions() == start
    assert served.row(1) == (1, "alice", "", "x", datetime.datetime(2024, 5, 3))

    # A change of a column that travels still makes one.
    account = session.get(served.Account, 1)
    account.last_seen = datetime.datetime(2024, 5, 4)
    account.about = "changed"
    session.commit()
    session.execute(sa.update(served.Account).values(about="again", last_seen=None))
    session.commit()
    session.execute(
        sa.update(served.Account),
        [{"id": 1, "about": "third", "last_seen": datetime.datetime(2024, 5, 5)}],
    )
    session.commit()
    assert served.versions() == start + 3
    # ...logged with the columns that travel only.
    operations = served.db.metadata.tables["reflectsync_operations"]
    with served.db.engine.connect() as connection:
        logged = connection.scalars(
            sa.select(operations.c.changed_columns)
            .order_by(operations.c.id.desc())
            .limit(3)
        ).all()
    assert [decode_columns(text) for text in logged] == [frozenset({"about"})] * 3


def test_an_update_of_an_expired_object_changing_only_excluded_columns(
    served: Served,
) -> None:
    served.add(id=1, username="alice")
    start = served.versions()
    session = served.db.session
    account = session.get(served.Account, 1)
    session.commit()  # expires the object: no original values held
    account.last_seen = datetime.datetime(2024, 5, 1)
    account.username = "alice"  # the value it has
    session.commit()
    assert served.versions() == start


# -- registration ---------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


def _model(name: str, **columns: Any) -> type:
    attrs: dict[str, Any] = {
        "__tablename__": name,
        "id": sa.Column(sa.Integer, primary_key=True),
        **columns,
    }
    return type(name.title(), (_Base,), attrs)


def test_unknown_columns_are_refused_at_registration() -> None:
    model = _model("reg_unknown", secret=sa.Column(sa.String, nullable=True))
    with pytest.raises(errors.ConfigurationError, match="'secrte' is not a column"):
        track(exclude=["secrte"])(model)
    with pytest.raises(errors.ConfigurationError, match="'nope' is not a column"):
        track(model, only=["nope"])


def test_primary_key_columns_cannot_be_excluded() -> None:
    model = _model("reg_pk", secret=sa.Column(sa.String, nullable=True))
    with pytest.raises(errors.ConfigurationError, match="'id' is a primary-key column"):
        track(exclude=["id"])(model)


def test_exclude_and_only_together_are_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match="not both"):
        track(exclude=["a"], only=["b"])


def test_a_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match=r"exclude=\['secret'\]"):
        track(exclude="secret")  # type: ignore[call-overload]


def test_a_not_null_column_without_default_cannot_be_excluded() -> None:
    model = _model("reg_notnull", secret=sa.Column(sa.String(20), nullable=False))
    with pytest.raises(errors.ConfigurationError, match="NOT NULL without a default"):
        track(exclude=["secret"])(model)
    for column in (
        sa.Column(sa.String(20), nullable=False, default=""),
        sa.Column(sa.String(20), nullable=False, server_default=""),
        sa.Column(sa.String(20), nullable=True),
    ):
        fine = _model(f"reg_ok_{id(column)}", secret=column)
        assert track(exclude=["secret"])(fine) is fine


def test_only_keeps_the_key_and_the_listed_columns() -> None:
    model = _model(
        "reg_only",
        title=sa.Column(sa.String(20)),
        body=sa.Column(sa.Text, nullable=True),
        pw=sa.Column("password_hash", sa.String(20), nullable=True),
    )
    track(only=["title"])(model)
    info = tracked_table_for(sa.inspect(model))
    assert info is not None
    assert [c.name for c in info.synced_columns] == ["id", "title"]
    assert info.excluded == {"body", "password_hash"}


def test_names_are_attributes_or_columns() -> None:
    model = _model(
        "reg_names",
        pw=sa.Column("password_hash", sa.String(20), nullable=True),
        token=sa.Column(sa.String(20), nullable=True),
    )
    track(exclude=["pw", "token"])(model)
    info = tracked_table_for(sa.inspect(model))
    assert info is not None and info.excluded == {"password_hash", "token"}
    assert info.synced_attrs(sa.inspect(model)) == {"id"}
    again = _model(
        "reg_names2", pw=sa.Column("password_hash", sa.String, nullable=True)
    )
    track(exclude=["password_hash"])(again)
    info = tracked_table_for(sa.inspect(again))
    assert info is not None and info.excluded == {"password_hash"}


def test_sync_track_takes_the_same_arguments() -> None:
    from flask_reflectsync import ReflectSync

    model = _model("reg_ext", secret=sa.Column(sa.String, nullable=True))
    assert ReflectSync.track(exclude=["secret"])(model) is model
    info = tracked_table_for(sa.inspect(model))
    assert info is not None and info.excluded == {"secret"}
    plain = _model("reg_ext_plain", secret=sa.Column(sa.String, nullable=True))
    assert ReflectSync().track(plain) is plain
    info = tracked_table_for(sa.inspect(plain))
    assert info is not None and not info.excluded
    with pytest.raises(errors.ConfigurationError, match="'id' is a primary-key"):
        ReflectSync().track(_model("reg_ext_pk"), exclude=["id"])


# -- what the server decides and the node decodes --------------------------------------


def test_a_stale_push_decided_by_the_server_describes_its_row_without_them(
    served: Served,
) -> None:
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.server.node()
    try:
        node.pull_all()
        account = served.db.session.get(served.Account, 1)
        account.username = "alice2"
        served.db.session.commit()
        answer = node.push(
            [{"table": "account", "key": [1], "command": "u"}],
            {"account": {"columns": ["id", "about"], "rows": [[1, "stale"]]}},
            resolutions={"account": "last-pusher-wins"},
        )
        assert answer.status_code == 200, answer.text
        (entry,) = answer.json()["resolved"]
        assert entry["server"] == {"id": 1, "username": "alice2", "about": ""}
        assert HASH not in answer.text
    finally:
        node.close()


def test_a_node_drops_excluded_columns_a_server_sends(served: Served) -> None:
    """A server tracking the model without the exclusion (configured
    otherwise, or older) sends the column: the node writes it neither from
    a pull, nor from a repair, nor into a query's objects."""
    served.add(id=1, username="alice", password_hash=HASH)
    node = served.node()
    pull = {"protocol": PROTOCOL_VERSION, "since": 0}
    served_page = node._call("POST", "/pull", message=pull)
    assert "password_hash" not in served_page["changes"]["account"]["columns"]
    state = served.server.env.app.extensions["reflectsync"]
    assert state.schema is not None  # built by the pull
    key, schema = state.schema
    info = schema.tables["account"]
    whole = dataclasses.replace(
        info, synced_columns=tuple(info.table.columns), excluded=frozenset()
    )
    state.schema = (key, TrackedSchema({**schema.tables, "account": whole}))
    served_page = node._call("POST", "/pull", message=pull)
    assert "password_hash" in served_page["changes"]["account"]["columns"]
    # The node's own defence, with the page as sent: its synchronize() below
    # names its columns, and the server then cuts the page to them.
    (part,) = [p for p in decode_page(node, served_page) if p.table == "account"]
    assert "username" in part.columns and "password_hash" not in part.columns

    node.synchronize()
    assert _node_row(node, served.Account, 1)["password_hash"] == ""  # type: ignore[index]
    with node.Session() as session:
        session.get(served.Account, 1).password_hash = NODE_HASH
        session.commit()
    account = served.db.session.get(served.Account, 1)
    account.username = "alice2"
    served.db.session.commit()
    node.synchronize()
    row = _node_row(node, served.Account, 1)
    assert row is not None and (row["username"], row["password_hash"]) == (
        "alice2",
        NODE_HASH,
    )
    served.add(id=2, username="bob", password_hash=HASH)  # new to the node
    node.repair()
    row = _node_row(node, served.Account, 1)
    assert row is not None and row["password_hash"] == NODE_HASH
    row = _node_row(node, served.Account, 2)
    assert row is not None and row["password_hash"] == ""
    (found,) = node.query(served.Account, username="alice2")
    assert "password_hash" not in found.__dict__


def test_a_node_does_not_check_excluded_values_against_the_server(
    served: Served,
) -> None:
    # Never sent, so the server's limits do not apply: String(200) holds
    # what the node's own database holds.
    node = served.node()
    with node.Session() as session:
        session.add(served.Account(id=3, username="x", password_hash="h" * 300))
        session.commit()
    with pytest.raises(errors.InvalidValueError):
        with node.Session() as session:
            session.add(served.Account(id=4, username="x" * 41))
            session.commit()


def test_key_codecs_are_found_by_name_among_the_synced_ones() -> None:
    from flask_reflectsync.wire.codec import key_codecs, synced_codecs

    model = type(
        "RegOrder",
        (_Base,),
        {
            "__tablename__": "reg_order",
            "secret": sa.Column(sa.String(10), nullable=True),
            "lang": sa.Column(sa.String(5), primary_key=True),
            "note": sa.Column(sa.String(10), nullable=True),
            "number": sa.Column(sa.Integer, primary_key=True),
        },
    )
    track(exclude=["secret", "note"])(model)
    info = tracked_table_for(sa.inspect(model))
    assert info is not None
    codecs = list(synced_codecs(info).values())
    assert [c.name for c in codecs] == ["lang", "number"]
    assert [c.name for c in key_codecs(info, codecs)] == ["lang", "number"]
