"""The wire messages and the one layer that validates them.

Every request body and every answer is described here as a JSON Schema
(a small subset: ``type``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``enum``, ``pattern``, ``minimum``,
``maximum``, ``minLength``, ``maxLength``, ``maxItems``). :func:`validate`
checks a decoded body against its schema and names the first problem; the
same schemas build the OpenAPI document served at ``<prefix>/openapi.json``,
so the documentation cannot drift from what is enforced.

Table names, column names and value types depend on the app's models and are
checked by the handlers against the tracked tables, after this layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from ..errors import ValidationError

#: The protocol version this package speaks. Every message carries it as
#: ``"protocol"``; a request with another version is refused.
PROTOCOL_VERSION = 1

Schema = dict[str, Any]

_protocol: Schema = {
    "type": "integer",
    "enum": [PROTOCOL_VERSION],
    "description": "The protocol version; this server speaks 1.",
}
_version: Schema = {"type": "integer", "minimum": 0}
_key: Schema = {
    "type": "array",
    "minItems": 1,
    "description": "The primary key values in key column order, each in the "
    "codec's JSON form.",
}
_operation: Schema = {
    "type": "object",
    "required": ["table", "key", "command"],
    "additionalProperties": False,
    "properties": {
        "table": {"type": "string", "maxLength": 255},
        "key": _key,
        "command": {"type": "string", "enum": ["i", "u", "d"]},
    },
}
_rows: Schema = {
    "type": "object",
    "required": ["columns", "rows"],
    "additionalProperties": False,
    "properties": {
        "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "rows": {"type": "array", "items": {"type": "array"}},
    },
    "description": "Rows of one table: column names once, then one array of "
    "values per row in that order.",
}
_payloads: Schema = {
    "type": "object",
    "additionalProperties": _rows,
    "description": "Row payloads by table name.",
}

SCHEMAS: dict[str, Schema] = {
    "RegisterRequest": {
        "type": "object",
        "required": ["protocol"],
        "additionalProperties": False,
        "properties": {
            "protocol": _protocol,
            "name": {"type": "string", "maxLength": 200},
            "token": {"type": "string", "maxLength": 1000},
            "info": {
                "type": "object",
                "description": "Anything the app's registration check wants.",
            },
        },
    },
    "RegisterResponse": {
        "type": "object",
        "required": ["ok", "protocol", "node"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "node": {
                "type": "object",
                "required": ["id", "name", "secret"],
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "secret": {
                        "type": "string",
                        "description": "Signs every later request; shown once.",
                    },
                },
            },
        },
    },
    "PushRequest": {
        "type": "object",
        "required": ["protocol", "push_id", "last_version", "operations"],
        "additionalProperties": False,
        "properties": {
            "protocol": _protocol,
            "push_id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9._:-]{1,40}$",
                "description": "Chosen by the node and kept until the push is "
                "acknowledged; a retry with the same id is applied once.",
            },
            "last_version": {
                **_version,
                "description": "The last server version the node has pulled.",
            },
            "operations": {"type": "array", "items": _operation},
            "payloads": _payloads,
        },
    },
    "PushResponse": {
        "type": "object",
        "required": ["ok", "protocol", "push_id", "version", "operations"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "push_id": {"type": "string"},
            "version": {
                "type": ["integer", "null"],
                "description": "The version the push created (null when it "
                "changed nothing).",
            },
            "operations": {
                "type": "integer",
                "description": "How many operations were applied.",
            },
        },
    },
    "PullRequest": {
        "type": "object",
        "required": ["protocol", "since"],
        "additionalProperties": False,
        "properties": {
            "protocol": _protocol,
            "since": {
                **_version,
                "description": "The last server version the node has.",
            },
            "cursor": {
                "type": "string",
                "pattern": "^[0-9]{1,19}:[0-9]{1,19}$",
                "description": "From the previous page, to continue a pull.",
            },
            "limit": {"type": "integer", "minimum": 1},
        },
    },
    "PullResponse": {
        "type": "object",
        "required": [
            "ok",
            "protocol",
            "operations",
            "payloads",
            "until",
            "version",
            "cursor",
        ],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "operations": {"type": "array", "items": _operation},
            "payloads": _payloads,
            "until": {
                **_version,
                "description": "After applying this page the node has every "
                "version up to this one.",
            },
            "version": {**_version, "description": "The server's latest version."},
            "cursor": {
                "type": ["string", "null"],
                "description": "Send it back to get the next page; null on the "
                "last page.",
            },
        },
    },
    "RepairResponse": {
        "type": "object",
        "required": ["ok", "protocol", "version", "tables"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "version": {
                **_version,
                "description": "Pull from this version after restoring.",
            },
            "tables": _payloads,
        },
    },
    "QueryResponse": {
        "type": "object",
        "required": ["ok", "protocol", "model", "rows", "next_offset"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "model": {"type": "string"},
            "rows": {"type": "array", "items": {"type": "object"}},
            "next_offset": {"type": ["integer", "null"]},
        },
    },
    "Error": {
        "type": "object",
        "required": ["ok", "error", "status"],
        "properties": {
            "ok": {"type": "boolean", "enum": [False]},
            "error": {"type": "string"},
            "status": {"type": "integer"},
            "conflicts": {
                "type": "array",
                "description": "On 409: the rows in conflict.",
                "items": {"type": "object"},
            },
        },
    },
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(value: Any, schema_name: str) -> dict[str, Any]:
    """Check a decoded message against the schema called ``schema_name``.

    :return: the message, typed as a dict.
    :raises ValidationError: naming the first place that does not fit.
    """
    if not isinstance(value, dict):
        raise ValidationError("The request body must be a JSON object.")
    protocol = value.get("protocol")
    if "protocol" in value and protocol != PROTOCOL_VERSION:
        raise ValidationError(
            f"Unsupported protocol version {protocol!r}; this server speaks "
            f"protocol {PROTOCOL_VERSION}."
        )
    _check(value, SCHEMAS[schema_name], "message")
    return value


def _check(value: Any, schema: Mapping[str, Any], where: str) -> None:
    expected = schema.get("type")
    if expected is not None:
        names = [expected] if isinstance(expected, str) else expected
        if not any(_is(value, name) for name in names):
            raise ValidationError(f"{where} must be {' or '.join(names)}.")
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        raise ValidationError(f"{where} must be one of {allowed}.")
    if isinstance(value, str):
        _check_string(value, schema, where)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise ValidationError(f"{where} must be at least {schema['minimum']}.")
        if "maximum" in schema and value > schema["maximum"]:
            raise ValidationError(f"{where} must be at most {schema['maximum']}.")
    elif isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise ValidationError(
                f"{where} needs at least {schema['minItems']} item(s)."
            )
        items = schema.get("items")
        if items is not None:
            for index, item in enumerate(value):
                _check(item, items, f"{where}[{index}]")
    elif isinstance(value, dict):
        _check_object(value, schema, where)


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _check_string(value: str, schema: Mapping[str, Any], where: str) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise ValidationError(
            f"{where} must be at most {schema['maxLength']} characters."
        )
    if "pattern" in schema and not _pattern(schema["pattern"]).match(value):
        raise ValidationError(f"{where} must match {schema['pattern']}.")


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> None:
    for name in schema.get("required", ()):
        if name not in value:
            raise ValidationError(f"{where} lacks the required field {name!r}.")
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], f"{where}.{name}")
        elif extra is False:
            raise ValidationError(f"{where} has an unknown field {name!r}.")
        elif isinstance(extra, dict):
            _check(item, extra, f"{where}.{name}")
