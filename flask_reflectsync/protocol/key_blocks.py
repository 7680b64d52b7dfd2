"""Blocks of integer keys the server reserves for a node (framework-free,
server side; PostgreSQL).

Offline nodes hand out integer keys themselves, above the highest key they
have seen. Nodes that pulled the same rows hand out the same next keys, so
under load most of their inserts collide on the server, are refused and
re-keyed: measured with 30 nodes, 2,516 re-keys in 60 s and four pushes in
five refused. So a pull may ask for a block of keys per table: the server
takes it from the key column's own sequence (``nextval``, then ``setval``
past the block), so neither another node nor the server's own app is ever
given those keys. The node hands its new rows keys from its block first,
and falls back to the high water when the block is used up (or the server
could not reserve one: other databases, a column without a sequence, a
role without ``UPDATE`` on it, a sequence near the top of its key space).
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .codec import table_codecs
from .push import key_ceiling, lock_sequence
from .schema import TrackedSchema

#: How many keys a block holds.
KEY_BLOCK = 1000

#: Takes ``:size`` keys from the column's sequence, if the role may update it
#: and the block stays below ``:ceiling``; answers the block's last key.
_RESERVE = sa.text(
    "SELECT setval(q.seq, nextval(q.seq) + :size - 1) AS last "
    "FROM (SELECT pg_get_serial_sequence(:table, :column) AS seq) AS q "
    "WHERE q.seq IS NOT NULL AND has_sequence_privilege(q.seq, 'UPDATE') "
    "AND COALESCE(pg_sequence_last_value(q.seq::regclass), 0) + :size <= :ceiling"
)


def reserve_key_blocks(
    session: Session, schema: TrackedSchema, names: Iterable[str], size: int = KEY_BLOCK
) -> dict[str, list[int]]:
    """Reserve a block of ``size`` keys for each table of ``names`` that can
    have one, in the session's transaction.

    :return: by table name, ``[first, last]``; tables without a block are
        left out.
    """
    blocks: dict[str, list[int]] = {}
    for name in sorted(set(names)):
        info = schema.get(name)
        if info is None or not info.single_integer_key:
            continue
        column = info.pk_columns[0]
        if info.table.autoincrement_column is not column:
            continue
        dialect = session.get_bind(clause=info.table).dialect
        if dialect.name != "postgresql":
            continue
        ceiling = key_ceiling(table_codecs(info.table, aware_storage=True)[column.name])
        if ceiling is None:
            continue
        table = dialect.identifier_preparer.format_table(info.table)
        params = {"table": table, "column": column.name}
        bind = {"clause": info.table}
        # The same lock as a push raising the sequence: it must not move the
        # sequence back below a block between its check and its setval.
        lock_sequence(session, params, bind)
        last = session.execute(
            _RESERVE, {**params, "size": size, "ceiling": ceiling}, bind_arguments=bind
        ).scalar()
        if last is not None:
            blocks[name] = [int(last) - size + 1, int(last)]
    return blocks
