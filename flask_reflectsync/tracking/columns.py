"""Column sets: which columns an update changed.

An update records the names of the columns it changed
(``reflectsync_operations.changed_columns``), so that a push or a pull can
carry just those, and a merge can tell two edits of different columns of a
row apart from two edits of the same column. A column set is a
``frozenset`` of column names; ``None`` stands for *every column* (an
insert, a delete, a row replaced under its key, or an update logged before
columns were recorded).

In the log a set is stored as a JSON list of names in sorted order. The
columns the server's database itself changed in a row a node pushed
(a trigger, a server default) are stored as ``{"server": [names]}``: the
pushing node must hear of them although the change is in its own version
(see :func:`written_by_server`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

#: A set of column names; ``None``: every column.
ColumnSet = frozenset[str] | None

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_columns(
    names: Iterable[str] | None, *, by_server: bool = False
) -> str | None:
    """The log's text of a column set (``None`` stays ``None``).

    :param by_server: the server's database changed these columns in a row
        a node pushed (see :func:`written_by_server`).
    """
    if names is None:
        return None
    if by_server:
        return _dumps({"server": sorted(names)})
    return _dumps(sorted(names))


def decode_columns(text: str | None) -> ColumnSet:
    """The column set of the log's text; ``None`` (or unreadable text, which
    the extension never writes) means every column."""
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        return None
    if isinstance(names, dict):
        names = names.get("server")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return frozenset(names)


def written_by_server(text: str | None) -> bool:
    """Whether the log's text records columns the server's database changed
    in a pushed row (a trigger, a server default), rather than the writer's
    own change."""
    return text is not None and text.startswith("{")


def union(first: ColumnSet, second: ColumnSet) -> ColumnSet:
    """The columns changed by two updates of one row."""
    if first is None or second is None:
        return None
    return first | second


def overlap(first: ColumnSet, second: ColumnSet) -> ColumnSet:
    """The columns both sets hold (``None``: every column of the row)."""
    if first is None:
        return second
    if second is None:
        return first
    return first & second
