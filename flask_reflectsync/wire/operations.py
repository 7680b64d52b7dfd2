"""One operation of one row, the record every side carries: the node's log
and queue (key as the log's text), a push being built or decoded (typed
key), the server's log read back.

It fits :func:`flask_reflectsync.tracking.compress`, which keeps one
operation per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..tracking.columns import ColumnSet

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
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


# The two aliases name Operation itself at run time: calling a subscripted
# generic (``Operation[str](...)``) goes through typing's alias, which then
# tries to set ``__orig_class__`` on the frozen instance and swallows the
# error, about three times the cost of the plain constructor (0.9 us more a
# row: the 4-7% a 10,000-row push lost after the layout, issue 12).
if TYPE_CHECKING:
    #: An operation whose key is the text a log stores (see
    #: :func:`~flask_reflectsync.tracking.encode_key`).
    LoggedOperation = Operation[str]
    #: An operation whose key is the typed key values.
    TypedOperation = Operation[tuple[Any, ...]]
else:
    LoggedOperation = Operation
    TypedOperation = Operation
