"""The node's queue knows what the server has: a pull that writes a key the
queue already mentions never makes a later local change vanish or turn into
the wrong command, and rows restored by several nodes stay one row.

Each test is the exact reproduction of a case measured under load (see
:doc:`/conflicts`, "What the queue knows").
"""

from __future__ import annotations

from typing import Any

import pytest

from flask_reflectsync import errors
from flask_reflectsync.client import Conflict, SyncClient

from .nodes import Cluster
from .oplog import commands


def _seed(net: Cluster, *nodes: SyncClient) -> None:
    """Country 1 with cities 1 and 2 everywhere."""
    m = net.server.env.models
    with nodes[0].Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="Lima", population=10, country_id=1))
        session.add(m.City(id=2, name="Cusco", population=5, country_id=1))
        session.commit()
    for node in nodes:
        node.synchronize()
    net.assert_converged()


def _add_city(node: SyncClient, name: str) -> int:
    m = node.schema.tables["city"].mapper.class_
    with node.Session() as session:
        city = m(name=name, population=1, country_id=1)
        session.add(city)
        session.commit()
        return int(city.id)


def _delete(node: SyncClient, model: Any, key: Any) -> None:
    with node.Session() as session:
        session.delete(session.get(model, key))
        session.commit()


def _set(node: SyncClient, model: Any, key: Any, **values: Any) -> None:
    with node.Session() as session:
        row = session.get(model, key)
        for name, value in values.items():
            setattr(row, name, value)
        session.commit()


def _draft_then_pull_the_same_key(net: Cluster) -> tuple[SyncClient, int]:
    """Node a adds and removes a draft city; node b, offline at the same
    time, adds its own city, which takes the same key; a pulls it."""
    m = net.server.env.models
    a, b = net.node(key_blocks=False), net.node(key_blocks=False)
    _seed(net, a, b)
    draft = _add_city(a, "draft")
    _delete(a, m.City, draft)
    key = _add_city(b, "Arequipa")
    assert key == draft  # both nodes handed out the key after the seed
    b.synchronize()
    a.pull()
    with a.Session() as session:
        assert session.get(m.City, key).name == "Arequipa"
    return a, key


def test_a_delete_after_a_pulled_row_under_a_draft_key_is_pushed(
    net: Cluster,
) -> None:
    m = net.server.env.models
    a, key = _draft_then_pull_the_same_key(net)
    _delete(a, m.City, key)
    assert a.pending_operations() == 1
    assert a.push().operations == 1
    net.settle()
    rows = net.assert_converged()
    assert key not in [row[0] for row in rows["city"]]


def test_an_update_after_a_pulled_row_under_a_draft_key_is_pushed(
    net: Cluster,
) -> None:
    m = net.server.env.models
    a, key = _draft_then_pull_the_same_key(net)
    _set(a, m.City, key, population=77)
    a.synchronize()  # was: UniqueConstraintError on every call
    net.settle()
    rows = net.assert_converged()
    assert (key, "Arequipa", 77, 1) in rows["city"]


def _merged_by_the_node(conflict: Conflict) -> None:
    """A callable strategy deciding nothing: the default decides, but only
    the node can call it, so the server refuses stale rows and the node
    merges them itself."""
    return None


def _restore_on_two_nodes(
    net: Cluster, **options: Any
) -> tuple[SyncClient, SyncClient]:
    """Node c deletes Cusco; a and b had both edited it offline, and both
    keep their edit (the default strategy) by restoring the row in their
    merge."""
    m = net.server.env.models
    options.setdefault("resolution", _merged_by_the_node)
    a, b, c = net.node(**options), net.node(**options), net.node()
    _seed(net, a, b, c)
    _delete(c, m.City, 2)
    c.synchronize()
    _set(a, m.City, 2, population=50)
    _set(b, m.City, 2, population=60)
    for node in (a, b):
        with pytest.raises(errors.PushRejectedError):
            node.push()
        conflicts = node.pull().conflicts
        assert [(x.kind, x.resolution) for x in conflicts] == [
            ("update/delete", "node")
        ]
    return a, b


def test_two_nodes_restoring_one_deleted_row_leave_one_row(net: Cluster) -> None:
    a, b = _restore_on_two_nodes(net)
    a.push()
    result = b.synchronize()
    assert [c.kind for c in result.conflicts] == ["update/update"]
    net.settle()
    rows = net.assert_converged()["city"]
    assert [row for row in rows if row[1] == "Cusco"] == [(2, "Cusco", 60, 1)]


def test_a_restore_pulled_after_the_delete_by_a_third_node_is_one_row(
    net: Cluster,
) -> None:
    m = net.server.env.models
    a, b = _restore_on_two_nodes(net)
    a.push()
    with pytest.raises(errors.PushRejectedError):
        b.push()  # a restored it first
    d = net.node()  # never saw the row deleted
    net.settle()
    rows = net.assert_converged()["city"]
    assert len([row for row in rows if row[1] == "Cusco"]) == 1
    with d.Session() as session:
        assert session.get(m.City, 2) is not None


def test_two_nodes_restoring_through_the_server_leave_one_row(net: Cluster) -> None:
    """The same with a built-in strategy: the server decides both stale
    pushes itself (a restore, then an update of the restored row)."""
    m = net.server.env.models
    a, b, c = net.node(), net.node(), net.node()
    _seed(net, a, b, c)
    _delete(c, m.City, 2)
    c.synchronize()
    _set(a, m.City, 2, population=50)
    _set(b, m.City, 2, population=60)
    first, second = a.push(), b.push()
    assert [(x.kind, x.resolution) for x in first.conflicts] == [
        ("update/delete", "node")
    ]
    assert [(x.kind, x.resolution) for x in second.conflicts] == [
        ("update/update", "node")
    ]
    assert second.conflicts[0].server is not None
    assert second.conflicts[0].server["population"] == 50
    net.settle()
    rows = net.assert_converged()["city"]
    assert [row for row in rows if row[1] == "Cusco"] == [(2, "Cusco", 60, 1)]


def test_a_restored_row_and_a_new_server_row_under_its_key_both_survive(
    net: Cluster,
) -> None:
    """The server's own app gives the deleted key to a new row (as SQLite's
    max(id) + 1 does) before the restore arrives: they are two rows."""
    m = net.server.env.models
    env = net.server.env
    a, c = net.node(), net.node()
    _seed(net, a, c)
    _delete(c, m.City, 2)
    c.synchronize()
    _set(a, m.City, 2, population=50)
    with env.app.app_context():
        env.db.session.add(m.City(id=2, name="Puno", population=3, country_id=1))
        env.db.session.commit()
    a.synchronize()
    net.settle()
    rows = net.assert_converged()["city"]
    names = sorted(row[1] for row in rows)
    assert names == ["Cusco", "Lima", "Puno"]
    assert (2, "Puno", 3, 1) in rows


def test_the_server_restores_an_update_of_a_row_the_node_saw_deleted(
    net: Cluster,
) -> None:
    """On the wire a restore is an update of the old key; the server inserts
    the row again and logs an update, so other nodes see the same row."""
    m = net.server.env.models
    a, c = net.node(), net.node()
    _seed(net, a, c)
    _delete(c, m.City, 2)
    c.synchronize()
    _set(a, m.City, 2, population=50)
    a.synchronize()
    city_two = [
        command
        for table, key, command in commands(net.server.env.db)
        if table == "city" and key == [2]
    ]
    assert city_two[-2:] == ["d", "u"]
    net.settle()
    assert (2, "Cusco", 50, 1) in net.assert_converged()["city"]
