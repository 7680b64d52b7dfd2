"""Bad input over real HTTP: every case answers a 4xx envelope naming what
was wrong, never a 5xx, and leaves the database as it was.

One table of cases, run on every backend (SQLite, and PostgreSQL or MariaDB
through ``REFLECTSYNC_TEST_DATABASE_URL``): headers, bodies, nesting,
integers beyond the column type, text no database stores, query and pull
parameters past the 64-bit range, catalog ids past the 32-bit range.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from flask_reflectsync.wire.signing import HEADER_NODE, HEADER_TIMESTAMP

from .conftest import AppFactory
from .http_server import (
    ServerEnv,
    TestNode,
    database_state,
    insert,
    server_env,
    without_nonces,
)

INT_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1
CITY_COLUMNS = ["id", "name", "population", "country_id"]


@dataclass(frozen=True)
class Case:
    """One bad request.

    :param build: makes the request from a registered node.
    :param status: the answer's status.
    :param error: a piece of the error sentence.
    :param code: the answer's error code (see docs/protocol.rst).
    :param fields: other envelope fields the answer must carry.
    :param signed: whether the request passes authentication (which records
        its nonce and the node's last_seen_at, and nothing else).
    """

    build: Callable[[TestNode], httpx.Request]
    status: int
    error: str
    fields: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    signed: bool = True


def _push_body(
    operations: list[dict[str, Any]], payloads: dict[str, Any] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "protocol": 2,
        "push_id": "bad-input",
        "last_version": 0,
        "operations": operations,
    }
    if payloads is not None:
        message["payloads"] = payloads
    return message


def _push(operations: list[dict[str, Any]], payloads: Any = None) -> Any:
    def build(node: TestNode) -> httpx.Request:
        message = _push_body(operations, payloads)
        return node.sign(node.build("POST", "/push", json=message))

    return build


def _insert(table: str, row: dict[str, Any]) -> Any:
    operation, payloads = insert(table, row)
    return _push([operation], payloads)


def _city_value(column: str, value: Any) -> Any:
    row = {"id": 5, "name": "Lima", "population": 1, "country_id": None}
    row[column] = value
    return _insert("city", row)


def _invalid(column: str, key: list[Any], table: str = "city") -> dict[str, Any]:
    return {"table": table, "key": key, "column": column}


def _delete(table: str, key: list[Any]) -> Any:
    return _push([{"table": table, "key": key, "command": "d"}])


def _signed(method: str, route: str, **kwargs: Any) -> Any:
    def build(node: TestNode) -> httpx.Request:
        return node.sign(node.build(method, route, **kwargs))

    return build


def _raw_body(route: str, content: bytes, *, signed: bool = True) -> Any:
    def build(node: TestNode) -> httpx.Request:
        request = node.build("POST", route, content=content)
        return node.sign(request) if signed else request

    return build


def _header(name: str, value: bytes) -> Any:
    """A well-signed pull whose header ``name`` is replaced by raw bytes
    (httpx would send text as UTF-8; servers read headers as Latin-1)."""

    def build(node: TestNode) -> httpx.Request:
        request = node.sign(
            node.build("POST", "/pull", json={"protocol": 2, "since": 0})
        )
        kept = [
            (k, v) for k, v in request.headers.raw if k.lower() != name.lower().encode()
        ]
        request.headers = httpx.Headers([*kept, (name.encode(), value)])
        return request

    return build


def _nested(depth: int) -> bytes:
    return b'{"protocol": 2, "info": ' + b"[" * depth + b"]" * depth + b"}"


CASES: dict[str, Case] = {
    # -- headers (refused before any credential is checked) -------------------
    "timestamp of Latin-1 digits": Case(
        _header(HEADER_TIMESTAMP, "²".encode("latin-1")),
        401,
        "signature headers are malformed",
        code="auth.malformed",
        signed=False,
    ),
    "node header of Latin-1 digits": Case(
        _header(HEADER_NODE, "¹²³".encode("latin-1")),
        401,
        "signature headers are malformed",
        code="auth.malformed",
        signed=False,
    ),
    "node header 2**31": Case(
        _header(HEADER_NODE, str(2**31).encode()),
        401,
        "Unknown node",
        code="auth.unknown_or_bad_signature",
        signed=False,
    ),
    "node header of 30 digits": Case(
        _header(HEADER_NODE, b"9" * 30),
        401,
        "signature headers are malformed",
        code="auth.malformed",
        signed=False,
    ),
    # -- bodies -----------------------------------------------------------------
    "JSON nested 100,000 deep, unsigned": Case(
        _raw_body("/register", _nested(100_000), signed=False),
        400,
        "nests arrays and objects more than 64 deep",
        code="request.invalid",
        signed=False,
    ),
    "JSON nested 100,000 deep, signed push": Case(
        _raw_body("/push", b"[" * 100_000 + b"]" * 100_000),
        400,
        "more than 64 deep",
        code="request.invalid",
    ),
    "NaN is not JSON": Case(
        _raw_body("/register", b'{"protocol": 2, "info": {"x": NaN}}', signed=False),
        400,
        "not valid JSON",
        code="request.invalid",
        signed=False,
    ),
    "UTF-16 is not UTF-8": Case(
        _raw_body("/register", '{"protocol": 2}'.encode("utf-16"), signed=False),
        400,
        "not UTF-8",
        code="request.invalid",
        signed=False,
    ),
    "a node name with NUL": Case(
        _raw_body("/register", b'{"protocol": 2, "name": "a\\u0000b"}', signed=False),
        400,
        "message.name cannot hold NUL",
        code="request.invalid",
        signed=False,
    ),
    "a node name with a lone surrogate": Case(
        _raw_body("/register", b'{"protocol": 2, "name": "a\\ud800"}', signed=False),
        400,
        "unpaired surrogates",
        code="request.invalid",
        signed=False,
    ),
    # -- values beyond the column type --------------------------------------------
    "2**31 in an Integer": Case(
        _city_value("population", 2**31),
        422,
        "column 'population' holds integers from -2147483648 to 2147483647",
        _invalid("population", [5]),
        code="push.invalid_value",
    ),
    "-2**31 - 1 in an Integer": Case(
        _city_value("population", -(2**31) - 1),
        422,
        "holds integers from",
        _invalid("population", [5]),
        code="push.invalid_value",
    ),
    "10**20 in an Integer": Case(
        _city_value("population", 10**20),
        422,
        "got 100000000000000000000",
        _invalid("population", [5]),
        code="push.invalid_value",
    ),
    "a 4,000-digit number": Case(
        _city_value("population", int("7" * 4000)),
        422,
        "got an integer of 4000 digits",
        _invalid("population", [5]),
        code="push.invalid_value",
    ),
    "2**31 as an Integer key": Case(
        _city_value("id", 2**31),
        422,
        "column 'id' holds integers",
        _invalid("id", [2**31]),
        code="push.invalid_value",
    ),
    "NUL in text": Case(
        _city_value("name", "Li\x00ma"),
        422,
        "column 'name' cannot hold NUL characters",
        _invalid("name", [5]),
        code="push.invalid_value",
    ),
    "a lone surrogate in text": Case(
        _city_value("name", "Lima \ud83d"),
        422,
        "unpaired surrogates",
        _invalid("name", [5]),
        code="push.invalid_value",
    ),
    "a decimal beyond Numeric(14, 4)": Case(
        _insert("sample", {"id": 3, "amount": "1" + "0" * 12}),
        422,
        "column 'amount' holds at most 10 digits before the point",
        _invalid("amount", [3], "sample"),
        code="push.invalid_value",
    ),
    "NUL in a text key": Case(
        _delete("translation", [1, "e\x00s"]),
        422,
        "column 'lang' cannot hold NUL",
        _invalid("lang", [1, "e\x00s"], "translation"),
        code="push.invalid_value",
    ),
    "delete key 2**63": Case(
        _delete("city", [2**63]),
        422,
        "column 'id' holds integers",
        _invalid("id", [2**63]),
        code="push.invalid_value",
    ),
    "delete key 2**31": Case(
        _delete("city", [2**31]),
        422,
        "column 'id' holds integers",
        _invalid("id", [2**31]),
        code="push.invalid_value",
    ),
    "NUL in a table name": Case(
        _delete("ci\x00ty", [1]),
        400,
        "message.operations[0].table cannot hold NUL",
        code="request.invalid",
    ),
    "last_version 2**63": Case(
        _signed("POST", "/push", json={**_push_body([]), "last_version": 2**63}),
        400,
        "last_version must be at most 9223372036854775807",
        code="request.invalid",
    ),
    # -- pull ---------------------------------------------------------------------
    "pull cursor of 19 nines": Case(
        _signed(
            "POST",
            "/pull",
            json={"protocol": 2, "since": 0, "cursor": "9" * 19 + ":1"},
        ),
        400,
        "points past any version",
        code="request.invalid",
    ),
    "pull since 10**20": Case(
        _signed("POST", "/pull", json={"protocol": 2, "since": 10**20}),
        400,
        "message.since must be at most",
        code="request.invalid",
    ),
    # -- query --------------------------------------------------------------------
    "query offset 2**63": Case(
        _signed("GET", "/query", params={"model": "city", "offset": str(2**63)}),
        400,
        "offset must be an integer from 0 to 9223372036854775807",
        code="request.invalid",
    ),
    "query offset of Arabic-Indic digits": Case(
        _signed("GET", "/query", params={"model": "city", "offset": "١٢"}),
        400,
        "offset must be an integer",
        code="request.invalid",
    ),
    "query id filter 2**31": Case(
        _signed("GET", "/query", params={"model": "city", "id": str(2**31)}),
        400,
        "filter id: column 'id' holds integers from",
        code="request.invalid",
    ),
    "query id__in with 2**31": Case(
        _signed("GET", "/query", params={"model": "city", "id__in": f"1,{2**31}"}),
        400,
        "column 'id' holds integers",
        code="request.invalid",
    ),
    "query id__gt of 30 digits": Case(
        _signed("GET", "/query", params={"model": "city", "id__gt": "9" * 30}),
        400,
        "column 'id' holds integers",
        code="request.invalid",
    ),
    "query filter with NUL": Case(
        _signed("GET", "/query", params={"model": "city", "name": "Li\x00ma"}),
        400,
        "filter name: column 'name' cannot hold NUL",
        code="request.invalid",
    ),
    # -- catalog ------------------------------------------------------------------
    "catalog schema id 2**31": Case(
        _signed("GET", f"/schemas/{2**31}/tables"),
        404,
        f"There is no schema with id {2**31}",
        code="not_found",
        signed=False,
    ),
    "catalog table id 10**20": Case(
        _signed("GET", f"/tables/{10**20}"),
        404,
        f"There is no table with id {10**20}",
        code="not_found",
        signed=False,
    ),
    "catalog include_deleted=maybe": Case(
        _signed("GET", "/schemas", params={"include_deleted": "maybe"}),
        400,
        "include_deleted must be 0 or 1, not 'maybe'",
        code="request.invalid",
        signed=False,
    ),
}


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        found.env.sync.catalog_access(lambda: True)
        yield found


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_bad_input_is_a_4xx_envelope_and_writes_nothing(
    server: ServerEnv, name: str
) -> None:
    case = CASES[name]
    node = server.node()
    request = case.build(node)
    before = database_state(server.env)

    answer = node.send(request)

    assert answer.status_code == case.status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["ok"] is False and body["status"] == case.status
    assert case.error in body["error"], body["error"]
    assert body["code"] == case.code
    assert {k: body.get(k) for k in case.fields} == case.fields
    after = database_state(server.env)
    if case.signed:
        before, after = without_nonces(before), without_nonces(after)
    assert after == before


def test_the_cases_are_valid_without_their_flaw(server: ServerEnv) -> None:
    """The same requests with a good value succeed: each case fails for the
    reason it names, not for another."""
    node = server.node()
    for number, build in enumerate(
        (
            _city_value("population", INT_MAX),
            _insert("city", {"id": 6, "name": "Lima \U0001f600", "population": 1}),
            _insert("sample", {"id": 3, "amount": "9" * 10 + ".9999"}),
            _delete("city", [INT_MAX]),
            _signed("GET", "/query", params={"model": "city", "id": str(INT_MAX)}),
            _signed(
                "GET", "/query", params={"model": "city", "offset": str(BIGINT_MAX)}
            ),
        )
    ):
        request = build(node)
        if request.url.path.endswith("/push"):  # a new push id each time
            message = {**json.loads(request.content), "push_id": f"ok-{number}"}
            request = node.sign(node.build("POST", "/push", json=message))
        answer = node.send(request)
        assert answer.status_code == 200, (request.url, answer.text)


# -- bodies sent in chunks, and the body limit on every Flask -------------------


def _chunks(body: bytes, size: int = 500) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.fixture
def small_server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app, REFLECTSYNC_MAX_BODY_SIZE=2000) as found:
        yield found


@pytest.mark.parametrize("route", ["/register", "/push"])
def test_a_chunked_body_over_the_limit_is_refused_not_truncated(
    small_server: ServerEnv, route: str
) -> None:
    """No Content-Length to refuse it by: the server must count what it reads."""
    node = small_server.node()
    rows = [[n, f"city {n}", n, None] for n in range(100)]
    message = (
        {"protocol": 2, "name": "x" * 100, "info": {"pad": "y" * 5000}}
        if route == "/register"
        else _push_body(
            [{"table": "city", "key": [n], "command": "i"} for n in range(100)],
            {"city": {"columns": CITY_COLUMNS, "rows": rows}},
        )
    )
    body = json.dumps(message).encode()
    assert len(body) > 2000
    headers = {"Content-Type": "application/json"}
    if route == "/push":
        signed = node.sign(node.build("POST", route, content=body))
        headers.update({k: v for k, v in signed.headers.items() if k.startswith("x-")})
    before = database_state(small_server.env)

    answer = node.client.post(
        small_server.base + route, content=_chunks(body), headers=headers
    )

    assert answer.status_code == 413, answer.text
    assert "at most 2000 bytes" in answer.json()["error"]
    after = database_state(small_server.env)
    assert without_nonces(after) == without_nonces(before)


def test_a_chunked_body_within_the_limit_is_served(small_server: ServerEnv) -> None:
    node = small_server.node()
    body = json.dumps({"protocol": 2, "name": "chunked"}).encode()
    answer = node.client.post(
        small_server.base + "/register",
        content=_chunks(body, 7),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["node"]["name"] == "chunked"
