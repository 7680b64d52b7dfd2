"""One operation of one row, the record every side carries: the node's log
and queue (key as the log's text), a push being built or decoded (typed
key), the server's log read back.

It fits :func:`flask_reflectsync.tracking.compress`, which keeps one
operation per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..tracking.columns import ColumnSet

K = TypeVar("K")


@dataclass(frozen=True)
class Operation(Generic[K]):
    """An insert, update or delete (``"i"``, ``"u"``, ``"d"``) of one row.

    :param table_name: the tracked table.
    :param row_key: the row's key: its text in a log (``str``), or the typed
        key values (``tuple``).
    :param command: the command letter.
    :param columns: for an update, the columns it changed (``None``: every
        column, as for inserts and deletes).
    """

    table_name: str
    row_key: K
    command: str
    columns: ColumnSet = None


#: An operation whose key is the text a log stores (see
#: :func:`~flask_reflectsync.tracking.encode_key`).
LoggedOperation = Operation[str]
#: An operation whose key is the typed key values.
TypedOperation = Operation[tuple[Any, ...]]
