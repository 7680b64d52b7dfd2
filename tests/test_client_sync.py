"""SyncClient over real HTTP: local tracking, register, push, pull,
synchronize, exactly-once pushes and the error tree."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from flask_reflectsync import errors
from flask_reflectsync.client import SyncClient
from flask_reflectsync.node.tables import NODE_LOG, NODE_STATE

from .conftest import AppFactory
from .nodes import Cluster, cluster, rows_of


class LoseAnswers(httpx.BaseTransport):
    """Sends every request, then (while ``lose`` is set) throws the answer
    away, as a dropped connection would."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose = False
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.inner.handle_request(request)
        self.sent.append(request.url.path)
        if self.lose:
            answer.read()
            answer.close()
            raise httpx.ReadError("connection dropped", request=request)
        return answer

    def close(self) -> None:
        self.inner.close()


def test_register_once_and_keep_the_secret(net: Cluster) -> None:
    node = net.node()
    assert node.is_registered()
    first = node.node_id
    assert node.register() == first  # already registered: nothing sent
    with node.engine.connect() as connection:
        state = connection.execute(sa.select(NODE_STATE)).one()
    assert state.secret and state.node_id == first


def test_bookkeeping_tables_created_on_first_use_idempotently(
    net: Cluster, tmp_path: Path
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'lazy.db'}")
    net.server.env.db.metadata.create_all(engine, tables=net.tables)
    client = SyncClient(net.server.base, engine, models=net.models)
    assert not sa.inspect(engine).has_table("reflectsync_node_state")
    with client.Session() as session:
        session.add(net.server.env.models.Country(id=1, name="Peru"))
        session.commit()
    again = SyncClient(net.server.base, engine, models=net.models)
    with again.Session() as session:
        session.add(net.server.env.models.Country(id=2, name="Chile"))
        session.commit()
    assert again.pending_operations() == 2
    assert not again.is_registered()
    with pytest.raises(errors.NotRegisteredError):
        again.push()
    client.close()
    again.close()
    engine.dispose()


def test_push_then_pull_reaches_another_node(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="Lima", population=10, country_id=1))
        session.commit()
    assert a.pending_operations() == 2

    pushed = a.push()
    assert pushed.version == 1 and pushed.operations == 2
    assert a.pending_operations() == 0
    assert a.push().push_id is None  # nothing left to push

    pulled = b.pull()
    assert pulled.version == 1 and pulled.operations == 2
    assert b.pending_operations() == 0  # applying pulled rows logs nothing
    net.assert_converged()


