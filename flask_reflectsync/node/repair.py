"""Repairing a node: its tracked tables replaced with the server's copy,
read from the streamed ``GET /repair`` answer table by table, row by row
(:class:`RepairStream`), so memory stays flat.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from ..errors import ProtocolMismatchError, ServerUnreachableError
from ..rows import write_rows
from ..wire.codec import stores_time_zones, table_codecs
from ..wire.messages import PROTOCOL_VERSION
from ..wire.page import decode_row
from . import push as _push
from .keys import HighWater
from .tables import NODE_KEYS, NODE_LOG

if TYPE_CHECKING:
    from .client import SyncClient


def repair(
    client: SyncClient,
    progress: Callable[[str, int], Any] | None = None,
    *,
    on_total: Callable[[int], Any] | None = None,
) -> int:
    """What :meth:`SyncClient.repair` does."""
    with client._lock:
        client._registered()
        _push.settle_push(client)
        schema = client.schema
        aware = stores_time_zones(client.engine.dialect)
        total = 0
        answer = client._send("GET", "/repair", stream=True)
        try:
            with client._begin() as connection:
                for tracked in reversed(list(schema.tables.values())):
                    connection.execute(sa.delete(tracked.table))
                stream = RepairStream(answer.iter_bytes(), client.base_url)
                announced = on_total is None
                for name, columns, rows in stream.tables():
                    if not announced:
                        announced = True
                        announce_total(client, stream.header, on_total)
                    info = schema.tables.get(name)
                    codecs_ = (
                        table_codecs(info.table, aware_storage=aware)
                        if info is not None
                        else {}
                    )
                    done = 0
                    batch: list[dict[str, Any]] = []
                    for values in rows:
                        if info is None:
                            continue
                        batch.append(decode_row(codecs_, columns, values))
                        if len(batch) >= 1000:
                            write_rows(connection, info, batch, ())
                            done += len(batch)
                            batch = []
                            if progress is not None:
                                progress(name, done)
                    if batch and info is not None:
                        write_rows(connection, info, batch, ())
                        done += len(batch)
                    if progress is not None and info is not None:
                        progress(name, done)
                    total += done
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
                HighWater(connection, NODE_KEYS).raise_to_tables(schema)
                client._set_state(
                    connection,
                    last_version=stream.header["version"],
                    pull_cursor=None,
                    push_id=None,
                    push_versions=None,
                    push_message=None,
                )
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


def announce_total(
    client: SyncClient, header: Mapping[str, Any], on_total: Callable[[int], Any] | None
) -> None:
    counts = header.get("counts")
    if on_total is None or not isinstance(counts, dict):
        return
    mine = client.schema.tables
    on_total(sum(n for t, n in counts.items() if t in mine and type(n) is int))


class RepairStream:
    """Reads the streamed ``GET /repair`` answer table by table, row by row,
    holding only the current piece of text in memory."""

    def __init__(self, chunks: Iterator[bytes], base_url: str) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._json = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0
        self._base_url = base_url
        self.header: dict[str, Any] = {}

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buffer = self._buffer[self._pos :] + self._decoder.decode(chunk)
                self._pos = 0
                return True
        return False

    def _broken(self) -> ProtocolMismatchError:
        return ProtocolMismatchError(
            f"The repair answer of {self._base_url} is cut or malformed; run "
            "repair again."
        )

    def _peek(self) -> str:
        while True:
            while (
                self._pos < len(self._buffer) and self._buffer[self._pos] in " \t\r\n"
            ):
                self._pos += 1
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if not self._more():
                raise self._broken()

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise self._broken()
        self._pos += 1

    def _value(self) -> Any:
        self._peek()
        while True:
            try:
                value, end = self._json.raw_decode(self._buffer, self._pos)
            except ValueError:
                if not self._more():
                    raise self._broken() from None
                continue
            if end == len(self._buffer) and isinstance(value, (int, float)):
                if self._more():  # a number may continue in the next chunk
                    continue
            self._pos = end
            return value

    def tables(self) -> Iterator[tuple[str, list[str], Iterator[list[Any]]]]:
        """``(table, columns, rows)`` for each table; consume ``rows`` before
        asking for the next table."""
        self._expect("{")
        while True:
            name = self._value()
            self._expect(":")
            if name != "tables":
                self.header[name] = self._value()
            else:
                yield from self._tables()
            if self._peek() == ",":
                self._pos += 1
                continue
            self._expect("}")
            if self.header.get("ok") is not True or "version" not in self.header:
                raise self._broken()
            if self.header.get("protocol") != PROTOCOL_VERSION:
                raise ProtocolMismatchError(
                    f"The server speaks protocol {self.header.get('protocol')!r}; "
                    f"this node speaks {PROTOCOL_VERSION}."
                )
            return

    def _tables(self) -> Iterator[tuple[str, list[str], Iterator[list[Any]]]]:
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
            return
        while True:
            name = self._value()
            self._expect(":")
            self._expect("{")
            columns: list[str] = []
            while True:
                field_name = self._value()
                self._expect(":")
                if field_name == "columns":
                    columns = self._value()
                elif field_name == "rows":
                    yield name, columns, self._rows()
                else:
                    self._value()
                if self._peek() == ",":
                    self._pos += 1
                    continue
                self._expect("}")
                break
            if self._peek() == ",":
                self._pos += 1
                continue
            self._expect("}")
            return

    def _rows(self) -> Iterator[list[Any]]:
        self._expect("[")
        if self._peek() == "]":
            self._pos += 1
            return
        while True:
            yield self._value()
            if self._peek() == ",":
                self._pos += 1
                continue
            self._expect("]")
            return
