"""A node that keeps itself in sync: what :meth:`SyncClient.watch` does.

Two threads. The *feed* thread holds ``POST /changes`` open (see
:mod:`flask_reflectsync.server.feed`) and, when the server says the node's
share changed, tells the loop. The *loop* (the caller's thread) does every
push and pull, one at a time under the client's lock: it pushes soon after
a local commit (the commits of the node's sessions are heard with
``after_commit``; commits close together are pushed together after
``debounce`` seconds), synchronizes when the feed says so, and backs off
with jitter when the server cannot be reached or is busy. Stopping (the
``stop`` event, :meth:`SyncClient.stop_watching`, or SIGINT / SIGTERM with
``handle_signals``) is only looked at between two operations, and between
two tries of a request to a server that is gone (the request then fails as
when its tries run out), so a push or a merge is never cut in the middle;
the feed's request, which only reads, is left to end by itself.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import (
    NodeRetiredError,
    NodeRevokedError,
    ProtocolMismatchError,
    PushRejectedError,
    SyncError,
)
from ..wire.messages import PROTOCOL_VERSION
from .status import OFFLINE_ERRORS

if TYPE_CHECKING:
    from .client import SyncClient

log = logging.getLogger("flask_reflectsync")


class Watch:
    """The events one ``watch()`` runs on.

    :param stop: set to end the watch.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        #: Set by anything the loop must look at (a commit, the feed, stop).
        self.wake = threading.Event()
        #: The server's share of the node changed: pull.
        self.server_changed = threading.Event()
        #: The loop handled the last news: the feed may ask again (not
        #: before the first catch-up).
        self.handled = threading.Event()
        self.local_changed = threading.Event()
        self.random = random.Random()

    def backoff(self, failures: int, ceiling: float) -> float:
        """Seconds to wait after ``failures`` failures in a row: doubling
        from one second up to ``ceiling``, between half and all of it."""
        full = min(ceiling, 2.0 ** (failures - 1))
        return full / 2 + self.random.uniform(0, full / 2)

    def local_commit(self) -> None:
        self.local_changed.set()
        self.wake.set()

    def news(self) -> None:
        self.handled.clear()
        self.server_changed.set()
        self.wake.set()


def watch(
    client: SyncClient,
    stop: threading.Event,
    *,
    wait: float,
    debounce: float,
    max_backoff: float,
    handle_signals: bool,
) -> None:
    """What :meth:`SyncClient.watch` does."""
    state = Watch(stop)
    with _signals_stop(state, handle_signals):
        client._watches.append(state)
        client._status.update(watching=True)
        feed = threading.Thread(
            target=_follow_feed,
            args=(client, state, wait, max_backoff),
            name="reflectsync-node-feed",
            daemon=True,
        )
        try:
            feed.start()
            with client._transport.stopping_on(stop):
                _loop(client, state, debounce, max_backoff)
        finally:
            stop.set()
            state.wake.set()
            client._watches.remove(state)
            client._status.update(watching=False)
            # The feed's request only reads: it is not waited for.
            feed.join(timeout=0.1)


def _loop(
    client: SyncClient, state: Watch, debounce: float, max_backoff: float
) -> None:
    stop = state.stop
    failures = 0
    must_sync = True  # first catch up both ways
    while not stop.is_set():
        local = state.local_changed.is_set()
        news = state.server_changed.is_set()
        if must_sync or local or news:
            if local and not (must_sync or news) and failures == 0:
                # Let a burst of commits end: one push for all of them.
                if stop.wait(debounce):
                    break
            state.local_changed.clear()
            state.server_changed.clear()
            try:
                if must_sync or news:
                    client.synchronize()
                else:
                    _push(client)
            except NodeRevokedError:
                raise  # for good: the device must register again
            except NodeRetiredError:
                if not _repair_if_nothing_queued(client):
                    failures += 1
                    must_sync = True
                    stop.wait(state.backoff(failures, max_backoff))
                    continue
            except SyncError as error:
                failures += 1
                must_sync = True
                log.info("Sync failed (%s); trying again later.", error.message)
                stop.wait(state.backoff(failures, max_backoff))
                continue
            else:
                failures = 0
                must_sync = False
            finally:
                state.handled.set()
            continue
        # Not for ever: a stop event set by the app does not wake it.
        state.wake.wait(0.5)
        state.wake.clear()


def _push(client: SyncClient) -> None:
    try:
        client.push()
    except PushRejectedError:
        client.synchronize()


def _repair_if_nothing_queued(client: SyncClient) -> bool:
    """A retired node repairs when that loses nothing (its push is accepted
    first, so usually it does); whether it did."""
    from .pull import nothing_queued

    if not nothing_queued(client):
        return False
    client.repair()
    return True


def _follow_feed(
    client: SyncClient, state: Watch, wait: float, max_backoff: float
) -> None:
    stop = state.stop
    failures = 0
    while not stop.is_set():
        # One question at a time: after news, wait for the loop's pull.
        while not state.handled.wait(0.2):
            if stop.is_set():
                return
        try:
            message = {
                "protocol": PROTOCOL_VERSION,
                "since": client.last_version,
                "wait": wait,
            }
            answer = client._transport.call(
                "POST", "/changes", message=message, retries=0, timeout=wait + 30
            )
        except ProtocolMismatchError:
            # A server without the feed (older release): poll instead.
            if stop.wait(wait):
                return
            state.news()
            continue
        except SyncError as error:
            failures += 1
            offline = isinstance(error, OFFLINE_ERRORS)
            client._status.update(connected=not offline, last_error=error.message)
            if not offline:
                state.news()  # the loop's pull meets it and deals with it
            if stop.wait(state.backoff(failures, max_backoff)):
                return
            continue
        except Exception:  # the node's own database, mostly: never die
            log.exception("The change feed's watch failed; trying again.")
            failures += 1
            if stop.wait(state.backoff(failures, max_backoff)):
                return
            continue
        if failures:
            # Back after a failure: catch up (the loop's sync clears the error).
            failures = 0
            state.news()
            continue
        client._status.update(connected=True)
        if answer.get("changed") is True:
            state.news()


@contextmanager
def _signals_stop(state: Watch, handle: bool) -> Iterator[None]:
    """With ``handle``, SIGINT and SIGTERM set the stop event (in the main
    thread only) instead of interrupting whatever runs."""
    if not handle or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        state.stop.set()
        state.wake.set()

    previous = {
        number: signal.signal(number, stop)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
