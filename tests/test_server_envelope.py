"""Every answer under the prefix is the JSON envelope, and openapi.json
describes the routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flask_reflectsync.blueprints.api import http_error_code
from flask_reflectsync.errors import ValidationError
from flask_reflectsync.wire.messages import SCHEMAS, validate
from flask_reflectsync.wire.repair import MEDIA_TYPE

from .conftest import AppFactory
from .http_server import REPAIR_ACCEPT, ServerEnv, TestNode, server_env
from .test_error_codes import documented_codes

SYNC_ROUTES = {
    "/register": "POST",
    "/push": "POST",
    "/pull": "POST",
    "/changes": "POST",
    "/repair": "GET",
    "/query": "GET",
}


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        yield found


def _assert_envelope(answer: httpx.Response) -> dict[str, Any]:
    if answer.headers["content-type"] == MEDIA_TYPE:  # the repair stream
        body = json.loads(answer.content.split(b"\n", 1)[0])  # its header line
        assert body["ok"] is True and answer.status_code == 200
        return body  # type: ignore[no-any-return]
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert isinstance(body, dict)
    if answer.status_code < 400:
        assert body["ok"] is True
    else:
        assert body["ok"] is False
        assert body["status"] == answer.status_code
        assert isinstance(body["error"], str) and body["error"]
        fields = {"conflicts", "table", "key", "column", "push_id"}
        assert set(body) <= {"ok", "error", "status", "code", *fields}
        assert set(body) <= set(SCHEMAS["Error"]["properties"])
        assert set(SCHEMAS["Error"]["required"]) <= set(body)
        _assert_documented(body["code"], answer.status_code)
    return body


def _assert_documented(code: str, status: int) -> None:
    """``code`` is in the error-code table of docs/protocol.rst, with this
    status; an ``http.*`` code not listed follows the ``http.<reason>`` rule."""
    table = documented_codes()
    if code in table:
        assert table[code] == str(status), (code, status)
    else:
        assert code == http_error_code(status), (code, status)


#: The code each refusal of _requests answers with.
CODES = {
    "register bad": "request.invalid",
    "register not json": "request.invalid",
    "push unsigned": "auth.unsigned",
    "push invalid": "request.invalid",
    "push conflict": "push.unique_violation",
    "push invalid value": "push.invalid_value",
    "push id reused": "push.id_reused",
    "pull unsigned": "auth.unsigned",
    "pull invalid": "request.invalid",
    "pull expired": "auth.expired",
    "pull bad nonce": "auth.malformed",
    "pull replayed": "auth.replayed",
    "pull altered": "auth.unknown_or_bad_signature",
    "pull ahead": "pull.ahead_of_server",
    "changes invalid": "request.invalid",
    "register protocol 1": "request.protocol_mismatch",
    "repair unsigned": "auth.unsigned",
    "repair by an old node": "request.protocol_mismatch",
    "query unknown": "query.unknown_model",
    "query unsigned": "auth.unsigned",
    "not found": "http.not_found",
    "prefix itself": "http.not_found",
    "openapi wrong method": "http.method_not_allowed",
    **{f"{route} wrong method": "http.method_not_allowed" for route in SYNC_ROUTES},
}


def _requests(node: TestNode) -> list[tuple[str, httpx.Request, int]]:
    """(label, request, expected status) for every route and failure kind."""
    push = {
        "protocol": 2,
        "push_id": "e",
        "last_version": 0,
        "operations": [{"table": "country", "key": [1], "command": "i"}],
        "payloads": {"country": {"columns": ["id", "name"], "rows": [[1, "Peru"]]}},
    }
    signed = node.sign
    pull = {"protocol": 2, "since": 0}
    nonce = "the-same-nonce-twice"
    # Signed for one body, sent with another.
    altered = node.build("POST", "/pull", json={**pull, "limit": 1})
    altered.headers.update(
        {
            name: value
            for name, value in signed(
                node.build("POST", "/pull", json=pull)
            ).headers.items()
            if name.lower().startswith("x-reflectsync")
        }
    )
    return [
        ("register ok", node.build("POST", "/register", json={"protocol": 2}), 200),
        ("register bad", node.build("POST", "/register", json={"x": 1}), 400),
        ("register not json", node.build("POST", "/register", content=b"{"), 400),
        ("push ok", signed(node.build("POST", "/push", json=push)), 200),
        ("push unsigned", node.build("POST", "/push", json=push), 401),
        ("push invalid", signed(node.build("POST", "/push", json={"a": 1})), 400),
        (
            "push conflict",
            signed(node.build("POST", "/push", json={**push, "push_id": "f"})),
            409,
        ),
        (
            "pull ok",
            signed(node.build("POST", "/pull", json={"protocol": 2, "since": 0})),
            200,
        ),
        (
            "push invalid value",
            signed(
                node.build(
                    "POST",
                    "/push",
                    json={
                        **push,
                        "push_id": "g",
                        "payloads": {
                            "country": {"columns": ["id", "name"], "rows": [[1, 5]]}
                        },
                    },
                )
            ),
            422,
        ),
        (
            "push id reused",
            signed(
                node.build(
                    "POST", "/push", json={**push, "operations": [], "payloads": {}}
                )
            ),
            409,
        ),
        ("pull unsigned", node.build("POST", "/pull", json={"since": 0}), 401),
        (
            "pull expired",
            signed(node.build("POST", "/pull", json=pull), timestamp=1),
            401,
        ),
        (
            "pull bad nonce",
            signed(node.build("POST", "/pull", json=pull), nonce="short"),
            401,
        ),
        ("pull once", signed(node.build("POST", "/pull", json=pull), nonce=nonce), 200),
        (
            "pull replayed",
            signed(node.build("POST", "/pull", json=pull), nonce=nonce),
            401,
        ),
        ("pull altered", altered, 401),
        (
            "pull ahead",
            signed(node.build("POST", "/pull", json={**pull, "since": 10**6})),
            400,
        ),
        (
            "register protocol 1",
            node.build("POST", "/register", json={"protocol": 1}),
            400,
        ),
        ("pull invalid", signed(node.build("POST", "/pull", json={"since": -1})), 400),
        (
            "changes invalid",
            signed(node.build("POST", "/changes", json={"since": 0, "wait": -1})),
            400,
        ),
        ("repair unsigned", node.build("GET", "/repair"), 401),
        ("repair ok", signed(node.build("GET", "/repair", headers=REPAIR_ACCEPT)), 200),
        ("repair by an old node", signed(node.build("GET", "/repair")), 400),
        (
            "query ok",
            signed(node.build("GET", "/query", params={"model": "city"})),
            200,
        ),
        (
            "query unknown",
            signed(node.build("GET", "/query", params={"model": "nope"})),
            404,
        ),
        ("query unsigned", node.build("GET", "/query", params={"model": "x"}), 401),
        ("not found", node.build("GET", "/nowhere"), 404),
        ("prefix itself", node.build("GET", ""), 404),
        ("openapi wrong method", node.build("POST", "/openapi.json"), 405),
        *[
            (
                f"{route} wrong method",
                node.build("DELETE" if method == "GET" else "GET", route),
                405,
            )
            for route, method in SYNC_ROUTES.items()
        ],
    ]


def test_every_route_answers_the_envelope(server: ServerEnv) -> None:
    node = server.node()
    seen_routes = set()
    seen_codes = set()
    for label, request, status in _requests(node):
        answer = node.send(request)
        assert answer.status_code == status, (label, answer.text)
        body = _assert_envelope(answer)
        if status >= 400:
            assert body["code"] == CODES[label], (label, body)
            seen_codes.add(body["code"])
        seen_routes.add(request.url.path.removeprefix("/sync"))
    assert set(SYNC_ROUTES) <= seen_routes
    assert seen_codes == set(CODES.values())


def test_successful_answers_match_their_schemas(server: ServerEnv) -> None:
    node = server.node()
    message = node.register().json()
    validate(message, "RegisterResponse")
    for route, schema, kwargs in [
        (
            "/push",
            "PushResponse",
            {
                "json": {
                    "protocol": 2,
                    "push_id": "s",
                    "last_version": 0,
                    "operations": [],
                }
            },
        ),
        ("/pull", "PullResponse", {"json": {"protocol": 2, "since": 0}}),
        (
            "/changes",
            "ChangesResponse",
            {"json": {"protocol": 2, "since": 0, "wait": 0}},
        ),
    ]:
        validate(node.call("POST", route, **kwargs).json(), schema)
    for line in node.repair().content.splitlines():
        validate(json.loads(line), "RepairResponse")
    with pytest.raises(ValidationError, match="exactly one of 4 forms"):
        validate({"table": "city", "rows": [[1]]}, "RepairResponse")
    validate(
        node.call("GET", "/query", params={"model": "city"}).json(), "QueryResponse"
    )


def test_the_rest_of_the_app_keeps_its_own_error_pages(server: ServerEnv) -> None:
    answer = httpx.get(server.url + "/elsewhere")
    assert answer.status_code == 404
    assert not answer.headers["content-type"].startswith("application/json")


def test_openapi_describes_the_routes_and_messages(server: ServerEnv) -> None:
    answer = httpx.get(server.base + "/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for route, method in SYNC_ROUTES.items():
        operation = paths["/sync" + route][method.lower()]
        assert operation["summary"]
        assert "200" in operation["responses"]
        for status, response in operation["responses"].items():
            if status != "200":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}
    assert SCHEMAS.items() <= document["components"]["schemas"].items()
    assert "security" not in paths["/sync/register"]["post"]
    assert "security" in paths["/sync/push"]["post"]


def test_openapi_follows_the_url_prefix(make_app: AppFactory) -> None:
    with server_env(make_app, REFLECTSYNC_URL_PREFIX="/api/v1/sync") as server:
        document = httpx.get(server.url + "/api/v1/sync/openapi.json").json()
        assert "/api/v1/sync/push" in document["paths"]


CATALOG_ROUTES = ["/schemas", "/schemas/{schema_id}/tables", "/tables/{table_id}"]


def test_catalog_routes_answer_the_envelope_and_their_schemas(
    server: ServerEnv,
) -> None:
    allowed = {"value": True}
    server.env.sync.catalog_access(lambda: allowed["value"])
    node = server.node()

    schemas = node.call("GET", "/schemas")
    assert schemas.status_code == 200
    body = _assert_envelope(schemas)
    validate_catalog(body, "SchemasResponse")
    schema_id = body["schemas"][0]["id"]
    tables = node.call("GET", f"/schemas/{schema_id}/tables")
    body = _assert_envelope(tables)
    validate_catalog(body, "TablesResponse")
    table_id = body["tables"][0]["id"]
    table = node.call("GET", f"/tables/{table_id}")
    validate_catalog(_assert_envelope(table), "TableResponse")

    for path, status, code in [
        ("/schemas/999999/tables", 404, "not_found"),
        ("/tables/999999", 404, "not_found"),
        ("/tables/not-a-number", 404, "http.not_found"),
    ]:
        answer = node.call("GET", path)
        assert answer.status_code == status, (path, answer.text)
        assert _assert_envelope(answer)["code"] == code
    for path in ("/schemas", f"/tables/{table_id}"):
        answer = node.call("POST", path)
        assert answer.status_code == 405
        assert _assert_envelope(answer)["code"] == "http.method_not_allowed"

    allowed["value"] = False
    refused = node.call("GET", "/schemas")
    assert refused.status_code == 403
    assert _assert_envelope(refused)["code"] == "forbidden"


def validate_catalog(body: dict[str, Any], name: str) -> None:
    """Check a catalog answer against the schema the OpenAPI document gives."""
    from flask_reflectsync.server.openapi import CATALOG_SCHEMAS

    def check(value: Any, schema: dict[str, Any]) -> None:
        if "$ref" in schema:
            schema = CATALOG_SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
        kinds = schema.get("type")
        if kinds == "object":
            assert isinstance(value, dict)
            assert set(schema.get("required", ())) <= set(value), (name, value)
            for key, item in value.items():
                if key in schema.get("properties", {}):
                    check(item, schema["properties"][key])
        elif kinds == "array":
            assert isinstance(value, list)
            for item in value:
                check(item, schema.get("items", {}))

    check(body, CATALOG_SCHEMAS[name])


def test_openapi_describes_the_catalog_routes(server: ServerEnv) -> None:
    document = httpx.get(server.base + "/openapi.json").json()
    for route in CATALOG_ROUTES:
        operation = document["paths"]["/sync" + route]["get"]
        assert operation["summary"]
        assert "security" not in operation  # no node signatures
        assert "403" in operation["responses"]
