"""Stale pushes: rows another writer changed since the node's last pull
(framework-free, server side).

A push carries the last version the node pulled. A row of the push that
another node or the server's own app changed after that version is *stale*.
Refusing every stale push (409) makes the node pull, merge and push again,
and under contention most pushes bounce: measured with 30 nodes, 88% of
pushes refused and 130 of 228 ``synchronize()`` calls giving up.

So a node names, per table, the built-in strategy its merge would apply
(``last-pusher-wins``, ``server-wins`` or ``node-wins``; see
:doc:`/conflicts`), and the server decides the *direct* conflicts of a stale
push itself, exactly as that merge would, and says what it decided:

=====================  ====================  ==========================
the node               the server now        decided (last-pusher-wins)
=====================  ====================  ==========================
updated (or restored)  has the row           ``update/update``: node's row
updated (or restored)  deleted it            ``update/delete``: restored
deleted                has the row           ``delete/update``: row stays
deleted                deleted it            ``delete/delete``: deleted
=====================  ====================  ==========================

``server-wins`` keeps the server's side of each, ``node-wins`` the node's.
Everything else is still refused with 409 and merged by the node: rows of a
table whose strategy is a callable (the node must see both rows), a node's
insert under a key the server used (the node re-keys its row), an update of
a row the server replaced by a new one under the same key, dependency and
unique conflicts.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import ConfigurationError
from ..rows import built_once
from ..tracking import DELETE, INSERT, UPDATE, LogTables
from ..tracking.columns import ColumnSet, decode_columns, union
from ..tracking.tables import PREFIX

#: How many pushed keys one conflict query names.
KEY_BATCH = 1000

#: The kinds of direct conflict (as in :attr:`~flask_reflectsync.client.Conflict.kind`).
UPDATE_UPDATE = "update/update"
UPDATE_DELETE = "update/delete"  # the node updated, the server deleted
DELETE_UPDATE = "delete/update"  # the node deleted, the server updated
DELETE_DELETE = "delete/delete"

#: The built-in strategies, by name: all the server can apply for a node.
STRATEGIES = ("last-pusher-wins", "server-wins", "node-wins")

#: Who won: the node's operation is applied, or the server's row is kept.
NODE = "node"
SERVER = "server"
DELETED = "deleted"  # both deleted


@dataclass(frozen=True)
class StaleRow:
    """What other writers did to one pushed row after the node's last pull.

    :param version: the newest such version.
    :param inserted: one of them inserted the row: a new row under the key.
    :param columns: the columns they changed, when all of them were updates
        that recorded their columns; ``None``: the whole row.
    """

    version: int
    inserted: bool
    columns: ColumnSet = None

    def touches(self, pushed: ColumnSet) -> bool:
        """Whether the other writers changed a column the node's update
        writes (``pushed``; ``None``: a whole row, or a delete)."""
        if pushed is None or self.columns is None:
            return True
        return bool(self.columns & pushed)


def stale_rows(
    session: Session,
    tables: LogTables,
    keys: Mapping[str, Mapping[str, Hashable]],
    node_id: int,
    last_version: int,
    upto: int | None = None,
) -> dict[tuple[str, Hashable], StaleRow]:
    """The pushed rows another writer changed after ``last_version`` (and
    up to ``upto``).

    A plain query per batch of :data:`KEY_BATCH` pushed keys (one for a
    small push), the keys in its ``WHERE``: it walks the versions after
    ``last_version`` by their unique ``number`` index and their operations
    by the ``version_id`` index, so its cost grows with how far behind the
    node is and with the push, never with the size of the log, and what it
    returns is only the operations of pushed rows. (It once read every
    operation after ``last_version`` through a server-side cursor, which
    PostgreSQL plans for a fast first row: with stale statistics that walked
    the whole log, 27.7 ms against 0.29 ms at 30,000 operations.) The
    node's own versions never count.

    Give ``upto`` whenever the newest number is known, in particular under
    the counter lock (what
    :func:`~flask_reflectsync.tracking.capture.lock_numbering` returns:
    version numbers are gap-free and only the lock holder hands
    them out, so nothing is numbered above it). The versions are then a
    closed range, ``number > last_version AND number <= upto``, which a
    planner without statistics estimates as a few rows (0.5% on
    PostgreSQL) and reads by the ``number`` index. The open range
    ``number > last_version`` is estimated as a third of the table, and on
    a log not analysed yet (a new server: autovacuum analyses a table after
    its first minute of changes at the earliest, or never where it is off)
    PostgreSQL read the whole log sequentially instead, filtering by the
    pushed keys: 3.5 ms at 18,000 operations, growing with the log, under
    the counter lock (issue 19; with the closed range 0.35 ms).

    :param upto: the newest version number there is; ``None``: unknown
        (the open range).

    :param keys: per table, the pushed keys by their log text
        (:func:`~flask_reflectsync.tracking.encode_key`), each mapped to
        the key the caller wants back.
    :return: by ``(table, key)``, what happened to the row.
    """
    versions, operations = tables.versions, tables.operations
    pairs = [(name, text) for name, by_text in keys.items() for text in by_text]
    found: dict[tuple[str, Hashable], StaleRow] = {}
    for start in range(0, len(pairs), KEY_BATCH):
        by_table: dict[str, list[str]] = {}
        for name, text in pairs[start : start + KEY_BATCH]:
            by_table.setdefault(name, []).append(text)
        names = tuple(by_table)
        bounded = upto is not None
        query = built_once(
            operations,
            ("stale rows", versions, names, bounded),
            lambda names=names, bounded=bounded: _scan(  # type: ignore[misc]
                tables, names, bounded=bounded
            ),
        )
        values: dict[str, Any] = {"last_version": last_version, "node_id": node_id}
        if bounded:
            values["upto"] = upto
        for n, texts in enumerate(by_table.values()):
            values[f"keys_{n}"] = texts
        connection = session.connection(bind_arguments={"clause": operations})
        rows = connection.execute(query, values)
        for table_name, row_key, command, number, changed in rows:
            key = keys[table_name].get(row_key)
            if key is None:
                continue  # matched by a case-insensitive collation (MySQL)
            columns = decode_columns(changed) if command == UPDATE else None
            seen = found.get((table_name, key))
            if seen is None:
                found[(table_name, key)] = StaleRow(number, command == INSERT, columns)
            else:
                found[(table_name, key)] = StaleRow(
                    max(seen.version, number),
                    seen.inserted or command == INSERT,
                    union(seen.columns, columns),
                )
    return found


def _scan(
    tables: LogTables, names: tuple[str, ...], *, bounded: bool
) -> sa.Select[Any]:
    """The query of :func:`stale_rows` for pushed keys of the tables
    ``names``, in order (the keys of the n-th in ``keys_<n>``); ``bounded``:
    versions up to ``upto`` only."""
    versions, operations = tables.versions, tables.operations
    after = versions.c.number > sa.bindparam("last_version")
    if bounded:
        after = sa.and_(after, versions.c.number <= sa.bindparam("upto"))
    return (
        sa.select(
            operations.c.table_name,
            operations.c.row_key,
            operations.c.command,
            versions.c.number,
            operations.c.changed_columns,
        )
        .join(versions, versions.c.id == operations.c.version_id)
        .where(
            after,
            sa.or_(
                versions.c.node_id.is_(None),
                versions.c.node_id != sa.bindparam("node_id"),
            ),
            sa.or_(
                *(
                    sa.and_(
                        operations.c.table_name == name,
                        operations.c.row_key.in_(
                            sa.bindparam(f"keys_{n}", expanding=True)
                        ),
                    )
                    for n, name in enumerate(names)
                )
            ),
        )
    )


@dataclass(frozen=True)
class Ruling:
    """The server's decision on one stale row.

    :param kind: the conflict kind.
    :param resolution: :data:`NODE`, :data:`SERVER` or :data:`DELETED`.
    :param apply: whether the node's operation is applied.
    """

    kind: str
    resolution: str
    apply: bool


def rule(strategy: str, command: str, server_has_row: bool) -> Ruling:
    """Decide a direct conflict as the node's merge would with ``strategy``.

    :param strategy: one of :data:`STRATEGIES`.
    :param command: the node's operation: an update (a restore when the
        server lacks the row) or a delete. Inserts are never ruled here.
    :param server_has_row: whether the server has the row now.
    """
    if command == DELETE:
        if not server_has_row:
            return Ruling(DELETE_DELETE, DELETED, False)
        if strategy == "node-wins":
            return Ruling(DELETE_UPDATE, NODE, True)
        return Ruling(DELETE_UPDATE, SERVER, False)
    kind = UPDATE_UPDATE if server_has_row else UPDATE_DELETE
    if strategy == "server-wins":
        return Ruling(kind, SERVER, False)
    return Ruling(kind, NODE, True)


def ruling_entry(
    table: str, wire_key: list[Any], ruling: Ruling, server: dict[str, Any] | None
) -> dict[str, Any]:
    """One entry of the push answer's ``resolved`` list."""
    return {
        "table": table,
        "key": wire_key,
        "kind": ruling.kind,
        "resolution": ruling.resolution,
        "server": server,
    }


