"""Moved to :mod:`flask_reflectsync.node.cli`; this path only re-exports."""

from __future__ import annotations

from .node.cli import cli, describe_conflict, main

__all__ = ["cli", "describe_conflict", "main"]