def test_changes_made_by_a_rolled_back_savepoint_are_not_queued(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node()
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        savepoint = session.begin_nested()
        session.add(m.Country(id=2, name="Gone"))
        session.flush()
        savepoint.rollback()
        session.commit()
    assert node.pending_operations() == 1
    with node.Session() as session:
        session.add(m.Country(id=3, name="Never"))
        session.flush()
        session.rollback()
    assert node.pending_operations() == 1
    node.synchronize()
    assert [r[0] for r in net.server_rows()["country"]] == [1]


def test_bulk_statements_are_queued(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node()
    with node.Session() as session:
        session.execute(
            sa.insert(m.Country), [{"id": i, "name": f"c{i}"} for i in range(1, 4)]
        )
        session.execute(sa.update(m.Country).where(m.Country.id == 2).values(name="x"))
        session.execute(sa.delete(m.Country).where(m.Country.id == 3))
        session.commit()
    node.synchronize()
    assert net.server_rows()["country"] == [(1, "c1"), (2, "x")]
    net.assert_converged()


def test_lost_push_answer_is_resent_with_the_same_id_and_applied_once(
    net: Cluster,
) -> None:
    m = net.server.env.models
    transport = LoseAnswers()
    node = net.node(transport=transport, retries=0)
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()

    transport.lose = True
    with pytest.raises(errors.ServerUnreachableError) as caught:
        node.push()
    assert caught.value.retryable
    with node.engine.connect() as connection:
        push_id = connection.execute(sa.select(NODE_STATE.c.push_id)).scalar()
    assert push_id  # stored before sending, kept for the retry

    # Written while the push is in flight: stays queued for the next push.
    with node.Session() as session:
        session.add(m.Country(id=2, name="Chile"))
        session.commit()

    transport.lose = False
    again = node.push()
    assert again.push_id == push_id
    assert again.operations == 1
    assert node.pending_operations() == 1  # Chile

    versions = net.server.env.db.metadata.tables["reflectsync_versions"]
    with net.server.env.db.engine.connect() as connection:
        assert (
            connection.execute(
                sa.select(sa.func.count()).select_from(versions)
            ).scalar()
            == 1
        )
    node.synchronize()
    assert [r[0] for r in net.server_rows()["country"]] == [1, 2]
    net.assert_converged()


def test_an_overruled_delete_is_reported_when_its_answer_was_lost(
    net: Cluster,
) -> None:
    """The server decides a stale delete (the row was updated since) for the
    server's row; the answer is lost and the push sent again: the node must
    still hear the ruling (a conflict) and get the row back."""
    from flask_reflectsync import signals

    m = net.server.env.models
    transport = LoseAnswers()
    node = net.node(transport=transport, retries=0)
    other = net.node()
    with other.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    other.synchronize()
    node.synchronize()
    with other.Session() as session:
        session.get(m.Country, 1).name = "Perú"
        session.commit()
    other.synchronize()
    with node.Session() as session:
        session.delete(session.get(m.Country, 1))
        session.commit()

    heard: list[Any] = []

    def receive(sender: Any, conflict: Any, **extra: Any) -> None:
        heard.append((conflict.kind, conflict.resolution, conflict.key))

    signals.conflict_resolved.connect(receive, sender=node)
    try:
        transport.lose = True
        with pytest.raises(errors.ServerUnreachableError):
            node.push()
        transport.lose = False
        again = node.push()
    finally:
        signals.conflict_resolved.disconnect(receive, sender=node)
    assert heard == [("delete/update", "server", (1,))]
    assert [(c.kind, c.resolution) for c in again.conflicts] == [
        ("delete/update", "server")
    ]
    node.synchronize()
    assert net.server_rows()["country"] == [(1, "Perú")]
    net.assert_converged()


class LoseFirstRegistration(LoseAnswers):
    """Loses the answer to the first ``/register`` only."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.lose = request.url.path.endswith("/register") and not any(
            path.endswith("/register") for path in self.sent
        )
        return super().handle_request(request)


def test_a_lost_registration_answer_leaves_no_orphan_node(net: Cluster) -> None:
    """The server registered the node but the answer was lost: the client
    sends the registration again (with the same registration id) and gets
    that same node, so no node row is left that nobody holds a secret for
    (it would pin the trim watermark for good)."""
    transport = LoseFirstRegistration()
    node = net.node(transport=transport, retries=2, retry_within=0.3)
    assert [p for p in transport.sent if p.endswith("/register")] == [
        "/sync/register",
        "/sync/register",
    ]
    nodes = net.server.env.db.metadata.tables["reflectsync_nodes"]
    with net.server.env.db.engine.connect() as connection:
        ids = connection.execute(sa.select(nodes.c.id)).scalars().all()
    assert ids == [node.node_id]
    m = net.server.env.models
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    node.synchronize()  # the secret it got the second time signs
    assert net.server_rows()["country"] == [(1, "Peru")]


def test_pull_resends_a_pending_push_first(net: Cluster) -> None:
    m = net.server.env.models
    transport = LoseAnswers()
    node = net.node(transport=transport, retries=0)
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    transport.lose = True
    with pytest.raises(errors.ServerUnreachableError):
        node.push()
    transport.lose = False
    node.pull()
    assert node.pending_operations() == 0
    net.assert_converged()


def test_writes_from_other_threads_during_push_and_pull_stay_queued(
    net: Cluster,
) -> None:
    m = net.server.env.models
    node, other = net.node(), net.node()
    stop = threading.Event()
    written: list[int] = []
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            number = 100
            while not stop.is_set() or number < 120:
                with node.Session() as session:
                    session.add(m.Country(id=number, name=f"c{number}"))
                    session.commit()
                written.append(number)
                number += 1
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    with other.Session() as session:
        session.add_all([m.Country(id=i, name=f"o{i}") for i in range(1, 6)])
        session.commit()
    other.push()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            node.synchronize()
    finally:
        stop.set()
        thread.join()
    assert not failures
    net.settle()
    rows = net.assert_converged()
    assert {r[0] for r in rows["country"]} == set(range(1, 6)) | set(written)


def test_update_then_delete_while_queued_compresses(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node()
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    with node.Session() as session:
        country = session.get(m.Country, 1)
        country.name = "Perú"
        session.commit()
    with node.Session() as session:
        session.delete(session.get(m.Country, 1))
        session.commit()
    assert node.push().push_id is not None
    assert net.server_rows()["country"] == []
    with node.engine.connect() as connection:
        assert (
            connection.execute(
                sa.select(sa.func.count()).select_from(NODE_LOG.versions)
            ).scalar()
            == 0
        )


# -- errors -------------------------------------------------------------------------


def test_unreachable_server_is_retryable(net: Cluster, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'off.db'}")
    client = SyncClient(
        "http://127.0.0.1:9/sync", engine, models=net.models, timeout=2, retries=0
    )
    with pytest.raises(errors.ServerUnreachableError) as caught:
        client.register()
    assert "Cannot reach the sync server" in caught.value.message
    assert isinstance(caught.value, errors.SyncError)
    client.close()
    engine.dispose()


def test_registration_refused_and_authentication_errors(
    make_app: AppFactory, tmp_path: Path
) -> None:
    with cluster(
        make_app,
        tmp_path,
        REFLECTSYNC_OPEN_REGISTRATION=False,
        REFLECTSYNC_REGISTRATION_TOKEN="sesame",
    ) as net:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'n.db'}")
        net.server.env.db.metadata.create_all(engine, tables=net.tables)
        client = SyncClient(net.server.base, engine, models=net.models)
        with pytest.raises(errors.AuthenticationError):
            client.register()
        with pytest.raises(errors.RegistrationRefusedError):
            client.register(token="wrong")
        client.register(token="sesame")
        assert client.is_registered()
        with client.engine.begin() as connection:
            connection.execute(sa.update(NODE_STATE).values(secret="forged"))
        with pytest.raises(errors.AuthenticationError) as caught:
            client.pull()
        assert "signature" in caught.value.message
        client.close()
        engine.dispose()


def test_wrong_prefix_is_a_protocol_mismatch(net: Cluster, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    client = SyncClient(net.server.url + "/elsewhere", engine, models=net.models)
    with pytest.raises(errors.ProtocolMismatchError) as caught:
        client.register()
    assert "prefix" in caught.value.message
    client.close()
    engine.dispose()


def test_protocol_mismatch_from_answer(monkeypatch: Any, net: Cluster) -> None:
    node = net.node()
    from flask_reflectsync.node import transport as client_module

    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", 3)
    with pytest.raises(errors.ProtocolMismatchError):
        node.pull()


def test_error_tree() -> None:
    for cls in (
        errors.ServerUnreachableError,
        errors.PushRejectedError,
        errors.AuthenticationError,
        errors.ProtocolMismatchError,
        errors.UniqueConstraintError,
        errors.NotRegisteredError,
    ):
        assert issubclass(cls, errors.SyncError)
    assert errors.ServerUnreachableError.retryable
    assert errors.ServiceBusyError.retryable
    assert not errors.PushRejectedError.retryable


def test_flask_sqlalchemy_node_app_queues_db_session_changes(
    net: Cluster, tmp_path: Path
) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from .conftest import define_models

    app = Flask("node_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    db = SQLAlchemy()
    db.init_app(app)
    models = define_models(db)
    server_engine = net.server.env.db.engine  # read in the server's app context
    with app.app_context():
        db.create_all()
        client = SyncClient(
            net.server.base,
            db.engine,
            models=[models.Country, models.City],
            name="flask node",
        )
        client.track_session(db.session)
        client.register()
        db.session.add(models.Country(id=1, name="Peru"))
        db.session.commit()
        assert client.pending_operations() == 1
        client.synchronize()
        assert rows_of(server_engine, net.tables)["country"] == [(1, "Peru")]

        other = net.node()
        with other.Session() as session:
            session.add(net.server.env.models.City(id=1, name="Lima", country_id=1))
            session.commit()
        other.synchronize()
        client.pull()
        assert [c.name for c in db.session.scalars(sa.select(models.City))] == ["Lima"]
        db.session.remove()
        client.close()
        db.engine.dispose()


# -- the node's secret --------------------------------------------------------------


def test_a_new_node_file_is_created_for_its_owner_only(tmp_path: Path) -> None:
    import os
    import stat

    path = tmp_path / "private.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    client = SyncClient("http://127.0.0.1:9/sync", engine, models=[])
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        client.pending_operations()  # SQLite uses the file as it is
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        client.close()
        engine.dispose()


def test_the_secret_can_come_from_outside_the_database(
    net: Cluster, tmp_path: Path
) -> None:
    m = net.server.env.models
    kept: list[str] = []
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'outside.db'}")
    net.server.env.db.metadata.create_all(engine, tables=net.tables)

    def make(**options: Any) -> SyncClient:
        return SyncClient(net.server.base, engine, models=net.models, **options)

    with pytest.raises(errors.ConfigurationError, match="save_secret"):
        make(secret=lambda: None).register()
    first = make(secret=lambda: kept[0] if kept else None, save_secret=kept.append)
    node_id = first.register()
    assert len(kept) == 1 and first.is_registered()
    with engine.connect() as connection:
        stored = connection.execute(sa.select(NODE_STATE.c.secret)).scalar()
    assert stored is None
    first.close()
    # Another program on the same file, given the secret (as a string).
    second = make(secret=kept[0])
    with second.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    assert second.push().operations == 1
    assert second.node_id == node_id
    second.close()
    # Without it the node is registered but cannot sign.
    third = make()
    assert not third.is_registered()
    with pytest.raises(errors.NotRegisteredError, match="secret=") as caught:
        third.pull()
    assert f"node {node_id}" in caught.value.message
    third.close()
    engine.dispose()
