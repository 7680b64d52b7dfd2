"""Gunicorn hooks: a worker told to stop ends its change-feed holds at once.

On ``SIGTERM`` (a restart, a deploy, ``kill``) a gunicorn worker stops
accepting connections and waits, up to ``graceful_timeout``, for the
requests it is serving; held ``POST /changes`` requests would keep it
waiting until their hold runs out (up to ``REFLECTSYNC_FEED_MAX_WAIT``).
Gunicorn has no hook that runs when that wait begins (``worker_exit`` runs
after it), so the worker's ``SIGTERM`` handler is wrapped instead. In
``gunicorn.conf.py``::

    from flask_reflectsync.gunicorn import post_worker_init  # noqa: F401

or, from a ``post_worker_init`` of your own, call
:func:`close_feeds_on_sigterm`. Watching nodes are answered ``changed:
false``, find the server gone and come back to the new workers by
themselves (see :doc:`/fleet`).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from .server.feed import close_feeds

__all__ = ["close_feeds", "close_feeds_on_sigterm", "post_worker_init"]


def close_feeds_on_sigterm() -> None:
    """Make this process's ``SIGTERM`` close its change feeds
    (:func:`~flask_reflectsync.server.feed.close_feeds`) before the handler
    installed so far runs. Call it from the main thread after the server
    installed its own handlers (gunicorn: ``post_worker_init``)."""
    previous = signal.getsignal(signal.SIGTERM)

    def closing(signum: int, frame: FrameType | None) -> None:
        close_feeds()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, closing)
    # As gunicorn has it: the signal does not interrupt system calls of
    # the requests being served.
    signal.siginterrupt(signal.SIGTERM, False)


def post_worker_init(worker: Any) -> None:
    """Gunicorn's ``post_worker_init`` hook: :func:`close_feeds_on_sigterm`."""
    close_feeds_on_sigterm()
