"""A side's schema identity, and how two of them differ (see
:doc:`/schema-changes`).

A node describes each tracked table it synchronises as its synced columns
and their kinds (``{"post": {"id": "an integer", "title": "a string"}}``,
the codec's kind: what a value of the column looks like on the wire, so
``String(50)`` and ``String(100)`` are one kind, ``Integer`` and
``String`` two). Pushes and pulls carry it as ``"schema"``; the server
compares it with its own tracked tables (:func:`compare`) before it applies
or serves anything. What differs is a list of :class:`Difference`, one per
column (or table), each with a sentence naming it.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..tracking import TrackedTable
from .codec import codec_for

#: A schema description: by table name, the synced columns and their kinds,
#: in column order.
Description = dict[str, dict[str, str]]

Problem = Literal["node_only_table", "node_only_column", "server_only_column", "kind"]


#: Each tracked table's columns and kinds, described once (the server
#: compares every pull page and push with them).
_described: weakref.WeakKeyDictionary[TrackedTable, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)


#: Each tracked table's digest (:func:`digest_table` of its description).
_digested: weakref.WeakKeyDictionary[TrackedTable, str] = weakref.WeakKeyDictionary()

#: The combined digest of a set of tables, by their names and digests (the
#: server serves a few sets: one per visible set of tables).
_combined: dict[tuple[tuple[str, str], ...], str] = {}

#: What the digests hash before the description: a change of the digests'
#: rules changes every digest, and the server asks for the description.
_DIGEST_RULES = b"reflectsync-schema-1\n"


def digest_table(columns: Mapping[str, str]) -> str:
    """A table's digest: 16 hex digits of the SHA-256 of its columns and
    kinds, sorted by column name (the order of the columns in either side's
    model does not matter, as it does not to :func:`compare`)."""
    canonical = json.dumps(sorted(columns.items()), separators=(",", ":"))
    return hashlib.sha256(_DIGEST_RULES + canonical.encode("utf-8")).hexdigest()[:16]


def digest_all(digests: Mapping[str, str]) -> str:
    """The digest of a whole description, from its tables' digests (the
    tables sorted by name): equal exactly when the same tables have the same
    columns and kinds on both sides."""
    text = "".join(f"{name}\0{digests[name]}\n" for name in sorted(digests))
    return hashlib.sha256(_DIGEST_RULES + text.encode("utf-8")).hexdigest()[:16]


def table_digest(info: TrackedTable) -> str:
    """``info``'s digest (computed once per table)."""
    digest = _digested.get(info)
    if digest is None:
        digest = _digested[info] = digest_table(columns_of(info))
    return digest


def digests(tables: Iterable[TrackedTable]) -> dict[str, str]:
    """By table name, each table's digest."""
    return {info.name: table_digest(info) for info in tables}


def combined_digest(tables: Iterable[TrackedTable]) -> str:
    """:func:`digest_all` of ``tables`` (computed once per set)."""
    ident = tuple(digests(tables).items())
    found = _combined.get(ident)
    if found is None:
        if len(_combined) >= 64:
            _combined.clear()
        found = _combined[ident] = digest_all(dict(ident))
    return found


def columns_of(info: TrackedTable) -> Mapping[str, str]:
    """``info``'s synced columns and kinds, described once (not a copy:
    read only)."""
    columns = _described.get(info)
    if columns is None:
        columns = _described[info] = {
            c.name: codec_for(c).kind for c in info.synced_columns
        }
    return columns


def describe(tables: Iterable[TrackedTable]) -> Description:
    """The description of ``tables`` (their synced columns and kinds)."""
    return {info.name: dict(columns_of(info)) for info in tables}


@dataclass(frozen=True)
class Difference:
    """One way a node's table differs from the server's.

    :param table: the table.
    :param column: the column (``None`` for a table the server does not track).
    :param problem: ``node_only_table`` (the server does not track the
        table), ``node_only_column`` (the node has a column the server
        lacks: renamed or dropped there, or added on the node first),
        ``server_only_column`` (the server added a column the node lacks)
        or ``kind`` (the column holds another kind of value on each side).
    :param message: a sentence saying it.
    :param renamed_to: for ``node_only_column``, the server's column it was
        probably renamed to (one column went and one of the same kind came).
    """

    table: str
    column: str | None
    problem: Problem
    message: str
    renamed_to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "table": self.table,
            "column": self.column,
            "problem": self.problem,
            "message": self.message,
        }
        if self.renamed_to is not None:
            found["renamed_to"] = self.renamed_to
        return found


def compare(
    node: Mapping[str, Mapping[str, str]], server: Mapping[str, TrackedTable]
) -> list[Difference]:
    """How the node's description differs from the server's tracked tables
    (``server``: by name, the tables the node may see).

    A node-only column paired with a server-only one of the same kind, when
    each is the only one of its side in the table, is said to be probably
    renamed (the server's reflection identity is not consulted: on SQLite
    and MariaDB it is the name anyway).
    """
    found: list[Difference] = []
    for table, columns in node.items():
        info = server.get(table)
        kinds = None if info is None else columns_of(info)
        if kinds is None:
            found.append(
                Difference(
                    table,
                    None,
                    "node_only_table",
                    f"{table} is not a table the server synchronises (added on "
                    "the node first, or no longer tracked on the server).",
                )
            )
            continue
        if columns is kinds or columns == kinds:
            continue  # the same columns and kinds (given by digest: the same)
        mine = dict(columns)
        gone = [c for c in mine if c not in kinds]
        came = [c for c in kinds if c not in mine]
        for column in gone:
            partner = None
            if len(gone) == 1 and len(came) == 1 and kinds[came[0]] == mine[column]:
                partner = came[0]
            hint = (
                f": renamed to {partner} on the server?"
                if partner is not None
                else " (renamed or dropped on the server, or added on the node "
                "before the server)"
            )
            found.append(
                Difference(
                    table,
                    column,
                    "node_only_column",
                    f"{table}.{column} is not a column on the server{hint}",
                    renamed_to=partner,
                )
            )
        for column in came:
            found.append(
                Difference(
                    table,
                    column,
                    "server_only_column",
                    f"{table}.{column} is a column only the server has (added on "
                    "the server; this node cannot store its values)",
                )
            )
        for column, kind in mine.items():
            if column in kinds and kinds[column] != kind:
                found.append(
                    Difference(
                        table,
                        column,
                        "kind",
                        f"{table}.{column} holds {kinds[column]} on the server "
                        f"and {kind} on this node",
                    )
                )
    return found


def summary(differences: Iterable[Difference]) -> str:
    """The differences in one sentence, with its full stop (or question
    mark)."""
    text = "; ".join(d.message for d in differences)
    return text if text.endswith(("?", ".")) else text + "."
