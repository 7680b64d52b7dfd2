"""The framing of the streamed ``GET /repair`` answer: newline-delimited JSON
(``application/x-ndjson``), one JSON object per line, each line ended by
``\\n``:

1. a header, ``{"ok": true, "protocol": 2, "counts": {table: rows}}``
   (``counts``: each table's row count when the copy started, a progress
   total);
2. per tracked table, ``{"table": name, "columns": [...]}``, followed by
   ``{"rows": [[...], ...]}`` lines, one per chunk of rows the server read;
3. a trailer, ``{"end": true, "version": N, "rows": {table: rows}}``: the
   version to pull from after the copy, and how many rows each table's lines
   held.

The version travels only in the trailer, so a node that has not read the
last line has nothing to commit: a stream cut anywhere, even between two
lines, is detected. A line is read with one ``json.loads``; JSON text holds
no raw newline, so the lines are found by splitting bytes (see
:doc:`/performance` for what this costs against one ``json.loads``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import ProtocolMismatchError
from .messages import PROTOCOL_VERSION

#: The media type of the repair stream; a node names it in ``Accept``.
MEDIA_TYPE = "application/x-ndjson"


def header_line(counts: Mapping[str, int]) -> str:
    """The stream's first line."""
    return (
        f'{{"ok":true,"protocol":{PROTOCOL_VERSION},"counts":'
        f"{json.dumps(counts, separators=(',', ':'))}}}\n"
    )


def table_line(name: str, columns: Iterable[str]) -> str:
    """The line that starts a table's rows."""
    return json.dumps({"table": name, "columns": list(columns)}) + "\n"


def rows_line(rows: Iterable[str]) -> str:
    """A line of rows, each row already JSON text (an array of values)."""
    return '{"rows":[' + ",".join(rows) + "]}\n"


def end_line(version: int, rows: Mapping[str, int]) -> str:
    """The stream's last line."""
    return json.dumps({"end": True, "version": version, "rows": dict(rows)}) + "\n"


Table = tuple[str, list[str], Iterator[list[Any]]]


class RepairReader:
    """Reads a repair stream from its byte chunks (cut anywhere), table by
    table and chunk of rows by chunk of rows, holding one line in memory.

    Anything but a whole, well-formed stream raises
    :exc:`~flask_reflectsync.errors.ProtocolMismatchError`: a line cut short,
    a missing trailer, a line out of place, row counts that disagree with
    the trailer's.
    """

    def __init__(self, chunks: Iterable[bytes], base_url: str) -> None:
        self._messages = self._read(chunks)
        self._base_url = base_url
        self._held: dict[str, Any] | None = None
        self._sent: dict[str, int] = {}
        #: The first line, once :meth:`tables` has started.
        self.header: dict[str, Any] = {}
        #: The last line, once :meth:`tables` has finished.
        self.end: dict[str, Any] = {}

    def broken(self, why: str) -> ProtocolMismatchError:
        return ProtocolMismatchError(
            f"The repair answer of {self._base_url} is cut or malformed ({why}); "
            "nothing was changed locally. Repair again."
        )

    def _read(self, chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        pending: list[bytes] = []
        for chunk in chunks:
            if b"\n" not in chunk:
                if chunk:
                    pending.append(chunk)
                continue
            pending.append(chunk)
            lines = b"".join(pending).split(b"\n")
            last = lines.pop()
            pending = [last] if last else []
            for line in lines:
                if line.strip():
                    yield self._parse(line)
        if b"".join(pending).strip():
            raise self.broken("its last line is cut short")

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            raise self.broken("a line is not JSON") from None
        if type(message) is not dict:
            raise self.broken("a line is not a JSON object")
        return message

    def _next(self) -> dict[str, Any]:
        if self._held is not None:
            message, self._held = self._held, None
            return message
        for message in self._messages:
            return message
        raise self.broken("it ends before its last line")

    def tables(self) -> Iterator[Table]:
        """``(table, columns, chunks)`` for each table, ``chunks`` yielding
        lists of rows; a table's chunks left unread are skipped."""
        self.header = self._next()
        if self.header.get("ok") is not True:
            raise self.broken("no header")
        if self.header.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatchError(
                f"The server at {self._base_url} speaks protocol "
                f"{self.header.get('protocol')!r}; this node speaks "
                f"{PROTOCOL_VERSION}. Upgrade the older side."
            )
        while True:
            message = self._next()
            if "end" in message:
                self._finish(message)
                return
            name, columns = message.get("table"), message.get("columns")
            if (
                type(name) is not str
                or type(columns) is not list
                or not all(type(c) is str for c in columns)
            ):
                raise self.broken("a line out of place")
            if name in self._sent:
                raise self.broken(f"table {name!r} sent twice")
            self._sent[name] = 0
            chunks = self._chunks(name)
            yield name, columns, chunks
            for _ in chunks:  # what the caller left unread
                pass

    def _chunks(self, name: str) -> Iterator[list[Any]]:
        while True:
            message = self._next()
            rows = message.get("rows")
            if len(message) != 1 or type(rows) is not list:
                self._held = message
                return
            self._sent[name] += len(rows)
            yield rows

    def _finish(self, end: dict[str, Any]) -> None:
        version, rows = end.get("version"), end.get("rows")
        if end.get("end") is not True or type(version) is not int or version < 0:
            raise self.broken("a malformed last line")
        if rows != self._sent:
            raise self.broken("row counts that disagree with its last line")
        for _ in self._messages:
            raise self.broken("lines after its last line")
        self.end = end
