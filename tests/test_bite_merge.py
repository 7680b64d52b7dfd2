"""Merge and re-keying cases that mutation testing showed unguarded (issue
12), with real nodes against a served app."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from .nodes import Cluster


def test_rekeying_a_replaced_row_queues_its_server_known_children(
    net: Cluster,
) -> None:
    """Node b deletes a country the server has and adds a new one, which
    takes the freed key; a city both sides know keeps pointing at that key,
    so locally it now belongs to the new country. Before pushing, the new
    country moves to a key of its own, and the city with it: the server
    must hear of the city's move, though the app never touched the city."""
    m = net.server.env.models
    b, c = net.node("b"), net.node("c")
    with c.Session() as s:
        s.add(m.Country(id=1, name="old"))
        s.add(m.City(id=1, name="town", country_id=1))
        s.commit()
    c.synchronize()
    b.synchronize()
    with b.Session() as s:
        # A bulk delete: the ORM does not touch the city's foreign key.
        s.execute(sa.delete(m.Country).where(m.Country.id == 1))
        s.add(m.Country(id=1, name="new"))
        s.commit()
    assert b.pending_operations() > 0

    b.synchronize()
    server = net.server_rows()
    countries = {name: key for key, name in server["country"]}
    assert sorted(countries) == ["new"]
    assert countries["new"] != 1  # a new row: not an update of the old one
    assert [(n, k) for _, n, _, k in server["city"]] == [("town", countries["new"])]
    net.settle()
    net.assert_converged()


@pytest.mark.parametrize("server_first", [False, True])
def test_a_page_moving_a_unique_value_onto_a_row_whose_holder_yields_merges(
    net: Cluster, server_first: bool
) -> None:
    """The server moves code "X" from sample 2 to sample 1 in one push.
    Node b had changed sample 2 (the holder of "X") and decides for the
    server: sample 2 takes the server's values and gives "X" up, so the
    page merges without a unique conflict, whichever row comes first."""
    Sample = net.server.Sample
    b = net.node("b", resolution="server-wins")
    c = net.node("c")
    giver, taker = (1, 2) if server_first else (2, 1)
    with c.Session() as s:
        s.add_all([Sample(id=giver, code="X"), Sample(id=taker, code="A")])
        s.commit()
    c.synchronize()
    b.synchronize()
    with b.Session() as s:
        s.get(Sample, giver).flag = True  # a local change of the holder
        s.commit()
    with c.Session() as s:
        # The flag too: a conflict needs a column both sides changed.
        s.get(Sample, giver).flag = True
        s.get(Sample, giver).code = "B"
        s.flush()
        s.get(Sample, taker).code = "X"
        s.commit()
    c.synchronize()

    result = b.pull()  # merged before b pushes: the merge decides
    assert [(k.kind, k.key, k.resolution) for k in result.conflicts] == [
        ("update/update", (giver,), "server")
    ]
    codes = {row[0]: row[1] for row in net.node_rows(b)["sample"]}
    assert codes == {giver: "B", taker: "X"}
    # The server won: b's change of the holder is gone, not queued to be
    # pushed over the server's row.
    assert b.pending_operations() == 0
    net.settle()
    net.assert_converged()


def test_a_holder_whose_decided_values_move_it_off_the_value_is_no_conflict(
    net: Cluster,
) -> None:
    """As above, with node b's resolver keeping its own change on top of
    the server's values: sample 2 still gives "X" up, its change stays
    queued, and no unique conflict is reported (nor the resolver asked)."""
    Sample = net.server.Sample
    asked = []

    def keep_my_flag(conflict: Any) -> Any:
        asked.append(conflict.kind)
        if conflict.kind == "update/update":
            return {"flag": not conflict.server["flag"]}
        return None

    b = net.node("b", resolutions={Sample: keep_my_flag})
    c = net.node("c")
    with c.Session() as s:
        s.add_all([Sample(id=1, code="A"), Sample(id=2, code="X")])
        s.commit()
    c.synchronize()
    b.synchronize()
    with b.Session() as s:
        s.get(Sample, 2).flag = True
        s.commit()
    with c.Session() as s:
        # The flag too: a conflict needs a column both sides changed.
        s.get(Sample, 2).flag = True
        s.get(Sample, 2).code = "B"
        s.flush()
        s.get(Sample, 1).code = "X"
        s.commit()
    c.synchronize()

    result = b.pull()
    assert asked == ["update/update"]
    assert [(k.kind, k.key, k.resolution) for k in result.conflicts] == [
        ("update/update", (2,), "values")
    ]
    rows = {row[0]: (row[1], row[-1]) for row in net.node_rows(b)["sample"]}
    assert rows == {1: ("X", False), 2: ("B", False)}
    net.settle()
    assert {
        row[0]: (row[1], row[-1]) for row in net.assert_converged()["sample"]
    } == rows


def test_a_rekeyed_row_never_takes_a_key_queued_as_a_local_delete(
    net: Cluster,
) -> None:
    """Node b deletes country 3 (not pushed yet) and adds a country, key 2;
    the server meanwhile has its own country 2, so b's row moves. Key 3 is
    free locally but the server still has that row: moving b's row onto it
    would turn b's delete into an insert of the new row, and the delete
    would be lost. (Rows written by bulk statements do not raise the node's
    high water, so only the queue itself knows key 3 here.)"""
    m = net.server.env.models
    env = net.server.env
    b = net.node("b", key_blocks=False)
    with b.Session() as s:
        s.add(m.Country(name="first"))
        s.commit()
    with b.Session() as s:
        s.execute(sa.insert(m.Country), [{"id": 3, "name": "bulk"}])
        s.commit()
    b.synchronize()
    with b.Session() as s:
        s.execute(sa.delete(m.Country).where(m.Country.id == 3))
        s.commit()
    with b.Session() as s:
        mine = m.Country(name="mine")
        s.add(mine)
        s.commit()
        assert mine.id == 2
    env.db.session.add(m.Country(id=2, name="server's"))
    env.db.session.commit()

    result = b.pull()
    [rekeyed] = [k for k in result.conflicts if k.kind == "primary-key"]
    assert rekeyed.new_key not in {(1,), (2,), (3,)}
    net.settle()
    rows = net.assert_converged()
    assert sorted(name for _, name in rows["country"]) == ["first", "mine", "server's"]
