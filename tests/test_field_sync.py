"""Field-level sync: an update travels as the columns it changed, and two
edits of different columns of one row both survive, whichever side made
them and in whichever order the nodes synchronise (see :doc:`/conflicts`).

Real HTTP, the test server's database (SQLite, PostgreSQL or MariaDB), SQLite
nodes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from flask_reflectsync.client import Conflict, SyncClient

from .nodes import Cluster


def _seed(net: Cluster, *nodes: SyncClient) -> None:
    """Country 1 with city 1 (Lima, population 10) everywhere."""
    m = net.server.env.models
    with nodes[0].Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="Lima", population=10, country_id=1))
        session.commit()
    for node in nodes:
        node.synchronize()
    net.assert_converged()


def _set(node: SyncClient, key: int, **values: Any) -> None:
    city = node.schema.tables["city"].mapper.class_
    with node.Session() as session:
        row = session.get(city, key)
        for name, value in values.items():
            setattr(row, name, value)
        session.commit()


def _server_set(net: Cluster, key: int, **values: Any) -> None:
    """The server's own app changes a city, through its tracked session."""
    env = net.server.env
    with env.app.app_context():
        row = env.db.session.get(env.models.City, key)
        for name, value in values.items():
            setattr(row, name, value)
        env.db.session.commit()


def _city(net: Cluster) -> tuple[Any, ...]:
    (row,) = net.assert_converged()["city"]
    return row


def _server_changed_columns(net: Cluster) -> list[tuple[str, Any]]:
    """The server log's (command, changed columns) of the city table."""
    operations = net.server.env.db.metadata.tables["reflectsync_operations"]
    with net.server.env.db.engine.connect() as connection:
        found = connection.execute(
            sa.select(operations.c.command, operations.c.changed_columns)
            .where(operations.c.table_name == "city")
            .order_by(operations.c.id)
        ).all()
    return [(c, None if w is None else json.loads(w)) for c, w in found]


# -- different columns: both survive -------------------------------------------------


def test_two_nodes_editing_different_columns_both_survive(
    net: Cluster, resolved: list[Conflict]
) -> None:
    """Tablet A sets the population while tablet B renames the city: B's
    push is stale, but it changes another column, so it is no conflict."""
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _set(a, 1, population=7)
    _set(b, 1, name="Lima Metropolitana")
    a.synchronize()
    result = b.synchronize()
    assert result.attempts == 1
    net.settle()
    assert _city(net) == (1, "Lima Metropolitana", 7, 1)
    assert resolved == []


def test_a_pull_merges_another_nodes_column_under_a_queued_edit(
    net: Cluster, resolved: list[Conflict]
) -> None:
    """B pulls A's change before pushing its own: the merge writes A's
    column and keeps B's edit queued, with no conflict."""
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _set(a, 1, population=7)
    a.synchronize()
    _set(b, 1, name="Callao")
    b.pull()
    with b.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT name, population FROM city")).one()
    assert tuple(row) == ("Callao", 7)
    assert b.pending_operations() == 1
    b.push()
    net.settle()
    assert _city(net) == (1, "Callao", 7, 1)
    assert resolved == []


@pytest.mark.parametrize("order", ["push first", "pull first"])
def test_the_servers_own_change_survives_a_nodes_edit_of_another_column(
    net: Cluster, resolved: list[Conflict], order: str
) -> None:
    """The password case: the server's app changes one column (here the
    population) while a node edits another offline; after the sync the
    server's change is still there, everywhere."""
    a = net.node()
    _seed(net, a)
    _set(a, 1, name="Lima Centro")
    _server_set(net, 1, population=999)
    if order == "pull first":
        a.pull()
    a.synchronize()
    net.settle()
    assert _city(net) == (1, "Lima Centro", 999, 1)
    assert resolved == []


