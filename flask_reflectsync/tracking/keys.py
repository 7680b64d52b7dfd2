"""Canonical text form of a primary key, as stored in the operations log.

A key is the JSON array of its column values in primary-key order: ``[7]``,
``["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]``, ``[3, "fr"]``. The same key
always encodes to the same text, so keys can be compared as strings.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from collections.abc import Sequence
from typing import Any

from ..errors import TrackingError


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return value
    if isinstance(value, bytes):
        return value.hex()
    raise TrackingError(
        f"Cannot log a primary key value of type {type(value).__name__}; "
        "use integer, string, UUID, date or decimal keys."
    )


def encode_key(values: Sequence[Any]) -> str:
    """Encode primary-key values (in primary-key column order) as text."""
    return json.dumps([_plain(v) for v in values], separators=(",", ":"))


def decode_key(text: str) -> list[Any]:
    """The JSON values of an encoded key (UUIDs and dates stay strings)."""
    values = json.loads(text)
    if not isinstance(values, list):
        raise ValueError(f"not an encoded key: {text!r}")
    return values
