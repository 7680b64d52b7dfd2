"""Every conflict kind, end to end over HTTP with two or three SQLite nodes:
detected, resolved by the model's strategy, announced, and converging to one
state on the server and every node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from flask_reflectsync import errors, signals
from flask_reflectsync.client import Conflict, SyncClient

from .nodes import Cluster


@pytest.fixture
def resolved() -> Iterator[list[Conflict]]:
    found: list[Conflict] = []

    def receive(sender: Any, conflict: Conflict, **extra: Any) -> None:
        assert isinstance(sender, SyncClient)
        found.append(conflict)

    signals.conflict_resolved.connect(receive)
    try:
        yield found
    finally:
        signals.conflict_resolved.disconnect(receive)


def _seed(net: Cluster, *nodes: SyncClient) -> None:
    """Country 1 with cities 1 and 2 everywhere."""
    m = net.server.env.models
    first = nodes[0]
    with first.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="Lima", population=10, country_id=1))
        session.add(m.City(id=2, name="Cusco", population=5, country_id=1))
        session.commit()
    first.synchronize()
    for node in nodes[1:]:
        node.synchronize()
    net.assert_converged()


def _set(node: SyncClient, model: Any, key: Any, **values: Any) -> None:
    with node.Session() as session:
        row = session.get(model, key)
        for name, value in values.items():
            setattr(row, name, value)
        session.commit()


def _delete(node: SyncClient, model: Any, key: Any) -> None:
    with node.Session() as session:
        session.delete(session.get(model, key))
        session.commit()


def _kinds(conflicts: list[Conflict]) -> list[tuple[str, str, str]]:
    return [(c.kind, c.table, c.resolution) for c in conflicts]


# -- direct conflicts ----------------------------------------------------------------


def test_update_update_last_pusher_wins(net: Cluster, resolved: list[Conflict]) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _set(a, m.City, 1, population=100)
    _set(b, m.City, 1, population=200)
    a.synchronize()
    result = b.synchronize()  # stale: the server decides it as b's merge would
    assert result.attempts == 1
    assert _kinds(resolved) == [("update/update", "city", "node")]
    assert result.conflicts == resolved
    conflict = resolved[0]
    assert conflict.key == (1,)
    assert conflict.local is not None and conflict.local["population"] == 200
    assert conflict.server is not None and conflict.server["population"] == 100
    net.settle()
    rows = net.assert_converged()
    assert (1, "Lima", 200, 1) in rows["city"]


def test_update_update_server_wins(net: Cluster, resolved: list[Conflict]) -> None:
    m = net.server.env.models
    a = net.node()
    b = net.node(resolutions={m.City: "server-wins"})
    _seed(net, a, b)
    _set(a, m.City, 1, population=100)
    _set(b, m.City, 1, population=200)
    a.synchronize()
    b.synchronize()
    assert _kinds(resolved) == [("update/update", "city", "server")]
    net.settle()
    assert (1, "Lima", 100, 1) in net.assert_converged()["city"]


def test_update_update_with_a_callable(net: Cluster, resolved: list[Conflict]) -> None:
    m = net.server.env.models

    def add_up(conflict: Conflict) -> Any:
        assert conflict.local is not None and conflict.server is not None
        if conflict.kind != "update/update":
            return None
        return {
            "population": conflict.local["population"] + conflict.server["population"]
        }

    a = net.node()
    b = net.node(resolution=add_up)
    _seed(net, a, b)
    _set(a, m.City, 1, population=100)
    _set(b, m.City, 1, population=200)
    a.synchronize()
    b.synchronize()
    assert _kinds(resolved) == [("update/update", "city", "values")]
    net.settle()
    assert (1, "Lima", 300, 1) in net.assert_converged()["city"]


def test_a_kind_resolver_leaves_direct_conflicts_to_the_server(
    net: Cluster, resolved: list[Conflict]
) -> None:
    """A resolver declared for unique conflicts only: the server decides the
    node's stale update itself (no 409, no second push), by ``otherwise``."""
    from flask_reflectsync.client import KindResolver

    m = net.server.env.models
    asked: list[str] = []

    def only_unique(conflict: Conflict) -> Any:
        asked.append(conflict.kind)
        return None

    a = net.node()
    b = net.node(resolution=KindResolver(only_unique, {"unique"}, "server-wins"))
    _seed(net, a, b)
    _set(a, m.City, 1, population=100)
    _set(b, m.City, 1, population=200)
    a.synchronize()
    result = b.synchronize()
    assert result.attempts == 1  # decided by the server, not refused
    assert [(c.kind, c.resolution) for c in result.conflicts] == [
        ("update/update", "server")
    ]
    assert asked == []  # never asked about a kind it did not name
    net.settle()
    assert (1, "Lima", 100, 1) in net.assert_converged()["city"]


