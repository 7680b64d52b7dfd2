"""The OpenAPI document of the extension's routes: the sync routes, built from
the message schemas, and the reflection catalog routes."""

from __future__ import annotations

from typing import Any

from ..reflection.snapshot import PRIVILEGES
from ..wire.messages import PROTOCOL_VERSION, SCHEMAS
from ..wire.repair import MEDIA_TYPE as REPAIR_MEDIA_TYPE
from ..wire.signing import HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP

_SIGNED: dict[str, list[str]] = {
    name: [] for name in ("node", "timestamp", "nonce", "signature")
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "The message is malformed; nothing was written.",
        401: "Unsigned, mis-signed, expired or replayed request.",
        403: "Registration refused, or the node was revoked (code "
        "auth.revoked).",
        404: "Unknown model.",
        410: "The node was retired (code fleet.retired): repair it.",
        409: "The push conflicts with changes the node has not pulled, or "
        "breaks a unique constraint, or reuses a push id for other content "
        "(code push.id_reused); nothing was written.",
        413: "The body is larger than REFLECTSYNC_MAX_BODY_SIZE.",
        422: "A value the server's column cannot store (code push.invalid_value), "
        "or a key in the server's reserve (code push.invalid_key); the "
        "envelope names table, key and column. Nothing was written.",
        429: "Too many registrations or badly signed requests from this "
        "address in the last minute; wait Retry-After seconds.",
        503: "The database is busy; retry the same request.",
    }
    return {
        str(status): {"description": reasons[status], "content": _json("Error")}
        for status in statuses
    }


def _operation(
    summary: str,
    answer: str,
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    signed: bool = True,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "Success.", "content": _json(answer)},
            **_errors(*errors),
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if signed:
        operation["security"] = [_SIGNED]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _repair_operation(errors: tuple[int, ...]) -> dict[str, Any]:
    operation = _operation(
        "The full content of every tracked table, streamed as newline-delimited "
        "JSON; the request must name application/x-ndjson in Accept.",
        "RepairResponse",
        (400, *errors),
    )
    operation["responses"]["200"]["content"] = {
        REPAIR_MEDIA_TYPE: {"schema": _ref("RepairResponse")}
    }
    operation["responses"]["400"]["description"] = (
        "The request does not accept application/x-ndjson (a node older than "
        "the repair stream): a protocol mismatch."
    )
    # (OpenAPI ignores an Accept header parameter: the rule is stated in
    # the summary and the 400's description.)
    return operation


_STAMP = {"type": "string", "description": "ISO 8601, UTC."}
_TEXT_OR_NULL = {"type": ["string", "null"]}

