"""What the node keeps of the values its queued updates replaced, so that a
same-column ``update/update`` conflict can show a resolver the *base*: the
value the column had when the node last synchronised it (see
:attr:`Conflict.base <flask_reflectsync.node.conflicts.Conflict.base>` and
:doc:`/conflicts`).

Capture writes, per update logged through the node's sessions, one row of
``reflectsync_node_bases``: the changed columns' values before the update
(:func:`keeper`). A row's base for a column is the value in its earliest
queued base row naming the column: later edits of that column replaced a
value the node wrote itself. A base row counts only while its operation is
queued (an operation of the same version, table and key exists), so
whatever drops operations (a push acknowledged, a merge's decision, a
set-aside change, a repair) also retires their bases; the rows themselves
go with the push's versions, the dropped key or the repair. A merge that
keeps a queued update over a server change queues the server's values as
the new base (:func:`write_base`): the base moves to what was pulled.

The server never keeps bases: its log has no such table and its capture
calls nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..tracking import TrackedTable
from ..wire.codec import ColumnCodec, stores_time_zones, synced_codecs
from .tables import NODE_BASES, NODE_LOG

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _codecs(connection: sa.Connection, info: TrackedTable) -> dict[str, ColumnCodec]:
    return synced_codecs(info, aware_storage=stores_time_zones(connection.dialect))


def _encoded(codecs_: Mapping[str, ColumnCodec], values: Mapping[str, Any]) -> str:
    return _dumps(
        {c: codecs_[c].to_json(v) for c, v in sorted(values.items()) if c in codecs_}
    )


def keep(
    connection: sa.Connection,
    version_id: int,
    updates: list[tuple[TrackedTable, tuple[Any, ...], dict[str, Any]]],
) -> None:
    """The node's :attr:`OperationLog.keep_bases
    <flask_reflectsync.tracking.capture.OperationLog>`: one base row per
    logged update, in the flush's transaction (one executemany)."""
    codecs_: dict[str, Mapping[str, ColumnCodec]] = {}
    rows = []
    for info, key, replaced in updates:
        if not replaced:
            continue
        found = codecs_.get(info.name)
        if found is None:
            found = codecs_[info.name] = _codecs(connection, info)
        rows.append(
            {
                "version_id": version_id,
                "table_name": info.name,
                "row_key": info.encode_key(key),
                "base_values": _encoded(found, replaced),
            }
        )
    if rows:
        connection.execute(sa.insert(NODE_BASES), rows)


def read_base(
    connection: sa.Connection, info: TrackedTable, key_text: str
) -> dict[str, Any]:
    """The row's base: by column, the value in its earliest queued base
    row naming the column (typed; empty when none is known)."""
    operations, versions = NODE_LOG.operations, NODE_LOG.versions
    queued = (
        sa.select(operations.c.id)
        .join(versions, versions.c.id == operations.c.version_id)
        .where(
            versions.c.number.is_(None),
            operations.c.version_id == NODE_BASES.c.version_id,
            operations.c.table_name == NODE_BASES.c.table_name,
            operations.c.row_key == NODE_BASES.c.row_key,
        )
    )
    texts = connection.execute(
        sa.select(NODE_BASES.c.base_values)
        .where(
            NODE_BASES.c.table_name == info.name,
            NODE_BASES.c.row_key == key_text,
            queued.exists(),
        )
        .order_by(NODE_BASES.c.version_id, NODE_BASES.c.id)
    ).scalars()
    codecs_ = _codecs(connection, info)
    base: dict[str, Any] = {}
    for text in texts:
        for name, value in json.loads(text).items():
            codec = codecs_.get(name)
            if codec is not None and name not in base:
                base[name] = None if value is None else codec.decode(value)
    return base


def write_base(
    connection: sa.Connection,
    version_id: int,
    info: TrackedTable,
    key_text: str,
    values: Mapping[str, Any],
) -> None:
    """Queue ``values`` (typed) as the row's base, with version
    ``version_id``'s operation of the row."""
    if values:
        connection.execute(
            sa.insert(NODE_BASES).values(
                version_id=version_id,
                table_name=info.name,
                row_key=key_text,
                base_values=_encoded(_codecs(connection, info), values),
            )
        )


def drop_bases(connection: sa.Connection, table: str, key_text: str) -> None:
    """Forget the row's queued base rows (its queued operations went)."""
    queued = sa.select(NODE_LOG.versions.c.id).where(
        NODE_LOG.versions.c.number.is_(None)
    )
    connection.execute(
        sa.delete(NODE_BASES).where(
            NODE_BASES.c.table_name == table,
            NODE_BASES.c.row_key == key_text,
            NODE_BASES.c.version_id.in_(queued.scalar_subquery()),
        )
    )

