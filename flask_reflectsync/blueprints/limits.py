"""Per-address request limits for the unauthenticated edges of the sync
routes: registrations, and requests whose signature fails.

Both can be sent by anyone, and both cost the server work (a row, an HMAC):
an address that sends more of them in a minute than the configured limit
is answered 429 with ``Retry-After`` until the minute has passed. The
counts live in each server process (each gunicorn worker counts for
itself), keyed by ``request.remote_addr``: behind a reverse proxy, set up
``werkzeug.middleware.proxy_fix.ProxyFix`` so that is the node's address,
not the proxy's.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

from ..errors import TooManyRequestsError

#: How long one window lasts, in seconds.
WINDOW = 60.0
#: Addresses remembered at most per limit (the oldest are forgotten first),
#: so that a flood from many addresses cannot grow the table without bound.
MAX_ADDRESSES = 10_000


class AddressLimit:
    """At most ``per_minute`` events per address in any 60 seconds.

    :param what: what is counted, for the error message.
    :param per_minute: the limit; ``0`` or ``None`` turns it off.
    """

    def __init__(self, what: str, per_minute: int | None) -> None:
        self.what = what
        self.per_minute = int(per_minute or 0)
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str | None, *, now: float | None = None) -> None:
        """Refuse ``address`` if it used up its limit.

        :raises TooManyRequestsError: (429) with the seconds to wait.
        """
        if not self.per_minute:
            return
        moment = time.monotonic() if now is None else now
        with self._lock:
            events = self._recent(address or "", moment)
            if events is not None and len(events) >= self.per_minute:
                wait = max(1, math.ceil(events[0] + WINDOW - moment))
                raise TooManyRequestsError(
                    f"Too many {self.what} from this address: at most "
                    f"{self.per_minute} a minute. Try again in {wait} s.",
                    retry_after=wait,
                )

    def count(self, address: str | None, *, now: float | None = None) -> None:
        """Count one event of ``address``."""
        if not self.per_minute:
            return
        moment = time.monotonic() if now is None else now
        key = address or ""
        with self._lock:
            events = self._recent(key, moment)
            if events is None:
                events = self._events[key] = deque()
            events.append(moment)
            self._events.move_to_end(key)
            while len(self._events) > MAX_ADDRESSES:
                self._events.popitem(last=False)

    def _recent(self, key: str, moment: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= moment - WINDOW:
            events.popleft()
        return events
