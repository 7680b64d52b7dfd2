"""The server's settings, read from ``REFLECTSYNC_*`` configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import ConfigurationError

#: The configuration keys of the sync server and their defaults.
SERVER_CONFIG_DEFAULTS: dict[str, Any] = {
    "REFLECTSYNC_SECRET_KEY": None,
    "REFLECTSYNC_REGISTRATION_TOKEN": None,
    "REFLECTSYNC_OPEN_REGISTRATION": False,
    "REFLECTSYNC_SIGNATURE_MAX_AGE": 300,
    "REFLECTSYNC_MAX_BODY_SIZE": 64 * 1024 * 1024,
    "REFLECTSYNC_PULL_PAGE_SIZE": 5000,
    "REFLECTSYNC_QUERY_PAGE_SIZE": 100,
    "REFLECTSYNC_REPAIR_CHUNK_ROWS": 1000,
    "REFLECTSYNC_REGISTRATIONS_PER_MINUTE": 120,
    "REFLECTSYNC_AUTH_FAILURES_PER_MINUTE": 120,
    "REFLECTSYNC_NODE_INACTIVE_DAYS": None,
    "REFLECTSYNC_FEED_MAX_WAIT": 25.0,
    "REFLECTSYNC_FEED_POLL_INTERVAL": 0.25,
}


@dataclass(frozen=True)
class ServerSettings:
    """What the protocol handlers need to know of the configuration.

    :param secret_key: derives node secrets (``REFLECTSYNC_SECRET_KEY``, else
        the app's ``SECRET_KEY``). Changing it invalidates every node.
    :param registration_token: the token a node must present to register.
    :param open_registration: anyone may register (explicit opt-in).
    :param signature_max_age: seconds a signed request stays valid.
    :param max_body_size: largest request body accepted, in bytes.
    :param pull_page_size: most rows in one pull page (which reads at most
        ten times as many logged operations).
    :param query_page_size: most rows in one query page.
    :param repair_chunk_rows: rows read per database round trip by repair.
    :param node_inactive_days: a node not seen for longer no longer pins
        the trim watermark and must repair when it returns (``None``: never).
    :param feed_max_wait: the most seconds ``POST /changes`` holds a request
        (and its default wait).
    :param feed_poll_interval: seconds between two looks at the version
        counter by a worker process's change feed while nodes wait.
    """

    secret_key: bytes | None
    registration_token: str | None = None
    open_registration: bool = False
    signature_max_age: int = 300
    max_body_size: int = 64 * 1024 * 1024
    pull_page_size: int = 5000
    query_page_size: int = 100
    repair_chunk_rows: int = 1000
    node_inactive_days: float | None = None
    feed_max_wait: float = 25.0
    feed_poll_interval: float = 0.25

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ServerSettings:
        """Build the settings from a Flask config (missing keys: defaults)."""

        def get(key: str) -> Any:
            return config.get(key, SERVER_CONFIG_DEFAULTS[key])

        key = get("REFLECTSYNC_SECRET_KEY") or config.get("SECRET_KEY")
        return cls(
            secret_key=key.encode("utf-8") if isinstance(key, str) else key,
            registration_token=get("REFLECTSYNC_REGISTRATION_TOKEN"),
            open_registration=bool(get("REFLECTSYNC_OPEN_REGISTRATION")),
            signature_max_age=int(get("REFLECTSYNC_SIGNATURE_MAX_AGE")),
            max_body_size=int(get("REFLECTSYNC_MAX_BODY_SIZE")),
            pull_page_size=int(get("REFLECTSYNC_PULL_PAGE_SIZE")),
            query_page_size=int(get("REFLECTSYNC_QUERY_PAGE_SIZE")),
            repair_chunk_rows=int(get("REFLECTSYNC_REPAIR_CHUNK_ROWS")),
            node_inactive_days=_days(get("REFLECTSYNC_NODE_INACTIVE_DAYS")),
            feed_max_wait=_seconds(get("REFLECTSYNC_FEED_MAX_WAIT"), "MAX_WAIT"),
            feed_poll_interval=_seconds(
                get("REFLECTSYNC_FEED_POLL_INTERVAL"), "POLL_INTERVAL"
            ),
        )

    def require_secret_key(self) -> bytes:
        """The key node secrets derive from.

        :raises ConfigurationError: if neither key is configured.
        """
        if not self.secret_key:
            raise ConfigurationError(
                "The sync server needs a key to derive node secrets: set "
                "REFLECTSYNC_SECRET_KEY or the app's SECRET_KEY."
            )
        return self.secret_key


NONCES_TABLE = "reflectsync_nonces"


def define_protocol_tables(metadata: sa.MetaData) -> sa.Table:
    """Define the server's nonce table on ``metadata`` (or return it).

    One row per signed request seen within the signature window, so a
    replayed request is refused by every worker process.
    """
    existing = metadata.tables.get(NONCES_TABLE)
    if existing is not None:
        return existing
    return sa.Table(
        NONCES_TABLE,
        metadata,
        sa.Column("node_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _days(value: Any) -> float | None:
    """``REFLECTSYNC_NODE_INACTIVE_DAYS``: ``None`` (never), else a positive
    number of days."""
    if value is None:
        return None
    days = float(value)
    if not days > 0:
        raise ConfigurationError(
            "REFLECTSYNC_NODE_INACTIVE_DAYS must be a positive number of days "
            f"or None (never); it is {value!r}."
        )
    return days


def _seconds(value: Any, name: str) -> float:
    """``REFLECTSYNC_FEED_<name>``: a positive number of seconds."""
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(
            f"REFLECTSYNC_FEED_{name} must be a positive number of seconds; "
            f"it is {value!r}."
        )
    return seconds
