"""SyncClient.repair (streamed, with progress) and SyncClient.query."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from flask_reflectsync import errors
from flask_reflectsync.node.repair import RepairStream as _RepairStream

from .conftest import AppFactory
from .nodes import Cluster, cluster


@pytest.fixture
def net(make_app: AppFactory, tmp_path: Path) -> Iterator[Cluster]:
    with cluster(make_app, tmp_path, REFLECTSYNC_REPAIR_CHUNK_ROWS=300) as found:
        yield found


def test_repair_replaces_local_data_with_the_servers_copy(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.execute(
            sa.insert(m.Country), [{"id": i, "name": f"c{i}"} for i in range(1, 2501)]
        )
        session.add(m.City(id=1, name="Lima", population=3, country_id=1))
        session.commit()
    a.synchronize()
    # b has local junk, queued and not: repair throws all of it away.
    with b.Session() as session:
        session.add(m.Country(id=9999, name="junk"))
        session.commit()
    with b.engine.begin() as connection:
        connection.execute(sa.insert(m.City.__table__).values(id=77, name="stray"))

    seen: list[tuple[str, int]] = []
    written = b.repair(progress=lambda table, rows: seen.append((table, rows)))

    assert written == 2501
    assert ("country", 1000) in seen and ("country", 2000) in seen
    assert ("country", 2500) in seen and ("city", 1) in seen
    assert b.pending_operations() == 0
    assert b.last_version == a.last_version
    net.assert_converged()

    # Pulling after the repair goes on from the copy's version.
    with a.Session() as session:
        session.get(m.City, 1).population = 4
        session.commit()
    a.synchronize()
    assert b.pull().operations == 1
    net.assert_converged()


def test_repair_round_trips_every_column_type(net: Cluster) -> None:
    Sample = net.server.Sample
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(
            Sample(
                id=1,
                code='q" ] b',
                day=datetime.date(2024, 2, 29),
                moment=datetime.datetime(
                    2024, 1, 1, 12, 30, tzinfo=datetime.timezone.utc
                ),
                amount=decimal.Decimal("12.3400"),
                blob=b"\x00\xff",
                ref=uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
                doc={"a": [1, "]"]},
                flag=True,
            )
        )
        session.commit()
    a.synchronize()
    b.repair()
    assert net.node_rows(b)["sample"] == net.node_rows(a)["sample"]


def test_repair_stream_reads_pieces_cut_anywhere() -> None:
    text = (
        b'{"ok":true,"protocol":1,"version":12345,"tables":{"t":{"columns":["id","s"],'
        b'"rows":[[1,"a, ]"],[22,"\\u00e9"]]},"u":{"columns":["id"],"rows":[]}}}'
    )
    for size in (1, 2, 3, 7, len(text)):
        pieces = iter([text[i : i + size] for i in range(0, len(text), size)])
        stream = _RepairStream(pieces, "http://x")
        tables = [(name, cols, list(rows)) for name, cols, rows in stream.tables()]
        assert tables == [
            ("t", ["id", "s"], [[1, "a, ]"], [22, "é"]]),
            ("u", ["id"], []),
        ]
        assert stream.header["version"] == 12345


def test_cut_repair_stream_is_an_error() -> None:
    stream = _RepairStream(
        iter([b'{"ok":true,"version":1,"tables":{"t":{"rows":[[1']), "x"
    )
    with pytest.raises(errors.ProtocolMismatchError):
        for _, _, rows in stream.tables():
            list(rows)


class _BreakRepair(httpx.BaseTransport):
    """Lets ``keep`` bytes of a repair answer through, then drops the
    connection, as a network cut mid-stream would."""

    def __init__(self, keep: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.keep = keep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.inner.handle_request(request)
        if not request.url.path.endswith("/repair"):
            return answer
        body = answer.read()
        keep = self.keep

        class Cut(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                yield body[:keep]
                raise httpx.RemoteProtocolError("peer closed the connection")

        return httpx.Response(answer.status_code, headers=answer.headers, stream=Cut())

    def close(self) -> None:
        self.inner.close()


def test_a_repair_stream_cut_midway_is_a_sync_error_and_changes_nothing(
    net: Cluster,
) -> None:
    m = net.server.env.models
    a = net.node()
    with a.Session() as session:
        session.execute(
            sa.insert(m.Country), [{"id": i, "name": f"c{i}"} for i in range(1, 301)]
        )
        session.commit()
    a.synchronize()
    b = net.node(transport=_BreakRepair(keep=2000), retries=0)
    with b.Session() as session:
        session.add(m.Country(id=9999, name="mine"))
        session.commit()
    with pytest.raises(errors.ServerUnreachableError, match="broke off"):
        b.repair()
    with b.engine.connect() as connection:
        rows = connection.execute(sa.select(m.Country.__table__)).all()
    assert [tuple(r) for r in rows] == [(9999, "mine")]  # rolled back
    assert b.pending_operations() == 1


def test_query_builds_detached_instances_from_server_rows(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add_all(
            m.City(
                id=i,
                name=f"city {i}",
                population=i * 10,
                country_id=1 if i % 2 else None,
            )
            for i in range(1, 151)
        )
        session.commit()
    a.synchronize()

    lima: list[Any] = b.query(m.City, name="city 3")
    assert [(c.id, c.name, c.population, c.country_id) for c in lima] == [
        (3, "city 3", 30, 1)
    ]
    assert sa.inspect(lima[0]).session is None
    assert net.node_rows(b)["city"] == []  # nothing stored locally

    big = b.query(m.City, population__gte=1000)  # several server pages
    assert [c.id for c in big] == list(range(100, 151))
    assert [c.id for c in b.query(m.City, id__in=[5, 7, 900])] == [5, 7]
    assert len(b.query(m.City, country_id__isnull=True)) == 75
    assert len(b.query(m.Tag, id=uuid.uuid4())) == 0

    with pytest.raises(errors.ValidationError):
        b.query(m.City, nowhere=1)
    with pytest.raises(errors.ConfigurationError):
        b.query(net.server.env.models.Note)


def test_repair_announces_how_many_rows_it_copies(net: Cluster) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.execute(
            sa.insert(m.Country), [{"id": i, "name": f"c{i}"} for i in range(1, 1201)]
        )
        session.add(m.City(id=1, name="Lima", country_id=1))
        session.commit()
    a.synchronize()
    totals: list[int] = []
    seen: list[int] = []
    written = b.repair(
        progress=lambda table, rows: seen.append(rows), on_total=totals.append
    )
    assert totals == [1201] == [written]
