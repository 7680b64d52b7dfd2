"""Error codes: every one the package defines is in the one table of
docs/protocol.rst, and a node chooses its exception by the code alone."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from flask_reflectsync import errors
from flask_reflectsync.node.transport import (
    API_WORDS,
    ERROR_CLASSES,
    _error_from,
)

PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.rst"


def _rows() -> dict[str, list[str]]:
    """Code -> its cells (status, meaning, what a node does) in the
    error-code table of docs/protocol.rst."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    table = text[text.index(".. _error-codes:") :]
    table = table[: table.index("\n\n\n")]
    found: dict[str, list[str]] = {}
    for row in table.split("\n   * - ")[2:]:  # [0]: before, [1]: the header
        cells = [" ".join(cell.split()) for cell in row.split("\n     - ")]
        found[cells[0].strip("`")] = cells[1:]
    assert len(found) > 30, "the error-code table was not found"
    return found


def documented_codes() -> dict[str, str]:
    """Code -> status column of the error-code table in docs/protocol.rst."""
    return {code: cells[0] for code, cells in _rows().items()}


def documented_exception(code: str) -> type[errors.SyncError]:
    """The first error class the table's "what a node does" names."""
    for name in re.findall(r"``(\w+)``", _rows()[code][2]):
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, errors.SyncError):
            return kind
    raise AssertionError(f"{code}: the table names no exception")


def _classes() -> list[type[errors.SyncError]]:
    found = []
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, errors.SyncError):
            found.append(value)
    return found


def test_every_class_code_is_documented_with_its_status() -> None:
    table = documented_codes()
    for kind in _classes():
        assert kind.code in table, kind
        if kind.code.startswith("node."):
            assert table[kind.code] == "none"
        else:
            assert table[kind.code] == str(kind.status), kind


def test_every_code_the_node_maps_is_documented() -> None:
    table = documented_codes()
    legacy = {"invalid-value", "invalid-key", "push-id-reused"}
    assert set(ERROR_CLASSES) - legacy <= set(table)
    # ...and every documented code a server sends is mapped, but those the
    # node leaves to the status rules on purpose.
    by_status = {"http.method_not_allowed", "http.internal_server_error"}
    sent = {c for c in table if not c.startswith("node.") and c != "http.<reason>"}
    assert sent - by_status <= set(ERROR_CLASSES)


def _answer(
    status: int, code: str | None, message: str = "Refused.", **fields: object
) -> httpx.Response:
    body: dict[str, object] = {"ok": False, "error": message, "status": status}
    if code is not None:
        body["code"] = code
    return httpx.Response(
        status,
        json={**body, **fields},
        request=httpx.Request("POST", "http://server/sync/push"),
    )


def _error(answer: httpx.Response, route: str = "/push") -> errors.SyncError:
    return _error_from(answer, route, "http://server/sync", API_WORDS)


@pytest.mark.parametrize("code", sorted(ERROR_CLASSES))
def test_the_code_alone_chooses_the_exception(code: str) -> None:
    # A status no rule knows and a sentence with no telltale words: only the
    # code can pick the class.
    error = _error(_answer(499, code, table="t", key=[1], column="c"))
    legacy = {
        "invalid-value": "push.invalid_value",
        "invalid-key": "push.invalid_key",
        "push-id-reused": "push.id_reused",
    }
    assert type(error) is documented_exception(legacy.get(code, code))
    if code in legacy:
        assert error.code == type(error).code
    else:
        assert error.code == code


def test_the_code_beats_what_the_status_and_words_would_say() -> None:
    # Without the code, a 400 naming "protocol" would be a mismatch...
    error = _error(_answer(400, "request.invalid", "protocol field is wrong"))
    assert type(error) is errors.ValidationError
    # ...a 409 whose entries have no "columns" would be a plain conflict...
    error = _error(_answer(409, "push.unique_violation", conflicts=[{"key": [1]}]))
    assert type(error) is errors.UniqueConstraintError
    assert error.entries == [{"key": [1]}]
    # ...and a 401 not starting "Unknown node" would get no advice.
    error = _error(_answer(401, "auth.unknown_or_bad_signature", "No."))
    assert type(error) is errors.AuthenticationError
    assert "register it again" in error.message
    error = _error(_answer(401, "registration.token_required", "No."), "/register")
    assert "client.register(token=...)" in error.message
    error = _error(_answer(404, "http.not_found", "Nothing here."), "/query")
    assert type(error) is errors.ProtocolMismatchError
    assert "REFLECTSYNC_URL_PREFIX" in error.message


def test_the_fields_beside_the_code_reach_the_exception() -> None:
    error = _error(
        _answer(422, "push.invalid_key", table="city", key=[9], column="id")
    )
    assert isinstance(error, errors.InvalidKeyError)
    assert (error.table, error.key, error.column) == ("city", [9], "id")
    answer = _answer(429, "rate.limited")
    answer.headers["Retry-After"] = "7"
    limited = _error(answer)
    assert isinstance(limited, errors.TooManyRequestsError)
    assert limited.retry_after == 7


def test_without_a_code_the_status_and_words_decide() -> None:
    error = _error(_answer(401, None, "Unknown node or wrong signature."))
    assert type(error) is errors.AuthenticationError
    assert "register it again" in error.message
    error = _error(_answer(400, None, "Unsupported protocol version 2."))
    assert type(error) is errors.ProtocolMismatchError
    entries = [{"table": "t", "key": [1], "columns": ["code"]}]
    error = _error(_answer(409, None, conflicts=entries))
    assert type(error) is errors.UniqueConstraintError
    error = _error(_answer(422, None, table="t", key=[1], column="c"))
    assert type(error) is errors.SyncError and error.status == 422


def test_a_code_the_node_does_not_know_falls_back_and_is_kept() -> None:
    error = _error(_answer(409, "push.something_new"))
    assert type(error) is errors.PushRejectedError
    assert error.code == "push.something_new"
    error = _error(_answer(405, "http.method_not_allowed"))
    assert type(error) is errors.SyncError
    assert (error.status, error.code) == (405, "http.method_not_allowed")


def test_the_envelope_of_an_error_carries_its_code() -> None:
    assert errors.AuthenticationError("x", code="auth.replayed").to_dict() == {
        "ok": False,
        "error": "x",
        "status": 401,
        "code": "auth.replayed",
    }
    reused = errors.PushIdReusedError("x", push_id="p").to_dict()
    assert (reused["code"], reused["push_id"]) == ("push.id_reused", "p")
