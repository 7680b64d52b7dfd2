"""The exceptions flask-reflectsync raises.

Every error is a :class:`SyncError`. Each class carries the HTTP ``status`` it
maps to when it crosses the wire and a stable dotted ``code`` (see
:ref:`error-codes`), so the blueprint turns any of them into the JSON envelope
``{"ok": false, "error": "...", "status": N, "code": "..."}``. A raise may
name a more precise code of its class (``AuthenticationError(...,
code="auth.replayed")``); programs should branch on ``code``, never on the
sentence.
"""

from __future__ import annotations

from typing import Any


class SyncError(Exception):
    """Base class of every error raised by flask-reflectsync.

    :param message: one sentence a person can act on.
    """

    #: HTTP status used when this error is answered by the server.
    status: int = 500
    #: The stable, machine-readable kind of error, sent as the envelope's
    #: ``code`` (see :ref:`error-codes`). An instance may carry a more
    #: precise code of the same family.
    code: str = "server.error"
    #: Whether sending the same request again later may succeed (a node's
    #: push id is kept, so a retried push is still applied once).
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        """The JSON error envelope for this error."""
        return {
            "ok": False,
            "error": self.message,
            "status": self.status,
            "code": self.code,
        }


class ConfigurationError(SyncError, RuntimeError):
    """The extension or a model is set up in a way that cannot work."""

    code = "server.misconfigured"


class TrackingError(SyncError):
    """A change to a tracked model cannot be recorded, so it was refused.

    Raised instead of letting a change escape the operations log, for example
    for a raw bulk statement whose affected keys cannot be known.
    """

    status = 400
    code = "tracking.refused"


class ValidationError(SyncError):
    """A request or message is malformed; nothing was written."""

    status = 400
    code = "request.invalid"


class InvalidValueError(ValidationError):
    """A pushed value does not fit the server's column: the wrong type, null
    in a non-null column, a string longer than ``String(n)``, an integer
    outside the column type's range, a NUL or an unpaired surrogate in text.
    Nothing of the push was written; sending it again cannot succeed.

    The error envelope names the value beside the sentence:
    ``{"code": "push.invalid_value", "table": ..., "key": [...], "column":
    ...}``, with the row's key as it was sent.

    :param message: one sentence a person can act on.
    :param table: the table of the row.
    :param key: the row's primary key in its wire form, as sent.
    :param column: the column the value was for.
    """

    status = 422
    code = "push.invalid_value"

    def __init__(
        self,
        message: str,
        *,
        table: str,
        key: list[Any],
        column: str,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.table = table
        self.key = key
        self.column = column

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "table": self.table,
            "key": self.key,
            "column": self.column,
        }


class InvalidKeyError(InvalidValueError):
    """A pushed insert's integer key lies in the part of the key space the
    server keeps for its own sequence (see :ref:`the key space <key-space>`):
    accepting it would let the server's app, or the next node, run out of
    keys. The node must give the row another key. Envelope ``code``:
    ``"push.invalid_key"``."""

    code = "push.invalid_key"


class ScopeDeniedError(InvalidValueError):
    """A push writes outside the node's share (see :doc:`/scopes`): an
    update or delete of a row outside it, an insert that would land outside
    it, an update that would move a row out of it (unless the table's rule
    allows moves), or any write to a read-only table. The push was refused
    whole with a 403 and nothing was written.

    Envelope: ``{"code": "push.out_of_share", "table": ..., "key": [...],
    "rule": ...}``; ``rule`` is ``"outside_share"``,
    ``"insert_outside_share"``, ``"moves_out"`` or ``"read_only"``. A
    :class:`~flask_reflectsync.SyncClient` sets the refused row aside
    (:ref:`set-aside`) and pushes the rest, as for a value the server
    refuses for good.
    """

    status = 403
    code = "push.out_of_share"

    def __init__(
        self,
        message: str,
        *,
        table: str,
        key: list[Any],
        column: str = "",
        rule: str = "",
        code: str | None = None,
    ) -> None:
        super().__init__(message, table=table, key=key, column=column, code=code)
        self.rule = rule

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "rule": self.rule}


class ScopeWarning(UserWarning):
    """Sync scopes are declared, yet some tracked table has no rule: every
    node reads and writes all of its rows (see :doc:`/scopes`)."""


class UntrackedLinkWarning(UserWarning):
    """A tracked model has a relationship or a foreign key to a table that
    is not tracked (a ``secondary=`` association table, a referenced model):
    nodes never receive that table's rows, so the link is lost on them
    (see :ref:`association-tables`)."""


