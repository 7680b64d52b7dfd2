"""The node's push queue: the operations of its unnumbered versions,
compressed to one command per row, and the means to rewrite them
(:class:`LocalQueue`). The merge and the set-aside changes rewrite it; the
push reads it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ..tracking import DELETE, INSERT, UPDATE, LogTables, TrackedTable, compress
from ..tracking.columns import ColumnSet, decode_columns, encode_columns
from ..wire.operations import LoggedOperation
from .bases import drop_bases, write_base


class LocalQueue:
    """The node's unpushed operations, compressed, and the means to rewrite them.

    :param connection: the merge's connection, inside its transaction.
    :param tables: the node's log tables.
    """

    def __init__(self, connection: sa.Connection, tables: LogTables) -> None:
        self.connection = connection
        self.tables = tables
        versions, operations = tables.versions, tables.operations
        query = (
            sa.select(
                operations.c.table_name,
                operations.c.row_key,
                operations.c.command,
                operations.c.changed_columns,
            )
            .join(versions, versions.c.id == operations.c.version_id)
            .where(versions.c.number.is_(None))
            .order_by(operations.c.version_id, operations.c.id)
        )
        ops = [
            LoggedOperation(table, key, command, decode_columns(changed))
            for table, key, command, changed in connection.execute(query)
        ]
        compressed = compress(ops)
        self.commands: dict[tuple[str, str], str] = {
            (op.table_name, op.row_key): op.command for op in compressed
        }
        #: The columns of queued updates (rows left out: whole rows).
        self.columns: dict[tuple[str, str], frozenset[str]] = {
            (op.table_name, op.row_key): op.columns
            for op in compressed
            if op.command == UPDATE and op.columns is not None
        }
        #: Rows inserted and deleted again locally: their operations cancel
        #: out, but they would still be compressed with later ones.
        self.cancelled = {
            (op.table_name, op.row_key) for op in ops
        } - self.commands.keys()
        #: Rows the node deleted and then inserted again under the same key
        #: (SQLite gives a new row the highest freed id): compressed, that is
        #: an update, although the row is a new one.
        self.replaced: set[tuple[str, str]] = set()
        first: dict[tuple[str, str], str] = {}
        deleted: set[tuple[str, str]] = set()
        for op in ops:
            ident = (op.table_name, op.row_key)
            first.setdefault(ident, op.command)
            if op.command == DELETE:
                deleted.add(ident)
            elif op.command == INSERT and ident in deleted and first[ident] != INSERT:
                self.replaced.add(ident)
        self._version_id: int | None = None

    def forget_cancelled(self) -> None:
        """Drop the operations of rows inserted and deleted again locally.

        Compression reads a row's first and last command as "existed on the
        server before" and "exists now". Once a pull writes a key whose queue
        starts with an insert that was cancelled by a delete, that first
        command is wrong: a later local delete would compress to nothing, an
        update to an insert. Forgetting them makes the queue start at what
        the merge wrote. Only safe while no push is in flight (its message is
        rebuilt from these rows); :func:`merge_page` runs after the client
        has settled any push.
        """
        for table, key_text in sorted(self.cancelled):
            self.drop(table, key_text)
        self.cancelled.clear()

    def get(self, table: str, key_text: str) -> str | None:
        """The compressed queued command of a row, or ``None``."""
        return self.commands.get((table, key_text))

    def columns_of(self, table: str, key_text: str) -> ColumnSet:
        """The columns a queued update changes (``None``: the whole row, or
        the row's queued change is not an update)."""
        return self.columns.get((table, key_text))

    def drop(self, table: str, key_text: str) -> None:
        """Forget every queued change of a row: the node will not push it."""
        versions, operations = self.tables.versions, self.tables.operations
        queued = sa.select(versions.c.id).where(versions.c.number.is_(None))
        self.connection.execute(
            sa.delete(operations).where(
                operations.c.table_name == table,
                operations.c.row_key == key_text,
                operations.c.version_id.in_(queued.scalar_subquery()),
            )
        )
        drop_bases(self.connection, table, key_text)
        self.commands.pop((table, key_text), None)
        self.columns.pop((table, key_text), None)
        self.replaced.discard((table, key_text))

    def set(
        self, table: str, key_text: str, command: str, columns: ColumnSet = None
    ) -> None:
        """Make ``command`` the row's only queued change (for an update, of
        ``columns``; ``None``: the whole row)."""
        self.drop(table, key_text)
        self.append(table, key_text, command, columns)

    def set_base(
        self, info: TrackedTable, key_text: str, values: Mapping[str, Any]
    ) -> None:
        """Make ``values`` the base of the row's change queued last by
        :meth:`append` (see :mod:`.bases`)."""
        if self._version_id is not None:
            write_base(self.connection, self._version_id, info, key_text, values)

    def append(
        self, table: str, key_text: str, command: str, columns: ColumnSet = None
    ) -> None:
        """Queue one more change of a row (compressed with the earlier ones;
        for an update, of ``columns``, ``None``: the whole row)."""
        if self._version_id is None:
            result = self.connection.execute(
                sa.insert(self.tables.versions).values(
                    created_at=datetime.datetime.now(datetime.timezone.utc)
                )
            )
            assert result.inserted_primary_key is not None
            self._version_id = int(result.inserted_primary_key[0])
        self.connection.execute(
            sa.insert(self.tables.operations).values(
                version_id=self._version_id,
                table_name=table,
                row_key=key_text,
                command=command,
                changed_columns=(
                    encode_columns(columns) if command == UPDATE else None
                ),
            )
        )
        ident = (table, key_text)
        earlier = self.commands.get(ident)
        ops = [
            LoggedOperation(table, key_text, earlier, self.columns.get(ident))
            if earlier
            else None,
            LoggedOperation(table, key_text, command, columns),
        ]
        merged = compress(op for op in ops if op is not None)
        self.columns.pop(ident, None)
        if merged:
            self.commands[ident] = merged[0].command
            if merged[0].command == UPDATE and merged[0].columns is not None:
                self.columns[ident] = merged[0].columns
        else:
            self.commands.pop(ident, None)
