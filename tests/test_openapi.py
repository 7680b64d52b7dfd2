"""``GET <prefix>/openapi.json`` is a valid OpenAPI document, and what every
route really answers matches the response schemas it gives.

The document is validated by openapi-spec-validator; answers are checked
with jsonschema (which it brings) against the document itself, so the
``$ref`` s resolve exactly as a client generator would resolve them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator import validate as validate_spec

from flask_reflectsync.server.openapi import openapi_document
from flask_reflectsync.wire.repair import MEDIA_TYPE

from .conftest import AppFactory
from .http_server import ServerEnv, insert, server_env


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[ServerEnv]:
    with server_env(make_app) as found:
        found.env.sync.catalog_access(lambda: True)
        yield found


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class ResponseChecker:
    """Checks real answers against the document's response schemas."""

    def __init__(self, document: dict[str, Any], prefix: str) -> None:
        self.document = document
        self.prefix = prefix
        self.checked: set[tuple[str, str, str]] = set()

    def template(self, path: str) -> str:
        """The document's path template that ``path`` is an instance of."""
        parts = path.split("/")
        for template in self.document["paths"]:
            pattern = template.split("/")
            if len(pattern) == len(parts) and all(
                p == q or (p.startswith("{") and p.endswith("}"))
                for p, q in zip(pattern, parts, strict=True)
            ):
                return str(template)
        raise AssertionError(f"{path} is not in the document")

    def check(self, answer: httpx.Response) -> None:
        method = answer.request.method.lower()
        template = self.template(answer.request.url.path)
        responses = self.document["paths"][template][method]["responses"]
        status = str(answer.status_code)
        assert status in responses, (
            f"{method.upper()} {template} answered {status}, which the "
            f"document does not list ({sorted(responses)}): {answer.text[:200]}"
        )
        content = responses[status]["content"]
        media_type = answer.headers["content-type"].split(";")[0]
        assert media_type in ("application/json", MEDIA_TYPE)
        assert media_type in content
        pointer = _pointer(
            "paths", template, method, "responses", status, "content",
            media_type, "schema",
        )
        # The document is the root schema, so "#/components/..." resolves.
        validator = Draft202012Validator({**self.document, "$ref": pointer})
        if media_type == MEDIA_TYPE:  # the schema is each line's
            bodies = [json.loads(line) for line in answer.content.splitlines()]
        else:
            bodies = [answer.json()]
        errors = [e.message for b in bodies for e in validator.iter_errors(b)]
        assert not errors, (method, template, status, errors)
        self.checked.add((method, template, status))


