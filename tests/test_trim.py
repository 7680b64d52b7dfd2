"""``flask reflectsync trim``: the log loses what every node has pulled, and a
node left behind is told to repair instead of silently missing changes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flask_reflectsync.client import SyncClient
from flask_reflectsync.errors import SyncError

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

    with pytest.raises(SyncError, match="trimmed its log through version 1.*[Rr]epair"):
        b.pull()
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
