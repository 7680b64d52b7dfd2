"""POST /pull, GET /repair and GET /query over real HTTP, and exact
round trips of every column type."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flask_reflectsync import signals
from flask_reflectsync.wire.messages import PROTOCOL_VERSION

from .conftest import AppFactory
from .http_server import (
    REPAIR_ACCEPT,
    ServerEnv,
    TestNode,
    insert,
    read_repair,
    server_env,
)

# datetime.UTC is Python 3.11; the suite runs on 3.10 too.
UTC = datetime.timezone.utc


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


def _cities(node: TestNode, *ids: int, country: bool = True) -> None:
    operations = [{"table": "city", "key": [i], "command": "i"} for i in ids]
    payloads: dict[str, Any] = {
        "city": {
            "columns": ["id", "name", "population", "country_id"],
            "rows": [[i, f"city {i}", i, 1 if country else None] for i in ids],
        }
    }
    if country:
        operations.append({"table": "country", "key": [1], "command": "i"})
        payloads["country"] = {"columns": ["id", "name"], "rows": [[1, "Peru"]]}
    answer = node.push(operations, payloads)
    assert answer.status_code == 200, answer.text


# -- pull ---------------------------------------------------------------------------


def test_pull_returns_other_nodes_changes_with_current_payloads(
    server: ServerEnv,
) -> None:
    writer, reader = server.node(), server.node()
    _cities(writer, 1, 2)
    answer = writer.push(
        [
            {"table": "city", "key": [1], "command": "u"},
            {"table": "city", "key": [2], "command": "d"},
        ],
        {"city": {"columns": ["id", "population"], "rows": [[1, 500]]}},
    )
    assert answer.status_code == 200

    page = reader.pull().json()
    assert page["ok"] is True and page["protocol"] == PROTOCOL_VERSION
    # insert + update compress to insert; insert + delete to a delete (the
    # key was taken: a node may have given it to a row of its own). A row
    # carries its own key: no key is sent twice.
    assert page["changes"] == {
        "city": {
            "columns": ["id", "name", "population", "country_id"],
            "values": [[1], ["city 1"], [500], [1]],
            "commands": "i",
            "deleted": [[2]],
        },
        "country": {
            "columns": ["id", "name"],
            "values": [[1], ["Peru"]],
            "commands": "i",
            "deleted": [[]],
        },
    }
    assert (page["until"], page["version"], page["cursor"]) == (2, 2, None)


def test_a_row_replaced_under_its_integer_key_is_a_delete_and_an_insert(
    server: ServerEnv,
) -> None:
    """Not an update: a node that changed the old row offline must meet its
    delete, and must not take the new row for it."""
    writer, reader = server.node(), server.node()
    _cities(writer, 1)
    env = server.env
    with env.app.app_context():
        env.db.session.delete(env.db.session.get(env.models.City, 1))
        env.db.session.commit()
        env.db.session.add(env.models.City(id=1, name="new", country_id=1))
        env.db.session.commit()
    page = reader.pull(1).json()
    assert page["changes"]["city"] == {
        "columns": ["id", "name", "population", "country_id"],
        "values": [[1], ["new"], [0], [1]],
        "commands": "i",
        "deleted": [[1]],
    }


def test_pull_leaves_out_the_node_own_versions(server: ServerEnv) -> None:
    node = server.node()
    _cities(node, 1)
    page = node.pull().json()
    assert page["changes"] == {}
    assert page["until"] == 1


def test_pull_since_the_latest_version_is_empty(server: ServerEnv) -> None:
    writer, reader = server.node(), server.node()
    _cities(writer, 1)
    page = reader.pull(since=1).json()
    assert (page["changes"], page["until"]) == ({}, 1)


def test_pull_sees_changes_made_by_the_app(server: ServerEnv) -> None:
    env = server.env
    env.db.session.add(env.models.Country(id=7, name="Chile"))
    env.db.session.commit()
    page = server.node().pull().json()
    assert page["changes"] == {
        "country": {
            "columns": ["id", "name"],
            "values": [[7], ["Chile"]],
            "commands": "i",
            "deleted": [[]],
        }
    }


def test_a_row_deleted_since_is_pulled_as_a_delete(server: ServerEnv) -> None:
    writer, reader = server.node(), server.node()
    _cities(writer, 1, 2, 3)
    reader.pull_all()
    assert reader.last_version == 1
    writer.push(
        [{"table": "city", "key": [2], "command": "u"}],
        {"city": {"columns": ["id", "name"], "rows": [[2, "renamed"]]}},
        last_version=1,
    )
    writer.push([{"table": "city", "key": [2], "command": "d"}], last_version=1)
    # The reader pulls one version at a time: the update's row is gone.
    page = reader.pull(limit=1).json()
    assert page["changes"] == {
        "city": {
            "columns": ["id", "name", "population", "country_id"],
            "values": [[], [], [], []],
            "commands": "",
            "deleted": [[2]],
        }
    }


def test_a_node_far_behind_pulls_in_bounded_pages(make_app: AppFactory) -> None:
    with server_env(make_app, REFLECTSYNC_PULL_PAGE_SIZE=4) as server:
        writer, reader = server.node(), server.node()
        for start in range(0, 10, 3):  # versions 1-4 with 3, 3, 3, 1 cities
            ids = range(start + 1, min(start + 4, 11))
            _cities(writer, *ids, country=False)
        pages: list[dict[str, Any]] = []

        def served(sender: Any, **kwargs: Any) -> None:
            pages.append(kwargs)

        signals.pull_served.connect(served, server.env.app)
        try:
            answers = reader.pull_all()
        finally:
            signals.pull_served.disconnect(served, server.env.app)

        assert [list(a["changes"]) for a in answers] == [["city"]] * 3
        cities = [a["changes"]["city"] for a in answers]
        assert [c["commands"] for c in cities] == ["iiii", "iiii", "ii"]
        assert all(c["deleted"] == [[]] for c in cities)
        assert sorted(i for c in cities for i in c["values"][0]) == list(range(1, 11))
        # "until" only counts versions a page holds completely
        assert [a["until"] for a in answers] == [1, 2, 4]
        assert reader.last_version == 4
        assert pages == [
            {"node": reader.id, "since": 0, "until": 1, "operations": 4, "more": True},
            {"node": reader.id, "since": 0, "until": 2, "operations": 4, "more": True},
            {"node": reader.id, "since": 0, "until": 4, "operations": 2, "more": False},
        ]


def test_a_limit_above_the_page_size_is_capped(make_app: AppFactory) -> None:
    with server_env(make_app, REFLECTSYNC_PULL_PAGE_SIZE=2) as server:
        writer, reader = server.node(), server.node()
        _cities(writer, 1, 2, 3, country=False)
        page = reader.pull(limit=1000).json()
        assert page["changes"]["city"]["commands"] == "ii"


def test_pull_from_the_future_is_refused(server: ServerEnv) -> None:
    answer = server.node().pull(since=5)
    assert answer.status_code == 400
    assert "repair" in answer.json()["error"]


def test_pull_records_the_node_version(server: ServerEnv) -> None:
    writer, reader = server.node(), server.node()
    _cities(writer, 1)
    reader.pull_all()
    nodes = server.env.db.metadata.tables["reflectsync_nodes"]
    with server.env.db.engine.connect() as connection:
        version = connection.execute(
            nodes.select()
            .with_only_columns(nodes.c.last_pulled_version)
            .where(nodes.c.id == reader.id)
        ).scalar()
    assert version == 1


# -- repair -------------------------------------------------------------------------


def test_repair_streams_every_tracked_table_and_the_version(
    make_app: AppFactory,
) -> None:
    with server_env(make_app, REFLECTSYNC_REPAIR_CHUNK_ROWS=3) as server:
        writer = server.node()
        _cities(writer, *range(1, 11))
        env = server.env
        env.db.session.add(env.models.Note(id=1, name="untracked"))
        env.db.session.commit()

        request = writer.sign(writer.build("GET", "/repair", headers=REPAIR_ACCEPT))
        with writer.client.stream(
            request.method, request.url, headers=request.headers
        ) as response:
            assert response.status_code == 200
            # streamed: no length known up front, several pieces on the wire
            assert "content-length" not in response.headers
            chunks = list(response.iter_raw())
        assert len(chunks) > 3
        body = b"".join(chunks)
        lines = [json.loads(line) for line in body.split(b"\n")[:-1]]
        assert body.endswith(b"\n")
        # one object per line: header, per table its line and lines of at
        # most REFLECTSYNC_REPAIR_CHUNK_ROWS rows, the end line
        counts = {"country": 1, "city": 10, "tag": 0, "translation": 0, "sample": 0}
        assert lines[0] == {"ok": True, "protocol": 2, "counts": counts}
        assert lines[-1] == {"end": True, "version": 1, "rows": counts}
        city = lines.index(
            {"table": "city", "columns": ["id", "name", "population", "country_id"]}
        )
        sizes = [len(line["rows"]) for line in lines[city + 1 : city + 5]]
        assert sizes == [3, 3, 3, 1]
        assert set(lines[city + 5]) != {"rows"}  # the next table, or the end

        body = read_repair(writer.repair())
        assert set(body["tables"]) == {
            "country",
            "city",
            "tag",
            "translation",
            "sample",
        }
        city = body["tables"]["city"]
        assert city["columns"] == ["id", "name", "population", "country_id"]
        assert city["rows"] == [[i, f"city {i}", i, 1] for i in range(1, 11)]
        assert body["tables"]["tag"] == {"columns": ["id", "label"], "rows": []}


def test_repair_to_a_node_that_does_not_accept_the_stream_is_refused(
    server: ServerEnv,
) -> None:
    """Nodes from before the NDJSON stream send no Accept naming it; they
    would misread the stream, so they get an error that names the protocol
    (which their transport reports as a ProtocolMismatchError)."""
    node = server.node()
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        answer = node.call("GET", "/repair", headers=headers)
        assert answer.status_code == 400
        assert answer.json()["ok"] is False
        assert "protocol" in answer.json()["error"]
    accepted = {"Accept": "application/json, application/x-ndjson; q=0.9"}
    assert node.call("GET", "/repair", headers=accepted).status_code == 200


def test_repair_needs_a_signature(server: ServerEnv) -> None:
    answer = httpx.get(server.base + "/repair")
    assert answer.status_code == 401
    assert answer.json()["ok"] is False


# -- query --------------------------------------------------------------------------


def test_query_filters_by_equality(server: ServerEnv) -> None:
    node = server.node()
    _cities(node, 1, 2, 3)
    answer = node.call("GET", "/query", params={"model": "city", "name": "city 2"})
    assert answer.json() == {
        "ok": True,
        "protocol": 2,
        "model": "city",
        "rows": [{"id": 2, "name": "city 2", "population": 2, "country_id": 1}],
        "next_offset": None,
    }


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        ({"population__gt": "1"}, [2, 3, 4]),
        ({"population__lte": "2"}, [1, 2]),
        ({"id__in": "1,3"}, [1, 3]),
        ({"name__ne": "city 1", "population__lt": "4"}, [2, 3]),
        ({"country_id__isnull": "true"}, []),
        ({"country_id__isnull": "false", "id": "4"}, [4]),
    ],
)
def test_query_operators(
    server: ServerEnv, params: dict[str, str], ids: list[int]
) -> None:
    node = server.node()
    _cities(node, 1, 2, 3, 4)
    answer = node.call("GET", "/query", params={"model": "city", **params})
    assert [row["id"] for row in answer.json()["rows"]] == ids


def test_query_pages(server: ServerEnv) -> None:
    node = server.node()
    _cities(node, *range(1, 8))
    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        page = node.call(
            "GET", "/query", params={"model": "city", "limit": 3, "offset": offset}
        ).json()
        seen += [row["id"] for row in page["rows"]]
        offset = page["next_offset"]
    assert seen == list(range(1, 8))


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"model": "note"}, 404, "No tracked model 'note'"),
        ({"model": "reflectsync_nodes"}, 404, "No tracked model"),
        ({}, 400, "?model=<table>"),
        ({"model": "city", "secret": "x"}, 400, "Unknown column 'secret'"),
        ({"model": "city", "population": "many"}, 400, "expects an integer"),
        ({"model": "city", "population__near": "1"}, 400, "Unknown column"),
        ({"model": "city", "limit": "0"}, 400, "limit must be between"),
        ({"model": "city", "limit": "x"}, 400, "limit must be an integer"),
        ({"model": "city", "offset": "-1"}, 400, "offset must be an integer from 0"),
        ({"model": "sample", "doc": "{}"}, 400, "cannot be filtered"),
    ],
)
def test_query_refuses_what_is_not_tracked(
    server: ServerEnv, params: dict[str, str], status: int, message: str
) -> None:
    answer = server.node().call("GET", "/query", params=params)
    assert answer.status_code == status
    body = answer.json()
    assert body["ok"] is False and body["status"] == status
    assert message in body["error"]


def test_query_refuses_a_repeated_parameter(server: ServerEnv) -> None:
    node = server.node()
    answer = node.call(
        "GET", "/query", params=[("model", "city"), ("id", "1"), ("id", "2")]
    )  # type: ignore[arg-type]
    assert answer.status_code == 400
    assert "__in" in answer.json()["error"]


# -- every column type round-trips exactly ----------------------------------

SAMPLE = {
    "id": 1,
    "code": "Ünï-1",
    "day": "2024-02-29",
    "moment": "2024-03-10T01:59:59.123456+00:00",
    "amount": "12345678.9012",
    "blob": "AAEC/f7/",
    "ref": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "doc": {"a": [1, 2.5, None, True], "b": {"nested": "é"}},
    "flag": True,
}


def test_every_type_round_trips_through_push_pull_repair_and_query(
    server: ServerEnv,
) -> None:
    writer, reader = server.node(), server.node()
    op, payload = insert("sample", SAMPLE)
    assert writer.push([op], payload).status_code == 200

    # in the database, as Python values
    row = server.env.db.session.get(server.Sample, 1)
    assert row.day == datetime.date(2024, 2, 29)
    moment = (
        row.moment if row.moment.tzinfo else row.moment.replace(tzinfo=UTC)
    )
    assert moment == datetime.datetime(
        2024, 3, 10, 1, 59, 59, 123456, tzinfo=UTC
    )
    assert row.amount == decimal.Decimal("12345678.9012")
    assert row.blob == bytes([0, 1, 2, 253, 254, 255])
    assert row.ref == uuid.UUID(SAMPLE["ref"])
    assert row.doc == SAMPLE["doc"]
    assert (row.code, row.flag) == ("Ünï-1", True)

    expected = list(SAMPLE.values())
    page = reader.pull().json()
    assert page["changes"]["sample"] == {
        "columns": list(SAMPLE),
        "values": [[value] for value in expected],
        "commands": "i",
        "deleted": [[]],
    }
    rows = reader.call("GET", "/query", params={"model": "sample"}).json()["rows"]
    assert rows == [SAMPLE]
    repair = read_repair(reader.repair())
    assert repair["tables"]["sample"]["rows"] == [expected]


def test_datetimes_with_other_offsets_are_kept_as_the_same_instant(
    server: ServerEnv,
) -> None:
    writer = server.node()
    op, payload = insert("sample", {"id": 2, "moment": "2024-03-10T03:59:59+02:00"})
    assert writer.push([op], payload).status_code == 200
    rows = writer.call("GET", "/query", params={"model": "sample"}).json()["rows"]
    assert rows[0]["moment"] == "2024-03-10T01:59:59+00:00"


def test_query_filters_on_typed_columns(server: ServerEnv) -> None:
    node = server.node()
    op, payload = insert("sample", SAMPLE)
    assert node.push([op], payload).status_code == 200
    # A second row that differs in every filtered column, so a filter that
    # is ignored (or compares the wrong way) returns two rows, not one.
    other = {
        "id": 2,
        "code": "other-2",
        "day": "2024-03-01",
        "moment": "2024-03-10T02:00:00+00:00",
        "amount": "12345678.9013",
        "ref": "1b4e28ba-2fa1-11d2-883f-0016d3cca428",
    }
    op, payload = insert("sample", other)
    assert node.push([op], payload).status_code == 200
    everything = node.call("GET", "/query", params={"model": "sample"}).json()
    assert sorted(r["id"] for r in everything["rows"]) == [1, 2]
    for column in ("day", "amount", "ref", "moment", "code"):
        answer = node.call(
            "GET", "/query", params={"model": "sample", column: SAMPLE[column]}
        )
        assert [r["id"] for r in answer.json()["rows"]] == [1], column
        answer = node.call(
            "GET", "/query", params={"model": "sample", column: other[column]}
        )
        assert [r["id"] for r in answer.json()["rows"]] == [2], column


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("day", "29/02/2024", "expects an ISO 8601 date"),
        ("moment", "2024-03-10T01:59:59", "expects an ISO 8601 datetime with offset"),
        ("amount", 12.5, "expects a decimal string"),
        ("amount", "NaN", "expects a decimal string"),
        ("blob", "not base64!", "expects base64 text"),
        ("ref", "not-a-uuid", "expects a UUID string"),
        ("flag", "yes", "expects a boolean"),
    ],
)
def test_values_of_the_wrong_type_are_refused(
    server: ServerEnv, column: str, value: Any, message: str
) -> None:
    node = server.node()
    op, payload = insert("sample", {"id": 3, column: value})
    answer = node.push([op], payload)
    assert answer.status_code == 422
    body = answer.json()
    assert (body["code"], body["table"], body["key"]) == (
        "push.invalid_value",
        "sample",
        [3],
    )
    assert body["column"] == column
    error = body["error"]
    assert f"column {column!r}" in error
    assert message in error
    assert server.env.db.session.get(server.Sample, 3) is None


def test_uuid_and_composite_keys(server: ServerEnv) -> None:
    writer, reader = server.node(), server.node()
    tag = str(uuid.uuid4())
    answer = writer.push(
        [
            {"table": "tag", "key": [tag], "command": "i"},
            {"table": "translation", "key": [5, "fr"], "command": "i"},
        ],
        {
            "tag": {"columns": ["id", "label"], "rows": [[tag, "blue"]]},
            "translation": {
                "columns": ["city_id", "lang", "text"],
                "rows": [[5, "fr", "Lima"]],
            },
        },
    )
    assert answer.status_code == 200, answer.text
    page = reader.pull().json()
    assert page["changes"]["tag"]["values"] == [[tag], ["blue"]]
    assert page["changes"]["translation"]["values"] == [[5], ["fr"], ["Lima"]]
    assert [page["changes"][t]["commands"] for t in ("tag", "translation")] == [
        "i",
        "i",
    ]
    answer = writer.push(
        [
            {"table": "translation", "key": [5, "fr"], "command": "d"},
            {"table": "tag", "key": [tag], "command": "d"},
        ],
        last_version=1,
    )
    assert answer.status_code == 200
    changes = reader.pull(since=1).json()["changes"]
    assert {name: (t["commands"], t["deleted"]) for name, t in changes.items()} == {
        "translation": ("", [[5], ["fr"]]),
        "tag": ("", [[tag]]),
    }


def test_rows_with_uuid_and_composite_keys_gone_since_are_deletes(
    server: ServerEnv,
) -> None:
    writer, reader = server.node(), server.node()
    kept, gone = str(uuid.uuid4()), str(uuid.uuid4())
    answer = writer.push(
        [
            {"table": "tag", "key": [kept], "command": "i"},
            {"table": "tag", "key": [gone], "command": "i"},
            {"table": "translation", "key": [5, "fr"], "command": "i"},
            {"table": "translation", "key": [5, "es"], "command": "i"},
        ],
        {
            "tag": {"columns": ["id", "label"], "rows": [[kept, "a"], [gone, "b"]]},
            "translation": {
                "columns": ["city_id", "lang", "text"],
                "rows": [[5, "fr", "Lima"], [5, "es", "Lima"]],
            },
        },
    )
    assert answer.status_code == 200, answer.text
    answer = writer.push(
        [
            {"table": "tag", "key": [gone], "command": "d"},
            {"table": "translation", "key": [5, "es"], "command": "d"},
        ],
        last_version=1,
    )
    assert answer.status_code == 200, answer.text
    # One version at a time: the inserts' rows are read after the deletes.
    changes = reader.pull(limit=4).json()["changes"]
    assert changes["tag"]["values"] == [[kept], ["a"]]
    assert changes["tag"]["deleted"] == [[gone]]
    assert changes["translation"]["values"] == [[5], ["fr"], ["Lima"]]
    assert changes["translation"]["deleted"] == [[5], ["es"]]


# -- pages counted in rows ------------------------------------------------------------


def _rename(node: TestNode, times: int) -> None:
    """``times`` pushes, each an update of city 1."""
    for n in range(times):
        answer = node.push(
            [{"table": "city", "key": [1], "command": "u"}],
            {"city": {"columns": ["id", "name"], "rows": [[1, f"name {n}"]]}},
            last_version=node.last_version,
        )
        assert answer.status_code == 200, answer.text
        node.last_version = answer.json()["version"]


def test_many_updates_of_few_rows_travel_in_one_page(make_app: AppFactory) -> None:
    """A page holds at most its size of *rows*: city 1 updated ten times
    after three inserts is 13 operations of 3 rows, one page of 3."""
    with server_env(make_app, REFLECTSYNC_PULL_PAGE_SIZE=3) as server:
        writer, reader = server.node(), server.node()
        _cities(writer, 1, 2, 3, country=False)
        writer.last_version = 1
        _rename(writer, 10)
        answers = reader.pull_all()
        assert len(answers) == 1
        city = answers[0]["changes"]["city"]
        assert sorted(city["values"][0]) == [1, 2, 3]
        assert answers[0]["operations"] == 13
        assert answers[0]["total"] == 13
        assert "name 9" in city["values"][1]


def test_a_page_never_holds_more_rows_than_its_size(make_app: AppFactory) -> None:
    with server_env(make_app, REFLECTSYNC_PULL_PAGE_SIZE=3) as server:
        writer, reader = server.node(), server.node()
        _cities(writer, 1, 2, country=False)
        writer.last_version = 1
        _rename(writer, 4)
        _cities(writer, 4, 5, country=False)
        answers = reader.pull_all()
        rows = [len(a["changes"]["city"]["commands"]) for a in answers]
        # cities 1 and 2 with 1's four updates, then city 4: 3 rows; then 5.
        assert rows == [3, 1]
        assert [a["operations"] for a in answers] == [7, 1]
        ids = [i for a in answers for i in a["changes"]["city"]["values"][0]]
        assert sorted(ids) == [1, 2, 4, 5]


def test_a_page_reads_a_bounded_part_of_the_log(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However few rows the log's operations touch, a page reads at most
    SCAN_FACTOR times its size of them; the rest comes on the next page."""
    from flask_reflectsync.server import pull as pull_module

    monkeypatch.setattr(pull_module, "SCAN_FACTOR", 2)
    with server_env(make_app, REFLECTSYNC_PULL_PAGE_SIZE=3) as server:
        writer, reader = server.node(), server.node()
        _cities(writer, 1, country=False)
        writer.last_version = 1
        _rename(writer, 9)  # 10 operations of one row
        answers = reader.pull_all()
        assert [a["operations"] for a in answers] == [6, 4]
        assert answers[-1]["changes"]["city"]["values"][1] == ["name 8"]
