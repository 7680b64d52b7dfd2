"""flask-reflectsync: offline-first sync and live database reflection for
Flask + Flask-SQLAlchemy apps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors, signals
from .tracking import track

if TYPE_CHECKING:
    from .extension import ReflectSync

__version__ = "0.1.0.dev0"

__all__ = ["ReflectSync", "errors", "signals", "track", "__version__"]


def __getattr__(name: str) -> Any:
    # The server extension (and with it Flask) is imported when first used,
    # so an offline node that imports only ``track`` and the client runs
    # without Flask.
    if name == "ReflectSync":
        from .extension import ReflectSync

        return ReflectSync
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
