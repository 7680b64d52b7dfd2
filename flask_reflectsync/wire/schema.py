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
class ColumnHistory:
    """What the server's catalog tells of a tracked table's columns beyond
    their names (PostgreSQL, see :mod:`flask_reflectsync.server.column_names`):
    the names its columns had before.

    :param renamed: by an earlier name, the column's name now (the same
        column: its attnum in the table kept across ``RENAME COLUMN``).
    :param dropped: earlier names of columns the table no longer has.
    """

    renamed: Mapping[str, str]
    dropped: frozenset[str] = frozenset()


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
        renamed to: known from the server's catalog (``known``), or guessed
        by shape (one column went and one of the same kind came).
    :param known: the server's catalog tells it (PostgreSQL): for
        ``node_only_column``, renamed to ``renamed_to``, or dropped when
        ``renamed_to`` is ``None``; not a guess.
    :param candidates: for ``node_only_column`` told by shape alone, the
        server's columns of the same kind it may have been renamed to, when
        there are several (no rename is guessed then).
    """

    table: str
    column: str | None
    problem: Problem
    message: str
    renamed_to: str | None = None
    known: bool = False
    candidates: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "table": self.table,
            "column": self.column,
            "problem": self.problem,
            "message": self.message,
        }
        if self.renamed_to is not None:
            found["renamed_to"] = self.renamed_to
        if self.known:
            found["known"] = True
        if self.candidates:
            found["candidates"] = list(self.candidates)
        return found

    @property
    def dropped(self) -> bool:
        """A node-only column the server's catalog says was dropped (not
        renamed): its values live on nowhere on the server."""
        return self.known and self.renamed_to is None


def pair_by_kind(
    gone: Mapping[str, str], came: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Pair columns that went with columns that came, by kind: ``gone`` and
    ``came`` map names to kinds. A pair is one where each is the other's only
    candidate (``a -> x`` and ``b -> y`` in one table when ``a`` and ``x``
    hold strings, ``b`` and ``y`` integers). Returns the pairs and, for the
    columns left with several candidates (or sharing their only one), those
    candidates."""
    options = {g: [c for c, k in came.items() if k == kind] for g, kind in gone.items()}
    claimed: dict[str, int] = {}
    for found in options.values():
        for c in found:
            claimed[c] = claimed.get(c, 0) + 1
    pairs: dict[str, str] = {}
    unclear: dict[str, list[str]] = {}
    for g, found in options.items():
        if len(found) == 1 and claimed[found[0]] == 1:
            pairs[g] = found[0]
        elif found:
            unclear[g] = found
    return pairs, unclear


def compare(
    node: Mapping[str, Mapping[str, str]],
    server: Mapping[str, TrackedTable],
    history: Mapping[str, ColumnHistory] | None = None,
) -> list[Difference]:
    """How the node's description differs from the server's tracked tables
    (``server``: by name, the tables the node may see).

    A node-only column is renamed or dropped as the server's catalog tells
    (``history``, PostgreSQL); otherwise paired by shape with a server-only
    one of the same kind when each is the other's only candidate
    (:func:`pair_by_kind`), and said to be *probably* renamed. On SQLite
    and MariaDB a column's identity is its name: there is no history.
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
        told = (history or {}).get(table)
        known: dict[str, str | None] = {}
        if told is not None:
            for column in gone:
                if told.renamed.get(column) in came:
                    known[column] = told.renamed[column]
                elif column in told.dropped and column not in told.renamed:
                    known[column] = None
        pairs, unclear = pair_by_kind(
            {c: mine[c] for c in gone if c not in known},
            {
                c: kinds[c]
                for c in came
                if c not in {v for v in known.values() if v is not None}
            },
        )
        for column in gone:
            if column in known:
                partner = known[column]
                hint = (
                    f": renamed to {partner} on the server"
                    if partner is not None
                    else ": dropped on the server"
                )
                found.append(
                    Difference(
                        table,
                        column,
                        "node_only_column",
                        f"{table}.{column} is not a column on the server{hint}",
                        renamed_to=partner,
                        known=True,
                    )
                )
                continue
            partner = pairs.get(column)
            options = tuple(unclear.get(column, ()))
            if partner is not None:
                hint = f": renamed to {partner} on the server?"
            elif options:
                hint = (
                    f": renamed on the server to one of {', '.join(options)} "
                    "(they hold the same kind of value)?"
                )
            else:
                hint = (
                    " (renamed or dropped on the server, or added on the node "
                    "before the server)"
                )
            found.append(
                Difference(
                    table,
                    column,
                    "node_only_column",
                    f"{table}.{column} is not a column on the server{hint}",
                    renamed_to=partner,
                    candidates=options,
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
