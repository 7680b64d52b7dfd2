"""A node never hands out an integer key at or below the highest key it has
seen for the table: a key the server once had, given to a new row, reaches
the other nodes as an update of the old row, and a change is lost."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from flask_reflectsync import errors
from flask_reflectsync.client import SyncClient
from flask_reflectsync.node.tables import NODE_KEYS

from .nodes import Cluster


def _add(node: SyncClient, *rows: Any) -> list[Any]:
    with node.Session() as session:
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def _delete(node: SyncClient, model: Any, key: Any) -> None:
    with node.Session() as session:
        session.delete(session.get(model, key))
        session.commit()


def _names(rows: dict[str, list[Any]]) -> list[str]:
    return sorted(name for _, name in rows["country"])


def _high_water(node: SyncClient, table: str) -> int | None:
    with node.engine.connect() as connection:
        return connection.execute(
            sa.select(NODE_KEYS.c.high_water).where(NODE_KEYS.c.table_name == table)
        ).scalar()


def test_a_pushed_delete_of_the_highest_key_is_not_reused(net: Cluster) -> None:
    """Node b deletes country 1 (its highest) and pushes; node c renames it
    offline; b adds a country, which SQLite alone would give id 1 again.
    Served to c as "update 1", c's rename would overwrite the new country."""
    m = net.server.env.models
    b, c = net.node("b"), net.node("c")
    _add(b, m.Country(name="old"))
    b.synchronize()
    c.synchronize()
    _delete(b, m.Country, 1)
    assert b.push().version is not None  # the delete is acknowledged
    with c.Session() as s:
        s.get(m.Country, 1).name = "old renamed"
        s.commit()
    [new] = _add(b, m.Country(name="new"))
    b.synchronize()
    c.synchronize()
    b.synchronize()
    net.settle()
    rows = net.assert_converged()
    # the rename beats the delete (last-pusher-wins); the new row survives
    assert sorted(rows["country"]) == [(1, "old renamed"), (new, "new")]


def test_a_deleted_highest_key_is_not_handed_out_again(net: Cluster) -> None:
    m = net.server.env.models
    a = net.node()
    assert _add(a, *(m.Country(name=n) for n in ("x", "y", "z"))) == [1, 2, 3]
    _delete(a, m.Country, 3)
    assert _add(a, m.Country(name="w")) == [4]
    # deleted and added in one flush
    with a.Session() as s:
        s.delete(s.get(m.Country, 4))
        fresh = m.Country(name="v")
        s.add(fresh)
        s.commit()
        assert fresh.id == 5
    # many new rows, with children following their new parent
    with a.Session() as s:
        parents = [m.Country(name=f"p{i}") for i in range(3)]
        city = m.City(name="town", country=parents[1])
        s.add_all([*parents, city])
        s.commit()
        assert [p.id for p in parents] == [6, 7, 8]
        assert (city.id, city.country_id) == (1, 7)
    # a key the app chooses is left alone, and raises the high water
    assert _add(a, m.Country(id=100, name="chosen")) == [100]
    _delete(a, m.Country, 100)
    assert _add(a, m.Country(name="after")) == [101]
    assert _high_water(a, "country") == 101
    # rows of tables without an integer key are untouched
    tag = m.Tag(label="t")
    _add(a, tag)
    assert _high_water(a, "tag") is None


