"""Blocks of integer keys the server reserves for a node (framework-free,
server side; PostgreSQL).

Offline nodes hand out integer keys themselves, above the highest key they
have seen. Nodes that pulled the same rows hand out the same next keys, so
under load most of their inserts collide on the server, are refused and
re-keyed: measured with 30 nodes, 2,516 re-keys in 60 s and four pushes in
five refused. So a pull may ask for a block of keys per table: the server
takes it from the key column's own sequence (``nextval``, then ``setval``
past the block), so neither another node nor the server's own app is ever
given those keys. On MySQL/MariaDB and SQLite, which have no sequence to
take them from, the server records what it reserved per table in
``reflectsync_key_reservations`` and starts each block above both that and
the table's highest key; the server's own app may still be given a key of a
block there (its AUTO_INCREMENT knows nothing of the reservation), which
then only costs that node a re-key. The node hands its new rows keys from
its block first, and falls back to the high water when the block is used up
(or the server could not reserve one: a column without a sequence or
autoincrement, a role without ``UPDATE`` on the sequence, a key space near
its top).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..tracking import TrackedTable
from ..wire.codec import table_codecs
from .push_apply import lock_sequence
from .push_decode import key_ceiling
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


#: The reservations table's name (on the app's metadata, like the log's).
RESERVATIONS = "reflectsync_key_reservations"

log = logging.getLogger("flask_reflectsync")


def define_key_reservations(metadata: sa.MetaData) -> sa.Table:
    """Define (or return) the table of reserved key blocks on ``metadata``."""
    found = metadata.tables.get(RESERVATIONS)
    if found is not None:
        return found
    return sa.Table(
        RESERVATIONS,
        metadata,
        sa.Column("table_name", sa.String(200), primary_key=True),
        sa.Column("reserved_through", sa.BigInteger, nullable=False),
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
        ceiling = key_ceiling(table_codecs(info.table, aware_storage=True)[column.name])
        if ceiling is None:
            continue
        if dialect.name != "postgresql":
            block = _reserve_in_table(session, info, size, ceiling)
            if block is not None:
                blocks[name] = block
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


def _reserve_in_table(
    session: Session, info: TrackedTable, size: int, ceiling: int
) -> list[int] | None:
    """A block above the table's highest key and every earlier reservation,
    recorded in :data:`RESERVATIONS` (in a savepoint: a missing table or a
    concurrent first reservation costs this pull its block, nothing else)."""
    metadata = info.table.metadata
    table = metadata.tables.get(RESERVATIONS)
    if table is None:
        return None
    c = table.c
    column = info.pk_columns[0]
    try:
        with session.begin_nested():
            through = session.execute(
                sa.select(c.reserved_through)
                .where(c.table_name == info.name)
                .with_for_update()
            ).scalar()
            if through is None:
                session.execute(
                    sa.insert(table).values(table_name=info.name, reserved_through=0)
                )
                through = 0
            highest = session.execute(sa.select(sa.func.max(column))).scalar()
            first = max(int(through), int(highest or 0)) + 1
            last = first + size - 1
            if last > ceiling:
                return None
            session.execute(
                sa.update(table)
                .where(c.table_name == info.name)
                .values(reserved_through=last)
            )
    except sa.exc.DBAPIError as error:
        log.warning("No key block for %s this time: %s", info.name, error.orig)
        return None
    return [first, last]
