"""Fleet operations: a revoked node is refused on every signed route, a
retired or inactive node stops pinning the trim watermark and is told to
repair when it comes back, and trim drops version rows too."""

from __future__ import annotations

import datetime

import pytest
import sqlalchemy as sa

from flask_reflectsync.client import SyncClient
from flask_reflectsync.errors import (
    NodeRetiredError,
    NodeRevokedError,
    NotFoundError,
)

from .conftest import AppFactory
from .nodes import Cluster, cluster


def _cli(net: Cluster, *args: str, code: int = 0) -> str:
    result = net.server.env.app.test_cli_runner().invoke(args=["reflectsync", *args])
    assert result.exit_code == code, result.output
    return str(result.output)


def _add_cities(node: SyncClient, net: Cluster, *names: str) -> None:
    m = net.server.env.models
    with node.Session() as session:
        session.add_all([m.City(name=name) for name in names])
        session.commit()


def _count(net: Cluster, name: str) -> int:
    table = net.server.env.db.metadata.tables[name]
    with net.server.env.db.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            or 0
        )


def _state_of(net: Cluster, node: SyncClient) -> str:
    (found,) = [n for n in net.server.env.sync.nodes() if n.id == node.node_id]
    return found.state


def test_a_revoked_node_is_refused_on_every_signed_route(net: Cluster) -> None:
    lost, kept = net.node("tablet"), net.node("desk")
    _add_cities(lost, net, "Lima")
    lost.synchronize()
    assert "revoked" in _cli(net, "nodes", "revoke", str(lost.node_id))
    assert _state_of(net, lost) == "revoked"

    _add_cities(lost, net, "Cusco")
    cities = _count(net, "city")
    versions = _count(net, "reflectsync_versions")
    City = net.server.env.models.City
    for attempt in (lost.pull, lost.push, lost.repair, lambda: lost.query(City)):
        with pytest.raises(NodeRevokedError, match="revoked") as refused:
            attempt()
        assert (refused.value.status, refused.value.code) == (403, "auth.revoked")
    # Nothing of the refused push was written; the change stays queued.
    assert (_count(net, "city"), _count(net, "reflectsync_versions")) == (
        cities,
        versions,
    )
    assert lost.pending_operations() == 1

    # The other nodes carry on.
    _add_cities(kept, net, "Quito")
    kept.synchronize()
    assert {row[1] for row in net.server_rows()["city"]} == {"Lima", "Quito"}


def test_a_revoked_nodes_refusal_is_a_json_403(net: Cluster) -> None:
    from .http_server import TestNode

    raw = TestNode(net.server.base)
    try:
        raw.register()
        net.server.env.sync.revoke_node(raw.id)
        answer = raw.call("POST", "/pull", json={"protocol": 2, "since": 0})
    finally:
        raw.client.close()
    assert answer.status_code == 403
    body = answer.json()
    assert (body["ok"], body["code"], body["status"]) == (False, "auth.revoked", 403)
    assert "revoked" in body["error"]


def test_revoking_or_retiring_an_unknown_node_says_so(net: Cluster) -> None:
    net.node()
    for verb in ("revoke", "retire"):
        output = _cli(net, "nodes", verb, "999", code=1)
        assert "no registered node with id 999" in output
    with pytest.raises(NotFoundError):
        net.server.env.sync.revoke_node(999)
    assert _cli(net, "nodes", "revoke", "0", code=2)


def test_a_retired_node_stops_pinning_trim_and_must_repair(net: Cluster) -> None:
    a, gone = net.node(), net.node("gone")
    _add_cities(a, net, "Lima")
    a.synchronize()
    gone.synchronize()
    _add_cities(a, net, "Quito", "Puno")
    a.synchronize()
    a.synchronize()
    # gone pulled version 1 only: it pins the watermark there.
    assert "Trimmed 1 operation(s) through version 1" in _cli(net, "trim")
    assert "Nothing to trim" in _cli(net, "trim")

    assert "retired" in _cli(net, "nodes", "retire", str(gone.node_id))
    assert _state_of(net, gone) == "retired"
    assert "Trimmed 2 operation(s) through version 2" in _cli(net, "trim")
    assert _count(net, "reflectsync_operations") == 0

    with pytest.raises(NodeRetiredError, match="[Rr]epair") as told:
        gone.pull()
    assert (told.value.status, told.value.code) == (410, "fleet.retired")
    gone.repair()
    assert _state_of(net, gone) == "active"
    _add_cities(gone, net, "Cusco")
    gone.synchronize()
    a.synchronize()
    net.assert_converged()


