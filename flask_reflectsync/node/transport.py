"""The node's HTTP side: one request sent, signed, retried on a busy server
or a lost connection (see :ref:`retries`), and the server's error answers
mapped to :mod:`flask_reflectsync.errors`.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import (
    AuthenticationError,
    ExcludedColumnError,
    ForbiddenError,
    GoneError,
    InvalidKeyError,
    InvalidValueError,
    NodeRetiredError,
    NodeRevokedError,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolMismatchError,
    PushRejectedError,
    RegistrationRefusedError,
    SchemaDescriptionNeededError,
    SchemaMismatchError,
    SchemaRefusedError,
    ScopeDeniedError,
    ServerUnreachableError,
    ServiceBusyError,
    SyncError,
    TooManyRequestsError,
    UniqueConstraintError,
    ValidationError,
)
from ..wire.messages import PROTOCOL_VERSION
from ..wire.signing import sign_request

#: Answers after which the same request is sent again: the server (or a
#: proxy in front of it) was busy or rate-limited, and applied nothing.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Transport errors raised before the request left the node.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number of seconds or
    an HTTP date), or ``None`` when there is none or it cannot be read."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        now = datetime.datetime.now(datetime.timezone.utc)
        seconds = (moment - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


@dataclass(frozen=True)
class Retry:
    """A request about to be sent again (passed to ``on_retry``).

    :param route: the route, e.g. ``"/pull"``.
    :param attempt: the number of the try about to be made (2 for the first
        retry).
    :param attempts: how many tries are allowed in all.
    :param delay: the seconds waited before it.
    :param error: why the last try failed (a busy server, a lost connection).
    """

    route: str
    attempt: int
    attempts: int
    delay: float
    error: SyncError

    def describe(self) -> str:
        """One line a person can read."""
        return (
            f"{self.error.message} Trying {self.route} again in "
            f"{self.delay:.1f} s (try {self.attempt} of {self.attempts})."
        )


@dataclass(frozen=True)
class Words:
    """How messages name the things a person can do: the Python API's words
    by default, the command line's flags in ``reflectsync-node``."""

    register: str = "call client.register() first"
    register_again: str = "register it again with client.register(force=True)"
    base_url: str = "base_url"
    token: str = "Pass it as client.register(token=...)."
    secret: str = "pass SyncClient(..., secret=...)"


API_WORDS = Words()