class ExcludedColumnError(ValidationError):
    """A push or a query names a column kept out of sync
    (``track(exclude=...)`` or ``track(only=...)``): such columns never
    leave the server, and a node may not write them. Nothing was written.

    The error envelope names the column beside the sentence:
    ``{"code": "request.excluded_column", "table": ..., "column": ...}``.

    :param message: one sentence a person can act on.
    :param table: the table of the column.
    :param column: the column's name.
    """

    code = "request.excluded_column"

    def __init__(
        self, message: str, *, table: str, column: str, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.table = table
        self.column = column

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "table": self.table, "column": self.column}


class SchemaMismatchError(SyncError):
    """The node's tracked tables and the server's differ in a way that would
    lose or alter a value (see :doc:`/schema-changes`): a pull page whose
    rows the node cannot store, a repair copy missing one of the node's
    columns, or a node whose model code does not match its own database
    file. Nothing was applied and the node's version did not move; its
    queue is kept. Envelope: ``{"code": "schema.mismatch", "differences":
    [{"table", "column", "problem", "message", "renamed_to"?, "known"?,
    "candidates"?}, ...]}``
    (``node.schema_mismatch`` when the node's own file differs from its
    models).

    :param message: one sentence naming the tables and columns.
    :param differences: one entry per table or column that differs.
    """

    status = 409
    code = "schema.mismatch"

    def __init__(
        self,
        message: str,
        differences: list[dict[str, Any]] | None = None,
        *,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.differences = differences or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "differences": self.differences}


class SchemaDescriptionNeededError(SyncError):
    """The node sent its schema as digests (``schema_digest``, or a table's
    digest in ``schema``) and the server's differ: the server needs the
    node's description of those tables to tell what differs (see
    :ref:`schema-digests`). Nothing was applied or recorded. Envelope:
    ``{"code": "schema.describe", "digests": {table: digest, ...}}``, the
    server's digest of each table the node may see. A
    :class:`~flask_reflectsync.SyncClient` sends the request again at once,
    with the columns of the tables whose digests differ; it never raises
    this to the app.

    :param message: one sentence.
    :param digests: the server's digest of each table, by name.
    """

    status = 409
    code = "schema.describe"

    def __init__(self, message: str, digests: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.digests = digests or {}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "digests": self.digests}


class SchemaRefusedError(ValidationError):
    """Rows of a push that the server's schema cannot take (see
    :doc:`/schema-changes`): a non-null value in a column the server does
    not have or that holds another kind of value there, a row of a table
    the server does not track, or an insert without a value for a column
    the server added as ``NOT NULL`` without a default. Nothing of the push
    was written. A :class:`~flask_reflectsync.SyncClient` sets the listed
    rows aside (:ref:`set-aside`) with their reasons and pushes the rest.

    Envelope: ``{"code": "schema.refused", "rows": [{"table", "key",
    "column", "reason"}, ...]}``.

    :param message: one sentence.
    :param rows: the refused rows, keys in their wire form.
    """

    status = 422
    code = "schema.refused"

    def __init__(
        self, message: str, rows: list[dict[str, Any]], *, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.rows = rows

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "rows": self.rows}


class PushIdReusedError(ValidationError):
    """A push id the server already applied came again with other content.

    A retried push must carry exactly the operations and rows it carried the
    first time; new work needs a new push id. Nothing was written. Envelope
    ``code``: ``"push.id_reused"``. A node receives it as a
    :class:`PushRejectedError` (with that ``code``): it drops the push id
    and keeps the operations queued, as for any refused push.
    """

    status = 409
    code = "push.id_reused"

    def __init__(self, message: str, *, push_id: str) -> None:
        super().__init__(message)
        self.push_id = push_id

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "push_id": self.push_id}


class AuthenticationError(SyncError):
    """The request is not signed by a registered node, or the signature is bad."""

    status = 401
    code = "auth.unknown_or_bad_signature"


class NotFoundError(SyncError):
    """The requested object does not exist."""

    status = 404
    code = "not_found"


class ForbiddenError(SyncError):
    """The app's access check refused the request."""

    status = 403
    code = "forbidden"


class GoneError(SyncError):
    """The requested object existed but has been dropped from the database."""

    status = 410
    code = "gone"


class NodeRevokedError(ForbiddenError):
    """The server revoked this node (``flask reflectsync nodes revoke`` or
    :meth:`~flask_reflectsync.ReflectSync.revoke_node`): every signed route
    refuses it from then on. Envelope ``code``: ``"auth.revoked"``. Nothing
    the node does can lift it; the device must register again as a new node
    if it is to sync at all."""

    code = "auth.revoked"