#: Schemas of the catalog answers (``GET /schemas`` and below).
CATALOG_SCHEMAS: dict[str, Any] = {
    "CatalogSchema": {
        "type": "object",
        "required": ["id", "oid", "name", "last_synced", "deleted"],
        "properties": {
            "id": {"type": "integer"},
            "oid": {"type": "string", "description": "The backend's identity."},
            "name": {"type": "string"},
            "comment": _TEXT_OR_NULL,
            "last_synced": _STAMP,
            "deleted": {"type": "boolean"},
        },
    },
    "CatalogColumn": {
        "type": "object",
        "required": ["id", "oid", "name", "position", "type", "nullable"],
        "properties": {
            "id": {"type": "integer"},
            "oid": {"type": "string"},
            "name": {"type": "string"},
            "position": {"type": "integer"},
            "type": {"type": "string"},
            "nullable": {"type": "boolean"},
            "default": _TEXT_OR_NULL,
            "primary_key": {"type": "boolean"},
            "comment": _TEXT_OR_NULL,
            "last_synced": _STAMP,
            "deleted": {"type": "boolean"},
        },
    },
    "CatalogTable": {
        "type": "object",
        "required": [
            "id",
            "schema_id",
            "oid",
            "name",
            "kind",
            "last_synced",
            "deleted",
        ],
        "properties": {
            "id": {"type": "integer"},
            "schema_id": {"type": "integer"},
            "schema": {"type": "string"},
            "oid": {"type": "string"},
            "name": {"type": "string"},
            "kind": {
                "type": "string",
                "description": "table, view, materialized_view, "
                "partitioned_table or foreign_table.",
            },
            "comment": _TEXT_OR_NULL,
            "primary_key": {"type": "array", "items": {"type": "string"}},
            "foreign_keys": {"type": "array", "items": {"type": "object"}},
            "unique_constraints": {"type": "array", "items": {"type": "object"}},
            "last_synced": _STAMP,
            "deleted": {"type": "boolean"},
            "columns": {
                "type": "array",
                "items": _ref("CatalogColumn"),
                "description": "Only in GET /tables/<id>.",
            },
            "check_constraints": {
                "type": "array", "items": _ref("CatalogCheckConstraint"),
            },
            "indexes": {
                "type": "array",
                "items": _ref("CatalogIndex"),
                "description": "Not those behind the primary key and the unique "
                "constraints.",
            },
            "definition": {
                "type": ["string", "null"],
                "description": "A view's or materialized view's query; null for "
                "tables.",
            },
            "triggers": {"type": "array", "items": _ref("CatalogTrigger")},
            "privileges": {
                "type": ["array", "null"],
                "items": {"type": "string", "enum": list(PRIVILEGES)},
                "description": "What the role the app connects as may do with "
                "it; null where the backend has no privileges (SQLite).",
            },
        },
    },
    "CatalogCheckConstraint": {
        "type": "object",
        "required": ["name", "expression"],
        "properties": {"name": _TEXT_OR_NULL, "expression": {"type": "string"}},
    },
    "CatalogIndex": {
        "type": "object",
        "required": ["name", "columns", "unique", "predicate"],
        "properties": {
            "name": _TEXT_OR_NULL,
            "columns": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Column names, or expressions as the database "
                "spells them.",
            },
            "unique": {"type": "boolean"},
            "predicate": {
                "type": ["string", "null"],
                "description": "A partial index's WHERE condition.",
            },
        },
    },
    "CatalogTrigger": {
        "type": "object",
        "required": ["name", "timing", "events", "definition"],
        "properties": {
            "name": {"type": "string"},
            "timing": {"type": "string", "enum": ["BEFORE", "AFTER", "INSTEAD OF"]},
            "events": {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": ["INSERT", "UPDATE", "DELETE", "TRUNCATE"],
                },
            },
            "definition": {"type": "string"},
        },
    },
    "CatalogObject": {
        "type": "object",
        "required": ["id", "schema_id", "oid", "name", "kind", "details",
                     "last_synced", "deleted"],
        "properties": {
            "id": {"type": "integer"},
            "schema_id": {"type": "integer"},
            "schema": {"type": "string"},
            "oid": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["enum", "domain", "sequence"]},
            "details": {
                "type": "object",
                "description": "enum: labels; domain: type, nullable, default, "
                "check_constraints; sequence: type, start, increment, minimum, "
                "maximum (numbers as text), cycle, owner, owned_by.",
            },
            "last_synced": _STAMP,
            "deleted": {"type": "boolean"},
        },
    },
    "ObjectsResponse": {
        "type": "object",
        "required": ["ok", "objects"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "objects": {"type": "array", "items": _ref("CatalogObject")},
        },
    },
    "ObjectResponse": {
        "type": "object",
        "required": ["ok", "object"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "object": _ref("CatalogObject"),
        },
    },
    "SchemasResponse": {
        "type": "object",
        "required": ["ok", "schemas"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "schemas": {"type": "array", "items": _ref("CatalogSchema")},
        },
    },
    "TablesResponse": {
        "type": "object",
        "required": ["ok", "tables"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "tables": {"type": "array", "items": _ref("CatalogTable")},
        },
    },
    "TableResponse": {
        "type": "object",
        "required": ["ok", "table"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "table": _ref("CatalogTable"),
        },
    },
}


def _catalog_paths(base: str) -> dict[str, Any]:
    def listing(summary: str, answer: str, errors: tuple[int, ...]) -> dict[str, Any]:
        operation = _operation(summary, answer, (), signed=False)
        operation["responses"].update(
            {
                str(status): {"description": reason, "content": _json("Error")}
                for status, reason in {
                    403: "Refused by the app's catalog_access check.",
                    404: "No such object in the catalog.",
                    410: "The object was dropped.",
                }.items()
                if status in errors
            }
        )
        operation["parameters"] = [
            {
                "name": "include_deleted",
                "in": "query",
                "required": False,
                "description": "1 to list dropped objects too.",
                "schema": {"type": "integer", "enum": [0, 1]},
            }
        ]
        return operation

    table = listing(
        "One table with its columns, from the catalog (not re-reflected).",
        "TableResponse",
        (403, 404, 410),
    )
    del table["parameters"]
    one_object = listing(
        "One enum or domain type or sequence, its schema's objects renewed "
        "when they changed.",
        "ObjectResponse",
        (403, 404, 410),
    )
    del one_object["parameters"]
    return {
        f"{base}/schemas": {
            "get": listing(
                "The schemas, renewed when they changed.", "SchemasResponse", (403,)
            )
        },
        f"{base}/schemas/{{schema_id}}/tables": {
            "parameters": [_catalog_id("schema_id", "schema")],
            "get": listing(
                "The tables of one schema, renewed when they changed.",
                "TablesResponse",
                (403, 404, 410),
            ),
        },
        f"{base}/tables/{{table_id}}": {
            "parameters": [_catalog_id("table_id", "table")],
            "get": table,
        },
        f"{base}/objects/{{object_id}}": {
            "parameters": [_catalog_id("object_id", "object")],
            "get": one_object,
        },
        f"{base}/schemas/{{schema_id}}/objects": {
            "parameters": [_catalog_id("schema_id", "schema")],
            "get": listing(
                "The enum and domain types and sequences of one schema, renewed "
                "when they changed.",
                "ObjectsResponse",
                (403, 404, 410),
            ),
        },
    }


