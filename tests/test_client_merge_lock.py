"""A merge never holds the node's SQLite write lock while it waits for the
server, and a local write made while it waits is part of its decision."""

from __future__ import annotations

from typing import Any

from flask import request

from flask_reflectsync.client import Conflict, SyncClient

from .nodes import Cluster


def _sample(node: SyncClient, Sample: Any, key: int, **values: Any) -> None:
    with node.Session() as session:
        row = session.get(Sample, key)
        if row is None:
            session.add(Sample(id=key, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)
        session.commit()


def _unique_code_moves(net: Cluster, **options: Any) -> tuple[SyncClient, SyncClient]:
    """Row 1 had code X and gave it to row 2 on the server; b still has
    row 1 with X, and pulls one operation per page: the first page carries
    row 2 (code X, its current payload), and the merge must ask the server
    for row 1 to know that it moved away."""
    Sample = net.server.Sample
    a = net.node()
    b = net.node(page_size=1, **options)
    _sample(a, Sample, 1, code="X")
    a.synchronize()
    b.synchronize()
    _sample(a, Sample, 2, code="Z")
    a.push()
    _sample(a, Sample, 1, code="Y")
    a.push()
    _sample(a, Sample, 2, code="X")
    a.push()
    return a, b


def test_a_local_write_while_the_merge_asks_the_server_is_not_blocked_nor_lost(
    net: Cluster,
) -> None:
    Sample = net.server.Sample
    app = net.server.env.app
    done: list[str] = []
    failures: list[BaseException] = []
    holder: list[SyncClient] = []

    @app.before_request
    def write_on_the_node_meanwhile() -> None:
        # Served while b merges: b's program edits row 1 at that moment.
        if request.path != "/sync/query" or done or not holder:
            return
        done.append("edited")
        try:
            _sample(holder[0], Sample, 1, code="Q")
        except BaseException as error:  # reported below
            failures.append(error)

    a, b = _unique_code_moves(net)
    holder.append(b)
    b.pull()
    assert failures == []
    assert done == ["edited"]
    # The merge started again from the edit: row 1 keeps the local "Q"
    # (queued for the push), not the server's "Y" it had fetched.
    codes = {r[0]: r[1] for r in net.node_rows(b)["sample"]}
    assert codes == {1: "Q", 2: "X"}
    assert b.pending_operations() == 1
    b.synchronize()
    a.synchronize()
    rows = net.assert_converged()
    assert {r[0]: r[1] for r in rows["sample"]} == {1: "Q", 2: "X"}


def test_a_merge_that_asks_the_server_converges(net: Cluster) -> None:
    a, b = _unique_code_moves(net)
    b.pull()
    rows = net.assert_converged()
    assert {r[0]: r[1] for r in rows["sample"]} == {1: "Y", 2: "X"}


def test_a_resolver_is_asked_once_when_the_merge_starts_again(net: Cluster) -> None:
    """A conflict decided before the merge needed server rows is not asked
    again in the next round."""
    Sample = net.server.Sample
    asked: list[tuple[str, Any]] = []

    def resolver(conflict: Conflict) -> Any:
        asked.append((conflict.kind, conflict.key))
        return None

    a, b = _unique_code_moves(net, resolution=resolver)
    # b made a row 2 of its own: the page's row 2 is a key conflict (asked,
    # and re-keyed), then row 1's code needs the server's copy.
    _sample(b, Sample, 2, code="L")
    b.pull()
    assert asked == [("primary-key", (2,))]
    b.synchronize()
    a.synchronize()
    rows = net.assert_converged()
    assert {r[1] for r in rows["sample"]} == {"Y", "X", "L"}