def test_keys_the_server_served_are_not_handed_out(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(key_blocks=False), net.node(key_blocks=False)
    _add(b, *(m.Country(name=n) for n in ("x", "y", "z")))
    b.synchronize()
    a.synchronize()
    _delete(b, m.Country, 3)
    _delete(b, m.Country, 2)
    b.synchronize()
    a.synchronize()  # a now holds country 1 only, but has seen 3
    assert _high_water(a, "country") == 3
    [new] = _add(a, m.Country(name="from a"))
    assert new == 4
    a.synchronize()
    b.synchronize()
    net.assert_converged()


def test_repair_raises_the_high_water(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    _add(b, *(m.Country(name=n) for n in ("x", "y", "z")))
    b.synchronize()
    a.repair()
    assert _high_water(a, "country") == 3


def test_a_rekeyed_row_goes_above_the_high_water(net: Cluster) -> None:
    """Both nodes insert country 1; the later one's row is re-keyed, and
    never onto a key it has seen before (here 10, added and removed).
    (Without key blocks: with them, see the next test.)"""
    m = net.server.env.models
    a, b = net.node(key_blocks=False), net.node(key_blocks=False)
    _add(a, m.Country(id=10, name="gone"))
    _delete(a, m.Country, 10)
    _add(a, m.Country(id=1, name="from a"))
    _add(b, m.Country(id=1, name="from b"))
    b.synchronize()
    result = a.synchronize()
    [conflict] = result.conflicts
    assert conflict.resolution == "rekeyed"
    assert conflict.new_key == (11,)
    b.synchronize()
    rows = net.assert_converged()
    assert sorted(rows["country"]) == [(1, "from b"), (11, "from a")]


def test_rows_rekeyed_at_once_by_many_nodes_take_keys_of_their_blocks(
    net: Cluster,
) -> None:
    """Three new nodes each add country 1 before their first pull (no block
    yet). The first push wins; the other two are refused, both pull (and get
    their blocks) and re-key before either pushes again: onto keys of their
    own blocks, so their second pushes both go in (above the high water,
    both would pick 2, and one would be refused again)."""
    m = net.server.env.models
    a, b, c = net.node("a"), net.node("b"), net.node("c")
    for node in (a, b, c):
        _add(node, m.Country(id=1, name=f"from {node.name}"))
    a.push()
    for node in (b, c):
        with pytest.raises(errors.PushRejectedError):
            node.push()
    moved = []
    for node in (b, c):
        [conflict] = node.pull().conflicts
        assert conflict.resolution == "rekeyed"
        moved.append(conflict.new_key)
    assert moved[0] != moved[1] and (1,) not in moved
    for node in (b, c):
        assert node.push().operations == 1
    net.settle()
    rows = net.assert_converged()["country"]
    assert sorted(rows) == sorted(
        [(1, "from a"), (*moved[0], "from b"), (*moved[1], "from c")]
    )


def test_sessions_added_with_track_session_take_new_keys(net: Cluster) -> None:
    m = net.server.env.models
    a = net.node()
    other = sessionmaker(bind=a.engine)
    a.track_session(other)
    with other() as s:
        s.add_all([m.Country(name="x"), m.Country(name="y")])
        s.commit()
    with other() as s:
        s.delete(s.get(m.Country, 2))
        s.commit()
    with other() as s:
        fresh = m.Country(name="z")
        s.add(fresh)
        s.commit()
        assert fresh.id == 3
    assert a.pending_operations() == 4


def test_a_key_another_node_added_and_removed_is_not_reused(net: Cluster) -> None:
    """Node b never saw country 2 (a added and removed it between b's
    pulls), so it gives its new row key 2; c renamed the old country 2
    offline. b's insert of 2 must not reach c as an update of the old row."""
    m = net.server.env.models
    a, b, c = (
        net.node("a", key_blocks=False),
        net.node("b", key_blocks=False),
        net.node("c", key_blocks=False),
    )
    _add(a, m.Country(name="first"))
    a.synchronize()
    b.synchronize()
    _add(a, m.Country(name="old"))
    a.synchronize()
    c.synchronize()
    with c.Session() as s:
        s.get(m.Country, 2).name = "old renamed"
        s.commit()
    _delete(a, m.Country, 2)
    a.synchronize()
    [new] = _add(b, m.Country(name="new"))
    assert new == 2  # b cannot know better yet
    [conflict] = b.synchronize().conflicts  # the server's pull says 2 was taken
    assert (conflict.kind, conflict.resolution) == ("primary-key", "rekeyed")
    assert conflict.server is None and conflict.new_key == (3,)
    assert conflict.local == {"id": 2, "name": "new"}  # as found, before the move
    c.synchronize()
    net.settle()
    rows = net.assert_converged()
    assert _names(rows) == ["first", "new", "old renamed"]


def test_a_row_replaced_under_its_key_is_not_overwritten(net: Cluster) -> None:
    """The server deleted country 2 and a new row took key 2 (here: a node
    that repaired after the delete, so it never saw the key). Node c renamed
    the old country 2 offline: the rename must not land on the new row."""
    m = net.server.env.models
    a, c = net.node("a"), net.node("c")
    _add(a, m.Country(name="first"), m.Country(name="old"))
    a.synchronize()
    c.synchronize()
    with c.Session() as s:
        s.get(m.Country, 2).name = "old renamed"
        s.commit()
    _delete(a, m.Country, 2)
    a.synchronize()
    d = net.node("d")
    d.repair()  # the table holds only country 1 now
    [new] = _add(d, m.Country(name="new"))
    assert new == 2
    assert d.synchronize().conflicts == []  # d knew nothing of the old row
    result = c.synchronize()
    # the update beats the delete; the old row comes back beside the new one
    assert sorted((k.kind, k.resolution) for k in result.conflicts) == [
        ("primary-key", "rekeyed"),
        ("update/delete", "node"),
    ]
    net.settle()
    rows = net.assert_converged()
    assert _names(rows) == ["first", "new", "old renamed"]
    assert (2, "new") in rows["country"]


def test_a_row_the_server_app_replaced_is_not_overwritten(net: Cluster) -> None:
    """The server's own app deletes country 2 and inserts another row under
    the same key in a later transaction; a node's offline update of the old
    row neither overwrites the new one nor is lost."""
    m = net.server.env.models
    env = net.server.env
    a = net.node("a")
    _add(a, m.Country(name="first"), m.Country(name="old"))
    a.synchronize()
    with a.Session() as s:
        s.get(m.Country, 2).name = "old renamed"
        s.commit()
    with env.app.app_context():
        env.db.session.delete(env.db.session.get(m.Country, 2))
        env.db.session.commit()
        env.db.session.add(m.Country(id=2, name="replacement"))
        env.db.session.commit()
    a.synchronize()
    net.settle()
    rows = net.assert_converged()
    assert (2, "replacement") in rows["country"]
    assert _names(rows) == ["first", "old renamed", "replacement"]


def test_a_row_deleted_and_inserted_again_in_one_page_reaches_a_clean_node(
    net: Cluster,
) -> None:
    """Without local changes, a replaced row simply arrives with its new values."""
    m = net.server.env.models
    env = net.server.env
    a, b = net.node("a"), net.node("b")
    _add(a, m.Country(name="first"), m.Country(name="old"))
    a.synchronize()
    b.synchronize()
    with env.app.app_context():
        env.db.session.delete(env.db.session.get(m.Country, 2))
        env.db.session.commit()
        env.db.session.add(m.Country(id=2, name="replacement"))
        env.db.session.commit()
    result = b.synchronize()
    assert result.conflicts == []
    net.settle()
    rows = net.assert_converged()
    assert sorted(rows["country"]) == [(1, "first"), (2, "replacement")]


def test_nodes_take_new_keys_from_blocks_the_server_reserved(
    net: Cluster, backend: str
) -> None:
    """A pull reserves each node a block of keys: two offline nodes adding
    rows never collide. On PostgreSQL the block comes from the key column's
    sequence, so the server's own app is never given one of those keys;
    elsewhere the app's AUTO_INCREMENT may take one (that node re-keys)."""
    m = net.server.env.models
    a, b = net.node("a"), net.node("b")
    a.pull()
    b.pull()
    [first] = _add(a, m.Country(name="from a"))
    [second] = _add(b, m.Country(name="from b"))
    assert first != second
    env = net.server.env
    with env.app.app_context():
        own = m.Country(name="server's")
        env.db.session.add(own)
        env.db.session.commit()
        server_key = own.id
    a.synchronize()
    result = b.synchronize()
    assert [c.kind for c in result.conflicts] == []  # b never met a's key
    net.settle()
    rows = net.assert_converged()["country"]
    assert sorted(name for _, name in rows) == ["from a", "from b", "server's"]
    if backend == "postgresql":
        assert server_key not in (first, second)
        assert {key for key, _ in rows} == {first, second, server_key}
