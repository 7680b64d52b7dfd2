"""Sync servers in processes of their own: the example survey app under
gunicorn (one ``gthread`` worker), several at once on one database.

:func:`create_app` is what each gunicorn process loads; its settings come
from the environment (``RS_TEST_SERVER_CONFIG``, JSON). Besides the sync
routes it has ``POST /app/sites``: the server app's own tracked commit, made
in that process. :class:`ServerProcess` starts one, on a port that stays
the same across restarts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from flask import Flask, jsonify, request

#: The checkout's root (gunicorn imports ``tests.process_server`` from it).
ROOT = Path(__file__).resolve().parent.parent
CONFIG_VARIABLE = "RS_TEST_SERVER_CONFIG"


def create_app() -> Flask:
    """The survey server with the settings of ``RS_TEST_SERVER_CONFIG``."""
    from example_app import server as survey
    from flask_reflectsync.sqlite import use_immediate_transactions

    app = survey.create_app(json.loads(os.environ[CONFIG_VARIABLE]))
    with app.app_context():
        if survey.db.engine.dialect.name == "sqlite":
            use_immediate_transactions(survey.db.engine)

    @app.post("/app/sites")
    def add_site() -> Any:
        site = survey.Site(name=request.get_json()["name"])
        survey.db.session.add(site)
        survey.db.session.commit()
        return jsonify(ok=True, id=site.id)

    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """``gunicorn -k gthread`` serving :func:`create_app` on 127.0.0.1.

    :param config: the app's settings (``SQLALCHEMY_DATABASE_URI`` and
        ``REFLECTSYNC_*``).
    :param directory: where its log goes.
    :param hooks: load :mod:`flask_reflectsync.gunicorn` as gunicorn's
        config (a SIGTERM ends the change-feed holds at once).
    """

    def __init__(
        self,
        config: dict[str, Any],
        directory: Path,
        *,
        hooks: bool = True,
        graceful_timeout: float = 30,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.log = directory / f"gunicorn-{self.port}.log"
        self.hooks = hooks
        self.graceful_timeout = graceful_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return self.url + "/sync"

    def start(self, patience: float = 60) -> None:
        command = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gthread", "--threads", "16", "--workers", "1",
            "--bind", f"127.0.0.1:{self.port}",
            "--graceful-timeout", str(self.graceful_timeout),
            "--error-logfile", str(self.log),
        ]
        if self.hooks:
            command += ["--config", "python:flask_reflectsync.gunicorn"]
        command.append("tests.process_server:create_app()")
        environment = {**os.environ, CONFIG_VARIABLE: json.dumps(self.config)}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=environment,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # its workers die with it (kill)
        )
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.log.read_text()}")
            try:
                if httpx.get(self.base + "/openapi.json", timeout=1).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not answer: {self.log.read_text()}")

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM (gunicorn's graceful stop); the seconds it took to exit."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        finally:
            self.kill()
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL to the master and its workers (a crash, or cleaning up)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def add_site(self, name: str) -> int:
        """The server app's own commit, in this process."""
        answer = httpx.post(self.url + "/app/sites", json={"name": name}, timeout=30)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["id"])
