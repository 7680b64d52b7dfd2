"""The sync routes: thin views over :mod:`flask_reflectsync.server`.

``POST /register``, ``POST /push``, ``POST /pull``, ``POST /changes``,
``GET /repair``, ``GET /query`` and ``GET /openapi.json`` under
``REFLECTSYNC_URL_PREFIX``.
Everything but registration and the OpenAPI document needs a signed request.

The handlers leave the transaction to these views: each view commits the
session once the handler has done its work, before answering, and rolls it
back when anything fails (:func:`_committed`). The one exception is
:func:`~flask_reflectsync.server.push.push`, which owns its transactions
(see its docstring). A signed request's nonce is committed on its own,
before the request is served, so that it stays recorded when the request
then fails; a node's expired nonces are deleted once per signature window
and process (:class:`~flask_reflectsync.server.nodes.NonceSweeps`), not on
every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from blinker import Signal
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from .. import signals
from ..errors import (
    AuthenticationError,
    GoneError,
    PayloadTooLargeError,
    PushRejectedError,
    SyncError,
    ValidationError,
)
from ..server import fleet, nodes
from ..server.column_names import column_history, record_columns
from ..server.feed import FeedHub, read_changes_request, wait_for_news
from ..server.openapi import openapi_document
from ..server.pull import change_count, read_page, record_pulled
from ..server.pull_reshare import reshare_page
from ..server.pull_scopes import Share
from ..server.push import push
from ..server.query import query
from ..server.repair import check_repair_accepted, repair_stream
from ..server.schema import TrackedSchema
from ..server.schema_check import check_repair, fit_page, report
from ..server.scopes import ScopeNode, principal_from_text, principal_text
from ..server.settings import ServerSettings, define_protocol_tables
from ..tracking.numbering import number_versions
from ..tracking.registry import registry_state
from ..tracking.tables import current_version
from ..wire.messages import PROTOCOL_VERSION, decode_body, validate
from ..wire.repair import MEDIA_TYPE as REPAIR_MEDIA_TYPE
from ..wire.schema import ColumnHistory
from .api import ok_response
from .limits import AddressLimit


def add_sync_routes(blueprint: Blueprint) -> None:
    """Add the sync routes to ``blueprint`` (before it is registered)."""
    blueprint.add_url_rule("/register", view_func=_register, methods=["POST"])
    blueprint.add_url_rule("/push", view_func=_push, methods=["POST"])
    blueprint.add_url_rule("/pull", view_func=_pull, methods=["POST"])
    blueprint.add_url_rule("/changes", view_func=_changes, methods=["POST"])
    blueprint.add_url_rule("/repair", view_func=_repair, methods=["GET"])
    blueprint.add_url_rule("/schema-check", view_func=_schema_check, methods=["POST"])
    blueprint.add_url_rule("/query", view_func=_query, methods=["GET"])
    blueprint.add_url_rule("/openapi.json", view_func=_openapi, methods=["GET"])
    blueprint.register_error_handler(PushRejectedError, _rejected)


def _rejected(error: PushRejectedError) -> tuple[Response, int]:
    return jsonify(error.to_dict()), error.status


# -- request plumbing ---------------------------------------------------------------


def _state() -> Any:
    return current_app.extensions["reflectsync"]


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _settings() -> ServerSettings:
    """The server's settings, built once per app: from the ``REFLECTSYNC_*``
    values kept at ``init_app`` and the app's ``SECRET_KEY`` (read on every
    request, so a new key still takes effect)."""
    state = _state()
    secret = current_app.config.get("SECRET_KEY")
    cached = state.settings
    if cached is not None and cached[0] == secret:
        return cached[1]  # type: ignore[no-any-return]
    settings = ServerSettings.from_config({**state.config, "SECRET_KEY": secret})
    state.settings = (secret, settings)
    return settings


log = logging.getLogger("flask_reflectsync")


def _notify(signal: Signal, **payload: Any) -> None:
    """Send a sync signal with the app as sender.

    What it reports is done (committed, or refused and rolled back), and the
    node must hear its answer: a receiver that raises is logged, the other
    receivers still hear the signal, and the request is answered as if none
    had raised (a 500 after a committed registration would leave a node row
    whose secret nobody got; after a push, a retry for nothing)."""
    if getattr(signal, "is_muted", False):  # Signal.muted(), blinker >= 1.7
        return
    sender = _app()
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **payload)
        except Exception:
            log.exception(
                "A receiver of %s raised; the request is answered anyway.",
                getattr(signal, "name", signal),
            )


def _answer(**payload: Any) -> Response:
    return ok_response(protocol=PROTOCOL_VERSION, **payload)


#: How much of a body is read at a time.
_READ_SIZE = 64 * 1024


def _body(settings: ServerSettings) -> bytes:
    """The request body, read up to ``REFLECTSYNC_MAX_BODY_SIZE`` bytes.

    Read here, one byte past the limit at most, rather than by assigning
    ``request.max_content_length`` (which has no setter before Flask 3.1):
    a body sent in chunks has no Content-Length to refuse it by.
    """
    limit = settings.max_body_size
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(f"has {length} bytes", limit)
    stream = request.stream
    pieces: list[bytes] = []
    size = 0
    while True:
        piece = stream.read(min(_READ_SIZE, limit + 1 - size))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            raise _too_large("is larger than that", limit)


def _too_large(what: str, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The server accepts request bodies of at most {limit} bytes "
        f"(REFLECTSYNC_MAX_BODY_SIZE); this one {what}."
    )


def _message(body: bytes) -> Any:
    return decode_body(body)


def _limits() -> tuple[AddressLimit, AddressLimit]:
    """This app's (registrations, authentication failures) limits, made on
    first use from the configuration at ``init_app``."""
    state = _state()
    found = state.limits
    if found is None:
        config = state.config
        found = state.limits = (
            AddressLimit(
                "registrations", config["REFLECTSYNC_REGISTRATIONS_PER_MINUTE"]
            ),
            AddressLimit(
                "badly signed requests",
                config["REFLECTSYNC_AUTH_FAILURES_PER_MINUTE"],
            ),
        )
    return found  # type: ignore[no-any-return]


@contextmanager
def _committed() -> Iterator[Any]:
    """The app's session, committed when the block ends, rolled back if it
    raises."""
    session = _state().db.session
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


def _authenticate(settings: ServerSettings, body: bytes) -> int:
    state = _state()
    failures = _limits()[1]
    failures.check(request.remote_addr)
    nonces = define_protocol_tables(state.db.metadata)
    try:
        # Committed before the request is served, whatever it then does: a
        # nonce protects against replays only once every process can see it.
        with _committed() as session:
            node_id = nodes.authenticate(
                session,
                state.tables,
                nonces,
                settings,
                method=request.method,
                path=request.script_root + request.path,
                query=request.query_string.decode("latin-1"),
                headers=request.headers,
                body=body,
            )
    except AuthenticationError:
        failures.count(request.remote_addr)
        raise
    if _sweeps().due(node_id, settings, time.monotonic()):
        try:
            with _committed() as session:
                nodes.forget_old_nonces(session, nonces, settings, node_id)
        except sa.exc.OperationalError:
            pass  # lost a lock race (rolled back); a later request does it
    return node_id


def _sweeps() -> nodes.NonceSweeps:
    """This app's record of when each node's old nonces were deleted."""
    state = _state()
    if state.nonce_sweeps is None:
        state.nonce_sweeps = nodes.NonceSweeps()
    return state.nonce_sweeps  # type: ignore[no-any-return]


def _column_history(served: _Served) -> dict[str, ColumnHistory]:
    """The earlier names of the served tables' columns (PostgreSQL; see
    :mod:`~flask_reflectsync.server.column_names`: a pull, repair or
    schema check served records the live ones, once per process)."""
    return column_history(_state().db.engine, served.schema)


def current_schema() -> TrackedSchema:
    """The tracked tables of the current app's metadata, derived again only
    when a class is tracked or untracked or a table is added to the
    metadata."""
    state = _state()
    metadata = state.db.metadata
    key = (*registry_state(), len(metadata.tables))
    cached = state.schema
    if cached is not None and cached[0] == key:
        return cached[1]  # type: ignore[no-any-return]
    schema = TrackedSchema.of(metadata)
    state.schema = (key, schema)
    return schema


@dataclass(frozen=True)
class _Served:
    """What a signed request of a node is served from: the tracked tables it
    may know of (hidden ones left out), its share (``None`` without scopes),
    and whether its data was served under another principal or other rules
    (it must repair first) with the digest it is served under now; when
    only the principal changed, the share it was served (``moved_from``:
    its next pull moves it, see :mod:`~flask_reflectsync.server.pull_reshare`)."""

    schema: TrackedSchema
    share: Share | None
    stale: bool
    scoped_as: str | None
    moved_from: Share | None = None


def _served(node_id: int) -> _Served:
    state = _state()
    schema = current_schema()
    scopes = state.extension.scopes
    if not scopes:
        return _Served(schema, None, False, None)
    scopes.warn_unscoped(schema.tables)
    with _committed() as session:  # it only reads: ends the transaction
        principal, scoped_as, served = nodes.node_principal(
            session, state.tables, node_id
        )
    visible = TrackedSchema(
        {n: i for n, i in schema.tables.items() if not scopes.hidden(n)}
    )
    digest = scopes.digest(principal_text(principal) if principal else None)
    share = Share(scopes, schema.tables, ScopeNode(node_id, principal))
    moved_from = None
    if scoped_as != digest and scoped_as is not None and (
        scopes.digest(served) == scoped_as
    ):
        # The rules are the ones it was served under: only its principal
        # changed, and the old one tells what it holds.
        old = ScopeNode(node_id, principal_from_text(served))
        moved_from = Share(scopes, schema.tables, old)
    return _Served(visible, share, scoped_as != digest, digest, moved_from)


# -- views ------------------------------------------------------------------------


def _register() -> Response:
    state = _state()
    registrations = _limits()[0]
    registrations.check(request.remote_addr)
    registrations.count(request.remote_addr)
    settings = _settings()
    message = _message(_body(settings))
    scopes = state.extension.scopes
    with _committed() as session:
        node = nodes.register_node(
            session,
            state.tables,
            message,
            settings,
            state.extension.registration_checks,
            scope_digest=scopes.digest if scopes else None,
        )
    if not node.pop("again", False):  # a retry whose first answer was lost
        _notify(signals.node_registered, node={"id": node["id"], "name": node["name"]})
    return _answer(node=node)


def _push() -> Response:
    state = _state()
    settings = _settings()
    body = _body(settings)
    node_id = _authenticate(settings, body)
    message = _message(body) if body else None
    served = _served(node_id)
    try:
        outcome = push(
            state.db.session,
            state.tables,
            served.schema,
            node_id,
            message,
            served.share,
            _column_history(served),
            # A large push's message is freed as it is decoded; a retry
            # after a busy database parses the body again.
            parse_again=lambda: _message(body),
        )
    except SyncError as error:
        if error.code == "schema.describe":
            raise  # not refused: the node sends its description at once
        push_id = message.get("push_id") if isinstance(message, dict) else None
        _notify(
            signals.push_rejected,
            node=node_id,
            push_id=push_id if isinstance(push_id, str) else None,
            reason=error.message,
            status=error.status,
        )
        raise
    if outcome.applied:
        _notify(signals.push_accepted, node=node_id, **outcome.answer)
    return _answer(**outcome.answer)


def _pull() -> Response:
    state = _state()
    settings = _settings()
    body = _body(settings)
    node_id = _authenticate(settings, body)
    message = _message(body)
    served = _served(node_id)
    if served.stale and served.moved_from is None:
        raise GoneError(
            "This node's share changed (the server's sync scopes changed, or "
            "its principal and the server cannot tell its old share) since "
            "its data was served: repair it to receive its share as it is "
            "now. Nothing queued is lost: push first.",
            code="pull.share_changed",
        )
    # A node whose principal changed is first served under the old one.
    share = served.moved_from if served.stale else served.share
    # In a transaction of its own: the page's must start after the
    # numbering in read_page (a MySQL snapshot taken by this read would
    # hide the versions numbered there).
    with _committed() as session:
        fleet.check_not_retired(session, state.tables, node_id)
    history = _column_history(served)
    with _committed() as session:
        page = read_page(
            session,
            state.tables,
            served.schema,
            node_id,
            message,
            page_size=settings.pull_page_size,
            share=share,
        )
        # Before anything is recorded: a page the node cannot store is
        # refused with its version unmoved.
        fit_page(page, message, served.schema, history)
        record_pulled(session, state.tables, served.schema, node_id, page, message)
    record_columns(state.db.engine, served.schema)
    if served.stale:
        page = _moving_page(node_id, message, served, page)
    _notify(
        signals.pull_served,
        node=node_id,
        since=message["since"],
        until=page["until"],
        operations=change_count(page),
        more=page["cursor"] is not None or bool(page.get("moving")),
    )
    return _answer(**page)


def _moving_page(
    node_id: int, message: dict[str, Any], served: _Served, page: dict[str, Any]
) -> dict[str, Any]:
    """What a node whose principal changed is answered, after ``page`` was
    read under its old principal: that page while it catches up (marked
    ``moving``: the node pulls again), then, once it is current, the page
    that moves it to its new share (see
    :mod:`~flask_reflectsync.server.pull_reshare`)."""
    assert served.moved_from is not None and served.share is not None
    current = page["cursor"] is None and page["until"] == message["since"]
    if not (current and not page["changes"]):
        return {**page, "moving": True}
    state = _state()
    return reshare_page(
        state.db.engine,
        state.tables,
        served.schema,
        node_id,
        page["until"],
        served.moved_from,
        served.share,
        served.scoped_as,
        check=lambda moved: fit_page(
            moved, message, served.schema, _column_history(served)
        ),
    )


def _feed_hub(settings: ServerSettings) -> FeedHub:
    """This process's watch of the log, made on first use."""
    state = _state()
    hub = state.feed_hub
    if hub is None:
        hub = state.feed_hub = FeedHub(
            state.db.engine, state.tables, settings.feed_poll_interval
        )
    return hub  # type: ignore[no-any-return]