def test_the_document_is_valid_openapi(server: ServerEnv) -> None:
    document = httpx.get(server.base + "/openapi.json").json()
    errors = [str(e) for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []
    validate_spec(document)
    # ... under another prefix too (what is served is built for the prefix).
    validate_spec(openapi_document("/api/v1/sync/"))


def test_every_route_answers_what_the_document_says(server: ServerEnv) -> None:
    document = httpx.get(server.base + "/openapi.json").json()
    checker = ResponseChecker(document, "/sync")
    node = server.node()
    check = checker.check
    check(node.register())
    check(node.client.post(server.base + "/register", json={"x": 1}))
    operation, payload = insert("country", {"id": 1, "name": "Peru"})
    check(node.push([operation], payload))
    check(node.push([{"table": "country"}]))
    check(node.push([operation], payload, last_version=0))  # conflicts: 409
    check(node.client.post(server.base + "/push", json={}))  # unsigned: 401
    check(node.pull(0))
    check(node.pull(-1))
    check(node.call("POST", "/changes", json={"protocol": 2, "since": 0, "wait": 0}))
    check(node.call("POST", "/changes", json={"protocol": 2, "since": -1}))
    check(node.call("POST", "/schema-check", json={"protocol": 2, "schema": {}}))
    check(node.call("POST", "/schema-check", json={"protocol": 2}))  # 400
    check(
        node.call(
            "POST", "/schema-check", json={"protocol": 2, "schema_digest": "0" * 16}
        )
    )  # 409 schema.describe
    check(node.repair())
    check(node.call("GET", "/repair"))  # from a node older than the stream: 400
    check(node.call("GET", "/query", params={"model": "country"}))
    check(node.call("GET", "/query", params={"model": "nope"}))
    check(node.call("GET", "/query", params={"model": "country", "limit": "x"}))
    check(httpx.get(server.base + "/openapi.json"))

    schemas = httpx.get(server.base + "/schemas")
    check(schemas)
    schema_id = schemas.json()["schemas"][0]["id"]
    tables = httpx.get(f"{server.base}/schemas/{schema_id}/tables")
    check(tables)
    check(httpx.get(f"{server.base}/schemas/{schema_id}/tables?include_deleted=1"))
    check(httpx.get(f"{server.base}/tables/{tables.json()['tables'][0]['id']}"))
    objects = httpx.get(f"{server.base}/schemas/{schema_id}/objects")
    check(objects)
    for listed in objects.json()["objects"][:1]:
        check(httpx.get(f"{server.base}/objects/{listed['id']}"))
    check(httpx.get(f"{server.base}/objects/999999"))
    check(httpx.get(f"{server.base}/schemas/999999/objects"))
    check(httpx.get(f"{server.base}/schemas/999999/tables"))
    check(httpx.get(f"{server.base}/tables/999999"))
    server.env.sync.catalog_access(lambda: False)
    check(httpx.get(server.base + "/schemas"))

    # Every documented operation was seen answering 200.
    operations = {
        (method, template)
        for template, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    seen = {(m, t) for m, t, s in checker.checked if s == "200"}
    if not objects.json()["objects"]:  # SQLite has no schema-level objects
        operations.discard(("get", "/sync/objects/{object_id}"))
    assert seen == operations
    node.close()


def test_catalog_answers_with_every_object_kind_match_the_document(
    server: ServerEnv, database_url: str
) -> None:
    """A table with CHECK constraints, indexes and a trigger, and a view with
    its query, as served over HTTP, fit the catalog schemas (issue 18)."""
    import sqlalchemy as sa

    backend = sa.make_url(database_url).get_backend_name()
    trigger = {
        "postgresql": "CREATE TRIGGER rs_api_tg BEFORE INSERT ON rs_api"
        " FOR EACH ROW EXECUTE FUNCTION rs_api_fn()",
        "mysql": "CREATE TRIGGER rs_api_tg BEFORE INSERT ON rs_api"
        " FOR EACH ROW SET NEW.price = COALESCE(NEW.price, 0)",
        "sqlite": "CREATE TRIGGER rs_api_tg BEFORE INSERT ON rs_api"
        " BEGIN SELECT 1; END",
    }[backend]
    other = sa.create_engine(database_url)
    statements = [
        "CREATE TABLE rs_api (id INTEGER PRIMARY KEY, price INTEGER,"
        " code VARCHAR(10), CONSTRAINT rs_api_positive CHECK (price > 0))",
        "CREATE INDEX rs_api_code ON rs_api (code)",
        "CREATE VIEW rs_api_view AS SELECT id, price FROM rs_api",
        trigger,
    ]
    if backend == "postgresql":
        statements.insert(0, "CREATE OR REPLACE FUNCTION rs_api_fn() RETURNS"
                          " trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    try:
        with other.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
        document = httpx.get(server.base + "/openapi.json").json()
        checker = ResponseChecker(document, "/sync")
        schemas = httpx.get(server.base + "/schemas").json()["schemas"]
        (schema_id,) = [
            s["id"] for s in schemas
            if backend != "postgresql" or s["name"] == "public"
        ]
        tables = httpx.get(f"{server.base}/schemas/{schema_id}/tables")
        checker.check(tables)
        by_name = {t["name"]: t for t in tables.json()["tables"]}
        table = by_name["rs_api"]
        assert table["check_constraints"][0]["name"] == "rs_api_positive"
        assert table["indexes"][0]["name"] == "rs_api_code"
        assert table["triggers"][0]["name"] == "rs_api_tg"
        assert by_name["rs_api_view"]["definition"]
        for name in ("rs_api", "rs_api_view"):
            checker.check(httpx.get(f"{server.base}/tables/{by_name[name]['id']}"))
    finally:
        with other.begin() as connection:
            connection.exec_driver_sql("DROP VIEW IF EXISTS rs_api_view")
            connection.exec_driver_sql("DROP TABLE IF EXISTS rs_api")
            if backend == "postgresql":
                connection.exec_driver_sql("DROP FUNCTION IF EXISTS rs_api_fn()")
        other.dispose()
