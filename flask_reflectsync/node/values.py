"""Values the server would refuse, refused by the node when they are flushed.

SQLite stores a 101-character string in a ``String(100)`` column, or 2**31
in an ``Integer`` one, and the node would only learn at its next push that
the server cannot (the change is then set aside). The node's models are the
server's, so the node knows the same column limits: a flush through one of
the client's sessions checks every value it writes with the codec the
server checks pushes with (:meth:`~flask_reflectsync.wire.codec.ColumnCodec.problem`:
length, integer range, digits, NUL and unpaired surrogates) and raises
:class:`~flask_reflectsync.errors.InvalidValueError` naming the table, key
and column before anything is written. ``SyncClient(check_values=False)``
leaves it to the server.
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import InstanceState, Session

from ..errors import InvalidValueError
from ..tracking.keys import encode_key
from ..tracking.registry import TrackedTable, tracked_table_for
from ..wire.codec import ColumnCodec, synced_codecs
from .keys import key_client, session_class_of

#: Session classes the check listens on.
_listening: weakref.WeakSet[type[Session]] = weakref.WeakSet()
# By tracked table: a column kept out of sync is never checked (the server
# never gets its values).
_codecs: weakref.WeakKeyDictionary[TrackedTable, dict[str, ColumnCodec]] = (
    weakref.WeakKeyDictionary()
)


def check_values_on(target: Any) -> None:
    """Check the values flushed through ``target``'s sessions (a
    sessionmaker, scoped session or Session subclass); call it after
    :func:`.keys.assign_keys_on`, whose registry says which client a session
    writes for, and whose listener gives new rows their keys."""
    session_class = session_class_of(target)
    if session_class is not None and session_class not in _listening:
        event.listen(session_class, "before_flush", _check_flushed_values)
        _listening.add(session_class)


def _check_flushed_values(session: Session, flush_context: Any, instances: Any) -> None:
    client = key_client(session)
    if client is None or not client.check_values:
        return
    for obj in (*session.new, *session.dirty):
        state: InstanceState[Any] = sa.inspect(obj)
        info = tracked_table_for(state.mapper)
        if info is None:
            continue
        codecs = _codecs.get(info)
        if codecs is None:
            codecs = _codecs[info] = synced_codecs(info)
        for prop in state.mapper.column_attrs:
            column = prop.columns[0]
            codec = codecs.get(column.name)
            if codec is None or column.table is not info.table:
                continue
            if prop.key not in state.dict:
                continue  # not set: a default or the database decides
            if state.key is not None and not state.attrs[prop.key].history.added:
                continue  # an update that leaves this column alone
            value = state.dict[prop.key]
            if value is None or not isinstance(value, (str, int)):
                continue  # NULLs: the node's database checks; others: the server
            try:
                problem = codec.problem(value)
            except (TypeError, AttributeError, ValueError):
                problem = None  # a type the codec does not check locally
            if problem is not None:
                key = list(state.mapper.primary_key_from_instance(obj))
                raise InvalidValueError(
                    f"{info.name} {encode_key(key)}: column {column.name!r} "
                    f"{problem}. The server would refuse it, so the node does "
                    "not write it (SyncClient(check_values=False) leaves it "
                    "to the server).",
                    table=info.name,
                    key=key,
                    column=column.name,
                )
