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
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    NodeRevokedError,
    RegistrationRefusedError,
)
from ..rows import built_once
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
from .scopes import principal_from_text, principal_text
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
        # Whom the node acts for: the attributes the registration check
        # returned, as canonical JSON (see server.scopes); NULL for none.
        sa.Column("principal", sa.Text, nullable=True),
        # The principal and scope rules the node's data was last served
        # under (a digest); a node whose principal or rules changed since
        # must repair its share before it pulls again.
        sa.Column("scoped_as", sa.String(64), nullable=True),
        # The principal itself (canonical JSON) that ``scoped_as`` digests:
        # a node re-bound under the same rules is moved to its new share by
        # the difference (server/pull_reshare.py), not a repair.
        sa.Column("served_principal", sa.Text, nullable=True),
        # Fleet operations (server/fleet.py): a revoked node is refused on
        # every signed route; a retired one no longer pins the trim watermark
        # and must repair before it pulls or pushes again.
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
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
    scope_digest: Callable[[str | None], str] | None = None,
) -> dict[str, Any]:
    """Create a node if the registration gates let it in.

    The node's row is added to ``session`` and not committed: the caller
    commits (the view does, before answering), or rolls back on an error.

    The gates: with ``open_registration`` anyone may register. Otherwise at
    least one gate must be configured and every configured one must pass: the
    registration token must match (compared in constant time), and every
    check must return a true value. A check that returns a mapping admits
    the node and gives its *principal* (whom it acts for, see
    :mod:`.scopes`); the mappings of several checks are merged in order.

    :param scope_digest: the digest of the scope rules for a stored
        principal (see :func:`.scopes.Scopes.digest`), recorded as what the
        node's data is served under.

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
        principal = _admit(registration, settings, checks)
    else:
        principal = None

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
        if found is not None:
            return {
                "id": found.id,
                "name": found.name,
                "secret": derive_secret(key, found.id, chosen),
                "again": True,
            }
    salt = chosen or secrets.token_hex(16)
    stored_principal = principal_text(principal)
    result: sa.CursorResult[Any] = session.execute(  # type: ignore[assignment]
        sa.insert(nodes_table(tables)).values(
            name=name,
            secret_digest=f"{_SCHEME}${salt}",
            registered_at=now or _now(),
            last_pulled_version=0,
            principal=stored_principal,
            scoped_as=None if scope_digest is None else scope_digest(stored_principal),
            served_principal=stored_principal,
        )
    )
    assert result.inserted_primary_key is not None
    (node_id,) = result.inserted_primary_key
    return {"id": node_id, "name": name, "secret": derive_secret(key, node_id, salt)}


def _admit(
    registration: Mapping[str, Any],
    settings: ServerSettings,
    checks: list[RegistrationCheck],
) -> dict[str, Any] | None:
    """Apply the gates; the principal the checks gave (``None``: none)."""
    token = settings.registration_token
    if token is None and not checks:
        raise RegistrationRefusedError(
            "Registration is closed: the server sets neither "
            "REFLECTSYNC_REGISTRATION_TOKEN nor a registration check, and "
            "REFLECTSYNC_OPEN_REGISTRATION is off.",
            code="registration.closed",
        )
    if token is not None:
        presented = registration.get("token")
        if presented is None:
            raise AuthenticationError(
                "This server needs a registration token: send the server's "
                "REFLECTSYNC_REGISTRATION_TOKEN when registering.",
                code="registration.token_required",
            )
        if not hmac.compare_digest(presented.encode(), str(token).encode()):
            raise RegistrationRefusedError("The registration token is wrong.")
    principal: dict[str, Any] | None = None
    for check in checks:
        verdict = check(registration)
        if not verdict:
            raise RegistrationRefusedError(
                "The server's registration check refused this node."
            )
        if isinstance(verdict, Mapping):
            principal = {**(principal or {}), **verdict}
    return principal


def bind_node(
    session: Session,
    tables: LogTables,
    node_id: int,
    principal: Mapping[str, Any] | None,
) -> bool:
    """Give node ``node_id`` a new principal, without committing. Its data
    was served under the old one, which is kept (``scoped_as``,
    ``served_principal``): its next pull moves it to the new share (see
    :mod:`.pull_reshare`).

    :return: whether the node exists.
    """
    nodes = nodes_table(tables)
    result: sa.CursorResult[Any] = session.execute(  # type: ignore[assignment]
        sa.update(nodes)
        .where(nodes.c.id == node_id)
        .values(principal=principal_text(principal))
    )
    return bool(result.rowcount)


def node_principal(
    session: Session, tables: LogTables, node_id: int
) -> tuple[dict[str, Any], str | None, str | None]:
    """The principal of node ``node_id``, what its data was last served
    under (``scoped_as``) and the principal that was (``served_principal``,
    canonical JSON)."""
    nodes = nodes_table(tables)
    row = session.execute(
        sa.select(
            nodes.c.principal, nodes.c.scoped_as, nodes.c.served_principal
        ).where(nodes.c.id == node_id)
    ).first()
    if row is None:
        return {}, None, None
    return principal_from_text(row.principal), row.scoped_as, row.served_principal


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

    The nonce and the node's ``last_seen_at`` are added to ``session``, not
    committed. The caller must commit them *before* serving the request
    (the views do), and keep them even if the request then fails: a replay
    is refused by every process sharing the database only once the nonce is
    committed. After an error, the caller rolls back.

    :return: the id of the node that signed the request.
    :raises AuthenticationError: (401) for an unsigned, mis-signed, expired
        or replayed request, or an unknown node. Nothing else is written.
    :raises NodeRevokedError: (403) for a correctly signed request of a
        revoked node. Nothing is written.

    A node last seen longer ago than ``node_inactive_days`` is marked
    retired here (committed with the nonce): it must repair before it
    pulls or pushes again (see :mod:`flask_reflectsync.server.fleet`).
    """
    found = signed_headers(headers)
    if found is None:
        raise AuthenticationError(
            "This route needs a signed request (headers "
            f"{HEADER_NODE}, {HEADER_TIMESTAMP}, {HEADER_NONCE}, "
            f"{HEADER_SIGNATURE}); register the node first.",
            code="auth.unsigned",
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
            "ASCII digits.",
            code="auth.malformed",
        )
    if not _NONCE.fullmatch(nonce):
        raise AuthenticationError(
            "The nonce must be 16 to 64 letters, digits, '-' or '_'.",
            code="auth.malformed",
        )
    age = abs(moment.timestamp() - int(stamp))
    if age > settings.signature_max_age:
        raise AuthenticationError(
            "The request's timestamp is too far from the server's clock; "
            "check the node's clock and sign the request again.",
            code="auth.expired",
        )
    node_id = int(node_text)
    row = None
    if node_id <= _NODE_ID_MAX:
        table = nodes_table(tables)
        signer = built_once(
            table,
            "signer",
            lambda: sa.select(
                table.c.secret_digest,
                table.c.revoked_at,
                table.c.retired_at,
                table.c.last_seen_at,
                table.c.registered_at,
            ).where(table.c.id == sa.bindparam("node_id")),
        )
        connection = session.connection(bind_arguments={"clause": table})
        row = connection.execute(signer, {"node_id": node_id}).first()
    stored = row.secret_digest if row is not None else None
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
        raise AuthenticationError(NOT_RECOGNISED)
    assert row is not None
    if row.revoked_at is not None:
        raise NodeRevokedError(
            f"The server revoked node {node_id}: it refuses this node's "
            "requests for good. Register the device again as a new node if "
            "it is to sync."
        )
    from .fleet import inactive_since  # beside the fleet's other rules

    retire = row.retired_at is None and inactive_since(
        settings, row.last_seen_at or row.registered_at, moment
    )
    _remember_nonce(
        session, tables, nonces, settings, node_id, nonce, moment, retire=retire
    )
    return node_id


