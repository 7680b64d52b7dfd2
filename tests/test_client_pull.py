"""Pulling into a node over real HTTP when nothing local is at stake: the
page is written table by table (an upsert executemany and deletes by key),
and everything the full merge guarantees still holds: exact values, nothing
queued, the key high water raised, conflicts found as soon as a queued
change on the page's tables or their foreign-key neighbours is at stake."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from flask_reflectsync import errors
from flask_reflectsync.client import Conflict, SyncClient
from flask_reflectsync.node.tables import NODE_KEYS

from .nodes import Cluster

# datetime.UTC is Python 3.11; the suite runs on 3.10 too.
UTC = datetime.timezone.utc


def _high_water(node: SyncClient, table: str) -> int:
    with node.engine.connect() as connection:
        found = connection.execute(
            sa.select(NODE_KEYS.c.high_water).where(NODE_KEYS.c.table_name == table)
        ).scalar()
    return int(found or 0)


def test_pulled_rows_of_every_type_arrive_exactly(net: Cluster) -> None:
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    values: dict[str, Any] = {
        "code": "Ünï-1",
        "day": datetime.date(2024, 2, 29),
        "moment": datetime.datetime(2024, 3, 10, 1, 59, 59, 123456, UTC),
        "amount": decimal.Decimal("12345678.9012"),
        "blob": bytes([0, 1, 2, 253, 254, 255]),
        "ref": uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        "doc": {"a": [1, 2.5, None, True], "b": {"nested": "é"}},
        "flag": True,
    }
    with a.Session() as session:
        session.add(Sample(id=1, **values))
        session.add(Sample(id=2))  # every nullable column null
        session.commit()
    a.push()
    assert b.pull().operations == 2
    assert b.pending_operations() == 0
    with b.Session() as session:
        row = session.get(Sample, 1)
        got = {name: getattr(row, name) for name in values}
        empty = session.get(Sample, 2)
        assert (empty.code, empty.moment, empty.doc, empty.flag) == (
            None,
            None,
            None,
            False,
        )
    moment = got["moment"]
    got["moment"] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    assert got == values
    net.assert_converged()


def test_a_pull_writes_updates_and_deletes_rows_the_node_left_alone(
    net: Cluster,
) -> None:
    m = net.server.env.models
    # Keys from the high water, not from reserved blocks (PostgreSQL).
    a, b = net.node(key_blocks=False), net.node(key_blocks=False)
    with a.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="Lima", population=10, country_id=1))
        session.add(m.City(id=2, name="Cusco", population=5, country_id=1))
        session.commit()
    a.synchronize()
    b.synchronize()
    with a.Session() as session:
        session.get(m.City, 1).population = 11
        session.delete(session.get(m.City, 2))
        session.add(m.City(id=30, name="Arequipa", population=1, country_id=1))
        session.commit()
    a.push()
    # b has a change queued, on a table unrelated to the page's
    with b.Session() as session:
        session.add(net.server.Sample(id=7, code="local"))
        session.commit()
    pulled = b.pull()
    assert pulled.operations == 3 and pulled.conflicts == []
    assert b.pending_operations() == 1  # its own change, still queued
    assert net.node_rows(b)["city"] == [(1, "Lima", 11, 1), (30, "Arequipa", 1, 1)]
    assert _high_water(b, "city") == 30
    with b.Session() as session:
        city = m.City(name="Ica", population=2, country_id=1)
        session.add(city)
        session.commit()
        assert city.id == 31  # above every key the node has seen
    b.synchronize()
    a.synchronize()
    net.assert_converged()


def test_a_pulled_delete_raises_the_high_water(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(m.Country(id=40, name="Chile"))
        session.commit()
    a.push()
    b.pull()
    with a.Session() as session:
        session.add(m.Country(id=50, name="Bolivia"))
        session.commit()
    with a.Session() as session:
        session.delete(session.get(m.Country, 50))
        session.delete(session.get(m.Country, 40))
        session.commit()
    a.push()
    assert b.pull().operations == 1  # 40 deleted; 50 came and went
    assert net.node_rows(b)["country"] == []
    assert _high_water(b, "country") == 40


def test_a_queued_child_keeps_the_full_merge_for_a_page_of_parents(
    net: Cluster, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(m.Country(id=2, name="Chile"))
        session.commit()
    a.synchronize()
    b.synchronize()
    # The page holds only a delete of a country; b's queued change is on the
    # table of cities, which points at countries.
    with a.Session() as session:
        session.delete(session.get(m.Country, 2))
        session.commit()
    a.push()
    with b.Session() as session:
        session.add(m.City(id=9, name="Arica", population=1, country_id=2))
        session.commit()
    b.pull()
    assert [(c.kind, c.table, c.resolution) for c in resolved] == [
        ("dependency", "country", "node")
    ]
    assert net.node_rows(b)["country"] == [(2, "Chile")]
    b.synchronize()
    a.synchronize()
    rows = net.assert_converged()
    assert rows["country"] == [(2, "Chile")]
    assert rows["city"] == [(9, "Arica", 1, 2)]


def test_a_page_of_unique_values_moved_between_rows(net: Cluster) -> None:
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(Sample(id=1, code="X"))
        session.commit()
    a.synchronize()
    b.synchronize()
    # The server's row 1 gives its code to a new row 2, which the page
    # lists first (it was touched first): the update must be written before
    # the insert.
    with a.Session() as session:
        session.add(Sample(id=2, code="W"))
        session.commit()
    a.push()
    _set_code(a, Sample, 1, "Y")
    a.push()
    _set_code(a, Sample, 2, "X")
    a.push()
    assert b.pull().conflicts == []
    assert [r[:2] for r in net.node_rows(b)["sample"]] == [(1, "Y"), (2, "X")]
    assert b.pending_operations() == 0
    net.assert_converged()


def _set_code(node: SyncClient, model: Any, key: int, code: str) -> None:
    with node.Session() as session:
        session.get(model, key).code = code
        session.commit()


def test_a_page_that_moves_a_unique_value_to_another_row(net: Cluster) -> None:
    """Found by the soak: on the server row 2 gives its code up, then row 1
    takes it. The node receives both in one page and must write row 2 first
    (it was: a raw IntegrityError on every pull, the node stuck)."""
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add_all([Sample(id=1, code="b"), Sample(id=2, code="a")])
        session.commit()
    a.synchronize()
    b.synchronize()
    _set_code(a, Sample, 2, "c")
    _set_code(a, Sample, 1, "a")
    a.synchronize()
    assert b.pull().conflicts == []
    assert [r[:2] for r in net.node_rows(b)["sample"]] == [(1, "a"), (2, "c")]
    net.assert_converged()


def test_values_swapped_between_rows_in_one_push_are_set_aside(net: Cluster) -> None:
    """Known limit: rows 1 and 2 trade their codes; the server writes a push
    row by row and the database checks the unique constraint after each row,
    so the push is refused (a swap needs a value parked in between). Refused
    twice alike, the rows are set aside with the reason: the node is not
    stuck, and the app sees what waits (see conflicts.rst)."""
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add_all([Sample(id=1, code="X"), Sample(id=2, code="Y")])
        session.commit()
    a.synchronize()
    b.synchronize()
    _set_code(a, Sample, 1, "T")
    _set_code(a, Sample, 2, "X")
    _set_code(a, Sample, 1, "Y")
    a.synchronize()
    aside = a.set_aside()
    assert aside and {e.table for e in aside} == {"sample"}
    assert all("unique" in e.reason for e in aside)
    assert a.pending_operations() == 0
    a.synchronize()  # not stuck
    assert [r[:2] for r in net.server_rows()["sample"]] == [(1, "X"), (2, "Y")]


class _CutOff(httpx.BaseTransport):
    """Fails the ``fail_at``-th pull request (1-based) as a lost connection."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.fail_at: int | None = None
        self.pulls: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/pull"):
            self.pulls.append(json.loads(request.read()))
            if len(self.pulls) == self.fail_at:
                raise httpx.ConnectError("connection lost", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_pull_cut_off_inside_a_version_resumes_where_it_stopped(
    net: Cluster,
) -> None:
    """The server replaces country 1 in one large version; node b's pull
    stops after the page holding that, and b then edits the new country.
    Served again, the replacement would meet the edit as a conflict and
    turn it into a second row; resumed, the edit simply lands."""
    m = net.server.env.models
    a = net.node("a")
    network = _CutOff()
    b = net.node("b", transport=network, page_size=2, retries=0)
    with a.Session() as s:
        s.add(m.Country(id=1, name="old"))
        s.commit()
    a.synchronize()
    b.synchronize()
    env = net.server.env
    with env.app.app_context():
        env.db.session.delete(env.db.session.get(m.Country, 1))
        env.db.session.flush()
        env.db.session.add_all(
            [m.Country(id=1, name="new")]
            + [m.Country(id=n, name=f"more {n}") for n in (2, 3, 4)]
        )
        env.db.session.commit()
    network.pulls.clear()
    network.fail_at = 2
    with pytest.raises(errors.ServerUnreachableError):
        b.pull()
    assert dict(net.node_rows(b)["country"])[1] == "new"  # the first page landed
    with b.Session() as s:
        s.get(m.Country, 1).name = "new, edited"
        s.commit()
    network.fail_at = None
    result = b.synchronize()
    assert result.conflicts == []
    resumed = network.pulls[2]
    assert resumed["cursor"] == network.pulls[1]["cursor"]  # not served again
    a.synchronize()
    rows = net.assert_converged()
    assert rows["country"] == [
        (1, "new, edited"),
        (2, "more 2"),
        (3, "more 3"),
        (4, "more 4"),
    ]


class _OldServer(httpx.BaseTransport):
    """Answers pulls the way an older server did: operations and payloads."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.inner.handle_request(request)
        if not request.url.path.endswith("/pull"):
            return answer
        answer.read()
        body = json.loads(answer.content)
        body.pop("changes")
        body.update(operations=[], payloads={})
        return httpx.Response(answer.status_code, json=body)

    def close(self) -> None:
        self.inner.close()


def test_a_page_in_another_format_is_refused_and_skips_nothing(
    net: Cluster,
) -> None:
    m = net.server.env.models
    a = net.node("a")
    b = net.node("b", transport=_OldServer())
    with a.Session() as s:
        s.add(m.Country(id=1, name="Peru"))
        s.commit()
    a.synchronize()
    with pytest.raises(errors.ProtocolMismatchError, match="same release"):
        b.pull()
    assert b.last_version == 0  # the changes will still be pulled


def test_pull_reports_operations_with_the_pulls_total(net: Cluster) -> None:
    from flask_reflectsync.client import PullProgress

    m = net.server.env.models
    a = net.node("a")
    b = net.node("b", page_size=3)
    with a.Session() as session:
        session.add_all([m.Country(id=i, name=f"c{i}") for i in range(1, 9)])
        session.commit()
    a.synchronize()
    for name in ("first", "again"):
        with a.Session() as session:
            session.get(m.Country, 1).name = name
            session.commit()
        a.synchronize()
    pages: list[PullProgress] = []
    result = b.pull(on_page=pages.append)
    # 10 logged operations (8 inserts, 2 updates of country 1) in pages of
    # 3 rows: the last page holds countries 7, 8 and both updates of 1.
    assert [p.operations for p in pages] == [3, 6, 10]
    assert {p.total for p in pages} == {10}
    # Changes merged: country 1's two updates arrived as one.
    assert result.operations == 9
    assert pages[-1].version == result.version