class NodeRetiredError(GoneError):
    """The server retired this node, by hand (``flask reflectsync nodes
    retire``) or because it was not seen for ``REFLECTSYNC_NODE_INACTIVE_DAYS``:
    the server stopped keeping its log for it. Pull and push are refused
    until the node repairs from a full copy (``client.repair()``), which
    makes it an active node again. Envelope ``code``: ``"fleet.retired"``."""

    code = "fleet.retired"


class CatalogAccessWarning(UserWarning):
    """The reflection catalog routes are served without an access check."""


class RegistrationRefusedError(SyncError):
    """The server does not let this node register (bad token, or the app's
    registration check said no, or registration is closed)."""

    status = 403
    code = "registration.refused"


class PayloadTooLargeError(ValidationError):
    """The request body is larger than ``REFLECTSYNC_MAX_BODY_SIZE``."""

    status = 413
    code = "request.too_large"


class PushRejectedError(SyncError):
    """The push conflicts with the server's data; nothing it carried was written.

    Usually the server holds changes to the same rows that the node has not
    pulled yet: pull, merge, and push again.

    :param message: one sentence a person can act on.
    :param conflicts: the rows in conflict, each ``{"table": ..., "key": [...]}``
        with the key in its wire form, plus any detail the server adds.
    """

    status = 409
    code = "push.conflict"

    def __init__(
        self,
        message: str,
        conflicts: list[dict[str, Any]] | None = None,
        *,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.conflicts = conflicts or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "conflicts": self.conflicts}


class UniqueConstraintError(PushRejectedError):
    """A pushed row would break a unique constraint (the primary key included).

    :param entries: one ``{"table", "key", "columns"}`` per offending row:
        the table, the pushed row's primary key, and the columns of the
        constraint it breaks (``"existing_key"`` names the row already
        holding those values, when there is one).
    """

    code = "push.unique_violation"

    def __init__(
        self, message: str, entries: list[dict[str, Any]], *, code: str | None = None
    ) -> None:
        super().__init__(message, entries, code=code)
        self.entries = entries


class ServiceBusyError(SyncError):
    """The database could not serve the request right now (a deadlock or a
    lock timeout); nothing was written and the same request may be retried."""

    status = 503
    code = "server.busy"
    retryable = True


class TooManyRequestsError(SyncError):
    """An address sent more registrations, or more badly signed requests,
    than the server allows in a minute (see :ref:`rate-limits`); answered
    with ``Retry-After``. Nothing was written.

    :param retry_after: seconds to wait before trying again.
    """

    status = 429
    code = "rate.limited"
    retryable = True

    def __init__(
        self, message: str, *, retry_after: int = 60, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServerUnreachableError(SyncError):
    """A node could not reach the sync server, or lost its answer (connection
    refused, timeout, broken connection). Retryable: a pending push keeps its
    id, so sending it again applies it at most once."""

    status = 503
    code = "node.unreachable"
    retryable = True


class ProtocolMismatchError(SyncError):
    """The server does not speak this node's protocol, or the URL does not
    point at a flask-reflectsync sync server (check ``base_url`` and its
    prefix, and upgrade the older side)."""

    status = 400
    code = "request.protocol_mismatch"


class NotRegisteredError(SyncError):
    """The node has not registered with the server yet; call
    :meth:`~flask_reflectsync.client.SyncClient.register` first."""

    status = 401
    code = "node.not_registered"


__all__ = [
    "SyncError",
    "ConfigurationError",
    "TrackingError",
    "ValidationError",
    "InvalidValueError",
    "InvalidKeyError",
    "ExcludedColumnError",
    "ScopeDeniedError",
    "ScopeWarning",
    "UntrackedLinkWarning",
    "SchemaDescriptionNeededError",
    "SchemaMismatchError",
    "SchemaRefusedError",
    "PushIdReusedError",
    "AuthenticationError",
    "NotFoundError",
    "ForbiddenError",
    "GoneError",
    "NodeRevokedError",
    "NodeRetiredError",
    "CatalogAccessWarning",
    "RegistrationRefusedError",
    "PayloadTooLargeError",
    "PushRejectedError",
    "UniqueConstraintError",
    "ServiceBusyError",
    "TooManyRequestsError",
    "ServerUnreachableError",
    "ProtocolMismatchError",
    "NotRegisteredError",
]
