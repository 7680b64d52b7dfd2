"""Moved to :mod:`flask_reflectsync.node.merge` (conflicts and resolutions to
:mod:`flask_reflectsync.node.conflicts`); this path only re-exports."""

from __future__ import annotations

from ..node.conflicts import Conflict, Decision, KindResolver, Resolutions, Strategy
from ..node.merge import MergeResult, PulledTable, merge_page, untouched

__all__ = [
    "Conflict",
    "Decision",
    "KindResolver",
    "MergeResult",
    "PulledTable",
    "Resolutions",
    "Strategy",
    "merge_page",
    "untouched",
]
