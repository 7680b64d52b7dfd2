"""``flask reflectsync trim`` with nodes at different versions (issue 12):
the safe watermark is the lowest version pulled, so the node furthest
behind still finds every change it has not pulled."""

from __future__ import annotations

from flask_reflectsync.client import SyncClient

from .nodes import Cluster


def _cli(net: Cluster, *args: str) -> str:
    result = net.server.env.app.test_cli_runner().invoke(args=["reflectsync", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


def _add_city(node: SyncClient, net: Cluster, name: str) -> None:
    with node.Session() as session:
        session.add(net.server.env.models.City(name=name))
        session.commit()


def test_trim_keeps_what_the_node_furthest_behind_has_not_pulled(
    net: Cluster,
) -> None:
    ahead, behind, middle = net.node("ahead"), net.node("behind"), net.node("middle")
    _add_city(ahead, net, "Lima")
    ahead.synchronize()
    behind.pull()  # behind stops at version 1
    _add_city(ahead, net, "Cusco")
    ahead.synchronize()
    middle.pull()  # middle stops at version 2
    _add_city(ahead, net, "Quito")
    ahead.synchronize()
    ahead.pull()
    assert (behind.last_version, middle.last_version, ahead.last_version) == (1, 2, 3)

    output = _cli(net, "trim")
    assert "through version 1 " in output and "safe watermark: 1" in output

    # The lagging node is served versions 2 and 3 from the log, no repair.
    result = behind.pull()
    assert result.repaired == 0
    assert behind.last_version == 3
    middle.pull()
    net.assert_converged()
    names = sorted(name for _, name, _, _ in net.server_rows()["city"])
    assert names == ["Cusco", "Lima", "Quito"]
    # Now every node has pulled everything: the rest of the log can go.
    assert "through version 3 " in _cli(net, "trim")
