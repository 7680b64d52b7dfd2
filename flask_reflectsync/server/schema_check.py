"""The server's side of the schema handshake (see :doc:`/schema-changes`).

A node's push and pull carry its schema identity (``"schema"``, see
:mod:`flask_reflectsync.wire.schema`); before anything is applied or served
the server compares it with its own tracked tables:

- a pull page is cut to the node's columns: columns only the server has are
  left out and named in the answer's ``unserved`` (the node is told, and
  fetches them once it has migrated), and a page holding a row the node
  cannot store is refused with ``schema.mismatch`` before the node's
  version moves: a non-null value of a column whose kind differs, or a
  whole row of a table where the node has a column the server lacks while
  the server has one the node lacks (a rename, or a drop and an add: the
  value may live on under the new name). A column only the node has, with
  nothing new on the server's side, holds no value on the server (dropped
  there, or added on the node first): whole rows pass, and the node stores
  its own default;
- a push's rows that the server's schema cannot take are refused together
  with ``schema.refused``, which the node sets aside: a non-null value in a
  column the server lacks or whose kind differs, a row of a table the
  server does not track, an insert without a value for a ``NOT NULL``
  column without a default. A null in a column the server lacks is left
  out (the server has no such value to keep).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any

import sqlalchemy as sa

from ..errors import (
    SchemaDescriptionNeededError,
    SchemaMismatchError,
    SchemaRefusedError,
    ValidationError,
)
from ..tracking import INSERT, TrackedTable
from ..wire.codec import codec_for
from ..wire.schema import (
    ColumnHistory,
    Difference,
    columns_of,
    combined_digest,
    compare,
    digests,
    summary,
    table_digest,
)
from .schema import TrackedSchema

#: The most refused rows listed in one answer (the node sets those aside and
#: pushes again).
MAX_REFUSED = 1000


# -- the node's identity -----------------------------------------------------------


#: A node's description as read: by table, its columns and kinds (read only:
#: a table sent by digest is the server's own mapping).
NodeDescription = dict[str, Mapping[str, str]]


def node_schema(
    message: Mapping[str, Any], schema: TrackedSchema
) -> tuple[NodeDescription | None, bool]:
    """The node's schema as its request gives it: ``(description, same)``.

    ``same`` is true when its ``schema_digest`` is the server's own (the
    same tables, columns and kinds: nothing to compare, the description is
    then ``None``). Otherwise the description from ``schema``, with each
    table sent as a digest replaced by the server's own columns; ``None``
    for a node from before the handshake (it sent neither).

    :raises SchemaDescriptionNeededError: (409 ``schema.describe``) a digest
        that is not the server's, with no description to fall back on:
        the node is told the server's digests and sends its columns.
    """
    digest = message.get("schema_digest")
    sent = message.get("schema")
    tables = schema.tables
    if digest is not None and digest == combined_digest(tables.values()):
        return None, True
    if not isinstance(sent, dict):
        if digest is None:
            return None, False  # a node from before the handshake
        raise _needed(tables, "the digest of its schema")
    found: NodeDescription = {}
    for table, columns in sent.items():
        if isinstance(columns, dict):
            found[str(table)] = {str(c): str(k) for c, k in columns.items()}
            continue
        info = tables.get(table)
        if info is None or table_digest(info) != columns:
            raise _needed(tables, f"a digest of {table}")
        found[table] = columns_of(info)  # the server's own: compared as same
    return found, False


def _needed(
    tables: Mapping[str, TrackedTable], what: str
) -> SchemaDescriptionNeededError:
    return SchemaDescriptionNeededError(
        f"The node sent {what} and the server's differs: send the columns "
        "of the tables whose digests differ from these (nothing was applied).",
        digests(tables.values()),
    )


def report(
    message: Mapping[str, Any],
    schema: TrackedSchema,
    history: Mapping[str, ColumnHistory] | None = None,
) -> dict[str, Any]:
    """The answer of ``POST /schema-check``: whether the node's schema is
    the server's, and what differs (nothing is applied or recorded).

    :param history: the earlier names of the server's columns
        (:func:`.column_names.column_history`, PostgreSQL).
    :raises ValidationError: the message gives no schema.
    :raises SchemaDescriptionNeededError: a digest that is not the server's.
    """
    node, same = node_schema(message, schema)
    if same:
        return {"same": True, "differences": [], "server_only_tables": []}
    if node is None:
        raise ValidationError(
            "message: give the node's schema (schema or schema_digest) to "
            "compare with the server's."
        )
    differences = [d.to_dict() for d in compare(node, schema.tables, history)]
    server_only = [name for name in schema.tables if name not in node]
    return {
        "same": not differences and not server_only,
        "differences": differences,
        "server_only_tables": server_only,
    }


# -- pulls ---------------------------------------------------------------------------


def fit_page(
    page: dict[str, Any],
    message: Mapping[str, Any],
    schema: TrackedSchema,
    history: Mapping[str, ColumnHistory] | None = None,
) -> None:
    """Cut ``page`` (from :func:`.pull.read_page`) to the node's schema, or
    refuse it.

    :param message: the pull request; without ``schema`` (a node from before
        the handshake) the page is left as it is.
    :param history: the earlier names of the server's columns (PostgreSQL):
        a column the catalog says was dropped blocks no row.
    :raises SchemaMismatchError: a row of the page cannot be stored by the
        node; nothing is recorded as pulled.
    """
    node, _ = node_schema(message, schema)
    if node is None:
        return  # the same schema, or a node from before the handshake
    differences = compare(node, schema.tables, history)
    if not differences and len(node) == len(schema.tables):
        return  # the same tables and columns: the page fits as it is
    by_table: dict[str, list[Difference]] = {}
    for difference in differences:
        by_table.setdefault(difference.table, []).append(difference)
    unserved: dict[str, list[str]] = {}
    blocked: list[Difference] = []
    changes: dict[str, Any] = page["changes"]
    for name in list(changes):
        if name not in node:
            # A table the node does not synchronise (added on the server).
            unserved[name] = list(changes.pop(name)["columns"])
            continue
        part = changes[name]
        problems = by_table.get(name, [])
        if not problems:
            continue
        stuck = _unstorable(part, node[name], problems)
        if stuck:
            blocked += stuck
            continue
        left_out = _cut_to(part, node[name])
        if left_out:
            unserved[name] = left_out
    if blocked:
        raise SchemaMismatchError(
            "This node cannot store what the server sends: "
            f"{summary(blocked)} Nothing was applied and the node's version "
            "did not move; migrate the node (or the server) so that the "
            "columns match, then pull again.",
            [d.to_dict() for d in blocked],
        )
    if unserved:
        page["unserved"] = unserved


def _unstorable(
    part: Mapping[str, Any], mine: Mapping[str, str], problems: list[Difference]
) -> list[Difference]:
    """The differences that keep some row of ``part`` from the node: a
    whole row while the node has a column the server lacks, or a non-null
    value sent in a column whose kind differs."""
    columns: list[str] = part["columns"]
    values: list[list[Any]] = part["values"]
    marks: list[list[int] | None] | None = part.get("changed")
    rows = len(part["commands"])
    found: list[Difference] = []
    # A column only the node has holds no value on the server (dropped
    # there, or added on the node first) unless the server has a column
    # the node lacks beside it: then the value may live on under another
    # name (renamed), and a whole row would lose it on the node.
    renamed = any(d.problem == "server_only_column" for d in problems)
    for difference in problems:
        if difference.problem == "node_only_column" and not difference.dropped:
            whole = any(marks is None or marks[n] is None for n in range(rows))
            if whole and renamed:
                found.append(difference)
        elif difference.problem == "kind" and difference.column in columns:
            at = columns.index(difference.column)
            for n in range(rows):
                sent = marks is None or marks[n] is None or at in (marks[n] or ())
                if sent and values[at][n] is not None:
                    found.append(difference)
                    break
    return found


def _cut_to(part: dict[str, Any], mine: Mapping[str, str]) -> list[str]:
    """Leave the columns the node lacks out of ``part``; rows that were
    patches of only those columns go too. Returns the columns left out."""
    columns: list[str] = part["columns"]
    left_out = [c for c in columns if c not in mine]
    if not left_out:
        return []
    kept = [n for n, c in enumerate(columns) if c in mine]
    new_position = {old: new for new, old in enumerate(kept)}
    marks: list[list[int] | None] | None = part.get("changed")
    rows = range(len(part["commands"]))
    keep_rows = list(rows)
    new_marks: list[list[int] | None] | None = None
    if marks is not None:
        new_marks = [
            None if m is None else [new_position[p] for p in m if p in new_position]
            for m in marks
        ]
        # A patch of columns the node lacks only: nothing for it to write.
        keep_rows = [n for n in rows if marks[n] is None or new_marks[n]]
    values = part["values"]
    if len(keep_rows) != len(part["commands"]):
        part["commands"] = "".join(part["commands"][n] for n in keep_rows)
        values = [[column[n] for n in keep_rows] for column in values]
        if new_marks is not None:
            new_marks = [new_marks[n] for n in keep_rows]
    part["columns"] = [columns[n] for n in kept]
    part["values"] = [values[n] for n in kept]
    if new_marks is not None:
        part["changed"] = new_marks
    return left_out


# -- repairs -------------------------------------------------------------------------


def check_repair(
    message: Mapping[str, Any],
    schema: TrackedSchema,
    history: Mapping[str, ColumnHistory] | None = None,
) -> None:
    """Refuse a repair whose copy the node cannot store: a table where the
    node has a column the server lacks beside one the server has and the
    node lacks (renamed), or a column whose kind differs. Columns only the
    server has are left out by the node, which the copy's column lines
    tell. Without a description (a node from before the handshake) the
    node's own check of the copy's columns is all there is.

    :raises SchemaMismatchError: before anything is streamed.
    """
    node, _ = node_schema(message, schema)
    if node is None:
        return
    by_table: dict[str, list[Difference]] = {}
    for difference in compare(node, schema.tables, history):
        by_table.setdefault(difference.table, []).append(difference)
    blocked = []
    for problems in by_table.values():
        renamed = any(d.problem == "server_only_column" for d in problems)
        blocked += [
            d
            for d in problems
            if d.problem == "kind"
            or (d.problem == "node_only_column" and renamed and not d.dropped)
        ]
    if blocked:
        raise SchemaMismatchError(
            "This node cannot store the server's copy: "
            f"{summary(blocked)} Nothing was sent and the node's data is "
            "unchanged; migrate the node (or the server) so that the columns "
            "match, then repair.",
            [d.to_dict() for d in blocked],
        )


# -- pushes --------------------------------------------------------------------------


def check_push(
    request: MutableMapping[str, Any],
    schema: TrackedSchema,
    history: Mapping[str, ColumnHistory] | None = None,
) -> None:
    """Refuse the rows of a push the server's schema cannot take, all at
    once; leave out nulls of columns the server lacks.

    Runs before the push is decoded; needs no description for columns the
    server lacks or tables it does not track (the message names them), only
    for kinds that differ.

    :raises SchemaRefusedError: (422) listing each refused row.
    """
    # Also before anything is written: a digest that is not the server's
    # asks the node for its description.
    node = node_schema(request, schema)[0] or {}
    refused: dict[tuple[str, str], dict[str, Any]] = {}

    def refuse(table: str, key: list[Any], column: str | None, reason: str) -> None:
        ident = (table, json.dumps(key))
        if ident not in refused and len(refused) < MAX_REFUSED:
            refused[ident] = {
                "table": table,
                "key": key,
                "column": column,
                "reason": reason,
            }

    inserted: dict[str, set[str]] = {}
    for op in request["operations"]:
        table = op["table"]
        if schema.get(table) is None:
            refuse(
                table,
                op["key"],
                None,
                f"{table} is not a table the server synchronises.",
            )
        elif op["command"] == INSERT:
            inserted.setdefault(table, set()).add(json.dumps(op["key"]))
    emptied: dict[str, set[str]] = {}
    payloads = request.get("payloads") or {}
    for table, block in payloads.items():
        info = schema.get(table)
        if info is not None:
            told = (history or {}).get(table)
            _check_block(info, block, node.get(table), refuse, None, told)
            _check_required(info, block, inserted.get(table, set()), refuse)
    for table, blocks in (request.get("patches") or {}).items():
        info = schema.get(table)
        if info is None:
            continue
        into = emptied.setdefault(table, set())
        for block in blocks:
            _check_block(
                info, block, node.get(table), refuse, into, (history or {}).get(table)
            )
        width = len(info.pk_columns)
        request["patches"][table] = [b for b in blocks if len(b["columns"]) > width]
    if refused:
        rows = list(refused.values())
        first = rows[0]
        raise SchemaRefusedError(
            f"The server's schema cannot take {len(rows)} row(s) of this push "
            f"(first: {first['table']} {first['key']}: {first['reason']}); "
            "nothing was written. They are set aside on the node; the rest "
            "is pushed.",
            rows,
        )
    if any(emptied.values()):
        # Patches that only wrote nulls to columns the server lacks.
        request["operations"] = [
            op
            for op in request["operations"]
            if not (
                op["command"] != INSERT
                and json.dumps(op["key"]) in emptied.get(op["table"], ())
            )
        ]


def _check_block(
    info: TrackedTable,
    block: MutableMapping[str, Any],
    kinds: Mapping[str, str] | None,
    refuse: Any,
    emptied: set[str] | None,
    told: ColumnHistory | None = None,
) -> None:
    """Check one block of rows (a table's payload or one of its patches)
    and drop its nulls of columns the server lacks."""
    columns: list[str] = block["columns"]
    rows: list[list[Any]] = block["rows"]
    known = {c.name: c for c in info.table.columns}
    synced = {c.name for c in info.synced_columns}
    missing = [c for c in columns if c not in known]
    differing = [
        c
        for c in columns
        if kinds is not None
        and c in synced
        and c in kinds
        and kinds[c] != codec_for(known[c]).kind
    ]
    if not missing and not differing:
        return
    pk = [c.name for c in info.pk_columns]
    if any(c not in columns or c in missing for c in pk):
        return  # the decoding names the key that cannot be read
    positions = [columns.index(c) for c in pk]
    for values in rows:
        if len(values) != len(columns):
            return  # malformed: the decoding says so
        key = [values[p] for p in positions]
        for column in missing + differing:
            value = values[columns.index(column)]
            if value is None:
                continue
            if column in missing:
                reason = f"{info.name}.{column} is not a column on the server " + (
                    _fate(told, column)
                    or "(renamed or dropped there, or added on the node first)"
                ) + "; the value would be lost."
            else:
                assert kinds is not None
                reason = (
                    f"{info.name}.{column} holds {codec_for(known[column]).kind} "
                    f"on the server and {kinds[column]} on this node."
                )
            refuse(info.name, key, column, reason)
            break
    if missing:
        kept = [n for n, c in enumerate(columns) if c not in missing]
        block["columns"] = [columns[n] for n in kept]
        block["rows"] = [[values[n] for n in kept] for values in rows]
        if emptied is not None and len(kept) == len(pk):
            emptied.update(json.dumps([v[p] for p in positions]) for v in rows)


def _fate(told: ColumnHistory | None, column: str) -> str | None:
    """What the server's catalog knows became of ``column`` (PostgreSQL)."""
    if told is None:
        return None
    if column in told.renamed:
        return f"(renamed to {told.renamed[column]} on the server)"
    if column in told.dropped:
        return "(dropped on the server)"
    return None


def _check_required(
    info: TrackedTable, block: Mapping[str, Any], inserted: set[str], refuse: Any
) -> None:
    """Refuse inserts without a value for a ``NOT NULL`` column that has no
    default (one the server added since the node's model was written)."""
    if not inserted:
        return
    sent = set(block["columns"])
    required = [
        c
        for c in info.table.columns
        if c.name not in sent and not _fills_itself(info.table, c)
    ]
    if not required:
        return
    columns: list[str] = block["columns"]
    pk = [c.name for c in info.pk_columns]
    if any(c not in columns for c in pk):
        return
    positions = [columns.index(c) for c in pk]
    names = ", ".join(c.name for c in required)
    for values in block["rows"]:
        if len(values) != len(columns):
            return
        key = [values[p] for p in positions]
        if json.dumps(key) in inserted:
            refuse(
                info.name,
                key,
                required[0].name,
                f"{info.name} requires {names} (NOT NULL without a default on "
                "the server), which this node does not send.",
            )


def _fills_itself(table: sa.Table, column: sa.Column[Any]) -> bool:
    """Whether an insert may leave ``column`` out."""
    return (
        column.nullable is not False
        or column.default is not None
        or column.server_default is not None
        or column.computed is not None
        or column.identity is not None
        or table.autoincrement_column is column
    )

