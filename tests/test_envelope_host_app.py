"""The JSON envelope under the prefix survives the host app's error handlers.

Real apps register app-wide handlers (``@app.errorhandler(404)``, ``(500)``,
``(Exception)``, ``(HTTPException)``) that answer HTML or their own JSON;
whether they were registered before or after ``init_app``, every answer under
the prefix stays ``{"ok": false, "error": ..., "status": N, "code": ...}``, and the rest
of the app keeps its handlers.

These tests use pytest-flask: the ``app`` fixture below is what its
``client`` fixture drives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, abort, request
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy
from werkzeug.exceptions import HTTPException
from werkzeug.test import TestResponse

from flask_reflectsync import ReflectSync

HOST_HANDLERS = ["html-by-code", "json-by-code", "by-class"]


def _install_host_handlers(app: Flask, style: str) -> None:
    """The kind of handlers real apps register, answering their own way."""
    if style == "html-by-code":
        for code in (400, 401, 403, 404, 405, 500):
            app.register_error_handler(code, lambda e: ("<h1>Oops</h1>", 418))
    elif style == "json-by-code":
        for code in (401, 403, 404, 405, 500):
            app.register_error_handler(code, lambda e: ({"error": "nope"}, 404))
    else:

        @app.errorhandler(HTTPException)
        def http_page(error: HTTPException) -> tuple[str, int]:
            return f"<p>{error.name}</p>", error.code or 500

        @app.errorhandler(Exception)
        def crash_page(error: Exception) -> tuple[dict[str, str], int]:
            return {"error": "Something broke"}, 500


def _catalog_gate() -> bool:
    """Lets the catalog route crash or abort on demand, inside the view."""
    wanted = request.args.get("do")
    if wanted == "crash":
        raise RuntimeError("a bug inside a view under the prefix")
    if wanted == "abort":
        abort(401)
    return False  # a 403 SyncError otherwise


@pytest.fixture(params=["before-init_app", "after-init_app"])
def order(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=HOST_HANDLERS)
def style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(order: str, style: str) -> Iterator[Flask]:
    """A host app with its own error handlers (pytest-flask's ``app``)."""
    app = Flask("host_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        PROPAGATE_EXCEPTIONS=False,  # production behaviour: crashes are answered
    )
    db = SQLAlchemy(app)
    if order == "before-init_app":
        _install_host_handlers(app, style)
    sync = ReflectSync(app, db)
    sync.catalog_access(_catalog_gate)
    if order == "after-init_app":
        _install_host_handlers(app, style)

    @app.get("/elsewhere/boom")
    def boom() -> str:
        raise RuntimeError("a bug outside the prefix")

    yield app
    with app.app_context():
        db.engine.dispose()


def _envelope(
    response: TestResponse, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json", response.get_data(as_text=True)
    body = response.get_json()
    assert body == {
        "ok": False,
        "error": body["error"],
        "status": status,
        "code": code or body["code"],
    }
    assert isinstance(body["error"], str) and body["error"].endswith(".")
    return body  # type: ignore[no-any-return]


Call = Callable[[FlaskClient], TestResponse]

CASES: list[tuple[str, Call, int]] = [
    ("unknown path", lambda c: c.get("/sync/nope"), 404),
    ("the prefix itself", lambda c: c.get("/sync"), 404),
    ("not an id", lambda c: c.get("/sync/tables/abc"), 404),
    ("deep unknown path", lambda c: c.post("/sync/a/b/c", data=b"x"), 404),
    ("wrong method", lambda c: c.delete("/sync/push"), 405),
    ("wrong method on openapi", lambda c: c.post("/sync/openapi.json"), 405),
    ("crash in a view", lambda c: c.get("/sync/schemas?do=crash"), 500),
    ("abort in a view", lambda c: c.get("/sync/schemas?do=abort"), 401),
    ("SyncError in a view", lambda c: c.get("/sync/schemas"), 403),
    ("bad JSON", lambda c: c.post("/sync/register", data=b"{"), 400),
    ("unknown path, OPTIONS", lambda c: c.options("/sync/nope"), 404),
]


@pytest.mark.parametrize(
    ("label", "call", "status"), CASES, ids=[label for label, _, _ in CASES]
)
def test_errors_under_the_prefix_are_the_envelope(
    client: FlaskClient, label: str, call: Call, status: int
) -> None:
    _envelope(call(client), status, CODES[label])


#: The code each case of CASES answers with.
CODES = {
    "unknown path": "http.not_found",
    "the prefix itself": "http.not_found",
    "not an id": "http.not_found",
    "deep unknown path": "http.not_found",
    "wrong method": "http.method_not_allowed",
    "wrong method on openapi": "http.method_not_allowed",
    "crash in a view": "http.internal_server_error",
    "abort in a view": "http.unauthorized",
    "SyncError in a view": "forbidden",
    "bad JSON": "request.invalid",
    "unknown path, OPTIONS": "http.not_found",
}


def test_405_says_which_methods_are_allowed(client: FlaskClient) -> None:
    push = client.get("/sync/push")
    _envelope(push, 405)
    assert set(push.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    document = client.put("/sync/openapi.json")
    _envelope(document, 405)
    assert set(document.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_options_under_the_prefix_answers_json(client: FlaskClient) -> None:
    for path, methods in [
        ("/sync/push", {"POST", "OPTIONS"}),
        ("/sync/schemas", {"GET", "HEAD", "OPTIONS"}),
    ]:
        response = client.options(path)
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        assert set(response.headers["Allow"].split(", ")) == methods
        body = response.get_json()
        assert body == {"ok": True, "methods": sorted(methods)}


def test_the_rest_of_the_app_keeps_its_handlers(
    client: FlaskClient, style: str
) -> None:
    for response in (client.get("/elsewhere"), client.get("/elsewhere/boom")):
        assert response.status_code in (404, 418, 500)
        if style == "json-by-code":
            assert response.get_json() == {"error": "nope"} or (
                response.status_code == 500
            )
        else:
            assert response.mimetype == "text/html" or response.get_json() == {
                "error": "Something broke"
            }
        assert "ok" not in (response.get_json(silent=True) or {})
