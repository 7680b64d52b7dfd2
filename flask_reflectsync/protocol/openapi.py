"""The OpenAPI document of the sync routes, built from the message schemas."""

from __future__ import annotations

from typing import Any

from .messages import PROTOCOL_VERSION, SCHEMAS
from .signing import HEADER_NODE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP

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
        403: "Registration refused.",
        404: "Unknown model.",
        409: "The push conflicts with changes the node has not pulled, or "
        "breaks a unique constraint; nothing was written.",
        413: "The body is larger than REFLECTSYNC_MAX_BODY_SIZE.",
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


def openapi_document(prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the sync routes mounted at ``prefix``."""
    base = prefix.rstrip("/")
    auth = (401, 413, 503)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flask-reflectsync sync protocol",
            "version": str(PROTOCOL_VERSION),
            "description": 'Every answer is {"ok": true, ...} or '
            '{"ok": false, "error": "...", "status": N}.',
        },
        "paths": {
            f"{base}/register": {
                "post": _operation(
                    "Register a node; answers its id and secret.",
                    "RegisterResponse",
                    (400, 401, 403, 413),
                    body="RegisterRequest",
                    signed=False,
                )
            },
            f"{base}/push": {
                "post": _operation(
                    "Apply the node's operations atomically and exactly once.",
                    "PushResponse",
                    (400, *auth, 409),
                    body="PushRequest",
                )
            },
            f"{base}/pull": {
                "post": _operation(
                    "One page of the operations after the node's version.",
                    "PullResponse",
                    (400, *auth),
                    body="PullRequest",
                )
            },
            f"{base}/repair": {
                "get": _operation(
                    "The full content of every tracked table, streamed.",
                    "RepairResponse",
                    auth,
                )
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
        },
        "components": {
            "schemas": SCHEMAS,
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
