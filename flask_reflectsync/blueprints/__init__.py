"""Thin Flask views over :mod:`flask_reflectsync.server` and
:mod:`flask_reflectsync.reflection`."""

from __future__ import annotations

from .api import make_blueprint

__all__ = ["make_blueprint"]