def test_a_kind_resolver_is_asked_about_its_kinds_only() -> None:
    from flask_reflectsync.client import KindResolver
    from flask_reflectsync.errors import ConfigurationError
    from flask_reflectsync.protocol.merge import Resolutions

    class Model:
        pass

    def conflict(kind: str) -> Conflict:
        return Conflict(kind, Model, "t", (1,), {"id": 1}, {"id": 1})

    asked: list[str] = []

    def decide(c: Conflict) -> Any:
        asked.append(c.kind)
        return {"code": "x"} if c.kind == "unique" else "node"

    plain = Resolutions(decide)
    kinds = Resolutions(KindResolver(decide, ["unique"], otherwise="server-wins"))
    assert plain.named(Model) is None  # the server cannot call it
    assert kinds.named(Model) == "server-wins"
    assert kinds.decide(conflict("unique")) == {"code": "x"}
    assert kinds.decide(conflict("update/update")) == "server"
    assert kinds.decide(conflict("primary-key")) == "node"  # re-keyed
    assert asked == ["unique"]
    direct = Resolutions(KindResolver(decide, {"update/update"}))
    assert direct.named(Model) is None  # it wants to see direct conflicts
    with pytest.raises(ConfigurationError, match="kind"):
        KindResolver(decide, {"updates"})
    with pytest.raises(ConfigurationError, match="otherwise"):
        KindResolver(decide, {"unique"}, otherwise="first-wins")


