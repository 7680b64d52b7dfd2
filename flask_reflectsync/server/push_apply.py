"""Writing a decoded push through the app's session (step 3 of :mod:`.push`).

Restores first, then inserts parents first, updates, and deletes children
first, with the rows that give a unique value up to another row of the push
written before the rest; PostgreSQL sequences are raised past the inserted
keys before any of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import PushRejectedError
from ..rows import batches, built_once, key_filter, unique_column_sets
from ..tracking import INSERT, UPDATE, TrackedTable
from ..tracking.capture import record_operations
from .push_decode import KEY_BATCH, PushedOperation, _TableChanges
from .schema import TrackedSchema


def _find_restores(session: Session, changes: Mapping[str, _TableChanges]) -> None:
    """Move the updates of rows the server lacks to ``restores``.

    A node that kept its copy of a row the server deleted (an update/delete
    or dependency conflict decided for the node) pushes it as an update of
    the old key: the same row returns. The server inserts it again and logs
    an update, so a second node restoring the same row meets an update of
    it, not a new row to re-key beside it. An update of a row deleted in a
    version the node has not pulled is still refused, by the conflict check
    (the delete is in the log after the node's last version).

    A patch (some columns) cannot bring a row back: such rows are refused
    with 409, each conflict marked ``"needs_row": true``, and the node sends
    them whole after its next pull.

    :raises PushRejectedError: for patches of rows the server lacks.
    """
    needed: list[dict[str, Any]] = []
    for target in changes.values():
        wanted = {op.row_key for op in target.updates}
        if not wanted:
            continue
        missing = wanted - set(existing_keys(session, target.info, wanted))
        if missing:
            target.restores = [op for op in target.updates if op.row_key in missing]
            target.updates = [op for op in target.updates if op.row_key not in missing]
            needed += [
                {
                    "table": target.info.name,
                    "key": target.wire_key(key),
                    "needs_row": True,
                }
                for key in sorted(missing & target.patched, key=repr)
            ]
    if needed:
        raise PushRejectedError(
            f"The push changes some columns of {len(needed)} row(s) the server "
            "does not have; pull, merge and push them again as whole rows.",
            needed[:MAX_NEEDED],
        )


#: How many rows a refusal for missing rows lists (the node widens those).
MAX_NEEDED = 1000


def existing_keys(
    session: Session, info: TrackedTable, keys: Iterable[tuple[Any, ...]]
) -> Iterator[tuple[Any, ...]]:
    """Which of ``keys`` exist in ``info``'s table, with batched IN queries."""
    pk = list(info.pk_columns)
    for batch in batches(list(keys), KEY_BATCH):
        query = sa.select(*pk).where(key_filter(pk, batch))
        for row in session.execute(query):
            yield tuple(row)


def _apply(
    session: Session, schema: TrackedSchema, changes: Mapping[str, _TableChanges]
) -> None:
    ordered = schema.in_dependency_order(changes)
    early = _write_givers_first(session, ordered, changes)
    for name in ordered:  # parents first: restored parents too
        target = changes[name]
        if target.restores:
            _restore(session, target)
        if target.inserts:
            _insert(session, target)
    for name in ordered:
        target = changes[name]
        done = early.get(name, set())
        _update(
            session, target, [op for op in target.updates if op.row_key not in done]
        )
    for name in reversed(ordered):
        target = changes[name]
        done = early.get(name, set())
        _delete(
            session, target, [op for op in target.deletes if op.row_key not in done]
        )


def _update(
    session: Session, target: _TableChanges, updates: Sequence[PushedOperation]
) -> None:
    if not updates:
        return
    mapper = target.info.mapper
    if mapper is None:
        _update_table(session, target, updates)
        return
    # ORM "bulk UPDATE by primary key": the tracking listener reads the keys
    # from the parameters and logs one update per row.
    attrs = {
        c.name: mapper.get_property_by_column(c).key for c in target.info.table.columns
    }
    session.execute(
        sa.update(mapper.class_),
        [{attrs[c]: v for c, v in target.rows[op.row_key].items()} for op in updates],
    )


def _update_table(
    session: Session, target: _TableChanges, updates: Sequence[PushedOperation]
) -> None:
    """Updates of a plain tracked table (an association table with columns
    besides its key): one Core ``UPDATE`` per row, each logged by the
    tracking listener (there is no ORM bulk update by key without a class).
    """
    info = target.info
    pk = list(info.pk_columns)
    keyed = {c.name for c in pk}
    for op in updates:
        row = target.rows[op.row_key]
        values = {c: v for c, v in row.items() if c not in keyed}
        if not values:
            continue
        key = tuple(row[c.name] for c in pk)
        session.execute(
            sa.update(info.table)
            .where(key_filter(pk, [key]))
            .values(values)
        )


def _delete(
    session: Session, target: _TableChanges, deletes: Sequence[PushedOperation]
) -> None:
    mapper = target.info.mapper
    pk = list(target.info.pk_columns)
    entity: Any = target.info.table if mapper is None else mapper.class_
    for batch in batches([op.row_key for op in deletes], KEY_BATCH):
        session.execute(
            sa.delete(entity).where(key_filter(pk, batch)),
            execution_options={"synchronize_session": False},
        )


def _write_givers_first(
    session: Session, ordered: Sequence[str], changes: Mapping[str, _TableChanges]
) -> dict[str, set[tuple[Any, ...]]]:
    """Write first the updates and deletes of rows that give a unique value
    up to another row of the push.

    The node wrote its changes in an order its database accepted: a survey
    deleted (or its code changed) and a new one taking the code. Applied as
    inserts, then updates, then deletes, the new row would meet the old one
    on the unique constraint, and the push would be refused for good. So the
    giving updates go first and, when a giver is deleted, every delete of
    the push with them (children first: a deleted survey's answers go
    before it). All in a savepoint: if that breaks a foreign key (a giver
    pointing at a row the push inserts, a parent whose child the push moves
    away by an update), it is rolled back and the push is applied in the
    usual order.

    :return: by table, the keys already written.
    """
    givers = {name: _givers(session, changes[name]) for name in ordered}
    givers = {name: keys for name, keys in givers.items() if keys}
    if not givers:
        return {}
    deleted = any(
        op.row_key in givers.get(name, ())
        for name in ordered
        for op in changes[name].deletes
    )
    done: dict[str, set[tuple[Any, ...]]] = {}
    try:
        with session.begin_nested():
            for name in ordered:
                target, keys = changes[name], givers.get(name, set())
                updates = [op for op in target.updates if op.row_key in keys]
                _update(session, target, updates)
                done[name] = {op.row_key for op in updates}
            if deleted:
                for name in reversed(ordered):
                    target = changes[name]
                    _delete(session, target, target.deletes)
                    done[name] |= {op.row_key for op in target.deletes}
    except sa.exc.IntegrityError:
        return {}
    return done


def _givers(session: Session, target: _TableChanges) -> set[tuple[Any, ...]]:
    """The pushed updates and deletes of ``target`` whose rows hold, on the
    server now, a unique value another written row of the push takes."""
    info = target.info
    pk = tuple(c.name for c in info.pk_columns)
    sets = unique_column_sets(info.table, primary_key=False)
    leaving = [op.row_key for op in target.updates + target.deletes]
    if not sets or not leaving or not target.written:
        return set()
    wanted: dict[tuple[str, ...], dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    for columns in sets:
        taken = wanted.setdefault(columns, {})
        for op in target.written:
            row = target.rows.get(op.row_key) or {}
            values = tuple(row.get(c) for c in columns)
            if all(c in row for c in columns) and None not in values:
                taken[values] = op.row_key
    names = sorted({c for columns in sets for c in columns})
    selected = [info.table.c[c] for c in (*pk, *names)]
    givers: set[tuple[Any, ...]] = set()
    for batch in batches(leaving, KEY_BATCH):
        query = sa.select(*selected).where(key_filter(list(info.pk_columns), batch))
        for values in session.execute(query):
            row = dict(zip((*pk, *names), values, strict=True))
            key = tuple(row[c] for c in pk)
            for columns in sets:
                taker = wanted[columns].get(tuple(row[c] for c in columns))
                if taker is not None and taker != key:
                    givers.add(key)
    return givers


#: Rows a statement of a large push's inserts carries: the driver's copy of
#: its parameters stays this small, whatever the push's size.
INSERT_BATCH = 10_000


def _insert(session: Session, target: _TableChanges) -> None:
    table = target.info.table
    for inserts in batches(target.inserts, INSERT_BATCH):
        rows = [target.rows[op.row_key] for op in inserts]
        if not _insert_with_arrays(session, target, inserts, rows):
            session.execute(sa.insert(table), _by_column_key(table, rows))


def _by_column_key(table: sa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows keyed by column name, re-keyed by ``Column.key`` for Core."""
    keys = {c.name: c.key for c in table.columns if c.name != c.key}
    if not keys:
        return rows
    return [{keys.get(c, c): v for c, v in row.items()} for row in rows]


def _restore(session: Session, target: _TableChanges) -> None:
    """Insert restored rows on the session's connection, where the listeners
    do not log them as inserts, and log them as updates."""
    table = target.info.table
    keys = [op.row_key for op in target.restores]
    connection = session.connection(bind_arguments={"clause": table})
    rows = _by_column_key(table, [target.rows[key] for key in keys])
    connection.execute(sa.insert(table), rows)
    record_operations(session, target.info, keys, UPDATE)


# Column types whose Python values psycopg sends as a typed array as they are.
_ARRAY_SAFE = (
    sa.Integer,
    sa.String,
    sa.Float,
    sa.Numeric,
    sa.Boolean,
    sa.Date,
    sa.DateTime,
    sa.Time,
    sa.Uuid,
    sa.LargeBinary,
)


def _insert_with_arrays(
    session: Session,
    target: _TableChanges,
    inserts: Sequence[PushedOperation],
    rows: list[dict[str, Any]],
) -> bool:
    """Insert ``rows`` with one ``INSERT ... SELECT FROM unnest(arrays)`` on
    PostgreSQL: a single statement instead of one per row, several times
    faster for large pushes. The operations are logged explicitly (the
    listeners do not see driver-level statements). Returns ``False`` when the
    fast path does not apply (other backends, column types psycopg cannot
    send as plain arrays, such as JSON, enums or collated strings).
    """
    table = target.info.table
    connection = session.connection(bind_arguments={"clause": table})
    dialect = connection.dialect
    if dialect.name != "postgresql":
        return False
    sql = built_once(
        table,
        ("unnest insert", tuple(target.columns)),
        lambda: _unnest_insert(table, target.columns, dialect) or "",
    )
    if not sql:
        return False
    names = target.columns
    arrays = tuple([row.get(name) for row in rows] for name in names)
    connection.exec_driver_sql(sql, arrays)
    record_operations(session, target.info, [op.row_key for op in inserts], INSERT)
    return True


def _unnest_insert(
    table: sa.Table, sent: Sequence[str], dialect: sa.Dialect
) -> str | None:
    """The SQL of :func:`_insert_with_arrays` for the columns ``sent`` (one
    array a column, in that order), or ``None`` where it does not apply."""
    columns = [table.c[name] for name in sent]
    if any(c.default is not None for c in table.columns if c.name not in sent):
        return None  # Python-side defaults are applied by SQLAlchemy's path
    for column in columns:
        kind = column.type
        if not isinstance(kind, _ARRAY_SAFE) or isinstance(kind, sa.Enum):
            return None
        if getattr(kind, "collation", None):
            return None
    preparer = dialect.identifier_preparer
    casts = ", ".join(
        f"%s::{column.type.compile(dialect=dialect)}[]" for column in columns
    )
    names = ", ".join(preparer.quote(column.name) for column in columns)
    return (
        f"INSERT INTO {preparer.format_table(table)} ({names}) "
        f"SELECT * FROM unnest({casts})"
    )


#: Raises a column's sequence (serial or identity) to ``:key``, where the
#: role may (``UPDATE`` on the sequence), the key is within the sequence's
#: bounds and the sequence is not already past it; nothing for a column
#: without a sequence. Answers whether the role lacked the privilege.
#:
#: Where the sequence must move, it first takes :data:`_LOCK_SEQUENCE`'s
#: lock, in the same statement: the lock is in the target list of a
#: subquery that ``OFFSET 0`` keeps from being merged into the outer query,
#: whose row (and so the second check of the sequence's value and the
#: ``setval``) is computed only from that subquery's row, after the lock
#: is granted. One round trip a table.
#:
#: A sequence already at or past the key takes no lock: a sequence only
#: ever moves up (``setval`` here and in the key blocks raise it, under the
#: lock, and is not undone by a rollback), so nothing can bring it back
#: below the key afterwards. That is most pushes once nodes write keys of
#: their own ranges, and the lock, held until the push commits, had made
#: every push inserting into the table wait for the one before it (at 30
#: nodes, 2.5 of 4 gunicorn workers' backends waited on it).
_ADVANCE_SEQUENCE = sa.text(
    "SELECT NOT has_sequence_privilege(q.seq, 'UPDATE') AS refused, "
    "CASE WHEN q.locked IS NOT NULL "
    "AND :key BETWEEN s.seqmin AND s.seqmax "
    "AND COALESCE(pg_sequence_last_value(q.seq::regclass), 0) < :key "
    "THEN setval(q.seq, :key) END AS advanced "
    "FROM (SELECT p.seq, CASE WHEN has_sequence_privilege(p.seq, 'UPDATE') "
    "THEN CASE WHEN COALESCE(pg_sequence_last_value(p.seq::regclass), 0) "
    "< :key THEN pg_advisory_xact_lock(1920295280, "
    "p.seq::regclass::oid::int)::text END END AS locked "
    "FROM (SELECT pg_get_serial_sequence(:table, :column) AS seq) AS p "
    "OFFSET 0) AS q "
    "JOIN pg_sequence AS s ON s.seqrelid = q.seq::regclass"
)

#: Serialises the pushes that raise one sequence, until they commit: the
#: check and the ``setval`` of :data:`_ADVANCE_SEQUENCE` are two steps, and
#: two pushes between them could move the sequence back. (The first number
#: names this lock's kind among the app's advisory locks.) Taken by
#: :data:`_ADVANCE_SEQUENCE` itself; alone by the key blocks.
_LOCK_SEQUENCE = sa.text(
    "SELECT pg_advisory_xact_lock(1920295280, "
    "pg_get_serial_sequence(:table, :column)::regclass::oid::int)"
)


def lock_sequence(
    session: Session, params: Mapping[str, Any], bind: dict[str, Any]
) -> None:
    """Take :data:`_LOCK_SEQUENCE` for one key column's sequence."""
    session.execute(_LOCK_SEQUENCE, params, bind_arguments=bind)


log = logging.getLogger("flask_reflectsync")

#: Tables whose sequence the role may not update, warned about once.
_refused_sequences: set[str] = set()


def _advance_sequences(session: Session, changes: Mapping[str, _TableChanges]) -> None:
    """Move PostgreSQL sequences past the integer keys the push inserts,
    before the rows are written.

    Nodes choose their keys, and an explicit key does not advance the
    column's sequence: the server's own app, adding a row afterwards, would
    be given a pushed key and fail. (MySQL and SQLite advance by themselves.)
    Raised first, the sequence never hands the app a key this push is
    writing: raised after the writes, an app insert meanwhile drew such a
    key, waited for the push's row and failed when it committed. A lock per
    sequence, taken where it must move and held until commit, keeps
    concurrent pushes from moving it back (tables in name order, so two
    pushes cannot wait on each other); a sequence already past the push's
    keys is left alone, unlocked (see :data:`_ADVANCE_SEQUENCE`).
    ``setval`` is not undone by a rollback, which only leaves a gap. A role
    without ``UPDATE`` on the sequence is warned about once per table, and
    the push goes on. The lock and the advance are one statement.
    """
    for name in sorted(changes):
        target = changes[name]
        info = target.info
        if not (target.inserts and info.single_integer_key):
            continue
        dialect = session.get_bind(clause=info.table).dialect
        if dialect.name != "postgresql":
            continue
        table = dialect.identifier_preparer.format_table(info.table)
        params = {"table": table, "column": info.pk_columns[0].name}
        bind = {"clause": info.table}
        key = max(op.row_key[0] for op in target.inserts)
        connection = session.connection(bind_arguments=bind)
        refused = connection.execute(_ADVANCE_SEQUENCE, {**params, "key": key}).scalar()
        if refused and table not in _refused_sequences:
            _refused_sequences.add(table)
            log.warning(
                "The database role may not update the key sequence of %s: rows "
                "the server's app adds there may be given keys nodes pushed. "
                "GRANT UPDATE ON SEQUENCE to the role.",
                table,
            )