# -- the rulings a push was answered with ---------------------------------------------

#: The table of the ``resolved`` entries each ruled push was answered with
#: (on the app's metadata, like the log's): a retry of the push, after a lost
#: answer, must hear the same rulings, or the node never learns that one of
#: its changes was overruled.
RULINGS = "reflectsync_push_rulings"


def define_push_rulings(metadata: sa.MetaData) -> sa.Table:
    """Define (or return) the table of stored push rulings on ``metadata``."""
    found = metadata.tables.get(RULINGS)
    if found is not None:
        return found
    return sa.Table(
        RULINGS,
        metadata,
        sa.Column(
            "version_id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            sa.ForeignKey(PREFIX + "versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("resolved", sa.Text, nullable=False),
    )


def store_rulings(
    session: Session, tables: LogTables, version_id: int, entries: list[dict[str, Any]]
) -> None:
    """Keep a push's ``resolved`` entries with its version row, in the push's
    transaction.

    :raises ConfigurationError: if the rulings table is not defined (the
        extension defines it; a push handler called on bare log tables must
        define it with :func:`define_push_rulings`).
    """
    if not entries:
        return
    table = _rulings_table(tables)
    session.execute(
        table.insert().values(
            version_id=version_id,
            resolved=json.dumps(entries, separators=(",", ":")),
        )
    )


def stored_rulings(
    session: Session, tables: LogTables, version_id: int
) -> list[dict[str, Any]]:
    """The ``resolved`` entries a push was first answered with (``[]`` if
    none)."""
    table = _rulings_table(tables)
    found = session.execute(
        sa.select(table.c.resolved).where(table.c.version_id == version_id)
    ).scalar()
    return list(json.loads(found)) if found else []


def _rulings_table(tables: LogTables) -> sa.Table:
    table = tables.versions.metadata.tables.get(RULINGS)
    if table is None:
        raise ConfigurationError(
            f"The {RULINGS} table is not defined on the log's metadata; "
            "call define_push_rulings(metadata) (ReflectSync does)."
        )
    return table
