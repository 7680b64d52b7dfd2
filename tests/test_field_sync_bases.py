"""The base of a same-column conflict: a resolver sees the value the column
had when the node last synchronised it, besides the node's and the server's
(see :doc:`/conflicts`). Real HTTP, the test server's database, SQLite nodes.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from flask_reflectsync.client import Conflict, SyncClient

from .nodes import Cluster
from .test_field_sync import _city, _seed, _set


def _adding(seen: list[dict[str, Any] | None]) -> Any:
    """A resolver merging populations as counters: base + both deltas."""

    def add(conflict: Conflict) -> Any:
        if conflict.kind != "update/update":
            return None
        assert conflict.local is not None and conflict.server is not None
        seen.append(conflict.base)
        if conflict.base is None:
            return "node"
        base = conflict.base["population"]
        local, server = conflict.local["population"], conflict.server["population"]
        return {"population": base + (local - base) + (server - base)}

    return add


def test_a_resolver_merges_a_counter_from_its_base(net: Cluster) -> None:
    seen: list[dict[str, Any] | None] = []
    a = net.node()
    b = net.node(resolution=_adding(seen))
    _seed(net, a, b)  # population 10 everywhere
    _set(b, 1, population=12)
    _set(a, 1, population=15)
    a.synchronize()
    b.synchronize()
    assert seen == [{"population": 10}]
    net.settle()
    assert _city(net) == (1, "Lima", 17, 1)


def test_the_base_moves_to_the_pulled_value(net: Cluster) -> None:
    """A pull between two local edits: the second conflict's base is what
    the first pull brought, not the value before the first edit."""
    seen: list[dict[str, Any] | None] = []
    a = net.node()
    b = net.node(resolution=_adding(seen))
    _seed(net, a, b)
    _set(b, 1, population=12)  # base 10
    _set(a, 1, population=15)
    a.synchronize()
    b.pull()  # 10 + 2 + 5 = 17 queued, the base is now 15
    _set(b, 1, population=20)  # +3 over the pulled 15 and merged 17
    _set(a, 1, population=16)  # +1 over 15
    a.synchronize()
    b.synchronize()
    assert seen == [{"population": 10}, {"population": 15}]
    net.settle()
    # 15 (a's) + 5 (b's two edits: 12 - 10, 20 - 17) + 1 (a's second)
    assert _city(net) == (1, "Lima", 21, 1)


def test_a_pushed_edit_is_the_next_base(net: Cluster) -> None:
    seen: list[dict[str, Any] | None] = []
    a = net.node()
    b = net.node(resolution=_adding(seen))
    _seed(net, a, b)
    _set(b, 1, population=12)
    b.synchronize()  # the server has 12: b's base for the next edit
    _set(b, 1, population=14)
    a.synchronize()
    _set(a, 1, population=13)
    a.synchronize()
    b.synchronize()
    assert seen == [{"population": 12}]
    net.settle()
    assert _city(net) == (1, "Lima", 15, 1)


def test_the_base_is_none_when_unknown(net: Cluster) -> None:
    """A bulk ``update()`` statement keeps no base."""
    seen: list[dict[str, Any] | None] = []
    a = net.node()
    b = net.node(resolution=_adding(seen))
    _seed(net, a, b)
    city = b.schema.tables["city"].mapper.class_
    with b.Session() as session:
        session.execute(sa.update(city).where(city.id == 1).values(population=12))
        session.commit()
    _set(a, 1, population=15)
    a.synchronize()
    b.synchronize()
    assert seen == [None]
    net.settle()
    assert _city(net) == (1, "Lima", 12, 1)  # "node" decided


def test_the_server_keeps_no_bases(net: Cluster) -> None:
    node: SyncClient = net.node()
    _seed(net, node)
    _set(node, 1, population=12)
    node.synchronize()
    server = sa.inspect(net.server.env.db.engine).get_table_names()
    assert "reflectsync_node_bases" not in server
    local = sa.inspect(node.engine)
    assert "reflectsync_node_bases" in local.get_table_names()
    with node.engine.connect() as connection:
        count = sa.text("SELECT count(*) FROM reflectsync_node_bases")
        assert connection.execute(count).scalar() == 0  # acknowledged with its push
