"""Fleet operations: revoking, retiring and the inactive-node policy.

A node's row in ``reflectsync_nodes`` carries two marks beside its contact
and progress:

``revoked_at``
    Set by :func:`revoke_node`. Every signed request of the node is refused
    (403, ``auth.revoked``) by :func:`~flask_reflectsync.server.nodes.authenticate`,
    for good. A lost or stolen device.
``retired_at``
    Set by :func:`retire_node`, or by ``authenticate`` when a node comes back
    after more than ``REFLECTSYNC_NODE_INACTIVE_DAYS`` without contact. A
    retired node no longer pins the trim watermark (:func:`pins_trim`); when
    it comes back, pull and the change feed answer 410 (``fleet.retired``)
    until it repairs, which clears the mark. Its push is still accepted
    while the log after its last pulled version is there (the conflict
    check needs it): refusing it would lose the work it queued offline,
    since a repair discards the queue. It can have missed trimmed changes, so
    nothing it holds is trusted to be complete.

Neither mark deletes anything: the node's row, and the versions it pushed,
stay.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..errors import NodeRetiredError, NotFoundError
from ..tracking import LogTables
from .nodes import nodes_table
from .scopes import principal_from_text
from .settings import ServerSettings


@dataclass(frozen=True)
class NodeInfo:
    """One node as the fleet listing shows it.

    :param id: the node's id.
    :param name: the name it registered with.
    :param registered_at: when it registered.
    :param last_seen_at: its last signed request (``None``: never).
    :param version: the version it has acknowledged pulling up to.
    :param lag: the server's version minus ``version``.
    :param state: ``"active"``, ``"inactive"`` (not seen for longer than
        ``REFLECTSYNC_NODE_INACTIVE_DAYS``; retired when it returns),
        ``"retired"`` or ``"revoked"``.
    :param principal: whom the node acts for (see :doc:`/scopes`); empty
        when the registration check gave nothing.
    """

    id: int
    name: str
    registered_at: datetime.datetime
    last_seen_at: datetime.datetime | None
    version: int
    lag: int
    state: str
    principal: dict[str, Any] = field(default_factory=dict)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    # SQLite (and MySQL's DATETIME) give back naive datetimes; they were
    # written as UTC.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def inactive_cutoff(
    settings: ServerSettings, now: datetime.datetime | None = None
) -> datetime.datetime | None:
    """The moment before which a node's last contact makes it inactive
    (``None`` when the policy is off)."""
    if settings.node_inactive_days is None:
        return None
    return (now or _now()) - datetime.timedelta(days=settings.node_inactive_days)


def inactive_since(
    settings: ServerSettings,
    seen: datetime.datetime | None,
    now: datetime.datetime | None = None,
) -> bool:
    """Whether a node last in contact at ``seen`` is inactive at ``now``."""
    cutoff = inactive_cutoff(settings, now)
    return cutoff is not None and seen is not None and _utc(seen) < cutoff


def pins_trim(
    tables: LogTables, settings: ServerSettings, now: datetime.datetime | None = None
) -> sa.ColumnElement[bool]:
    """The condition on ``reflectsync_nodes`` of the nodes whose progress
    holds the trim watermark back: neither revoked nor retired, and (with
    ``REFLECTSYNC_NODE_INACTIVE_DAYS``) seen recently enough."""
    nodes = nodes_table(tables)
    condition = sa.and_(nodes.c.revoked_at.is_(None), nodes.c.retired_at.is_(None))
    cutoff = inactive_cutoff(settings, now)
    if cutoff is not None:
        contact = sa.func.coalesce(nodes.c.last_seen_at, nodes.c.registered_at)
        condition = sa.and_(condition, contact >= cutoff)
    return condition


def _mark(
    connection: sa.Connection | Any, tables: LogTables, node_id: int, **values: Any
) -> None:
    nodes = nodes_table(tables)
    done = connection.execute(
        sa.update(nodes).where(nodes.c.id == node_id).values(**values)
    ).rowcount
    if not done:
        raise NotFoundError(f"There is no registered node with id {node_id}.")


def revoke_node(
    connection: sa.Connection | Any,
    tables: LogTables,
    node_id: int,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Refuse node ``node_id`` on every signed route from the commit of the
    caller's transaction on. Revoking twice keeps the first moment.

    :raises NotFoundError: no node has that id.
    """
    nodes = nodes_table(tables)
    _mark(
        connection,
        tables,
        node_id,
        revoked_at=sa.func.coalesce(nodes.c.revoked_at, now or _now()),
    )


def retire_node(
    connection: sa.Connection | Any,
    tables: LogTables,
    node_id: int,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Stop node ``node_id`` from pinning the trim watermark; if it comes
    back it is told to repair. Retiring twice keeps the first moment.

    :raises NotFoundError: no node has that id.
    """
    nodes = nodes_table(tables)
    _mark(
        connection,
        tables,
        node_id,
        retired_at=sa.func.coalesce(nodes.c.retired_at, now or _now()),
    )


def reinstate(connection: sa.Connection | Any, tables: LogTables, node_id: int) -> None:
    """Clear a node's retirement (a repair gave it a full copy)."""
    nodes = nodes_table(tables)
    connection.execute(
        sa.update(nodes)
        .where(nodes.c.id == node_id, nodes.c.retired_at.is_not(None))
        .values(retired_at=None)
    )


def check_not_retired(
    connection: sa.Connection | Any, tables: LogTables, node_id: int
) -> None:
    """Refuse a retired node's pull or push.

    :raises NodeRetiredError: (410) telling the node to repair.
    """
    nodes = nodes_table(tables)
    retired = connection.execute(
        sa.select(nodes.c.retired_at).where(nodes.c.id == node_id)
    ).scalar()
    if retired is not None:
        raise NodeRetiredError(
            f"The server retired node {node_id} (retired by hand, or not seen "
            "for longer than REFLECTSYNC_NODE_INACTIVE_DAYS) and no longer "
            "keeps its log for it. Repair the node from the server "
            "(client.repair() or `reflectsync-node repair`)."
        )


def list_nodes(
    connection: sa.Connection,
    tables: LogTables,
    settings: ServerSettings,
    current: int,
    *,
    now: datetime.datetime | None = None,
) -> list[NodeInfo]:
    """Every registered node, by id, with its lag behind version ``current``."""
    nodes = nodes_table(tables)
    found = connection.execute(
        sa.select(
            nodes.c.id,
            nodes.c.name,
            nodes.c.registered_at,
            nodes.c.last_seen_at,
            nodes.c.last_pulled_version,
            nodes.c.revoked_at,
            nodes.c.retired_at,
            nodes.c.principal,
        ).order_by(nodes.c.id)
    ).all()
    listed = []
    for row in found:
        if row.revoked_at is not None:
            state = "revoked"
        elif row.retired_at is not None:
            state = "retired"
        elif inactive_since(settings, row.last_seen_at or row.registered_at, now):
            state = "inactive"
        else:
            state = "active"
        listed.append(
            NodeInfo(
                id=row.id,
                name=row.name or "",
                registered_at=_utc(row.registered_at),
                last_seen_at=_utc(row.last_seen_at) if row.last_seen_at else None,
                version=int(row.last_pulled_version),
                lag=current - int(row.last_pulled_version),
                state=state,
                principal=principal_from_text(row.principal),
            )
        )
    return listed
