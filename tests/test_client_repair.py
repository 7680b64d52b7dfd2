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
from flask_reflectsync.wire.repair import RepairReader

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

    # What the repair threw away stays away: the queue's operations went
    # with their versions (the log has no foreign key to cascade, and
    # SQLite hands a deleted row's id to the next version), so b's next
    # change is pushed alone.
    with b.Session() as session:
        session.add(m.Country(id=5000, name="new"))
        session.commit()
    assert b.pending_operations() == 1
    assert b.push().operations == 1
    assert a.pull().operations == 1
    countries = {row[0] for row in net.assert_converged()["country"]}
    assert 5000 in countries and 9999 not in countries


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


STREAM = (
    b'{"ok":true,"protocol":2,"counts":{"t":2,"u":0}}\n'
    b'{"table":"t","columns":["id","s"]}\n'
    b'{"rows":[[1,"a, ]\\n"]]}\n{"rows":[[22,"\\u00e9"]]}\n'
    b'{"table":"u","columns":["id"]}\n'
    b'{"end":true,"version":12345,"rows":{"t":2,"u":0}}\n'
)


def _read(pieces: Iterator[bytes]) -> tuple[RepairReader, list[Any]]:
    stream = RepairReader(pieces, "http://x")
    tables = [
        (name, cols, [row for rows in chunks for row in rows])
        for name, cols, chunks in stream.tables()
    ]
    return stream, tables


def test_repair_stream_reads_pieces_cut_anywhere() -> None:
    for size in (1, 2, 3, 7, len(STREAM)):
        pieces = iter([STREAM[i : i + size] for i in range(0, len(STREAM), size)])
        stream, tables = _read(pieces)
        assert tables == [
            ("t", ["id", "s"], [[1, "a, ]\n"], [22, "é"]]),
            ("u", ["id"], []),
        ]
        assert stream.header["counts"] == {"t": 2, "u": 0}
        assert stream.end["version"] == 12345


@pytest.mark.parametrize(
    "cut",
    [
        # anywhere inside a line
        *range(1, len(STREAM) - 1, 5),
        # between two lines: only the last line tells that the stream is whole
        *[n + 1 for n, byte in enumerate(STREAM[:-1]) if byte == ord("\n")],
        # the last line without its newline
        len(STREAM) - 1,
    ],
)
def test_cut_repair_stream_is_an_error(cut: int) -> None:
    with pytest.raises(errors.ProtocolMismatchError, match="cut or malformed"):
        _read(iter([STREAM[:cut]]))


@pytest.mark.parametrize(
    ("position", "bad"),
    [
        (1, b'{"rows":[[1]]}\n'),  # rows before any table
        (3, b'{"table":"t","columns":["id","s"]}\n'),  # a table twice
        (3, b"[1]\n"),  # not an object
        (3, b'{"rows":[[1]]'),  # not JSON
        (6, b'{"end":true,"version":12345,"rows":{"t":2,"u":0}}\n'),  # after the end
    ],
)
def test_a_line_out_of_place_is_an_error(position: int, bad: bytes) -> None:
    lines = STREAM.splitlines(keepends=True)
    lines.insert(position, bad)
    with pytest.raises(errors.ProtocolMismatchError, match="cut or malformed"):
        _read(iter([b"".join(lines)]))


def test_row_counts_must_match_the_last_line() -> None:
    stream = STREAM.replace(b'"rows":{"t":2', b'"rows":{"t":3')
    with pytest.raises(errors.ProtocolMismatchError, match="disagree"):
        _read(iter([stream]))


def test_another_protocol_is_a_protocol_mismatch() -> None:
    stream = STREAM.replace(b'"protocol":2', b'"protocol":1')
    with pytest.raises(errors.ProtocolMismatchError, match="speaks protocol 1"):
        _read(iter([stream]))


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


class _DropLastLine(httpx.BaseTransport):
    """Ends a repair answer cleanly, but without its last line (a proxy
    that gave up between two lines)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.inner.handle_request(request)
        if not request.url.path.endswith("/repair"):
            return answer
        lines = answer.read().splitlines(keepends=True)
        assert b'"end"' in lines[-1]
        return httpx.Response(
            answer.status_code, headers=answer.headers, content=b"".join(lines[:-1])
        )

    def close(self) -> None:
        self.inner.close()


def test_a_repair_stream_without_its_last_line_changes_nothing(net: Cluster) -> None:
    m = net.server.env.models
    a = net.node()
    with a.Session() as session:
        session.execute(
            sa.insert(m.Country), [{"id": i, "name": f"c{i}"} for i in range(1, 301)]
        )
        session.commit()
    a.synchronize()
    b = net.node(transport=_DropLastLine(), retries=0)
    with b.Session() as session:
        session.add(m.Country(id=9999, name="mine"))
        session.commit()
    with pytest.raises(errors.ProtocolMismatchError, match="before its last line"):
        b.repair()
    assert net.node_rows(b)["country"] == [(9999, "mine")]  # rolled back
    assert b.pending_operations() == 1
    assert b.last_version == 0


def test_an_old_node_gets_a_protocol_mismatch(net: Cluster) -> None:
    """A node from before the NDJSON stream asks for ``GET /repair`` without
    naming application/x-ndjson; its transport turns the server's refusal
    into a ProtocolMismatchError before its repair changes anything."""
    b = net.node()
    with pytest.raises(errors.ProtocolMismatchError, match="Upgrade the node"):
        b._send("GET", "/repair", stream=True)  # what such a node's repair sends


class _OldServer(httpx.BaseTransport):
    """Answers ``GET /repair`` as servers before the NDJSON stream did: one
    JSON document."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/repair"):
            return self.inner.handle_request(request)
        document = {"ok": True, "protocol": 2, "version": 1, "tables": {}}
        return httpx.Response(200, json=document)

    def close(self) -> None:
        self.inner.close()


def test_a_node_repairing_from_an_old_server_is_told_and_changes_nothing(
    net: Cluster,
) -> None:
    m = net.server.env.models
    b = net.node(transport=_OldServer(), retries=0)
    with b.Session() as session:
        session.add(m.Country(id=9999, name="mine"))
        session.commit()
    with pytest.raises(errors.ProtocolMismatchError, match="Upgrade the server"):
        b.repair()
    assert net.node_rows(b)["country"] == [(9999, "mine")]
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
