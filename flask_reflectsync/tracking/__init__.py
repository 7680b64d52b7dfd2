"""Change tracking: which models are tracked, the session listeners that log
their changes in the same transaction, the log tables and op compression.

Nothing here depends on Flask.
"""

from __future__ import annotations

from .capture import OperationLog, start_tracking, stop_tracking
from .compression import compress, compressed_commands
from .keys import decode_key, encode_key
from .numbering import number_versions
from .registry import TrackedTable, is_tracked, track, tracked_tables, untrack
from .tables import DELETE, INSERT, UPDATE, LogTables, define_tables

__all__ = [
    "DELETE",
    "INSERT",
    "UPDATE",
    "LogTables",
    "OperationLog",
    "TrackedTable",
    "compress",
    "compressed_commands",
    "decode_key",
    "define_tables",
    "encode_key",
    "is_tracked",
    "number_versions",
    "start_tracking",
    "stop_tracking",
    "track",
    "tracked_tables",
    "untrack",
]
