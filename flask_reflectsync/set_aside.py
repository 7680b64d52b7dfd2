"""Moved to :mod:`flask_reflectsync.node.set_aside`; this path only re-exports."""

from __future__ import annotations

from .node.set_aside import SetAside

__all__ = ["SetAside"]
