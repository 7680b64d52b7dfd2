"""Moved to :mod:`flask_reflectsync.wire.codec`; this path only re-exports."""

from __future__ import annotations

from ..wire.codec import (
    DECODE_ERRORS,
    UNSTORABLE_TEXT,
    ColumnCodec,
    Decoder,
    Encoder,
    codec_for,
    integer_range,
    key_from_log,
    stores_time_zones,
    table_codecs,
)

__all__ = [
    "DECODE_ERRORS",
    "UNSTORABLE_TEXT",
    "ColumnCodec",
    "Decoder",
    "Encoder",
    "codec_for",
    "integer_range",
    "key_from_log",
    "stores_time_zones",
    "table_codecs",
]