def test_a_retired_nodes_queued_changes_still_arrive(net: Cluster) -> None:
    a, gone = net.node(), net.node("gone")
    _add_cities(a, net, "Lima")
    a.synchronize()
    gone.synchronize()
    _add_cities(gone, net, "Cusco")  # made offline, before it was retired
    net.server.env.sync.retire_node(gone.node_id)
    gone.push()  # accepted: the log above its version is still there
    with pytest.raises(NodeRetiredError):
        gone.pull()
    gone.repair()
    net.settle()
    net.assert_converged()
    assert {row[1] for row in net.server_rows()["city"]} == {"Lima", "Cusco"}


@pytest.fixture
def policy(make_app: AppFactory, tmp_path: object) -> object:
    with cluster(make_app, tmp_path, REFLECTSYNC_NODE_INACTIVE_DAYS=30) as found:  # type: ignore[arg-type]
        yield found


def _last_seen(net: Cluster, node: SyncClient, days_ago: float) -> None:
    nodes = net.server.env.db.metadata.tables["reflectsync_nodes"]
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
        days=days_ago
    )
    with net.server.env.db.engine.begin() as connection:
        connection.execute(
            nodes.update().where(nodes.c.id == node.node_id).values(last_seen_at=moment)
        )


def test_a_node_not_seen_for_the_inactive_days_is_told_to_repair(
    policy: Cluster,
) -> None:
    net = policy
    a, away = net.node(), net.node("away")
    _add_cities(a, net, "Lima")
    a.synchronize()
    away.synchronize()
    _add_cities(a, net, "Quito")
    a.synchronize()
    a.synchronize()

    _last_seen(net, away, 29)
    assert _state_of(net, away) == "active"
    assert "through version 1 " in _cli(net, "trim")  # away pins version 1
    assert "Nothing to trim" in _cli(net, "trim")
    _last_seen(net, away, 31)
    assert _state_of(net, away) == "inactive"
    assert "inactive" in _cli(net, "nodes")
    assert f"through version {a.last_version}" in _cli(net, "trim")

    with pytest.raises(NodeRetiredError, match="REFLECTSYNC_NODE_INACTIVE_DAYS"):
        away.pull()
    assert _state_of(net, away) == "retired"
    away.repair()
    away.synchronize()
    assert _state_of(net, away) == "active"
    net.assert_converged()


def test_a_node_seen_within_the_inactive_days_syncs_as_before(
    policy: Cluster,
) -> None:
    net = policy
    a = net.node()
    _add_cities(a, net, "Lima")
    a.synchronize()
    _last_seen(net, a, 29)
    _add_cities(a, net, "Quito")
    a.synchronize()
    assert _state_of(net, a) == "active"


def test_the_inactive_days_must_be_positive(make_app: AppFactory) -> None:
    from flask_reflectsync.server.settings import ServerSettings

    with pytest.raises(Exception, match="REFLECTSYNC_NODE_INACTIVE_DAYS"):
        ServerSettings.from_config({"REFLECTSYNC_NODE_INACTIVE_DAYS": 0})


def test_trim_drops_version_rows_but_each_nodes_latest_push(net: Cluster) -> None:
    a, b = net.node(), net.node()
    for name in ("Lima", "Quito", "Cusco"):
        _add_cities(a, net, name)
        a.synchronize()
    _add_cities(b, net, "Tacna")
    b.synchronize()
    net.settle()
    assert _count(net, "reflectsync_versions") == 4
    _cli(net, "trim")
    versions = net.server.env.db.metadata.tables["reflectsync_versions"]
    with net.server.env.db.engine.connect() as connection:
        kept = connection.execute(
            sa.select(versions.c.node_id, versions.c.number).order_by(
                versions.c.number
            )
        ).all()
    # a's last push (version 3) and b's (version 4) keep retries exactly-once.
    assert [tuple(row) for row in kept] == [(a.node_id, 3), (b.node_id, 4)]

    _add_cities(a, net, "Puno")
    a.synchronize()
    b.synchronize()
    net.assert_converged()
