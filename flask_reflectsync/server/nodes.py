"""Registering nodes and authenticating their signed requests.

A node's secret is never stored. Registration draws a random salt from
:mod:`secrets` and stores ``hmac-sha256$<salt>`` in
``reflectsync_nodes.secret_digest``; the secret is
``HMAC-SHA256(server key, node id + salt)``, recomputed on every request. A
copy of the database alone therefore cannot sign requests, and rotating the
server key revokes every node at once.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import AuthenticationError, ConfigurationError, RegistrationRefusedError
from ..tracking import LogTables, define_tables
from ..tracking.tables import NODES
from ..wire.messages import validate
from ..wire.signing import (
    HEADER_NODE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    canonical_request,
    signature_matches,
    signed_headers,
)
from .settings import ServerSettings

#: Decides whether a registration may go ahead; receives the validated
#: registration message.
RegistrationCheck = Callable[[Mapping[str, Any]], Any]

_SCHEME = "hmac-sha256"
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: ASCII digits only: ``str.isdigit()`` also takes ``"²"``, which ``int()``
#: refuses. Node ids are the nodes table's 32-bit keys.
_NODE_ID = re.compile(r"[1-9][0-9]{0,9}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NODE_ID_MAX = 2**31 - 1


def define_nodes_table(metadata: sa.MetaData) -> sa.Table:
    """Define (or return) ``reflectsync_nodes`` on ``metadata``: the server's
    registered nodes. Only the server has it; a node's database never
    creates it (node files made before it moved here may still hold an
    unused copy)."""
    found = metadata.tables.get(NODES)
    if found is not None:
        return found
    return sa.Table(
        NODES,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, default=""),
        # Never the secret itself: a keyed digest of it (see the protocol docs).
        sa.Column("secret_digest", sa.String(128), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_pulled_version", sa.BigInteger, nullable=False, default=0),
    )


def define_server_log(metadata: sa.MetaData) -> LogTables:
    """The server's operations log on ``metadata``: the log tables of
    :func:`~flask_reflectsync.tracking.define_tables`, with
    ``reflectsync_versions.node_id`` referencing ``reflectsync_nodes``."""
    return define_tables(metadata, nodes=define_nodes_table(metadata))


def nodes_table(tables: LogTables) -> sa.Table:
    """The server's ``reflectsync_nodes`` of ``tables``.

    :raises ConfigurationError: ``tables`` is a log without it (a node's).
    """
    if tables.nodes is None:
        raise ConfigurationError(
            "These log tables have no reflectsync_nodes: define the server's "
            "with flask_reflectsync.server.nodes.define_server_log()."
        )
    return tables.nodes


def derive_secret(key: bytes, node_id: int, salt: str) -> str:
    """The secret of node ``node_id`` whose stored salt is ``salt``."""
    material = f"reflectsync-node-secret|{node_id}|{salt}".encode()
    digest = hmac.new(key, material, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def register_node(
    session: Session,
    tables: LogTables,
    message: Any,
    settings: ServerSettings,
    checks: Iterable[RegistrationCheck] = (),
    *,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Create a node if the registration gates let it in.

    The gates: with ``open_registration`` anyone may register. Otherwise at
    least one gate must be configured and every configured one must pass: the
    registration token must match (compared in constant time), and every
    check must return a true value.

    :return: ``{"id", "name", "secret"}``; the secret is shown only here
        (and to a retry of the same ``registration_id``, with
        ``"again": True``, until the node signs a request).
    :raises RegistrationRefusedError: (403) when a gate says no.
    :raises AuthenticationError: (401) when a token is required but missing.
    """
    registration = validate(message, "RegisterRequest")
    checks = list(checks)
    key = settings.require_secret_key()
    if not settings.open_registration:
        _admit(registration, settings, checks)

    name = registration.get("name", "")
    # The node's registration id is the salt its secret derives from: a
    # retry of a registration whose answer was lost finds the node it made
    # and gets the same secret, until the node signs its first request.
    chosen = registration.get("registration_id")
    if chosen is not None:
        nodes = nodes_table(tables)
        found = session.execute(
            sa.select(nodes.c.id, nodes.c.name).where(
                nodes.c.secret_digest == f"{_SCHEME}${chosen}",
                nodes.c.last_seen_at.is_(None),
            )
        ).first()
        session.rollback()
        if found is not None:
            return {
                "id": found.id,
                "name": found.name,
                "secret": derive_secret(key, found.id, chosen),
                "again": True,
            }
    salt = chosen or secrets.token_hex(16)
    result: sa.CursorResult[Any] = session.execute(  # type: ignore[assignment]
        sa.insert(nodes_table(tables)).values(
            name=name,
            secret_digest=f"{_SCHEME}${salt}",
            registered_at=now or _now(),
            last_pulled_version=0,
        )
    )
    assert result.inserted_primary_key is not None
    (node_id,) = result.inserted_primary_key
    session.commit()
    return {"id": node_id, "name": name, "secret": derive_secret(key, node_id, salt)}


def _admit(
    registration: Mapping[str, Any],
    settings: ServerSettings,
    checks: list[RegistrationCheck],
) -> None:
    token = settings.registration_token
    if token is None and not checks:
        raise RegistrationRefusedError(
            "Registration is closed: the server sets neither "
            "REFLECTSYNC_REGISTRATION_TOKEN nor a registration check, and "
            "REFLECTSYNC_OPEN_REGISTRATION is off."
        )
    if token is not None:
        presented = registration.get("token")
        if presented is None:
            raise AuthenticationError(
                "This server needs a registration token: send the server's "
                "REFLECTSYNC_REGISTRATION_TOKEN when registering."
            )
        if not hmac.compare_digest(presented.encode(), str(token).encode()):
            raise RegistrationRefusedError("The registration token is wrong.")
    for check in checks:
        if not check(registration):
            raise RegistrationRefusedError(
                "The server's registration check refused this node."
            )


#: The answer to a request signed by no registered node: an unknown node
#: id, or a known one with a wrong signature (the same words for both).
NOT_RECOGNISED = (
    "Unknown node or wrong signature: no registered node signs with this "
    "secret. A node the server no longer knows (its database was reset) must "
    "register again; a request altered on the way is refused the same way."
)


def authenticate(
    session: Session,
    tables: LogTables,
    nonces: sa.Table,
    settings: ServerSettings,
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str] | Any,
    body: bytes,
    now: datetime.datetime | None = None,
) -> int:
    """Check a signed request and remember its nonce.

    The nonce is recorded and committed before the request is served, so a
    replay is refused by every process sharing the database.

    :return: the id of the node that signed the request.
    :raises AuthenticationError: (401) for an unsigned, mis-signed, expired
        or replayed request, or an unknown node. Nothing else is written.
    """
    found = signed_headers(headers)
    if found is None:
        raise AuthenticationError(
            "This route needs a signed request (headers "
            f"{HEADER_NODE}, {HEADER_TIMESTAMP}, {HEADER_NONCE}, "
            f"{HEADER_SIGNATURE}); register the node first."
        )
    moment = now or _now()
    node_text, stamp, nonce = (
        found[HEADER_NODE],
        found[HEADER_TIMESTAMP],
        found[HEADER_NONCE],
    )
    if not (_NODE_ID.fullmatch(node_text) and _TIMESTAMP.fullmatch(stamp)):
        raise AuthenticationError(
            f"The signature headers are malformed: {HEADER_NODE} must be a "
            f"node id and {HEADER_TIMESTAMP} whole seconds since the epoch, in "
            "ASCII digits."
        )
    if not _NONCE.fullmatch(nonce):
        raise AuthenticationError(
            "The nonce must be 16 to 64 letters, digits, '-' or '_'."
        )
    age = abs(moment.timestamp() - int(stamp))
    if age > settings.signature_max_age:
        raise AuthenticationError(
            "The request's timestamp is too far from the server's clock; "
            "check the node's clock and sign the request again."
        )
    node_id = int(node_text)
    stored = None
    if node_id <= _NODE_ID_MAX:
        stored = session.execute(
            sa.select(nodes_table(tables).c.secret_digest).where(
                nodes_table(tables).c.id == node_id
            )
        ).scalar()
    key = settings.require_secret_key()
    scheme, _, salt = (stored or "").partition("$")
    known = scheme == _SCHEME
    message = canonical_request(method, path, query, stamp, nonce, body)
    # An unknown node is checked like a known one (against a secret nobody
    # has) and refused with the same words: the answer must not tell which
    # node ids exist.
    matches = signature_matches(
        derive_secret(key, node_id, salt if known else "unknown"),
        message,
        found[HEADER_SIGNATURE],
    )
    if not (known and matches):
        session.rollback()
        raise AuthenticationError(NOT_RECOGNISED)
    _remember_nonce(session, tables, nonces, settings, node_id, nonce, moment)
    return node_id


