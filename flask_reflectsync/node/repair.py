"""Repairing a node: its tracked tables replaced with the server's copy,
read from the streamed ``GET /repair`` answer table by table, a line of rows
at a time (:class:`~flask_reflectsync.wire.repair.RepairReader`), so memory
stays flat. Columns kept out of sync keep the node's own values (read before
the tables are emptied and written back to the rows that are still there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from ..errors import ProtocolMismatchError, ServerUnreachableError
from ..rows import write_rows
from ..wire.codec import stores_time_zones, synced_codecs
from ..wire.page import decode_row
from ..wire.repair import MEDIA_TYPE, RepairReader
from . import push as _push
from . import schema as _schema
from .keys import HighWater
from .state import record_synced
from .tables import NODE_BASES, NODE_KEYS, NODE_LOG

if TYPE_CHECKING:
    from ..tracking import TrackedTable
    from .client import SyncClient

#: Rows written per executemany (and per progress call).
BATCH = 1000


def repair(
    client: SyncClient,
    progress: Callable[[str, int], Any] | None = None,
    *,
    on_total: Callable[[int], Any] | None = None,
) -> int:
    """What :meth:`SyncClient.repair` does."""
    with client._lock:
        client._registered()
        _schema.check_local(client)
        _push.settle_push(client)
        schema = client.schema
        aware = stores_time_zones(client.engine.dialect)
        total = 0
        answer = _schema.sending(
            client,
            lambda fields: client._send(
                "GET", "/repair", stream=True, accept=MEDIA_TYPE, message=fields
            ),
        )
        try:
            media_type = answer.headers.get("content-type", "").split(";")[0]
            if media_type.strip().lower() != MEDIA_TYPE:
                raise ProtocolMismatchError(
                    f"{client.base_url}/repair answered {media_type or 'nothing'!r}, "
                    f"not a {MEDIA_TYPE} stream: the server is older than this "
                    "node's repair protocol. Upgrade the server."
                )
            with client._begin() as connection:
                kept = _excluded_values(connection, schema.tables.values())
                for tracked in reversed(list(schema.tables.values())):
                    connection.execute(sa.delete(tracked.table))
                stream = RepairReader(answer.iter_bytes(), client.base_url)
                announced = on_total is None
                for name, columns, chunks in stream.tables():
                    if not announced:
                        announced = True
                        announce_total(client, stream.header, on_total)
                    info = schema.tables.get(name)
                    if info is None:
                        continue  # a table the node does not track: skipped
                    # Before a row is written (the copy rolls back whole).
                    _schema.check_copy(info, columns)
                    extra = [c for c in columns if c not in info.table.c]
                    if extra:
                        _schema.note_unserved(client, {name: extra})
                    codecs_ = synced_codecs(info, aware_storage=aware)
                    done = 0
                    batch: list[dict[str, Any]] = []
                    for rows in chunks:
                        try:
                            batch += [decode_row(codecs_, columns, v) for v in rows]
                        except (TypeError, ValueError):
                            raise stream.broken(f"a malformed row of {name}") from None
                        while len(batch) >= BATCH:
                            write_rows(connection, info, batch[:BATCH], ())
                            done += BATCH
                            del batch[:BATCH]
                            if progress is not None:
                                progress(name, done)
                    if batch:
                        write_rows(connection, info, batch, ())
                        done += len(batch)
                    if progress is not None:
                        progress(name, done)
                    total += done
                for info, rows in kept:
                    write_rows(connection, info, (), rows)
                versions, operations = NODE_LOG.versions, NODE_LOG.operations
                queued = sa.select(versions.c.id).where(versions.c.number.is_(None))
                connection.execute(
                    sa.delete(operations).where(
                        operations.c.version_id.in_(queued.scalar_subquery())
                    )
                )
                connection.execute(
                    sa.delete(versions).where(versions.c.number.is_(None))
                )
                connection.execute(sa.delete(NODE_BASES))
                HighWater(connection, NODE_KEYS).raise_to_tables(schema)
                client._set_state(
                    connection,
                    last_version=stream.end["version"],
                    pull_cursor=None,
                    push_id=None,
                    push_versions=None,
                    push_message=None,
                )
                # Every tracked table now holds the server's copy.
                record_synced(connection, schema.tables)
        except httpx.TransportError as error:
            # The stream broke off: the local transaction rolled back.
            raise ServerUnreachableError(
                f"The repair stream from {client.base_url} broke off ({error!s} "
                f"[{type(error).__name__}]); nothing was changed locally. "
                "Repair again."
            ) from error
        finally:
            answer.close()
        return total


def _excluded_values(
    connection: sa.Connection, tables: Iterable[TrackedTable]
) -> list[tuple[TrackedTable, list[dict[str, Any]]]]:
    """The node's own values of the columns kept out of sync, with their
    rows' keys, per table that has such columns: the server's copy carries
    none, so a repair writes them back where the row is still there."""
    kept = []
    for info in tables:
        if not info.excluded:
            continue
        columns = [
            *info.pk_columns,
            *(c for c in info.table.columns if c.name in info.excluded),
        ]
        rows = [
            dict(zip([c.name for c in columns], row, strict=True))
            for row in connection.execute(sa.select(*columns))
        ]
        if rows:
            kept.append((info, rows))
    return kept


def announce_total(
    client: SyncClient, header: Mapping[str, Any], on_total: Callable[[int], Any] | None
) -> None:
    counts = header.get("counts")
    if on_total is None or not isinstance(counts, dict):
        return
    mine = client.schema.tables
    on_total(sum(n for t, n in counts.items() if t in mine and type(n) is int))
