"""What the node's operations return: :class:`PushResult`, :class:`PullResult`,
:class:`PullProgress` and :class:`SyncResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .conflicts import Conflict
from .set_aside import SetAside

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class PushResult:
    """What a push did.

    :param push_id: the id the push was sent with (``None`` when the queue
        was empty and nothing was sent).
    :param version: the server version it created (``None`` if none).
    :param operations: how many operations the server applied.
    :param conflicts: the conflicts the server decided by this node's
        strategies (see :ref:`stale-pushes`), with their resolutions.
    :param set_aside: the changes this push set aside because the server
        refused them for good (see :ref:`set-aside`).
    """

    push_id: str | None
    version: int | None
    operations: int
    conflicts: list[Conflict] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)


@dataclass(frozen=True)
class PullResult:
    """What a pull did.

    :param version: the server version the node now has.
    :param operations: how many server changes were merged.
    :param conflicts: every conflict found, with its resolution.
    :param repaired: rows copied from the server when the pull bootstrapped
        a new node, or repaired a node whose share changed (0 when it did
        not).
    :param evicted: local rows removed because they left the node's share
        on the server (see :doc:`/scopes`), their children included.
    :param unserved: by table, the server's columns this node does not
        have and was not sent (see :doc:`/schema-changes`); empty when the
        schemas match.
    """

    version: int
    operations: int
    conflicts: list[Conflict] = field(default_factory=list)
    repaired: int = 0
    evicted: int = 0
    unserved: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PullProgress:
    """How far a pull has got (passed to ``pull(on_page=...)``).

    :param version: the server version the node now has.
    :param server_version: the server's version when the page was served.
    :param operations: the logged operations merged so far by this pull.
    :param total: how many the pull covers, if the server said (a server
        older than this node's release does not); changes committed on the
        server during the pull may make ``operations`` exceed it.
    """

    version: int
    server_version: int
    operations: int
    total: int | None


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`SyncClient.synchronize` did.

    :param pushed: the accepted push.
    :param pulled: the pulls it ran, in order.
    :param attempts: how many pushes it sent.
    """

    pushed: PushResult
    pulled: list[PullResult]
    attempts: int

    @property
    def conflicts(self) -> list[Conflict]:
        """Every conflict resolved on the way: by the server for the
        accepted push, then by the pulls' merges."""
        return [
            *self.pushed.conflicts,
            *(c for pull in self.pulled for c in pull.conflicts),
        ]
