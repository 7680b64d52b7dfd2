"""Moved to :mod:`flask_reflectsync.node`; this path only re-exports.

``from flask_reflectsync.client import SyncClient`` is the documented way in
and keeps working.
"""

from __future__ import annotations

from .node.client import (
    Conflict,
    KindResolver,
    Migration,
    PullProgress,
    PullResult,
    PushResult,
    Retry,
    SchemaCheck,
    SetAside,
    SyncClient,
    SyncResult,
    SyncStatus,
)

__all__ = [
    "SyncClient",
    "SetAside",
    "PushResult",
    "PullResult",
    "SyncResult",
    "Conflict",
    "KindResolver",
    "Retry",
    "PullProgress",
    "SyncStatus",
    "Migration",
    "SchemaCheck",
]
