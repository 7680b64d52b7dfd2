"""The node's view of its own health: :class:`SyncStatus`, kept up to date
by :class:`StatusKeeper` from what push, pull, repair, synchronize and
``watch()`` learn, and announced by
:data:`~flask_reflectsync.signals.sync_status_changed`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import signals
from ..errors import (
    ServerUnreachableError,
    ServiceBusyError,
    SyncError,
    TooManyRequestsError,
)
from .state import pending_operations, read_state
from .tables import NODE_SET_ASIDE

if TYPE_CHECKING:
    from .client import SyncClient

log = logging.getLogger("flask_reflectsync")

#: Errors after which the server counts as out of reach (``connected``
#: ``False``): nothing answered, or only a proxy or a busy server did.
OFFLINE_ERRORS = (ServerUnreachableError, ServiceBusyError, TooManyRequestsError)


@dataclass(frozen=True)
class SyncStatus:
    """What a node knows of its synchronisation, at one moment
    (:attr:`SyncClient.status <flask_reflectsync.client.SyncClient.status>`).

    Enough for a status line: "synced 2 min ago", "offline, 12 changes
    waiting".

    :param connected: whether the last exchange with the server got an
        answer from it (``None``: no exchange yet). A busy server (503, 429,
        a proxy's 502 / 504) counts as not connected.
    :param last_synced_at: when the node last had every change the server
        had (a pull, a synchronize or a repair that succeeded), UTC;
        ``None`` before the first.
    :param pending: local operations waiting to be pushed.
    :param set_aside: changes the server refused for good, kept out of the
        queue (see :ref:`set-aside`).
    :param last_error: the sentence of the last failed exchange; ``None``
        once one succeeds again.
    :param watching: whether :meth:`~flask_reflectsync.client.SyncClient.watch`
        is running.
    :param version: the last server version the node has pulled.
    """

    connected: bool | None = None
    last_synced_at: datetime.datetime | None = None
    pending: int = 0
    set_aside: int = 0
    last_error: str | None = None
    watching: bool = False
    version: int = 0


class StatusKeeper:
    """Holds a client's current :class:`SyncStatus` and announces changes.

    :param client: the sender of the signal.
    :param callback: also called with each new status.
    """

    def __init__(
        self,
        client: SyncClient,
        callback: Callable[[SyncStatus], Any] | None = None,
    ) -> None:
        self.client = client
        self.callback = callback
        self.current = SyncStatus()
        self._lock = threading.Lock()
        self._depth = threading.local()

    def update(self, **changes: Any) -> SyncStatus:
        """Change some fields; announce the new status if it differs."""
        with self._lock:
            before = self.current
            after = dataclasses.replace(before, **changes)
            self.current = after
        if after != before:
            self._announce(after)
        return after

    def _announce(self, status: SyncStatus) -> None:
        # A receiver that raises must not turn a finished push into an error.
        try:
            signals.sync_status_changed.send(self.client, status=status)
            if self.callback is not None:
                self.callback(status)
        except Exception:
            log.exception("A receiver of sync-status-changed raised.")

    def counts(self) -> dict[str, int]:
        """The queue's counts and the version, read from the node's database."""
        client = self.client
        client._prepare()
        with client.engine.connect() as connection:
            set_aside = connection.execute(
                sa.select(sa.func.count()).select_from(NODE_SET_ASIDE)
            ).scalar()
            return {
                "pending": pending_operations(connection),
                "set_aside": int(set_aside or 0),
                "version": read_state(connection).last_version,
            }

    def refresh(self, **changes: Any) -> SyncStatus:
        """Read the counts again and apply them with ``changes``."""
        try:
            changes = {**self.counts(), **changes}
        except Exception:  # the node's database is busy or gone: keep the old
            log.debug("Could not count the node's queue.", exc_info=True)
        return self.update(**changes)

    @contextmanager
    def exchange(self, caught_up: bool) -> Iterator[None]:
        """Around one public operation: on success the server is connected,
        the last error cleared (and, when ``caught_up``, ``last_synced_at``
        moves); on a :class:`~flask_reflectsync.errors.SyncError` the error
        is kept. The counts are read again either way. Nested operations
        (a pull inside synchronize) report once, at the outermost."""
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        try:
            yield
        except SyncError as error:
            if depth == 0:
                self.refresh(
                    connected=not isinstance(error, OFFLINE_ERRORS),
                    last_error=error.message,
                )
            raise
        else:
            if depth == 0:
                changes: dict[str, Any] = {"connected": True, "last_error": None}
                if caught_up:
                    changes["last_synced_at"] = datetime.datetime.now(
                        datetime.timezone.utc
                    )
                self.refresh(**changes)
        finally:
            self._depth.value = depth