def _catalog_id(name: str, what: str) -> dict[str, Any]:
    """A path parameter (every ``{name}`` of a path must be declared)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s catalog id (``id`` in the listings).",
        "schema": {"type": "integer", "minimum": 0},
    }


def openapi_document(prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes mounted at ``prefix``."""
    base = prefix.rstrip("/")
    auth = (401, 413, 429, 503)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flask-reflectsync",
            "version": str(PROTOCOL_VERSION),
            "description": 'Every answer is {"ok": true, ...} or '
            '{"ok": false, "error": "...", "status": N, "code": "..."}; '
            "code is a stable dotted error code (auth.replayed, push.conflict, "
            "http.not_found, ...).",
        },
        "paths": {
            f"{base}/register": {
                "post": _operation(
                    "Register a node; answers its id and secret.",
                    "RegisterResponse",
                    (400, 401, 403, 413, 429),
                    body="RegisterRequest",
                    signed=False,
                )
            },
            f"{base}/push": {
                "post": _operation(
                    "Apply the node's operations atomically and exactly once.",
                    "PushResponse",
                    (400, *auth, 409, 422),
                    body="PushRequest",
                )
            },
            f"{base}/pull": {
                "post": _operation(
                    "One page of the changes after the node's version, per table.",
                    "PullResponse",
                    (400, *auth),
                    body="PullRequest",
                )
            },
            f"{base}/changes": {
                "post": _operation(
                    "The change feed: held (at most REFLECTSYNC_FEED_MAX_WAIT "
                    "seconds) until the node's share has a version after since "
                    "that the node did not push; changed false when the hold "
                    "ends. 403 auth.revoked and 410 fleet.retired as on pull.",
                    "ChangesResponse",
                    (400, *auth, 403, 410),
                    body="ChangesRequest",
                )
            },
            f"{base}/schema-check": {
                "post": _operation(
                    "Compare the node's schema identity with the server's "
                    "tracked tables; nothing is applied or recorded. 409 "
                    "schema.describe for a digest that is not the server's.",
                    "SchemaCheckResponse",
                    (400, *auth, 409),
                    body="SchemaCheckRequest",
                )
            },
            f"{base}/repair": {
                "get": _repair_operation(auth)
            },
            f"{base}/query": {
                "get": _operation(
                    "Rows of one tracked model, filtered and paged.",
                    "QueryResponse",
                    (400, 404, *auth),
                    parameters=[
                        _query_parameter("model", "The tracked table.", True),
                        _query_parameter("limit", "Rows per page."),
                        _query_parameter("offset", "Rows to skip."),
                    ],
                )
            },
            **_catalog_paths(base),
            f"{base}/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document, bare (no "
                            "envelope), so that tools can read it.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["openapi", "info", "paths"],
                                    }
                                }
                            },
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {**SCHEMAS, **CATALOG_SCHEMAS},
            "securitySchemes": {
                "node": _header(HEADER_NODE, "The node id."),
                "timestamp": _header(HEADER_TIMESTAMP, "Seconds since the epoch."),
                "nonce": _header(HEADER_NONCE, "Never reused by the node."),
                "signature": _header(
                    HEADER_SIGNATURE,
                    "HMAC-SHA256 hex of method, path, query, timestamp, nonce "
                    "and SHA-256 of the body, under the node's secret.",
                ),
            },
        },
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {"type": "apiKey", "in": "header", "name": name, "description": description}


def _query_parameter(
    name: str, description: str, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string" if name == "model" else "integer"},
    }
