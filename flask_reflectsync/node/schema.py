"""The node's side of the schema handshake (see :doc:`/schema-changes`).

- :func:`description` is the node's schema identity, and :func:`sending`
  sends a request with it: as one digest while the server has said nothing
  else, then with the columns of the tables whose digests differ from the
  server's (see :ref:`schema-digests`);
- :func:`check_local` compares the node's models with its own database file
  before a pull, push or repair writes anything (new model code on an old
  file used to fail inside the merge with a raw database error);
- :func:`check_page` and :func:`check_copy` are the node's own guard on what
  it is sent, for a server that did not cut the page to the node's columns:
  a page is refused when it holds a value the node cannot store (a non-null
  value of a column the node lacks) or rows missing one of the node's
  columns; nothing is merged and the node's version does not move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from ..errors import SchemaDescriptionNeededError, SchemaMismatchError
from ..wire.messages import PROTOCOL_VERSION
from ..wire.schema import Description, describe, digest_all, digest_table

if TYPE_CHECKING:
    from ..tracking import TrackedTable
    from .client import SyncClient

_log = logging.getLogger("flask_reflectsync.client")


def description(client: SyncClient) -> Description:
    """The node's schema identity: its tracked tables' synced columns."""
    found = client._description
    if found is None:
        found = client._description = describe(client.schema.tables.values())
    return found


def identity(client: SyncClient) -> dict[str, Any]:
    """What a request carries of the node's schema: ``schema_digest`` while
    the server's digests are unknown or all the same as the node's, else
    ``schema`` with the columns of the tables whose digests differ (or that
    the server lacks) and the digests of the others."""
    mine = description(client)
    ours = client._digests
    if ours is None:
        ours = client._digests = {t: digest_table(c) for t, c in mine.items()}
    theirs = client._server_digests
    if theirs is None or theirs == ours:
        return {"schema_digest": digest_all(ours)}
    return {
        "schema": {
            table: digest if theirs.get(table) == digest else mine[table]
            for table, digest in ours.items()
        }
    }


T = TypeVar("T")


def sending(client: SyncClient, send: Callable[[dict[str, Any]], T]) -> T:
    """``send(fields)`` with the node's :func:`identity` as ``fields``;
    when the server asks for the description (``schema.describe``: its
    digests differ), at once again with the tables it named as differing,
    and a third time with the whole description if the server changed in
    between. The server's digests are kept for the next requests."""
    try:
        return send(identity(client))
    except SchemaDescriptionNeededError as error:
        client._server_digests = error.digests
    try:
        return send(identity(client))
    except SchemaDescriptionNeededError as error:
        client._server_digests = error.digests
    return send({"schema": description(client)})


@dataclass(frozen=True)
class SchemaCheck:
    """What :meth:`SyncClient.check_schema
    <flask_reflectsync.client.SyncClient.check_schema>` found.

    :param differences: what differs, one entry per table or column, as in
        :class:`~flask_reflectsync.errors.SchemaMismatchError`: first the
        node's models against its own database file (``problem``
        ``not_in_database``), then the node's tracked tables against the
        server's (``node_only_table``, ``node_only_column``,
        ``server_only_column``, ``kind``; ``renamed_to`` for a rename,
        ``known`` when the server's catalog knows it, ``candidates`` when
        several columns could be it).
    :param server_only_tables: tables the server synchronises and the node
        does not track (left out of its pulls; perhaps on purpose).
    """

    differences: list[dict[str, Any]] = field(default_factory=list)
    server_only_tables: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        """Whether the models, the node's file and the server all agree."""
        return not self.differences and not self.server_only_tables

    @property
    def message(self) -> str:
        """One line saying it."""
        if self.same:
            return "The node's tracked tables are the server's."
        parts = [str(d.get("message", "")).rstrip(".") for d in self.differences]
        if self.server_only_tables:
            parts.append(
                "the server also synchronises "
                + ", ".join(self.server_only_tables)
                + ", which this node does not track"
            )
        return "; ".join(parts) + "."


def check_schema(client: SyncClient) -> SchemaCheck:
    """What :meth:`SyncClient.check_schema` does."""
    with client._lock:
        client._registered()
        local: list[dict[str, Any]] = []
        try:
            check_local(client)
        except SchemaMismatchError as error:
            if error.code != "node.schema_mismatch":
                raise
            local = [
                {**d, "message": f"{d['message']} is not in the node's database"}
                for d in error.differences
            ]
        answer = sending(
            client,
            lambda fields: client._call(
                "POST",
                "/schema-check",
                message={"protocol": PROTOCOL_VERSION, **fields},
            ),
        )
        return SchemaCheck(
            local + list(answer.get("differences") or []),
            [str(t) for t in answer.get("server_only_tables") or []],
        )