class Transport:
    """Sends the node's requests to one server: signs them, tries them again
    on a busy server or a lost connection, and turns error answers into
    :mod:`flask_reflectsync.errors`.

    :param base_url: the server's URL with its sync prefix.
    :param http: the HTTP client (closed by its owner).
    :param credentials: returns the node id and secret that sign a request.
    :param retries: how many times a request is sent again.
    :param retry_within: the most seconds spent waiting between tries.
    :param on_retry: called with a :class:`Retry` before each wait.
    """

    def __init__(
        self,
        base_url: str,
        http: httpx.Client,
        credentials: Callable[[], tuple[int, str]],
        *,
        retries: int = 3,
        retry_within: float = 10.0,
        on_retry: Callable[[Retry], Any] | None = None,
    ) -> None:
        self.base_url = base_url
        self.http = http
        self.credentials = credentials
        self.retries = retries
        self.retry_within = retry_within
        self.on_retry = on_retry
        self.random = random.Random()
        #: How messages name what a person can do (the CLI sets its own).
        self.words = API_WORDS
        self._local = threading.local()

    @contextmanager
    def stopping_on(self, stop: threading.Event) -> Iterator[None]:
        """Within it, this thread's waits between two tries of a request
        end when ``stop`` is set: the request fails with its last error, as
        when its tries run out (``watch()``: a stopped node does not sit
        out the retries of a server that is gone)."""
        previous = getattr(self._local, "stop", None)
        self._local.stop = stop
        try:
            yield
        finally:
            self._local.stop = previous

    def send(
        self,
        method: str,
        route: str,
        *,
        message: Any = None,
        params: Mapping[str, str] | None = None,
        signed: bool = True,
        stream: bool = False,
        idempotent: bool = True,
        accept: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request, trying again on a busy server or a lost
        connection (see :ref:`retries`).

        :param idempotent: whether sending the request twice does no harm (a
            push carries its id; pulls, repairs and queries only read). A
            request that is not is tried again only when it cannot have
            reached the server (busy answers, refused connections).
        :param retries: instead of :attr:`retries`, for this request.
        :param timeout: seconds to wait for this request's answer, instead
            of the client's timeout (a held change feed).
        """
        retries = self.retries if retries is None else retries
        content = b"" if message is None else json.dumps(message).encode("utf-8")
        waited = 0.0
        for attempt in range(1, retries + 2):
            # Signed anew each time: a nonce is accepted only once.
            request = self.request(method, route, content, params, signed)
            if accept is not None:
                request.headers["Accept"] = accept
            if timeout is not None:
                request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
            try:
                answer = self.http.send(request, stream=stream)
            except httpx.TransportError as error:
                failure: SyncError = ServerUnreachableError(
                    f"Cannot reach the sync server at {self.base_url} ({error!s} "
                    f"[{type(error).__name__}]); check the network and try again."
                )
                failure.__cause__ = error
                never_sent = isinstance(error, _NEVER_SENT)
                asked: float | None = None
                if not (idempotent or never_sent):
                    raise failure from error
            else:
                if answer.status_code == 200:
                    return answer
                try:
                    if stream:
                        answer.read()
                    failure = _error_from(answer, route, self.base_url, self.words)
                finally:
                    answer.close()
                if answer.status_code not in RETRY_STATUSES:
                    raise failure
                asked = retry_after(answer.headers.get("Retry-After"))
            delay = self.delay(attempt, asked)
            if attempt > retries or waited + delay > self.retry_within:
                if attempt > 1:
                    failure.message += f" (tried {attempt} times)"
                    failure.args = (failure.message, *failure.args[1:])
                raise failure
            if self.on_retry is not None:
                self.on_retry(
                    Retry(route, attempt + 1, retries + 1, delay, failure)
                )
            stop: threading.Event | None = getattr(self._local, "stop", None)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise failure  # nothing sent since the last try failed
            waited += delay
        raise AssertionError("unreachable")  # pragma: no cover

    def delay(self, attempt: int, asked: float | None) -> float:
        """How long to wait before try ``attempt + 1``: what the server asked
        for, or else exponential backoff with jitter, scaled so that every
        wait together stays within ``retry_within``."""
        if asked is not None:
            return asked
        full = self.retry_within * 2.0 ** (attempt - 1) / 2.0**self.retries
        # Between half and all of it, so nodes turned away together do not
        # come back together.
        return full / 2 + self.random.uniform(0, full / 2)

    def request(
        self,
        method: str,
        route: str,
        content: bytes,
        params: Mapping[str, str] | None,
        signed: bool,
    ) -> httpx.Request:
        request = self.http.build_request(
            method,
            self.base_url + route,
            content=content or None,
            params=params,
            headers={"Content-Type": "application/json"} if content else None,
        )
        if signed:
            node_id, secret = self.credentials()
            request.headers.update(
                sign_request(
                    node_id,
                    secret,
                    request.method,
                    request.url.path,
                    request.url.query.decode("latin-1"),
                    content,
                )
            )
        return request

    def call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        answer = self.send(method, route, **kwargs)
        try:
            body = answer.json()
        except ValueError:
            raise ProtocolMismatchError(
                f"{self.base_url}{route} did not answer JSON; is "
                f"{self.words.base_url} the sync server's URL with its prefix "
                "(for example http://host:5000/sync)?"
            ) from None
        _check_protocol(body, self.base_url)
        return body  # type: ignore[no-any-return]


def _check_protocol(body: Any, base_url: str) -> None:
    if not isinstance(body, dict) or body.get("ok") is not True:
        raise ProtocolMismatchError(
            f"{base_url} answered something that is not a sync server's answer."
        )
    if body.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolMismatchError(
            f"The server at {base_url} speaks protocol {body.get('protocol')!r}; "
            f"this node speaks {PROTOCOL_VERSION}. Upgrade the older side."
        )


#: The exception class a node raises for each error code a server sends (see
#: :ref:`error-codes`), the one place codes become classes. The error keeps
#: the code it came with in ``code``. A code not listed here (a newer
#: server's) falls back to the status rules of :func:`_by_status`, as does
#: an answer without a code (a server from before codes). The three codes of
#: that time (``invalid-value``, ``invalid-key``, ``push-id-reused``) are
#: understood for one more release.
ERROR_CLASSES: dict[str, type[SyncError]] = {
    "request.invalid": ValidationError,
    "request.too_large": PayloadTooLargeError,
    "request.protocol_mismatch": ProtocolMismatchError,
    "request.excluded_column": ExcludedColumnError,
    "pull.ahead_of_server": ValidationError,
    "tracking.refused": ValidationError,
    "auth.unknown_or_bad_signature": AuthenticationError,
    "auth.unsigned": AuthenticationError,
    "auth.malformed": AuthenticationError,
    "auth.expired": AuthenticationError,
    "auth.replayed": AuthenticationError,
    "registration.token_required": AuthenticationError,
    "registration.refused": RegistrationRefusedError,
    "registration.closed": RegistrationRefusedError,
    "forbidden": ForbiddenError,
    "catalog.closed": ForbiddenError,
    "not_found": NotFoundError,
    "query.unknown_model": NotFoundError,
    "http.not_found": ProtocolMismatchError,
    "gone": GoneError,
    "log.trimmed": GoneError,
    "fleet.retired": NodeRetiredError,
    "auth.revoked": NodeRevokedError,
    "push.conflict": PushRejectedError,
    "push.broken_reference": PushRejectedError,
    "push.refused": PushRejectedError,
    # Not PushIdReusedError: the node drops a refused push's id and keeps
    # its operations queued, which is what this refusal needs too.
    "push.id_reused": PushRejectedError,
    "push-id-reused": PushRejectedError,
    "push.unique_violation": UniqueConstraintError,
    "push.invalid_value": InvalidValueError,
    "invalid-value": InvalidValueError,
    "push.invalid_key": InvalidKeyError,
    "push.out_of_share": ScopeDeniedError,
    "schema.mismatch": SchemaMismatchError,
    "schema.refused": SchemaRefusedError,
    "schema.describe": SchemaDescriptionNeededError,
    "pull.share_changed": GoneError,
    "invalid-key": InvalidKeyError,
    "server.busy": ServiceBusyError,
    "rate.limited": TooManyRequestsError,
    "server.error": SyncError,
    "server.misconfigured": SyncError,
    "catalog.refresh_locked": SyncError,
}

#: The codes servers sent before dotted codes; the error keeps its class's code.
_LEGACY_CODES = frozenset({"invalid-value", "invalid-key", "push-id-reused"})


def _error_from(
    answer: httpx.Response, route: str, base_url: str, words: Words
) -> SyncError:
    try:
        body = answer.json()
    except ValueError:
        body = None
    status = answer.status_code
    if not isinstance(body, dict) or "error" not in body:
        if status >= 500:
            return ServiceBusyError(
                f"The sync server at {base_url} failed with HTTP {status}; try "
                "again later."
            )
        return ProtocolMismatchError(
            f"{base_url}{route} answered HTTP {status} without a sync error; is "
            f"{words.base_url} the server's URL with its sync prefix?"
        )
    message = str(body["error"])
    sent = body.get("code")
    code = sent if isinstance(sent, str) else ""
    kind = ERROR_CLASSES.get(code)
    if kind is None:
        error = _by_status(answer, body, message, route, base_url, words)
    else:
        error = _build(kind, code, answer, body, message, route, base_url, words)
    if code and code not in _LEGACY_CODES:
        error.code = code
    return error


def _build(
    kind: type[SyncError],
    code: str,
    answer: httpx.Response,
    body: dict[str, Any],
    message: str,
    route: str,
    base_url: str,
    words: Words,
) -> SyncError:
    """The error of class ``kind`` for an answer that sent a known code."""
    if code == "auth.unknown_or_bad_signature":
        message += (
            " The server does not know this node (was its database reset?); "
            f"{words.register_again}."
        )
    elif code == "registration.token_required":
        message += f" {words.token}"
    elif code == "http.not_found":
        message = _missing_route(message, route, base_url, words)
    error: SyncError
    if issubclass(kind, InvalidValueError):
        error = kind(
            message,
            table=str(body.get("table")),
            key=list(body.get("key") or []),
            column=str(body.get("column")),
        )
    elif issubclass(kind, ExcludedColumnError):
        error = kind(
            message, table=str(body.get("table")), column=str(body.get("column"))
        )
    elif issubclass(kind, PushRejectedError):
        error = kind(message, list(body.get("conflicts") or []))
    elif issubclass(kind, SchemaMismatchError):
        error = kind(message, list(body.get("differences") or []))
    elif issubclass(kind, SchemaDescriptionNeededError):
        sent = body.get("digests")
        error = kind(
            message,
            {str(t): str(d) for t, d in sent.items()}
            if isinstance(sent, dict)
            else {},
        )
    elif issubclass(kind, SchemaRefusedError):
        error = kind(message, list(body.get("rows") or []))
    elif issubclass(kind, TooManyRequestsError):
        wait = retry_after(answer.headers.get("Retry-After"))
        error = kind(message, retry_after=int(wait or 60))
    else:
        error = kind(message)
    if kind is SyncError:
        error.status = answer.status_code
    return error


def _missing_route(message: str, route: str, base_url: str, words: Words) -> str:
    return (
        f"{base_url}{route} does not exist ({message}); check "
        f"{words.base_url} and the server's REFLECTSYNC_URL_PREFIX."
    )


def _by_status(
    answer: httpx.Response,
    body: dict[str, Any],
    message: str,
    route: str,
    base_url: str,
    words: Words,
) -> SyncError:
    """The error for an answer without a known code: chosen by its status
    and the words of its sentence, as nodes did before codes were sent."""
    status = answer.status_code
    if status == 400 and "protocol" in message.lower():
        return ProtocolMismatchError(message)
    if status == 400:
        return ValidationError(message)
    if status == 401:
        if message.startswith("Unknown node"):
            message += (
                " The server does not know this node (was its database reset?); "
                f"{words.register_again}."
            )
        elif "registration token" in message and route == "/register":
            message += f" {words.token}"
        return AuthenticationError(message)
    if status == 403:
        if route == "/register":
            return RegistrationRefusedError(message)
        return ForbiddenError(message)
    if status == 404:
        if route == "/query":
            return NotFoundError(message)
        return ProtocolMismatchError(
            _missing_route(message, route, base_url, words)
        )
    if status == 409:
        conflicts = list(body.get("conflicts") or [])
        if conflicts and all("columns" in c for c in conflicts):
            return UniqueConstraintError(message, conflicts)
        return PushRejectedError(message, conflicts)
    if status == 410:
        return GoneError(message)
    if status == 413:
        return PayloadTooLargeError(message)
    if status in (502, 503, 504):
        return ServiceBusyError(message)
    if status == 429:
        wait = retry_after(answer.headers.get("Retry-After"))
        return TooManyRequestsError(message, retry_after=int(wait or 60))
    error = SyncError(message)
    error.status = status
    return error