def test_a_pushed_update_carries_and_writes_only_its_columns(net: Cluster) -> None:
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _set(a, 1, population=8)
    a.synchronize()
    assert _server_changed_columns(net)[-1] == ("u", ["population"])
    # The server wrote the population alone: a server-side name change
    # made meanwhile through another connection is not overwritten.
    _set(b, 1, population=9)
    with net.server.env.db.engine.begin() as connection:
        connection.execute(sa.text("UPDATE city SET name = 'Rimac' WHERE id = 1"))
    b.synchronize()
    with net.server.env.db.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT name, population FROM city")).one()
    assert tuple(row) == ("Rimac", 9)


def test_the_node_hears_of_the_columns_others_changed_after_its_own_push(
    net: Cluster,
) -> None:
    """A pushes the name after the server's app changed the population: A is
    the row's last writer, yet its next pull brings the population."""
    a = net.node()
    _seed(net, a)
    _server_set(net, 1, population=31)
    _set(a, 1, name="Barranco")
    a.push()  # stale, no conflict: applied
    a.pull()
    with a.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT name, population FROM city")).one()
    assert tuple(row) == ("Barranco", 31)


def test_the_node_hears_of_an_update_between_its_insert_and_its_patch(
    net: Cluster,
) -> None:
    """A inserts Arequipa and pushes it without pulling; the server's app
    changes its population; A pushes a new name. The page's commands for
    the row compress to an insert whose last writer is A, yet A lacks the
    population: the page must still bring the row. (Found by the
    convergence property: a city kept a country the server's app had
    taken away.)"""
    m = net.server.env.models
    a = net.node()
    _seed(net, a)
    with a.Session() as session:
        session.add(m.City(id=2, name="Arequipa", population=1, country_id=1))
        session.commit()
    a.push()
    _server_set(net, 2, population=31)
    _set(a, 2, name="Arequipa (old town)")
    a.push()
    a.pull()
    with a.engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT name, population FROM city WHERE id = 2")
        ).one()
    assert tuple(row) == ("Arequipa (old town)", 31)
    net.assert_converged()


def test_a_pulled_insert_of_the_nodes_own_row_is_not_a_second_row(
    net: Cluster,
) -> None:
    """A inserts Arequipa and pushes it without pulling; the server's app
    changes its population; A renames it and pulls before pushing. The page
    brings the row as A's insert with the app's update: the same row, not a
    new one under A's key, so it is merged, not set beside A's row."""
    m = net.server.env.models
    a = net.node()
    _seed(net, a)
    with a.Session() as session:
        session.add(m.City(id=2, name="Arequipa", population=1, country_id=1))
        session.commit()
    a.push()
    _server_set(net, 2, population=31)
    _set(a, 2, name="Arequipa (old town)")
    a.pull()
    a.synchronize()
    rows = net.assert_converged()
    assert sorted(rows["city"]) == [
        (1, "Lima", 10, 1),
        (2, "Arequipa (old town)", 31, 1),
    ]


# -- the same column: a conflict, decided per strategy ---------------------------------


@pytest.mark.parametrize(
    ("strategy", "population", "resolution"),
    [
        ("last-pusher-wins", 200, "node"),
        ("node-wins", 200, "node"),
        ("server-wins", 100, "server"),
    ],
)
@pytest.mark.parametrize("order", ["push first", "pull first"])
def test_the_same_column_is_a_conflict_and_other_columns_survive(
    net: Cluster,
    resolved: list[Conflict],
    strategy: str,
    population: int,
    resolution: str,
    order: str,
) -> None:
    """A sets the population; B sets the population and the name. Only the
    population is in conflict; B's name survives whatever the strategy."""
    m = net.server.env.models
    a = net.node()
    b = net.node(resolutions={m.City: strategy})
    _seed(net, a, b)
    _set(a, 1, population=100)
    _set(b, 1, population=200, name="Miraflores")
    a.synchronize()
    if order == "pull first":
        b.pull()
    b.synchronize()
    assert [(c.kind, c.resolution, c.columns) for c in resolved] == [
        ("update/update", resolution, ("population",))
    ]
    net.settle()
    assert _city(net) == (1, "Miraflores", population, 1)