def _changes() -> Response:
    """The change feed: held until the node's share has a version after
    ``since`` (see :mod:`flask_reflectsync.server.feed`)."""
    state = _state()
    settings = _settings()
    body = _body(settings)
    node_id = _authenticate(settings, body)
    since, wait = read_changes_request(_message(body), settings.feed_max_wait)
    served = _served(node_id)
    with _committed() as session:
        fleet.check_not_retired(session, state.tables, node_id)
        current = current_version(session, state.tables)
    if since > current:
        number_versions(state.db.engine, state.tables)
        with _committed() as session:
            current = current_version(session, state.tables)
        if since > current:
            raise ValidationError(
                f"since {since} is newer than the server's latest version "
                f"{current}; the node must repair from this server.",
                code="pull.ahead_of_server",
            )
    if served.stale:
        # The pull tells the node what to do (repair its share).
        return _answer(changed=True, version=current)
    answer = wait_for_news(
        state.db.engine,
        state.tables,
        _feed_hub(settings),
        node_id,
        since,
        served.share,
        wait,
    )
    return _answer(**answer)


def _repair() -> Response:
    state = _state()
    settings = _settings()
    body = _body(settings)
    node_id = _authenticate(settings, body)
    check_repair_accepted(request.headers.get("Accept"))
    served = _served(node_id)
    # The node's schema identity, when it sent one (nodes from before the
    # handshake send no body): compared before anything is streamed.
    if body:
        check_repair(
            validate(_message(body), "RepairRequest"),
            served.schema,
            _column_history(served),
        )
    record_columns(state.db.engine, served.schema)
    lines = repair_stream(
        state.db.engine,
        state.tables,
        served.schema,
        chunk_rows=settings.repair_chunk_rows,
        node_id=node_id,
        share=served.share,
        scoped_as=served.scoped_as,
    )
    return Response(lines, mimetype=REPAIR_MEDIA_TYPE)


def _schema_check() -> Response:
    """What differs between the node's tracked tables and the server's (see
    :func:`~flask_reflectsync.server.schema_check.report`)."""
    settings = _settings()
    body = _body(settings)
    node_id = _authenticate(settings, body)
    message = validate(_message(body), "SchemaCheckRequest")
    served = _served(node_id)
    answer = report(message, served.schema, _column_history(served))
    record_columns(_state().db.engine, served.schema)
    return _answer(**answer)


def _query() -> Response:
    settings = _settings()
    node_id = _authenticate(settings, _body(settings))
    served = _served(node_id)
    with _committed() as session:  # it only reads: ends the transaction
        answer = query(
            session,
            served.schema,
            {name: values for name, values in request.args.lists()},
            page_size=settings.query_page_size,
            share=served.share,
        )
    return _answer(**answer)


def _openapi() -> Response:
    prefix = request.script_root + _state().config["REFLECTSYNC_URL_PREFIX"]
    return jsonify(openapi_document(prefix))