def check_local(client: SyncClient) -> None:
    """Refuse to sync when the node's models name columns or tables its own
    database file does not have (new model code on an old file), once per
    client.

    :raises SchemaMismatchError: (``node.schema_mismatch``) naming them.
    """
    if client._local_checked:
        return
    with client.engine.connect() as connection:
        # On this connection: on SQLite it holds the write lock once it
        # reads (BEGIN IMMEDIATE), and a second one would wait for it.
        tables = client._schema_on(connection).tables
        inspector = sa.inspect(connection)
        existing = set(inspector.get_table_names())
        problems: list[dict[str, Any]] = []
        for info in tables.values():
            table = info.table
            if table.name not in existing:
                problems.append(_local(info.name, None, f"table {info.name}"))
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    problems.append(
                        _local(info.name, column.name, f"{info.name}.{column.name}")
                    )
    if problems:
        named = ", ".join(p["message"] for p in problems)
        raise SchemaMismatchError(
            f"The node's models name {named}, which its database "
            f"({client.engine.url.render_as_string(hide_password=True)}) does "
            "not have: the model code is newer than the file. Nothing was "
            "synced; bring the file to the models (client.migrate() or "
            "reflectsync-node migrate), then sync again.",
            problems,
            code="node.schema_mismatch",
        )
    client._local_checked = True


def _local(table: str, column: str | None, what: str) -> dict[str, Any]:
    return {
        "table": table,
        "column": column,
        "problem": "not_in_database",
        "message": what,
    }


def check_page(
    info: TrackedTable,
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
    commands: str,
    marks: Sequence[Any] | None,
) -> None:
    """Refuse a pulled table part the node cannot store whole (see the
    module's docstring)."""
    # An excluded column is the node's own: a server that syncs it may send
    # it, and the decoding leaves it out (never written).
    mine = {c.name for c in info.synced_columns} | info.excluded
    problems = []
    for name, sent in zip(columns, values, strict=False):
        if name not in mine and any(v is not None for v in sent):
            problems.append(
                f"{info.name}.{name} is a column this node does not have, and "
                "the server sent values of it"
            )
    whole = any(marks is None or marks[n] is None for n in range(len(commands)))
    if whole:
        for column in info.synced_columns:
            if column.name not in columns and not _fills_itself(column):
                problems.append(
                    f"the server sent rows of {info.name} without "
                    f"{column.name}, which this node's table requires (NOT "
                    "NULL without a default)"
                )
    if problems:
        raise _mismatch(info.name, problems)


def _fills_itself(column: sa.Column[Any]) -> bool:
    """Whether the node's table may store a row without ``column``."""
    return (
        column.nullable is not False
        or column.default is not None
        or column.server_default is not None
    )


def check_copy(info: TrackedTable, columns: Sequence[str]) -> None:
    """Refuse a repair copy of a table that lacks one of the node's columns
    while holding one the node lacks (renamed: the node would store nulls
    for values the server has under the new name), or lacks one the node's
    table requires."""
    mine = [c.name for c in info.synced_columns]
    extra = [c for c in columns if c not in mine]
    gone = [
        c.name
        for c in info.synced_columns
        if c.name not in columns and (extra or not _fills_itself(c))
    ]
    if gone:
        hint = (
            f" (renamed to {extra[0]} on the server?)"
            if len(gone) == 1 and len(extra) == 1
            else ""
        )
        raise _mismatch(
            info.name,
            [
                f"{info.name}.{c} is not a column on the server{hint}"
                for c in gone
            ],
        )


def _mismatch(table: str, problems: list[str]) -> SchemaMismatchError:
    return SchemaMismatchError(
        f"This node cannot store what the server sends: {'; '.join(problems)}. "
        "Nothing was applied and the node's version did not move; migrate "
        "the node (or the server) so that the columns match.",
        [
            {"table": table, "column": None, "problem": "node_check", "message": p}
            for p in problems
        ],
    )


def note_unserved(
    client: SyncClient, unserved: Mapping[str, Any]
) -> dict[str, list[str]]:
    """Keep and log the server's columns a pull left out (the node lacks
    them); returns them by table."""
    found = {
        str(table): [str(c) for c in columns]
        for table, columns in unserved.items()
        if isinstance(columns, list)
    }
    fresh = {t: c for t, c in found.items() if client._unserved.get(t) != c}
    client._unserved.update(found)
    for table, columns in fresh.items():
        if table in client.schema.tables:
            _log.warning(
                "The server has columns of %s that this node does not store "
                "(%s), left out of its pulls; migrate the node to receive them.",
                table,
                ", ".join(columns),
            )
        else:  # a table the node does not track (perhaps by choice)
            _log.info(
                "The server has changes of %s, a table this node does not "
                "track; they were left out of its pull.",
                table,
            )
    return found