def test_a_callable_sees_the_columns_each_side_changed(
    net: Cluster, resolved: list[Conflict]
) -> None:
    seen: list[tuple[Any, ...]] = []

    def add_up(conflict: Conflict) -> Any:
        if conflict.kind != "update/update":
            return None
        assert conflict.local is not None and conflict.server is not None
        seen.append(
            (conflict.columns, conflict.local_columns, conflict.server_columns)
        )
        return {
            "population": conflict.local["population"] + conflict.server["population"]
        }

    a = net.node()
    b = net.node(resolution=add_up)
    _seed(net, a, b)
    _set(a, 1, population=100, country_id=None)
    _set(b, 1, population=200, name="Surco")
    a.synchronize()
    b.synchronize()
    assert seen == [
        (
            ("population",),
            frozenset({"population", "name"}),
            frozenset({"population", "country_id"}),
        )
    ]
    assert [(c.kind, c.resolution) for c in resolved] == [("update/update", "values")]
    net.settle()
    assert _city(net) == (1, "Surco", 300, None)


# -- a patch of a row the server lacks ------------------------------------------


def test_a_patch_of_a_row_the_server_lost_is_sent_whole(net: Cluster) -> None:
    """The server's row went away outside the extension (raw SQL, nothing
    logged): the node's update of one column cannot be written as a patch,
    so the node sends the whole row, which brings it back. Never stuck."""
    a = net.node()
    _seed(net, a)
    _set(a, 1, population=77)
    with net.server.env.db.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM city WHERE id = 1"))
    result = a.push()
    assert result.operations == 1
    assert a.pending_operations() == 0
    with net.server.env.db.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM city")).one()
    assert tuple(row) == (1, "Lima", 77, 1)


def test_a_holder_edited_in_another_column_gives_its_unique_value_up(
    net: Cluster, resolved: list[Conflict]
) -> None:
    """The server moves code "X" from sample 2 to sample 1 while node b
    changed sample 2's flag: no conflict, no false unique conflict; b's
    flag survives on top of the server's code."""
    Sample = net.server.Sample
    b, c = net.node("b"), net.node("c")
    with c.Session() as s:
        s.add_all([Sample(id=1, code="A"), Sample(id=2, code="X")])
        s.commit()
    c.synchronize()
    b.synchronize()
    with b.Session() as s:
        s.get(Sample, 2).flag = True
        s.commit()
    with c.Session() as s:
        s.get(Sample, 2).code = "B"
        s.flush()
        s.get(Sample, 1).code = "X"
        s.commit()
    c.synchronize()
    b.pull()
    assert resolved == []
    assert b.pending_operations() == 1
    net.settle()
    rows = net.assert_converged()["sample"]
    assert {row[0]: (row[1], row[-1]) for row in rows} == {
        1: ("X", False),
        2: ("B", True),
    }


# -- per-column strategies ----------------------------------------------------


def test_a_column_can_have_its_own_strategy(
    net: Cluster, resolved: list[Conflict]
) -> None:
    """City rows are the node's (node-wins), but their population is the
    server's: A and B change both columns; B's name wins, A's population
    stays."""
    m = net.server.env.models
    a = net.node()
    b = net.node(resolutions={m.City: "node-wins", m.City.population: "server-wins"})
    _seed(net, a, b)
    _set(a, 1, population=100, name="Ate")
    _set(b, 1, population=200, name="Comas")
    a.synchronize()
    b.synchronize()
    assert [(c.kind, c.resolution, c.columns) for c in resolved] == [
        ("update/update", "values", ("name", "population"))
    ]
    net.settle()
    assert _city(net) == (1, "Comas", 100, 1)


def test_a_column_strategy_must_be_a_built_in_name(net: Cluster) -> None:
    from flask_reflectsync.errors import ConfigurationError

    m = net.server.env.models
    with pytest.raises(ConfigurationError, match="City.population"):
        net.node(resolutions={m.City.population: lambda conflict: "server"})
    with pytest.raises(ConfigurationError, match="per mapped class"):
        net.node(resolutions={"city": "server-wins"})
