"""flask-reflectsync: offline-first sync and live database reflection for
Flask + Flask-SQLAlchemy apps."""

from __future__ import annotations

from . import errors, signals
from .extension import ReflectSync
from .tracking import track

__version__ = "0.1.0.dev0"

__all__ = ["ReflectSync", "errors", "signals", "track", "__version__"]
