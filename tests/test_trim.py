"""``flask reflectsync trim``: the log loses what every node has pulled, and a
node left behind is told to repair instead of silently missing changes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flask_reflectsync.client import SyncClient
from flask_reflectsync.errors import GoneError, SyncError

from .nodes import Cluster


def _cli(net: Cluster, *args: str) -> str:
    result = net.server.env.app.test_cli_runner().invoke(args=["reflectsync", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


def _logged(net: Cluster) -> int:
    ops = net.server.env.db.metadata.tables["reflectsync_operations"]
    with net.server.env.db.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(ops)).scalar()
            or 0
        )


def _add_cities(node: SyncClient, net: Cluster, *names: str) -> None:
    m = net.server.env.models
    with node.Session() as session:
        session.add_all([m.City(name=name) for name in names])
        session.commit()


def test_trim_drops_only_what_every_node_pulled(net: Cluster) -> None:
    a, b = net.node(), net.node()
    _add_cities(a, net, "Lima", "Quito")
    a.synchronize()
    b.synchronize()
    a.synchronize()  # a records that it has pulled up to the latest version
    before = _logged(net)
    assert before == 2

    assert "Would trim 2 operation(s) through version 1" in _cli(
        net, "trim", "--dry-run"
    )
    assert _logged(net) == before
    assert "Trimmed 2 operation(s) through version 1" in _cli(net, "trim")
    assert _logged(net) == 0
    assert "Nothing to trim" in _cli(net, "trim")

    # Life goes on above the mark.
    _add_cities(a, net, "Cusco")
    a.synchronize()
    b.synchronize()
    net.settle()
    net.assert_converged()


def test_a_node_behind_the_trimmed_mark_is_told_to_repair(net: Cluster) -> None:
    a, b = net.node(), net.node()
    _add_cities(a, net, "Lima")
    a.synchronize()
    output = _cli(net, "trim", "--through", "1")
    assert "1 node(s) had not pulled that far and must repair" in output

    # b has a change queued: repairing would lose it, so b is told, not
    # repaired behind its back.
    _add_cities(b, net, "Cusco")
    with pytest.raises(
        SyncError, match="trimmed its log through version 1.*[Rr]epair"
    ) as told:
        b.pull()
    # The node learns it from the code, and raises the class the code names.
    assert (type(told.value), told.value.code) == (GoneError, "log.trimmed")
    assert b.pending_operations() == 1
    b.repair()
    _add_cities(b, net, "Arequipa")
    b.synchronize()
    a.synchronize()
    net.assert_converged()
    assert {row[1] for row in net.server_rows()["city"]} == {"Lima", "Arequipa"}


def test_trim_refuses_a_version_that_does_not_exist(net: Cluster) -> None:
    result = net.server.env.app.test_cli_runner().invoke(
        args=["reflectsync", "trim", "--through", "5"]
    )
    assert result.exit_code != 0
    assert "does not exist yet" in result.output


def test_trim_refuses_a_negative_version(net: Cluster) -> None:
    net.node()
    result = net.server.env.app.test_cli_runner().invoke(
        args=["reflectsync", "trim", "--through", "-1"]
    )
    assert result.exit_code == 2
    assert "-1" in result.output and "--through" in result.output


def test_a_node_registered_after_a_trim_is_bootstrapped(net: Cluster) -> None:
    a = net.node()
    _add_cities(a, net, "Lima", "Cusco")
    a.synchronize()
    _add_cities(a, net, "Arequipa")
    a.synchronize()
    _cli(net, "trim")
    late = net.node()
    result = late.pull()
    assert result.repaired == 2 + 1
    assert late.last_version == a.last_version
    net.assert_converged()


def test_a_node_that_pulled_before_is_not_repaired_behind_its_back(
    net: Cluster,
) -> None:
    a, b = net.node(), net.node()
    _add_cities(a, net, "Lima")
    a.synchronize()
    b.pull()
    _add_cities(a, net, "Cusco")
    a.synchronize()
    _cli(net, "trim", "--through", str(a.last_version))
    with pytest.raises(SyncError, match="[Rr]epair"):
        b.pull()


def test_a_repair_brings_the_servers_record_of_the_node_up_to_date(
    net: Cluster,
) -> None:
    a, b = net.node(), net.node()
    _add_cities(a, net, "Lima")
    a.synchronize()
    _add_cities(b, net, "Cusco")  # queued: no bootstrap, a repair by hand
    b.repair()
    nodes = _cli(net, "nodes")
    line = next(
        row
        for row in nodes.splitlines()
        if row.split()[:2] == [str(b.node_id), "node2"]
    )
    assert line.split()[-1] == "0"  # behind
    assert f"safe watermark: {a.last_version}" in _cli(net, "trim", "--dry-run")
