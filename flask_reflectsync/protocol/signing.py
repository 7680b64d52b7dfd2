"""Moved to :mod:`flask_reflectsync.wire.signing`; this path only re-exports."""

from __future__ import annotations

from ..wire.signing import (
    HEADER_NODE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SIGNATURE_HEADERS,
    canonical_request,
    sign_request,
    signature,
    signature_matches,
    signed_headers,
)

__all__ = [
    "HEADER_NODE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SIGNATURE_HEADERS",
    "canonical_request",
    "sign_request",
    "signature",
    "signature_matches",
    "signed_headers",
]
