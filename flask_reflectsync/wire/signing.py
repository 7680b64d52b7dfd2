"""Request signatures, shared by the server and the nodes.

A node signs every request after registration with the secret it received.
The signature is HMAC-SHA256 over::

    METHOD \\n PATH \\n QUERY \\n TIMESTAMP \\n NONCE \\n SHA256(BODY) hex

``PATH`` is the percent-decoded path including the server's URL prefix,
``QUERY`` the raw query string without ``?`` (empty when there is none),
``TIMESTAMP`` whole seconds since the epoch and ``NONCE`` a random string the
node never reuses. They travel in four headers (see the ``HEADER_*``
constants). The server refuses a request whose timestamp is too far from its
clock, whose nonce it has seen, or whose signature does not match, so an
altered body, a replayed request and an expired one all fail.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

HEADER_NODE = "X-Reflectsync-Node"
HEADER_TIMESTAMP = "X-Reflectsync-Timestamp"
HEADER_NONCE = "X-Reflectsync-Nonce"
HEADER_SIGNATURE = "X-Reflectsync-Signature"

#: Every header a signed request carries.
SIGNATURE_HEADERS = (HEADER_NODE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)


def canonical_request(
    method: str, path: str, query: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The bytes a signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    parts = (method.upper(), path, query, timestamp, nonce, digest)
    return "\n".join(parts).encode("utf-8")


def signature(secret: str, message: bytes) -> str:
    """HMAC-SHA256 of ``message`` under the node's ``secret``, as hex."""
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_request(
    node_id: int,
    secret: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign one request.

    :param node_id: the id the server gave at registration.
    :param secret: the secret the server gave at registration.
    :param method: the HTTP method.
    :param path: the percent-decoded URL path, prefix included.
    :param query: the raw query string, without ``?``.
    :param body: the exact body bytes sent.
    :param timestamp: seconds since the epoch (default: now).
    :param nonce: a string never used before (default: 128 random bits).
    """
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    once = nonce if nonce is not None else secrets.token_hex(16)
    message = canonical_request(method, path, query, stamp, once, body)
    return {
        HEADER_NODE: str(node_id),
        HEADER_TIMESTAMP: stamp,
        HEADER_NONCE: once,
        HEADER_SIGNATURE: signature(secret, message),
    }


def signature_matches(secret: str, message: bytes, claimed: str) -> bool:
    """Whether ``claimed`` is the signature of ``message``, in constant time."""
    return hmac.compare_digest(
        signature(secret, message).encode("ascii"),
        claimed.encode("utf-8", "replace"),
    )


def signed_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The signature headers of a request, or ``None`` if any is missing."""
    found = {name: headers.get(name) for name in SIGNATURE_HEADERS}
    if any(not value for value in found.values()):
        return None
    return {name: str(value) for name, value in found.items()}
