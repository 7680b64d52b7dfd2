"""The blueprint mounted at ``REFLECTSYNC_URL_PREFIX`` and its JSON envelope.

Every answer under the prefix is JSON: ``{"ok": true, ...}`` on success,
``{"ok": false, "error": "...", "status": N}`` on failure, including 404 and
405 for paths and methods the blueprint does not have.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

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

    @blueprint.errorhandler(SyncError)
    def _sync_error(error: SyncError) -> tuple[Response, int]:
        # to_dict: the envelope plus the machine-readable fields some errors
        # carry (conflicts, code, table, key, column).
        return jsonify(error.to_dict()), error.status

    return blueprint


def install_prefix_error_handler(app: Flask, url_prefix: str) -> None:
    """Answer HTTP errors under ``url_prefix`` with the JSON envelope.

    Routing errors (404, 405) happen before a blueprint is chosen, so this is
    an app-level handler that only touches requests inside the prefix and
    leaves the rest of the app's error pages alone.
    """
    prefix = url_prefix.rstrip("/")
    previous = app.error_handler_spec[None][None].get(HTTPException)

    def _http_error(error: HTTPException) -> Any:
        path = request.path
        if path == prefix or path.startswith(prefix + "/"):
            message = error.description or error.name
            return error_response(message, error.code or 500)
        if previous is not None:
            return previous(error)
        return error

    app.register_error_handler(HTTPException, _http_error)
