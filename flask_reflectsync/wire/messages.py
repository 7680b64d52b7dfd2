"""The wire messages and the one layer that validates them.

Every request body and every answer is described here as a JSON Schema
(a small subset: ``type``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``enum``, ``pattern``, ``minimum``,
``maximum``, ``minLength``, ``maxLength``, ``maxItems``). :func:`validate`
checks a decoded body against its schema and names the first problem; the
same schemas build the OpenAPI document served at ``<prefix>/openapi.json``,
so the documentation cannot drift from what is enforced.

Before any of that, :func:`decode_body` turns a request body into JSON values:
UTF-8 only, standard JSON only (no ``NaN`` or ``Infinity``), nested at most
:data:`MAX_DEPTH` deep. Every string a schema types as ``string`` must be
text a database can store: no NUL character, no unpaired surrogate.

Table names, column names and value types depend on the app's models and are
checked by the handlers against the tracked tables, after this layer.

The module stays above the layout's ~500 lines on purpose: most of it is
the schemas themselves (data, not code), kept beside the validator that
enforces them and the OpenAPI document built from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ValidationError
from .codec import UNSTORABLE_TEXT

#: The protocol version this package speaks. Every message carries it as
#: ``"protocol"``; a request with another version is refused. Version 2
#: (0.2) carries updates as the columns they changed: ``patches`` in a push,
#: ``changed`` in a pull page.
PROTOCOL_VERSION = 2

#: How deeply a request body may nest arrays and objects. A push needs five
#: levels plus those of its JSON column values; decoding deeper documents
#: would exhaust the interpreter's stack (and MySQL keeps JSON values at most
#: 100 deep).
MAX_DEPTH = 64

#: Every byte but brackets and quotes, for :func:`nesting_exceeds`.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
#: What is left of a string holding brackets, once escapes and other bytes
#: are gone.
_STRING = re.compile(rb'"[^"]*"')

Schema = dict[str, Any]

_protocol: Schema = {
    "type": "integer",
    "enum": [PROTOCOL_VERSION],
    "description": f"The protocol version; this server speaks {PROTOCOL_VERSION}.",
}
#: Versions, like every counter the server stores, are 64-bit integers.
BIGINT_MAX = 2**63 - 1
_version: Schema = {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX}
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
    "description": "Whole rows by table name: the rows of inserts, and of "
    "updates whose changed columns the node does not know.",
}
_patches: Schema = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": _rows},
    "description": "Updates by table name, as the columns they changed: "
    "blocks of rows, each block with its own columns (the key and the "
    "changed columns). The server writes only those columns.",
}
_pulled_table: Schema = {
    "type": "object",
    "required": ["columns", "values", "commands", "deleted"],
    "additionalProperties": False,
    "properties": {
        "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "values": {
            "type": "array",
            "items": {"type": "array"},
            "description": "One array per column, in the order of columns: the "
            "current values of every inserted or updated row. A row carries "
            "its own key.",
        },
        "commands": {
            "type": "string",
            "pattern": "^[iu]*$",
            "description": "One letter per row, in the order of the values: "
            "i (inserted) or u (updated).",
        },
        "changed": {
            "type": "array",
            "items": {
                "type": ["array", "null"],
                "items": {"type": "integer", "minimum": 0},
            },
            "description": "One entry per row, in the order of the values: for "
            "an update, the positions (in columns) of the columns changed "
            "since the node's version; null for an insert, or an update of "
            "the whole row. Absent when every row is whole.",
        },
        "deleted": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array"},
            "description": "One array per primary-key column, in key order: the "
            "keys of the deleted rows, including rows inserted or updated and "
            "gone since.",
        },
        "evicted": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array"},
            "description": "Sync scopes: the keys (as in deleted) of rows the "
            "node had that left its share; the node removes them and the "
            "rows pointing at them without logging a delete. Absent when "
            "there are none.",
        },
    },
    "description": "One table's changes in a pull page, column by column.",
}
_digest: Schema = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
_schema_identity: Schema = {
    "type": "object",
    "additionalProperties": {
        # A table's columns, or its digest (one type or the other: pattern
        # applies to strings, additionalProperties to objects).
        "type": ["object", "string"],
        "additionalProperties": {"type": "string", "maxLength": 100},
        "pattern": _digest["pattern"],
    },
    "description": "The node's schema identity (see the schema-changes "
    "page): by tracked table, its synced columns and their kinds (the "
    "codec's kind, such as 'an integer'), or the table's digest when the "
    "node knows the server's is the same (from a schema.describe answer). "
    "The server compares it with its own before applying or serving "
    "anything.",
}
_schema_digest: Schema = {
    **_digest,
    "description": "The digest of the node's whole schema identity, sent "
    "instead of it: equal to the server's, the schemas are the same; "
    "otherwise the server answers schema.describe with its tables' digests "
    "and the node sends its identity.",
}
_pulled: Schema = {
    "type": "object",
    "additionalProperties": _pulled_table,
    "description": "The page's changes by table name, at most one per row.",
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
            "registration_id": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{32,64}$",
                "description": (
                    "Chosen at random by the node, the same for every retry "
                    "of one registration: a retry whose answer was lost gets "
                    "the same node and secret, as long as the node has not "
                    "signed a request yet."
                ),
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
            "patches": _patches,
            "schema": _schema_identity,
            "schema_digest": _schema_digest,
            "resolutions": {
                "type": "object",
                "description": "Per table, the built-in conflict strategy the "
                "node's merge applies; the server decides the direct "
                "conflicts of a stale push by it instead of refusing the push.",
                "additionalProperties": {
                    "type": "string",
                    "enum": ["last-pusher-wins", "server-wins", "node-wins"],
                },
            },
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
            "resolved": {
                "type": "array",
                "description": "The conflicts the server decided by the node's "
                "strategies (absent when none, and on a retried push).",
                "items": {
                    "type": "object",
                    "required": ["table", "key", "kind", "resolution", "server"],
                    "properties": {
                        "table": {"type": "string"},
                        "key": _key,
                        "kind": {"type": "string"},
                        "resolution": {
                            "type": "string",
                            "enum": ["node", "server", "deleted"],
                        },
                        "server": {
                            "type": ["object", "null"],
                            "description": "The server's row before the push "
                            "(null when it had none).",
                        },
                    },
                },
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
            "schema": _schema_identity,
            "schema_digest": _schema_digest,
            "keys": {
                "type": "array",
                "maxItems": 200,
                "items": {"type": "string", "maxLength": 200},
                "description": "Tables the node wants a block of integer keys "
                "for (see key blocks in the conflicts page).",
            },
        },
    },
    "RepairRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "schema": _schema_identity,
            "schema_digest": _schema_digest,
        },
        "description": "GET /repair may carry a JSON body with the node's "
        "schema identity (signed with the request); without one the server "
        "streams the copy unchecked.",
    },
    "ChangesRequest": {
        "type": "object",
        "required": ["protocol", "since"],
        "additionalProperties": False,
        "properties": {
            "protocol": _protocol,
            "since": {
                **_version,
                "description": "The last server version the node has.",
            },
            "wait": {
                "type": "number",
                "minimum": 0,
                "maximum": 3600,
                "description": "The most seconds to hold the request waiting "
                "for a change (the server holds it at most "
                "REFLECTSYNC_FEED_MAX_WAIT, its default).",
            },
        },
    },
    "SchemaCheckRequest": {
        "type": "object",
        "required": ["protocol"],
        "additionalProperties": False,
        "properties": {
            "protocol": _protocol,
            "schema": _schema_identity,
            "schema_digest": _schema_digest,
        },
    },
    "SchemaCheckResponse": {
        "type": "object",
        "required": ["ok", "protocol", "same", "differences", "server_only_tables"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "same": {
                "type": "boolean",
                "description": "Whether the node's tracked tables are the "
                "server's: the same tables, columns and kinds.",
            },
            "differences": {
                "type": "array",
                "description": "What differs, one entry per table or column "
                "(as in schema.mismatch answers).",
                "items": {
                    "type": "object",
                    "required": ["table", "column", "problem", "message"],
                    "properties": {
                        "table": {"type": "string"},
                        "column": {"type": ["string", "null"]},
                        "problem": {"type": "string"},
                        "message": {"type": "string"},
                        "renamed_to": {"type": "string"},
                        "known": {
                            "type": "boolean",
                            "description": "The server's catalog knows it "
                            "(PostgreSQL): renamed to renamed_to, or dropped "
                            "without it; not a guess by shape.",
                        },
                        "candidates": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "The server's columns of the same "
                            "kind it may have become, when several.",
                        },
                    },
                },
            },
            "server_only_tables": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Tables the server synchronises that the node "
                "does not track (their changes are left out of its pulls).",
            },
        },
    },
    "ChangesResponse": {
        "type": "object",
        "required": ["ok", "protocol", "changed", "version"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "changed": {
                "type": "boolean",
                "description": "Whether the node's share has a version after "
                "since that the node did not push itself: pull now.",
            },
            "version": {**_version, "description": "The server's latest version."},
        },
    },
    "PullResponse": {
        "type": "object",
        "required": [
            "ok",
            "protocol",
            "changes",
            "until",
            "version",
            "cursor",
        ],
        "properties": {
            "keys": {
                "type": "object",
                "description": "Per table, [first, last] of a block of keys "
                "reserved for the node (tables the server could not reserve "
                "for are left out).",
                "additionalProperties": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "ok": {"type": "boolean", "enum": [True]},
            "protocol": _protocol,
            "changes": _pulled,
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
            "operations": {
                "type": "integer",
                "minimum": 0,
                "description": "How many logged operations this page covers "
                "(optional; for progress).",
            },
            "moving": {
                "type": "boolean",
                "description": "The node's principal changed: it is being "
                "moved to its new share; pull again (with the same since and "
                "cursor rules) even though cursor is null.",
            },
            "total": {
                "type": "integer",
                "minimum": 0,
                "description": "On a pull's first page: how many logged "
                "operations the whole pull covers (optional; for progress).",
            },
            "unserved": {
                "type": "object",
                "additionalProperties": {
                    "type": "array",
                    "items": {"type": "string"},
                },
                "description": "When the request carried the node's schema: "
                "by table, the server's columns the node does not have, left "
                "out of the page (the node fetches them once it has "
                "migrated). Absent when there are none.",
            },
        },
    },
    "RepairResponse": {
        "description": "One line of the repair stream (application/x-ndjson, "
        "one JSON object per line): the header first, then per table a table "
        "line followed by its rows lines, then the end line. A stream without "
        "its end line is cut.",
        "oneOf": [
            {
                "type": "object",
                "title": "Header",
                "required": ["ok", "protocol"],
                "additionalProperties": False,
                "properties": {
                    "ok": {"type": "boolean", "enum": [True]},
                    "protocol": _protocol,
                    "counts": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                        "description": "Each table's row count when the copy "
                        "started (optional; for progress).",
                    },
                },
            },
            {
                "type": "object",
                "title": "Table",
                "required": ["table", "columns"],
                "additionalProperties": False,
                "properties": {
                    "table": {"type": "string"},
                    "columns": {"type": "array", "items": {"type": "string"}},
                },
            },
            {
                "type": "object",
                "title": "Rows",
                "required": ["rows"],
                "additionalProperties": False,
                "properties": {
                    "rows": {
                        "type": "array",
                        "items": {"type": "array"},
                        "description": "Rows of the table named last, one array "
                        "of values per row in the order of its columns.",
                    },
                },
            },
            {
                "type": "object",
                "title": "End",
                "required": ["end", "version", "rows"],
                "additionalProperties": False,
                "properties": {
                    "end": {"type": "boolean", "enum": [True]},
                    "version": {
                        **_version,
                        "description": "Pull from this version after restoring.",
                    },
                    "rows": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                        "description": "How many rows each table's lines held.",
                    },
                },
            },
        ],
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
        "required": ["ok", "error", "status", "code"],
        "properties": {
            "ok": {"type": "boolean", "enum": [False]},
            "error": {"type": "string"},
            "status": {"type": "integer"},
            "conflicts": {
                "type": "array",
                "description": "On 409: the rows in conflict.",
                "items": {"type": "object"},
            },
            "code": {
                "type": "string",
                "pattern": r"^[a-z0-9_]+(\.[a-z0-9_]+)*$",
                "description": "The stable, dotted kind of error, for programs "
                "to branch on (auth.replayed, push.conflict, http.not_found, "
                "...); see the error-code table of the protocol.",
            },
            "table": {
                "type": "string",
                "description": "push.invalid_value, push.invalid_key: the "
                "row's table.",
            },
            "key": {
                "type": "array",
                "description": "push.invalid_value, push.invalid_key: the "
                "row's key as sent.",
            },
            "column": {
                "type": "string",
                "description": "push.invalid_value, push.invalid_key: the column.",
            },
            "push_id": {
                "type": "string",
                "description": "push.id_reused: the push id.",
            },
            "differences": {
                "type": "array",
                "items": {"type": "object"},
                "description": "schema.mismatch: what differs, one entry per "
                "table or column (table, column, problem, message, "
                "renamed_to, known, candidates).",
            },
            "rows": {
                "type": "array",
                "items": {"type": "object"},
                "description": "schema.refused: the refused rows (table, key, "
                "column, reason).",
            },
            "rule": {
                "type": "string",
                "description": "push.out_of_share: the scope rule the push "
                "broke (outside_share, insert_outside_share, moves_out, "
                "read_only).",
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


def decode_body(body: bytes) -> Any:
    """The JSON value of a request body.

    :raises ValidationError: for a body that is not UTF-8, not standard JSON
        as a whole, or nested deeper than :data:`MAX_DEPTH`.
    """
    if nesting_exceeds(body, MAX_DEPTH):
        raise ValidationError(
            f"The request body nests arrays and objects more than {MAX_DEPTH} "
            "deep."
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("The request body is not UTF-8 text.") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:  # JSONDecodeError, and integers of over 4300 digits
        raise ValidationError("The request body is not valid JSON.") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def nesting_exceeds(body: bytes, depth: int) -> bool:
    """Whether the JSON ``body`` nests arrays and objects more than ``depth``
    deep, found without recursion (the decoder recurses once per level) and
    with byte operations only (a tenth of decoding a large push).

    Escaped backslashes and quotes go first, then every byte but brackets and
    quotes; strings without brackets are then ``""`` (removing that also
    joins two strings with no bracket between them, which changes nothing),
    the few left are cut out. Each pass then removes every innermost pair, so
    a document ``depth`` deep is empty after ``depth`` passes. Malformed text
    answers ``False``: the decoder refuses it.
    """
    if body.count(b"[") + body.count(b"{") <= depth:
        return False
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = body.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _STRING.sub(b"", skeleton)
    skeleton = skeleton.replace(b"{", b"[").replace(b"}", b"]")
    for _ in range(depth):
        shorter = skeleton.replace(b"[]", b"")
        if shorter == skeleton:
            return False
        skeleton = shorter
    return b"[]" in skeleton


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
            f"protocol {PROTOCOL_VERSION}.",
            code="request.protocol_mismatch",
        )
    _VALIDATORS[schema_name](value, "message")
    return value


# Where a value sits, built lazily as nested pairs (parent, key) so that a
# valid message of many rows formats no path strings at all.
Path = Any
Validator = Callable[[Any, Path], None]


def _show(where: Path) -> str:
    parts: list[Any] = []
    while isinstance(where, tuple):
        where, key = where
        parts.append(key)
    text = str(where)
    for key in reversed(parts):
        text += f"[{key}]" if isinstance(key, int) else f".{key}"
    return text


def _compile(schema: Mapping[str, Any]) -> Validator:
    """Turn a schema into one function, so that checking a message of many
    rows looks up no keyword at run time."""
    unknown = {"anyOf", "allOf", "not", "if"} & set(schema)
    # Not in the subset: it would be skipped, and its values let through.
    assert not unknown, f"validate() does not check {sorted(unknown)}"
    checks: list[Validator] = []
    expected = schema.get("type")
    if expected is not None:
        checks.append(_type_check(expected))
    if "enum" in schema:
        allowed = schema["enum"]
        shown = ", ".join(repr(v) for v in allowed)

        def check_enum(value: Any, where: Path) -> None:
            if value not in allowed:
                raise ValidationError(f"{_show(where)} must be one of {shown}.")

        checks.append(check_enum)
    checks += _string_checks(schema) + _number_checks(schema)
    checks += _array_checks(schema) + _object_checks(schema)
    if "oneOf" in schema:
        checks.append(_one_of([_compile(one) for one in schema["oneOf"]]))

    def check(value: Any, where: Path) -> None:
        for one in checks:
            one(value, where)

    return checks[0] if len(checks) == 1 else check


def _one_of(alternatives: list[Validator]) -> Validator:
    def check_one_of(value: Any, where: Path) -> None:
        fitting = 0
        for alternative in alternatives:
            try:
                alternative(value, where)
            except ValidationError:
                continue
            fitting += 1
        if fitting != 1:
            raise ValidationError(
                f"{_show(where)} must fit exactly one of {len(alternatives)} "
                f"forms; it fits {fitting}."
            )

    return check_one_of


def _type_check(expected: str | list[str]) -> Validator:
    names = [expected] if isinstance(expected, str) else list(expected)
    types = tuple(t for name in names for t in _TYPES[name])
    bool_ok = "boolean" in names
    message = f"must be {' or '.join(names)}."

    def check_type(value: Any, where: Path) -> None:
        if (
            not isinstance(value, types)
            or (value is True or value is False)
            and not bool_ok
        ):
            raise ValidationError(f"{_show(where)} {message}")

    return check_type


def _string_checks(schema: Mapping[str, Any]) -> list[Validator]:
    checks: list[Validator] = []
    # (An enum's values are all storable.)
    if schema.get("type") == "string" and "enum" not in schema:

        def check_text(value: Any, where: Path) -> None:
            if isinstance(value, str) and UNSTORABLE_TEXT.search(value):
                raise ValidationError(
                    f"{_show(where)} cannot hold NUL characters or unpaired "
                    "surrogates."
                )

        checks.append(check_text)
    if "maxLength" in schema:
        longest = schema["maxLength"]

        def check_length(value: Any, where: Path) -> None:
            if isinstance(value, str) and len(value) > longest:
                raise ValidationError(
                    f"{_show(where)} must be at most {longest} characters."
                )

        checks.append(check_length)
    if "pattern" in schema:
        pattern = re.compile(schema["pattern"])

        def check_pattern(value: Any, where: Path) -> None:
            if isinstance(value, str) and not pattern.match(value):
                raise ValidationError(f"{_show(where)} must match {pattern.pattern}.")

        checks.append(check_pattern)
    return checks


def _number_checks(schema: Mapping[str, Any]) -> list[Validator]:
    checks: list[Validator] = []
    if "minimum" in schema:
        least = schema["minimum"]

        def check_minimum(value: Any, where: Path) -> None:
            if _is_number(value) and value < least:
                raise ValidationError(f"{_show(where)} must be at least {least}.")

        checks.append(check_minimum)
    if "maximum" in schema:
        most = schema["maximum"]

        def check_maximum(value: Any, where: Path) -> None:
            if _is_number(value) and value > most:
                raise ValidationError(f"{_show(where)} must be at most {most}.")

        checks.append(check_maximum)
    return checks


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _array_checks(schema: Mapping[str, Any]) -> list[Validator]:
    checks: list[Validator] = []
    if "minItems" in schema:
        fewest = schema["minItems"]

        def check_min_items(value: Any, where: Path) -> None:
            if isinstance(value, list) and len(value) < fewest:
                raise ValidationError(
                    f"{_show(where)} needs at least {fewest} item(s)."
                )

        checks.append(check_min_items)
    if "items" in schema:
        item_check = _compile(schema["items"])

        def check_items(value: Any, where: Path) -> None:
            if isinstance(value, list):
                for index, item in enumerate(value):
                    item_check(item, (where, index))

        checks.append(check_items)
    return checks


def _object_checks(schema: Mapping[str, Any]) -> list[Validator]:
    required = tuple(schema.get("required", ()))
    properties = {
        name: _compile(sub) for name, sub in schema.get("properties", {}).items()
    }
    extra = schema.get("additionalProperties", True)
    extra_check = _compile(extra) if isinstance(extra, dict) else None
    if not (required or properties or extra is not True):
        return []

    def check_object(value: Any, where: Path) -> None:
        if not isinstance(value, dict):
            return
        for name in required:
            if name not in value:
                raise ValidationError(
                    f"{_show(where)} lacks the required field {name!r}."
                )
        for name, item in value.items():
            known = properties.get(name)
            if known is not None:
                known(item, (where, name))
            elif extra_check is not None:
                extra_check(item, (where, name))
            elif extra is False:
                raise ValidationError(f"{_show(where)} has an unknown field {name!r}.")

    return [check_object]


_VALIDATORS: dict[str, Validator] = {
    name: _compile(schema) for name, schema in SCHEMAS.items()
}
