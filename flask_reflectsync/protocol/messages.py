"""Moved to :mod:`flask_reflectsync.wire.messages`; this path only re-exports."""

from __future__ import annotations

from ..wire.messages import (
    BIGINT_MAX,
    MAX_DEPTH,
    PROTOCOL_VERSION,
    SCHEMAS,
    decode_body,
    nesting_exceeds,
    validate,
)

__all__ = [
    "BIGINT_MAX",
    "MAX_DEPTH",
    "PROTOCOL_VERSION",
    "SCHEMAS",
    "decode_body",
    "nesting_exceeds",
    "validate",
]