def _remember_nonce(
    session: Session,
    tables: LogTables,
    nonces: sa.Table,
    settings: ServerSettings,
    node_id: int,
    nonce: str,
    moment: datetime.datetime,
    *,
    retire: bool = False,
) -> None:
    # The node's row is locked first, so concurrent requests of one node
    # queue here instead of deadlocking on the nonce index.
    table = nodes_table(tables)
    connection = session.connection(bind_arguments={"clause": nonces})
    one_statement = connection.dialect.name == "postgresql"
    statements = built_once(
        nonces,
        ("remember", table, retire, one_statement),
        lambda: _nonce_statements(table, nonces, retire, one_statement),
    )
    values = {"node_id": node_id, "nonce": nonce, "moment": moment}
    try:
        for statement in statements:
            connection.execute(statement, values)
    except sa.exc.IntegrityError:
        raise AuthenticationError(
            "This request was already received (replayed nonce); sign each "
            "request with a new nonce.",
            code="auth.replayed",
        ) from None


def _nonce_statements(
    table: sa.Table, nonces: sa.Table, retire: bool, one_statement: bool
) -> tuple[sa.Executable, ...]:
    """What :func:`_remember_nonce` sends: the node's row updated (and so
    locked) first, then the nonce inserted; on PostgreSQL in one statement,
    the insert selecting from the update's ``RETURNING``."""
    moment = sa.bindparam("moment", type_=table.c.last_seen_at.type)
    seen: dict[str, Any] = {"last_seen_at": moment}
    if retire:
        seen["retired_at"] = moment
    touch = sa.update(table).where(table.c.id == sa.bindparam("node_id")).values(**seen)
    if one_statement:
        locked = touch.returning(table.c.id).cte("seen")
        return (
            sa.insert(nonces).from_select(
                ["node_id", "nonce", "created_at"],
                sa.select(
                    locked.c.id,
                    sa.bindparam("nonce", type_=nonces.c.nonce.type),
                    sa.bindparam("moment", type_=nonces.c.created_at.type),
                ),
            ),
        )
    return (
        touch,
        sa.insert(nonces).values(
            node_id=sa.bindparam("node_id"),
            nonce=sa.bindparam("nonce"),
            created_at=sa.bindparam("moment"),
        ),
    )


