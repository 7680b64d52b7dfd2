"""The blueprint mounted at ``REFLECTSYNC_URL_PREFIX`` and its JSON envelope.

Every answer under the prefix is JSON: ``{"ok": true, ...}`` on success,
``{"ok": false, "error": "...", "status": N}`` on failure, including 404 and
405 for paths and methods the blueprint does not have.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, default_exceptions
from werkzeug.routing import RequestRedirect

from ..errors import SyncError


def error_response(message: str, status: int) -> tuple[Response, int]:
    """The JSON error envelope."""
    return jsonify({"ok": False, "error": message, "status": status}), status


def ok_response(**payload: Any) -> Response:
    """The JSON success envelope, payload under named keys."""
    return jsonify({"ok": True, **payload})


def make_blueprint(name: str) -> Blueprint:
    """Build the extension's blueprint; routes are added before registration.

    :param name: the blueprint name (``REFLECTSYNC_BLUEPRINT_NAME``).
    """
    blueprint = Blueprint(name, __name__)
    blueprint.register_error_handler(SyncError, _sync_error)
    # Flask tries a blueprint's handler for a status code before the app's
    # handler for that code, and a blueprint's handler for an exception class
    # before the app's: one per code and one for Exception make the envelope
    # win over whatever the host app registers, before or after init_app.
    for code in default_exceptions:
        blueprint.register_error_handler(code, _http_error)
    blueprint.register_error_handler(HTTPException, _http_error)
    blueprint.register_error_handler(Exception, _unhandled)
    return blueprint


def _sync_error(error: SyncError) -> tuple[Response, int]:
    # to_dict: the envelope plus the machine-readable fields some errors
    # carry (conflicts, code, table, key, column).
    response = jsonify(error.to_dict())
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int):
        response.headers["Retry-After"] = str(retry_after)
    return response, error.status


def _http_error(error: HTTPException) -> tuple[Response, int]:
    status = error.code or 500
    response, status = error_response(error.description or error.name, status)
    # Allow (405), WWW-Authenticate (401), Retry-After (429, 503)...
    for header, value in error.get_headers():
        if header.lower() != "content-type":
            response.headers[header] = value
    return response, status


def _unhandled(error: Exception) -> Any:
    """Keep the app's ``@errorhandler(Exception)`` away from the prefix.

    Raising again is what Flask does when no handler matches: it logs the
    crash, sends ``got_request_exception``, propagates it when the app is
    testing, and answers with the 500 handler, which is the blueprint's.
    """
    raise error


def install_prefix_guard(app: Flask, url_prefix: str) -> None:
    """Answer routing errors and ``OPTIONS`` under ``url_prefix`` with JSON.

    A path or method the blueprint does not have is refused before any
    blueprint is chosen, so the blueprint's handlers never see it and the
    app's would answer. This app-level ``before_request`` runs first (it is
    put in front of the app's own) and answers those requests itself; it
    leaves the rest of the app alone.
    """
    prefix = url_prefix.rstrip("/")

    def guard() -> Any:
        path = request.path
        if not (path == prefix or path.startswith(prefix + "/")):
            return None
        failed = request.routing_exception
        if isinstance(failed, HTTPException) and not isinstance(
            failed, RequestRedirect
        ):
            return _http_error(failed)
        rule = request.url_rule
        if (
            failed is None
            and request.method == "OPTIONS"
            and getattr(rule, "provide_automatic_options", False)
        ):
            return _options()
        return None

    app.before_request_funcs.setdefault(None, []).insert(0, guard)


def _options() -> Response:
    """``OPTIONS``: the methods the path answers, as JSON and in ``Allow``."""
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None  # a request whose route matched has one
    methods = sorted(adapter.allowed_methods())
    response = ok_response(methods=methods)
    response.allow.update(methods)
    return response
