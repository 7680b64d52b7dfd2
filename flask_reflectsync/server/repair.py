"""Serving the full repair: every tracked table streamed as newline-delimited
JSON (framing: :mod:`flask_reflectsync.wire.repair`), for a node that starts
over; once the whole copy is handed over, the node counts as having pulled
up to its version. Paged pulls are in :mod:`.pull`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping
from typing import Any

import sqlalchemy as sa

from ..errors import ValidationError
from ..tracking import LogTables
from ..tracking.numbering import number_versions
from ..tracking.tables import current_version
from ..wire.codec import stores_time_zones, synced_codecs
from ..wire.repair import MEDIA_TYPE, end_line, header_line, rows_line, table_line
from .nodes import nodes_table
from .pull_scopes import Share
from .schema import TrackedSchema
from .scopes import principal_text


def repair_stream(
    engine: sa.Engine,
    tables: LogTables,
    schema: TrackedSchema,
    *,
    chunk_rows: int,
    node_id: int | None = None,
    share: Share | None = None,
    scoped_as: str | None = None,
) -> Iterator[str]:
    """The full content of every tracked table, as lines of newline-delimited
    JSON (framing: :mod:`flask_reflectsync.wire.repair`).

    The version is read first and each table is read with a server-side
    cursor ``chunk_rows`` rows at a time, one line of rows per chunk, so
    memory stays flat however large the tables are. Rows committed after the
    version was read may already be included; a node that pulls from that
    version afterwards converges, because pulls carry current payloads.

    :param node_id: the node served: once the whole copy has been handed
        over, the server records that node as having pulled up to the
        copy's version (as a pull would).
    :param share: the node's share: only its rows are copied (see
        :mod:`.scopes`).
    :param scoped_as: what the copy is served under (see
        :meth:`.scopes.Scopes.digest`), recorded for the node with the copy.
    :return: an iterator of lines: a header (``counts`` holds each table's
        row count when the copy starts, a progress total: rows committed
        meanwhile may change it), then per table a line naming it and its
        columns and lines of rows, then a trailer with the version and the
        rows each table's lines held.
    """
    number_versions(engine, tables)
    with engine.connect() as connection:
        version = current_version(connection, tables)
        aware = stores_time_zones(connection.dialect)
        conditions = {
            name: None if share is None else share.condition(info)
            for name, info in schema.tables.items()
        }
        yield header_line(_row_counts(connection, schema, conditions))
        sent: dict[str, int] = {}
        for name, info in schema.tables.items():
            codecs = list(synced_codecs(info, aware_storage=aware).values())
            yield table_line(name, [c.name for c in codecs])
            query = sa.select(*info.synced_columns).order_by(*info.pk_columns)
            condition = conditions[name]
            if condition is not None:
                query = query.where(condition)
            result = connection.execution_options(yield_per=chunk_rows).execute(query)
            sent[name] = 0
            for partition in result.partitions():
                yield rows_line(
                    json.dumps([c.to_json(v) for c, v in zip(codecs, row, strict=True)])
                    for row in partition
                )
                sent[name] += len(partition)
        yield end_line(version, sent)
    if node_id is not None:
        # Reached only when the server took the last line: the node has
        # the whole copy, so nodes and trim's watermark see it as caught up.
        served = None if share is None else principal_text(share.node.principal)
        _record_pulled(engine, tables, node_id, version, scoped_as, served)


def check_repair_accepted(accept: str | None) -> None:
    """Refuse a repair to a client that does not name the stream's media
    type in ``Accept``: nodes from before the NDJSON stream read one JSON
    document, and would misread it. The refusal mentions the protocol, which
    such nodes turn into a :exc:`~flask_reflectsync.errors.ProtocolMismatchError`.
    """
    named = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    if MEDIA_TYPE not in named:
        raise ValidationError(
            f"This server streams repairs as {MEDIA_TYPE}, which the node does "
            "not accept (Accept header): the node is older than the server's "
            "repair protocol. Upgrade the node.",
            code="request.protocol_mismatch",
        )


def _row_counts(
    connection: sa.Connection,
    schema: TrackedSchema,
    conditions: Mapping[str, sa.ColumnElement[bool] | None],
) -> dict[str, int]:
    """Each tracked table's row count (in the share), in one round trip."""
    names = list(schema.tables)
    if not names:
        return {}
    counts = []
    for name in names:
        count = sa.select(sa.func.count()).select_from(schema.tables[name].table)
        if conditions.get(name) is not None:
            count = count.where(conditions[name])  # type: ignore[arg-type]
        counts.append(count.scalar_subquery())
    found = connection.execute(sa.select(*counts)).one()
    return {name: int(count or 0) for name, count in zip(names, found, strict=True)}


def _record_pulled(
    engine: sa.Engine,
    tables: LogTables,
    node_id: int,
    version: int,
    scoped_as: str | None = None,
    served_principal: str | None = None,
) -> None:
    """Record the node as having pulled up to ``version`` (and, after a copy
    of its share, the digest and the principal it was served under)."""
    nodes = nodes_table(tables)
    scope: dict[str, Any] = {}
    if scoped_as is not None:
        scope = {"scoped_as": scoped_as, "served_principal": served_principal}
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.update(nodes)
                .where(nodes.c.id == node_id)
                .values(
                    last_pulled_version=version,
                    last_seen_at=datetime.datetime.now(datetime.timezone.utc),
                    **scope,
                    # A full copy: whatever the node missed, it has now.
                    retired_at=None,
                )
            )
    except sa.exc.DBAPIError:
        # The answer is already sent; the node's next pull records it.
        pass