class NonceSweeps:
    """When this process last deleted each node's old nonces, so that it
    does so once per signature window (``signature_max_age`` seconds) and
    node rather than on every request: two round trips (a ``DELETE`` and
    its commit) off the hot path of every signed request.

    A nonce is kept at least twice the window (see :func:`forget_old_nonces`),
    so deleting late never lets a replay in: by then its timestamp is refused.
    The table holds at most about three windows of each node's requests.
    Per process and thread-safe; each worker sweeps the nodes it serves.
    """

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def due(self, node_id: int, settings: ServerSettings, now: float) -> bool:
        """Whether ``node_id``'s old nonces should be deleted now (and, if
        so, note that they are).

        :param now: a monotonic clock reading, in seconds.
        """
        with self._lock:
            last = self._last.get(node_id)
            if last is not None and now - last < settings.signature_max_age:
                return False
            self._last[node_id] = now
            return True


def forget_old_nonces(
    session: Session,
    nonces: sa.Table,
    settings: ServerSettings,
    node_id: int,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Delete the nonces of ``node_id`` that can never be replayed (their
    timestamp would be refused), without committing.

    Housekeeping for its own transaction, after the request's nonce is
    committed, when :meth:`NonceSweeps.due` says so: if it loses a lock
    race (``OperationalError``), the caller rolls it back and a later
    request does it.
    """
    moment = now or _now()
    expired = moment - datetime.timedelta(seconds=2 * settings.signature_max_age)
    session.execute(
        sa.delete(nonces).where(
            nonces.c.node_id == node_id, nonces.c.created_at < expired
        )
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
