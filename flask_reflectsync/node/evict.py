"""Evictions: rows that left this node's share on the server (see
:doc:`/scopes`), removed locally without being logged.

A pull page lists them per table under ``evicted`` (keys, column-wise, as
``deleted``). The node removes each such row and, children first, every
local row whose foreign key points at it (a child follows its parent out of
the share, and must not be left pointing at nothing). None of this is a
local change: nothing is logged, pushed back, or reported as a conflict. A
change still queued for such a row cannot reach the server any more (it is
outside the node's share): it is set aside with its reason (see
:ref:`set-aside`), so the app can see it, and nothing is lost silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import ProtocolMismatchError
from ..rows import key_filter
from ..wire.codec import DECODE_ERRORS, stores_time_zones, synced_codecs
from ..wire.page import decode_columns
from .merge import MergeSchema
from .queue import LocalQueue
from .set_aside import children_of, row_encoder, set_aside_row
from .tables import NODE_LOG, NODE_SET_ASIDE

if TYPE_CHECKING:
    from .client import SyncClient

_log = logging.getLogger("flask_reflectsync")

#: Why a queued change of an evicted row is set aside.
REASON = (
    "The row left this node's share on the server (its owner or team "
    "changed, or the node's principal did): the node may no longer write it."
)


def decode_evictions(
    client: SyncClient, page: Mapping[str, Any]
) -> dict[str, list[tuple[Any, ...]]]:
    """The typed keys a pull page evicts, by table (tables the node does
    not synchronise are left out)."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    aware = stores_time_zones(client.engine.dialect)
    for name, wire in page["changes"].items():
        evicted = wire.get("evicted") if isinstance(wire, dict) else None
        info = client.schema.tables.get(name)
        if evicted is None or info is None:
            continue
        codecs_ = synced_codecs(info, aware_storage=aware)
        pk = [codecs_[c.name] for c in info.pk_columns]
        try:
            columns = decode_columns(
                {c.name: c for c in pk},
                {"columns": [c.name for c in pk], "values": evicted},
                len(evicted[0]),
            )[1]
        except (*DECODE_ERRORS, KeyError, IndexError, TypeError):
            raise ProtocolMismatchError(
                f"The server evicted rows of {name} whose keys do not fit the "
                "node's table; the server and node schemas differ."
            ) from None
        found[name] = list(zip(*columns, strict=True))
    return found


def evict(
    connection: sa.Connection,
    client: SyncClient,
    evictions: Mapping[str, list[tuple[Any, ...]]],
) -> int:
    """Remove the evicted rows and the local rows pointing at them, in
    ``connection``'s transaction, without logging; set their queued changes
    aside. Returns how many rows were removed."""
    schema: MergeSchema = client.schema
    queue = LocalQueue(connection, NODE_LOG)
    pending = [(name, key) for name, keys in evictions.items() for key in keys]
    seen: set[tuple[str, tuple[Any, ...]]] = set()
    order: list[tuple[str, tuple[Any, ...]]] = []
    while pending:
        name, key = pending.pop()
        if (name, key) in seen or name not in schema.tables:
            continue
        seen.add((name, key))
        order.append((name, key))
        pending += children_of(connection, schema, name, key)
    encode = row_encoder(client)
    for name, key in order:
        if queue.get(name, schema.tables[name].encode_key(key)) is not None:
            set_aside_row(
                connection, NODE_LOG, NODE_SET_ASIDE, schema, name, key, REASON, encode
            )
            _log.warning(
                "%s %s left this node's share; its queued change is set aside.",
                name,
                list(key),
            )
    removed = 0
    # Children were found after their parents: remove them first.
    for name, key in reversed(order):
        info = schema.tables[name]
        result = connection.execute(
            sa.delete(info.table).where(
                key_filter(list(info.pk_columns), [key], inline=True)
            )
        )
        removed += result.rowcount or 0
    return removed