def _remember_nonce(
    session: Session,
    tables: LogTables,
    nonces: sa.Table,
    settings: ServerSettings,
    node_id: int,
    nonce: str,
    moment: datetime.datetime,
) -> None:
    # The node's row is locked first, so concurrent requests of one node
    # queue here instead of deadlocking on the nonce index.
    session.execute(
        sa.update(nodes_table(tables))
        .where(nodes_table(tables).c.id == node_id)
        .values(last_seen_at=moment)
    )
    try:
        session.execute(
            sa.insert(nonces).values(node_id=node_id, nonce=nonce, created_at=moment)
        )
    except sa.exc.IntegrityError:
        session.rollback()
        raise AuthenticationError(
            "This request was already received (replayed nonce); sign each "
            "request with a new nonce."
        ) from None
    session.commit()
    _forget_old_nonces(session, nonces, settings, node_id, moment)


def _forget_old_nonces(
    session: Session,
    nonces: sa.Table,
    settings: ServerSettings,
    node_id: int,
    moment: datetime.datetime,
) -> None:
    # Nonces older than the signature window can never be replayed (their
    # timestamp would be refused). Dropping them is housekeeping in its own
    # transaction: if it loses a lock race, the next request does it.
    expired = moment - datetime.timedelta(seconds=2 * settings.signature_max_age)
    try:
        session.execute(
            sa.delete(nonces).where(
                nonces.c.node_id == node_id, nonces.c.created_at < expired
            )
        )
        session.commit()
    except sa.exc.OperationalError:
        session.rollback()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