def test_update_beats_a_concurrent_delete(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _delete(a, m.City, 2)
    _set(b, m.City, 2, population=50)
    a.synchronize()
    b.synchronize()
    assert _kinds(resolved) == [("update/delete", "city", "node")]
    net.settle()
    assert (2, "Cusco", 50, 1) in net.assert_converged()["city"]


def test_delete_loses_to_a_concurrent_update(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _set(a, m.City, 2, population=50)
    _delete(b, m.City, 2)
    a.synchronize()
    b.synchronize()
    assert _kinds(resolved) == [("delete/update", "city", "server")]
    net.settle()
    assert (2, "Cusco", 50, 1) in net.assert_converged()["city"]


def test_delete_wins_with_node_wins(net: Cluster, resolved: list[Conflict]) -> None:
    m = net.server.env.models
    a = net.node()
    b = net.node(resolution="node-wins")
    _seed(net, a, b)
    _set(a, m.City, 2, population=50)
    _delete(b, m.City, 2)
    a.synchronize()
    b.synchronize()
    assert _kinds(resolved) == [("delete/update", "city", "node")]
    net.settle()
    assert [r[0] for r in net.assert_converged()["city"]] == [1]


def test_delete_delete(net: Cluster, resolved: list[Conflict]) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    _delete(a, m.City, 2)
    _delete(b, m.City, 2)
    a.synchronize()
    b.synchronize()
    assert _kinds(resolved) == [("delete/delete", "city", "deleted")]
    net.settle()
    assert [r[0] for r in net.assert_converged()["city"]] == [1]


# -- dependencies ------------------------------------------------------------------


def test_server_deleted_parent_is_restored_by_a_local_child(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    # a removes Peru (its cities are detached by the ORM); b adds a city to it.
    with a.Session() as session:
        for city in session.scalars(sa.select(m.City)):
            city.country_id = None
        session.delete(session.get(m.Country, 1))
        session.commit()
    with b.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    a.synchronize()
    b.synchronize()
    assert ("dependency", "country", "node") in _kinds(resolved)
    net.settle()
    rows = net.assert_converged()
    assert rows["country"] == [(1, "Peru")]
    assert (3, "Arequipa", 1, 1) in rows["city"]


def test_server_deleted_parent_takes_local_children_with_server_wins(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a = net.node()
    b = net.node(resolution="server-wins")
    _seed(net, a, b)
    with a.Session() as session:
        for city in session.scalars(sa.select(m.City)):
            city.country_id = None
        session.delete(session.get(m.Country, 1))
        session.commit()
    with b.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    a.synchronize()
    b.synchronize()
    assert ("dependency", "country", "server") in _kinds(resolved)
    net.settle()
    rows = net.assert_converged()
    assert rows["country"] == []
    assert [r[0] for r in rows["city"]] == [1, 2]


def _replace_country_on_the_server(net: Cluster) -> None:
    """The server's own app deletes country 1 (its cities first lose it)
    and gives key 1 to a new country."""
    env = net.server.env
    m = env.models
    with env.app.app_context():
        for city in env.db.session.scalars(sa.select(m.City)):
            city.country_id = None
        env.db.session.delete(env.db.session.get(m.Country, 1))
        env.db.session.commit()
        env.db.session.add(m.Country(id=1, name="Chile"))
        env.db.session.commit()


def test_a_local_child_of_a_parent_replaced_under_its_key_keeps_the_old_parent(
    net: Cluster, resolved: list[Conflict]
) -> None:
    # The node's new city points at Peru, key 1. Meanwhile the server's app
    # deletes Peru and gives key 1 to Chile. Accepted as it came, the city
    # would silently move to Chile; the push is refused instead, and the
    # node's merge meets a dependency conflict: Peru is restored beside
    # Chile, under a new key, and the city follows it.
    m = net.server.env.models
    a = net.node()
    _seed(net, a)
    with a.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    _replace_country_on_the_server(net)
    a.synchronize()
    (conflict,) = [c for c in resolved if c.kind == "dependency"]
    assert (conflict.table, conflict.key, conflict.resolution) == (
        "country",
        (1,),
        "node",
    )
    assert conflict.new_key is not None
    net.settle()
    rows = net.assert_converged()
    restored = conflict.new_key[0]
    assert sorted(rows["country"]) == sorted([(1, "Chile"), (restored, "Peru")])
    # Only the node's new city meant old Peru: Lima and Cusco keep the
    # server's app's edit (no country), they do not follow Peru back.
    assert sorted(rows["city"]) == [
        (1, "Lima", 10, None),
        (2, "Cusco", 5, None),
        (3, "Arequipa", 1, restored),
    ]


def test_a_nodes_own_row_replaced_under_its_key_before_it_pulled_stays_apart(
    net: Cluster, resolved: list[Conflict]
) -> None:
    # The node adds Arequipa (key 3) and pushes it without pulling; the
    # server's app deletes it and gives key 3 to Tacna; the node renames
    # Arequipa and pulls. The page's operations (the node's insert, the
    # delete, Tacna's insert) are a replacement, not the node's own row:
    # the rename must not land on Tacna.
    m = net.server.env.models
    a = net.node()
    _seed(net, a)
    with a.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    a.push()
    env = net.server.env
    with env.app.app_context():
        env.db.session.delete(env.db.session.get(m.City, 3))
        env.db.session.commit()
        env.db.session.add(m.City(id=3, name="Tacna", population=2, country_id=1))
        env.db.session.commit()
    _set(a, m.City, 3, name="Arequipa (old town)")
    a.pull()
    net.settle()
    rows = net.assert_converged()
    names = sorted(name for _, name, _, _ in rows["city"])
    assert names == ["Arequipa (old town)", "Cusco", "Lima", "Tacna"]
    assert (3, "Tacna", 2, 1) in rows["city"]


def test_a_child_deleted_with_a_replaced_parent_comes_back_to_the_old_one(
    net: Cluster, resolved: list[Conflict]
) -> None:
    # The node edits Lima's population and adds Arequipa, both in Peru (key
    # 1). The server's app deletes Lima and Peru and gives key 1 to Chile.
    # Lima's edit restores it as the node had it: in Peru, which comes back
    # beside Chile under a new key; Lima must not land in Chile.
    m = net.server.env.models
    a = net.node()
    _seed(net, a)
    _set(a, m.City, 1, population=11)
    with a.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    env = net.server.env
    with env.app.app_context():
        env.db.session.delete(env.db.session.get(m.City, 1))
        env.db.session.get(m.City, 2).country_id = None
        env.db.session.delete(env.db.session.get(m.Country, 1))
        env.db.session.commit()
        env.db.session.add(m.Country(id=1, name="Chile"))
        env.db.session.commit()
    a.synchronize()
    net.settle()
    rows = net.assert_converged()
    peru = [key for key, name in rows["country"] if name == "Peru"]
    assert len(peru) == 1 and peru[0] != 1
    assert (1, "Lima", 11, peru[0]) in rows["city"]
    assert (3, "Arequipa", 1, peru[0]) in rows["city"]


def test_a_local_child_of_a_replaced_parent_goes_with_server_wins(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a = net.node(resolution="server-wins")
    _seed(net, a)
    with a.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    _replace_country_on_the_server(net)
    a.synchronize()
    assert ("dependency", "country", "server") in _kinds(resolved)
    net.settle()
    rows = net.assert_converged()
    assert rows["country"] == [(1, "Chile")]
    assert [r[0] for r in rows["city"]] == [1, 2]  # Arequipa went with Peru


def test_a_pulled_insert_of_the_nodes_own_row_is_no_replacement(
    net: Cluster, resolved: list[Conflict]
) -> None:
    # Node a adds Chile and pushes it; b renames it; a, before pulling,
    # adds a city in Chile. a's pull brings Chile back as an insert (a's own
    # insert and b's update, compressed) without a delete: the same row, not
    # a new one under an old key, so nothing is restored beside it.
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    with a.Session() as session:
        session.add(m.Country(id=5, name="Chile"))
        session.commit()
    a.push()
    b.synchronize()
    _set(b, m.Country, 5, name="Chile (renamed)")
    b.synchronize()
    with a.Session() as session:
        session.add(m.City(id=7, name="Santiago", population=3, country_id=5))
        session.commit()
    a.synchronize()
    assert [c for c in resolved if c.kind == "dependency"] == []
    net.settle()
    rows = net.assert_converged()
    assert sorted(rows["country"]) == [(1, "Peru"), (5, "Chile (renamed)")]
    assert (7, "Santiago", 3, 5) in rows["city"]


def test_node_deleted_parent_is_restored_for_a_server_child(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _seed(net, a, b)
    with a.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    with b.Session() as session:
        for city in session.scalars(sa.select(m.City)):
            city.country_id = None
        session.delete(session.get(m.Country, 1))
        session.commit()
    a.synchronize()
    b.synchronize()
    assert ("reversed-dependency", "country", "server") in _kinds(resolved)
    net.settle()
    rows = net.assert_converged()
    assert rows["country"] == [(1, "Peru")]
    assert (3, "Arequipa", 1, 1) in rows["city"]
    assert (1, "Lima", 10, None) in rows["city"]


def test_node_deleted_parent_takes_server_children_with_node_wins(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a = net.node()
    b = net.node(resolution="node-wins")
    _seed(net, a, b)
    with a.Session() as session:
        session.add(m.City(id=3, name="Arequipa", population=1, country_id=1))
        session.commit()
    with b.Session() as session:
        for city in session.scalars(sa.select(m.City)):
            city.country_id = None
        session.delete(session.get(m.Country, 1))
        session.commit()
    a.synchronize()
    b.synchronize()
    assert ("reversed-dependency", "country", "node") in _kinds(resolved)
    net.settle()
    rows = net.assert_converged()
    assert rows["country"] == []
    assert [r[0] for r in rows["city"]] == [1, 2]


# -- keys --------------------------------------------------------------------------


def test_colliding_integer_keys_both_survive(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b, c = (
        net.node(key_blocks=False),
        net.node(key_blocks=False),
        net.node(key_blocks=False),
    )
    _seed(net, a, b, c)
    for node, name in ((a, "Chile"), (b, "Bolivia")):
        with node.Session() as session:
            country = m.Country(name=name)  # the database picks id 2 on both
            session.add(country)
            session.flush()
            assert country.id == 2
            session.add(m.City(name=f"capital of {name}", country_id=country.id))
            session.commit()
    a.synchronize()
    b.synchronize()
    kinds = _kinds(resolved)
    assert ("primary-key", "country", "rekeyed") in kinds
    assert ("primary-key", "city", "rekeyed") in kinds
    net.settle()
    rows = net.assert_converged()
    countries = {name: key for key, name in rows["country"]}
    assert set(countries) == {"Peru", "Chile", "Bolivia"}
    capitals = {name: country for _, name, _, country in rows["city"]}
    # the foreign keys followed the re-keyed parent
    assert capitals["capital of Bolivia"] == countries["Bolivia"]
    assert capitals["capital of Chile"] == countries["Chile"]


def test_composite_and_uuid_keys_converge(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(m.Translation(city_id=1, lang="es", text="Lima"))
        session.add(m.Tag(label="from a"))
        session.commit()
    with b.Session() as session:
        session.add(m.Translation(city_id=1, lang="es", text="Lima!"))
        session.add(m.Tag(label="from b"))
        session.commit()
    a.synchronize()
    b.synchronize()
    # the same natural key inserted twice is one row: last pusher wins
    assert ("update/update", "translation", "node") in _kinds(resolved)
    net.settle()
    rows = net.assert_converged()
    assert rows["translation"] == [(1, "es", "Lima!")]
    assert sorted(r[1] for r in rows["tag"]) == ["from a", "from b"]


# -- unique constraints ----------------------------------------------------------------


def test_unresolved_unique_conflict_raises_and_changes_nothing(net: Cluster) -> None:
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(Sample(id=1, code="X"))
        session.commit()
    with b.Session() as session:
        session.add(Sample(id=2, code="X"))
        session.commit()
    a.synchronize()
    server_before = net.server_rows()
    node_before = net.node_rows(b)
    with pytest.raises(errors.UniqueConstraintError) as caught:
        b.synchronize()
    error = caught.value
    assert isinstance(error, errors.SyncError)
    assert error.entries[0]["model"] is Sample
    assert error.entries[0]["key"] == (2,)
    assert error.entries[0]["columns"] == ["code"]
    assert "change the local row" in error.message
    assert net.server_rows() == server_before
    assert net.node_rows(b) == node_before
    assert b.pending_operations() == 1

    # The person fixes the row; the next synchronize converges.
    _set(b, Sample, 2, code="Y")
    b.synchronize()
    net.settle()
    codes = sorted(r[1] for r in net.assert_converged()["sample"])
    assert codes == ["X", "Y"]


def test_unique_conflict_resolved_by_a_callable(
    net: Cluster, resolved: list[Conflict]
) -> None:
    Sample = net.server.Sample

    def rename(conflict: Conflict) -> Any:
        if conflict.kind == "unique":
            assert conflict.local is not None
            return {"code": conflict.local["code"] + "-2"}
        return None

    a = net.node()
    b = net.node(resolutions={Sample: rename})
    with a.Session() as session:
        session.add(Sample(id=1, code="X"))
        session.commit()
    with b.Session() as session:
        session.add(Sample(id=2, code="X"))
        session.commit()
    a.synchronize()
    b.synchronize()
    assert ("unique", "sample", "values") in _kinds(resolved)
    net.settle()
    codes = sorted(r[1] for r in net.assert_converged()["sample"])
    assert codes == ["X", "X-2"]


def test_unique_conflict_server_wins_drops_the_local_insert(
    net: Cluster, resolved: list[Conflict]
) -> None:
    Sample = net.server.Sample
    a = net.node()
    b = net.node(resolution="server-wins")
    with a.Session() as session:
        session.add(Sample(id=1, code="X"))
        session.commit()
    with b.Session() as session:
        session.add(Sample(id=2, code="X"))
        session.commit()
    a.synchronize()
    b.synchronize()
    assert ("unique", "sample", "server") in _kinds(resolved)
    net.settle()
    assert [r[:2] for r in net.assert_converged()["sample"]] == [(1, "X")]


def test_unknown_strategy_is_refused(net: Cluster) -> None:
    with pytest.raises(errors.ConfigurationError):
        net.node(resolution="coin-toss")


def test_worked_example_of_the_docs(net: Cluster, resolved: list[Conflict]) -> None:
    """docs/conflicts.rst, "A worked example"."""
    m = net.server.env.models
    a, b = net.node(key_blocks=False), net.node(key_blocks=False)
    _seed(net, a, b)
    with a.Session() as s:
        s.get(m.City, 1).population = 100
        s.delete(s.get(m.City, 2))
        s.commit()
    with b.Session() as s:
        s.get(m.City, 1).population = 200
        s.get(m.City, 2).population = 50
        s.commit()
    with a.Session() as s:
        s.add(m.Country(name="Chile"))
        s.commit()
    with b.Session() as s:
        bolivia = m.Country(name="Bolivia")
        s.add(bolivia)
        s.flush()
        s.add(m.City(id=3, name="La Paz", country_id=bolivia.id))
        s.commit()
    a.synchronize()
    b.synchronize()
    assert [(c.kind, c.table, c.key, c.resolution) for c in resolved] == [
        ("primary-key", "country", (2,), "rekeyed"),
        ("update/update", "city", (1,), "node"),
        ("update/delete", "city", (2,), "node"),
    ]
    a.synchronize()
    rows = net.assert_converged()
    assert rows["country"] == [(1, "Peru"), (2, "Chile"), (3, "Bolivia")]
    assert rows["city"] == [
        (1, "Lima", 200, 1),
        (2, "Cusco", 50, 1),
        (3, "La Paz", 0, 3),
    ]


def test_a_deleted_key_reused_by_a_new_local_row_keeps_both_rows(
    net: Cluster,
) -> None:
    """The shrunk convergence failure: node b deletes the country node c
    created and then adds a country, which SQLite gives the freed id; node c
    renames the old country meanwhile. The new country is a new row, not an
    update of the old one: it must survive whoever synchronises first.
    (The node itself never hands out a key it has seen, see
    test_client_keys.py; here the app chooses the freed key.)"""
    m = net.server.env.models
    a, b, c = net.node(), net.node(), net.node()
    with c.Session() as s:
        s.add(m.Country(name="old"))
        s.commit()
    c.synchronize()
    b.synchronize()
    _delete(b, m.Country, 1)
    _set(c, m.Country, 1, name="old renamed")
    with b.Session() as s:
        new = m.Country(id=1, name="new")
        s.add(new)
        s.flush()
        assert new.id == 1  # the freed key, taken again by the app
        s.commit()
    for _ in range(3):
        for node in (a, b, c):
            node.synchronize(tries=5)
    for node in (a, b, c):
        node.pull()
    rows = net.assert_converged()
    names = sorted(name for _, name in rows["country"])
    # the rename beats the delete (last-pusher-wins); the new row survives
    assert names == ["new", "old renamed"]


def test_a_deleted_key_reused_before_pulling_the_other_update(
    net: Cluster,
) -> None:
    """As above, with the node that reused the key synchronising before the
    node that renamed the old row has pushed (the app choosing the key)."""
    m = net.server.env.models
    b, c = net.node(), net.node()
    with c.Session() as s:
        s.add(m.Country(name="old"))
        s.commit()
    c.synchronize()
    b.synchronize()
    _delete(b, m.Country, 1)
    with b.Session() as s:
        s.add(m.Country(id=1, name="new"))
        s.add(m.City(name="town", country_id=1))
        s.commit()
    _set(c, m.Country, 1, name="old renamed")
    b.synchronize()
    c.synchronize()
    net.settle()
    rows = net.assert_converged()
    countries = {name: key for key, name in rows["country"]}
    assert sorted(countries) == ["new", "old renamed"]
    # the new row's children followed it
    assert [(n, k) for _, n, _, k in rows["city"]] == [("town", countries["new"])]


def test_unique_conflict_names_the_local_row_by_the_key_it_still_has(
    net: Cluster,
) -> None:
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    for node in (a, b):
        with node.Session() as session:
            session.add(Sample(id=1, code="X"))
            session.commit()
    a.synchronize()
    # b's row 1 would be re-keyed (the server has a row 1), then its code is
    # taken: nothing is merged, so the local row is still row 1.
    with pytest.raises(errors.UniqueConstraintError) as caught:
        b.synchronize()
    assert [r[0] for r in net.node_rows(b)["sample"]] == [1]
    assert "local Sample [1]" in caught.value.message
    assert caught.value.entries[0]["key"] == (1,)


def test_fetching_a_unique_holder_never_overrules_the_nodes_own_change(
    net: Cluster, resolved: list[Conflict]
) -> None:
    """When a push is refused on a unique value, the client fetches the row
    the server names as its holder and merges it. A holder the node itself
    deleted (it gave its code to a new row) is not a server change: merged
    as one, the node's delete lost to a "server update" that never was, and
    nobody heard (soak, MariaDB: a delete back on the server)."""
    from flask_reflectsync.node import pull as node_pull

    Sample = net.server.Sample
    a = net.node()
    with a.Session() as session:
        session.add(Sample(id=1, code="X"))
        session.commit()
    a.synchronize()
    with a.Session() as session:
        session.delete(session.get(Sample, 1))
        session.flush()
        session.add(Sample(id=2, code="X"))
        session.commit()
    refusal = errors.UniqueConstraintError(
        "The push breaks a unique constraint",
        [{"table": "sample", "key": [2], "columns": ["code"], "existing_key": [1]}],
    )
    assert node_pull.bring_holders(a, refusal, {("sample", "[2]")}) is None
    assert resolved == []
    with a.Session() as session:
        assert session.get(Sample, 1) is None  # still deleted locally
    a.synchronize()
    assert [(r[0], r[1]) for r in net.assert_converged()["sample"]] == [(2, "X")]


class _RefuseOnOwnGiver(httpx.BaseTransport):
    """Answers the first ``times`` pushes with the unique refusal a server
    gives when it could not write the node's own giver first (a child of
    the deleted holder the node has not pulled yet); then the real server."""

    def __init__(self, times: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.times = times

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/push") and self.times > 0:
            self.times -= 1
            return httpx.Response(
                409,
                json={
                    "ok": False,
                    "status": 409,
                    "code": "push.unique_violation",
                    "error": "The push breaks a unique constraint.",
                    "conflicts": [
                        {
                            "table": "sample",
                            "key": [2],
                            "columns": ["code"],
                            "existing_key": [1],
                        }
                    ],
                },
            )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_row_refused_on_a_value_the_node_itself_gives_up_is_never_set_aside(
    net: Cluster,
) -> None:
    """The node deleted row 1 and gave its code to row 2. Refused on row 1's
    value (the server could not delete row 1 first), row 2 is not in
    conflict: the node pulls and pushes again, and never sets row 2 aside
    for good (MariaDB soak: a new survey set aside)."""
    Sample = net.server.Sample
    network = _RefuseOnOwnGiver(times=3)
    a = net.node(transport=network)
    with a.Session() as session:
        session.add(Sample(id=1, code="X"))
        session.commit()
    network.times = 0
    a.synchronize()
    with a.Session() as session:
        session.delete(session.get(Sample, 1))
        session.flush()
        session.add(Sample(id=2, code="X"))
        session.commit()
    network.times = 3
    result = a.synchronize(tries=5)
    assert result.pushed.set_aside == [] and a.set_aside() == []
    assert [(r[0], r[1]) for r in net.assert_converged()["sample"]] == [(2, "X")]
