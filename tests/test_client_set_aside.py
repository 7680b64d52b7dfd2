"""A change the server refuses for good is set aside, the rest of the queue
syncs, and the app can retry or discard it (see conflicts.rst, "Changes the
server refuses"). Found by the soak: one 101-character name stopped a node
for good (push, pull, synchronize and repair all failed)."""

from __future__ import annotations

from typing import Any

from flask_reflectsync.client import SyncClient

from .nodes import Cluster

LONG = "x" * 101  # city.name is String(100)


def _add(node: SyncClient, *rows: Any) -> None:
    with node.Session() as session:
        session.add_all(rows)
        session.commit()


def _server_cities(net: Cluster) -> list[tuple[Any, ...]]:
    return net.server_rows()["city"]


def test_a_value_the_server_refuses_is_set_aside_and_the_rest_syncs(
    net: Cluster,
) -> None:
    m = net.server.env.models
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, m.Country(id=1, name="Peru"))
    _add(node, m.City(id=1, name=LONG, country_id=1), m.City(id=2, name="Lima"))
    pushed = node.push()
    assert [(e.table, e.key, e.command) for e in pushed.set_aside] == [
        ("city", (1,), "i")
    ]
    assert "name" in pushed.set_aside[0].reason
    assert pushed.set_aside[0].row is not None
    assert pushed.set_aside[0].row["name"] == LONG
    assert [r[:2] for r in _server_cities(net)] == [(2, "Lima")]
    assert node.pending_operations() == 0
    node.synchronize()  # not stuck
    assert [(e.table, e.key) for e in node.set_aside()] == [("city", (1,))]


def test_a_set_aside_row_the_app_fixes_goes_with_the_next_push(
    net: Cluster,
) -> None:
    m = net.server.env.models
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, m.City(id=1, name=LONG))
    assert len(node.push().set_aside) == 1
    with node.Session() as session:
        session.get(m.City, 1).name = "Cusco"
        session.commit()
    node.synchronize()
    assert node.set_aside() == []
    assert [r[:2] for r in _server_cities(net)] == [(1, "Cusco")]
    net.assert_converged()


def test_a_retried_change_still_refused_is_set_aside_again(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, m.City(id=1, name=LONG), m.City(id=2, name="Lima"))
    assert len(node.push().set_aside) == 1
    assert node.retry_set_aside() == 1
    assert node.set_aside() == []
    assert node.pending_operations() == 1
    [again] = node.push().set_aside
    assert (again.table, again.key, again.command) == ("city", (1,), "i")
    assert [r[:2] for r in _server_cities(net)] == [(2, "Lima")]


def test_a_discarded_change_takes_the_servers_row_back(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, m.City(id=1, name="Lima"))
    node.synchronize()
    with node.Session() as session:
        session.get(m.City, 1).name = LONG
        session.commit()
    [entry] = node.push().set_aside
    assert (entry.command, entry.key) == ("u", (1,))
    assert node.discard_set_aside([entry.id]) == 1
    assert node.set_aside() == []
    net.assert_converged()
    assert [r[:2] for r in _server_cities(net)] == [(1, "Lima")]


def test_rows_pointing_at_a_set_aside_insert_go_with_it(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, m.Country(id=1, name=LONG))
    _add(node, m.City(id=1, name="Lima", country_id=1), m.City(id=2, name="Ica"))
    aside = node.push().set_aside
    assert sorted((e.table, e.key) for e in aside) == [
        ("city", (1,)),
        ("country", (1,)),
    ]
    assert [r[:2] for r in _server_cities(net)] == [(2, "Ica")]
    node.synchronize()
    with node.Session() as session:
        session.get(m.Country, 1).name = "Peru"
        session.commit()
    assert node.retry_set_aside() == 2
    node.synchronize()
    assert net.server_rows()["country"] == [(1, "Peru")]
    net.assert_converged()


def test_a_unique_refusal_over_a_row_the_node_lacks_brings_that_row(
    net: Cluster,
) -> None:
    """Found by the soak: the server holds a unique value in a row the node
    does not have (here written by raw SQL, which nothing logs; under load, a
    row committed just after the node's pull), so no pull brings a conflict
    to resolve and every push was refused. On the second identical refusal
    the node fetches the row the server named and merges it: the node's own
    unique rules then apply (no resolver: the documented error; with one:
    resolved and synced)."""
    import pytest
    import sqlalchemy as sa

    from flask_reflectsync import errors

    Sample = net.server.Sample
    env = net.server.env
    with env.db.engine.begin() as connection:
        connection.execute(sa.insert(Sample.__table__).values(id=900, code="A-1"))
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, Sample(id=1, code="A-1"), Sample(id=2, code="B-2"))
    with pytest.raises(errors.UniqueConstraintError) as caught:
        node.synchronize()
    assert "[900]" in caught.value.message
    node.set_resolution(
        Sample, lambda c: {"code": "A-2"} if c.kind == "unique" else None
    )
    node.synchronize()
    codes = sorted(r[1] for r in net.server_rows()["sample"])
    assert codes == ["A-1", "A-2", "B-2"]
    assert node.set_aside() == []
    net.assert_converged()


def test_a_retried_insert_whose_row_a_pull_removed_is_written_back(
    net: Cluster,
) -> None:
    """Found by the soak: while an insert was set aside, a pull's unique
    check removed the local row (nothing queued for it); retrying must not
    quietly drop the change but bring the kept row back."""
    import sqlalchemy as sa

    m = net.server.env.models
    node = net.node(check_values=False)  # the server is to refuse
    _add(node, m.City(id=1, name=LONG, population=7))
    assert len(node.push().set_aside) == 1
    with node.engine.begin() as connection:  # as a merge would: not logged
        connection.execute(sa.delete(m.City.__table__))
    assert node.retry_set_aside() == 1
    with node.Session() as session:
        session.get(m.City, 1).name = "Cusco"
        session.commit()
    node.synchronize()
    assert [r[:3] for r in _server_cities(net)] == [(1, "Cusco", 7)]
    net.assert_converged()
