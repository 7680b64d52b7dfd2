"""What stands against a push: conflicts with versions the node has not
pulled (found under the counter lock, or ruled on by the node's strategies
before writing), references the push leaves dangling, and the explanation
of a constraint violation the database raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ..errors import PushRejectedError, UniqueConstraintError
from ..rows import batches, key_filter, key_reference, unique_column_sets
from ..tracking import DELETE, UPDATE, LogTables
from ..tracking.columns import overlap
from ..tracking.keys import encode_key
from .push_decode import KEY_BATCH, _TableChanges
from .schema import TrackedSchema
from .stale import StaleRow, rule, ruling_entry, stale_rows

#: How many rows in conflict an error lists.
MAX_LISTED = 50


def find_conflicts(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    ruled: Mapping[tuple[str, tuple[Any, ...]], int] | None = None,
    schema: TrackedSchema | None = None,
    upto: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of the push that another writer changed after ``last_version``
    (see :func:`.stale.stale_rows`), but for those ``ruled`` on at the
    version they still have; and, given the ``schema``, the parents the
    push's rows point at that another writer replaced meanwhile (see
    :func:`_replaced`). One scan of the log answers both.

    :param ruled: the stale rows the server decided itself (see
        :func:`_rule_stale_rows`), with the version each was decided at; a
        row changed again since is a conflict after all.
    :param schema: the tracked tables, for the replaced parents; without
        it only the pushed rows are looked at.
    :param upto: the newest version number, when known (under the counter
        lock): see :func:`.stale.stale_rows`.
    """
    ruled = ruled or {}
    keys = _pushed_keys(changes)
    parents = _referenced_parents(schema, changes) if schema is not None else {}
    wanted = {name: dict(by_text) for name, by_text in keys.items()}
    for name, by_text in parents.items():
        wanted.setdefault(name, {}).update(by_text)
    if not wanted:
        return []
    found = stale_rows(session, tables, wanted, node_id, last_version, upto)
    conflicts = [
        {"table": name, "key": changes[name].wire_key(key), "version": row.version}
        for (name, key), row in _touching(found, keys, changes)
        if ruled.get((name, key)) != row.version
    ]
    return conflicts + _replaced(found, parents)


def _pushed_keys(
    changes: Mapping[str, _TableChanges],
) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Per table, the keys of the push's operations by their log text."""
    return {
        name: {encode_key(op.row_key): op.row_key for op in target.operations}
        for name, target in changes.items()
        if target.operations
    }


def _touching(
    found: Mapping[tuple[str, Any], StaleRow],
    keys: Mapping[str, Mapping[str, tuple[Any, ...]]],
    changes: Mapping[str, _TableChanges],
) -> list[tuple[tuple[str, Any], StaleRow]]:
    """The stale rows among the pushed ``keys`` that conflict: an update of
    some columns meets only the changes of those columns, and another
    writer's edit of other columns of the row is no conflict."""
    pushed = {name: set(by_text.values()) for name, by_text in keys.items()}
    return [
        ((name, key), row)
        for (name, key), row in found.items()
        if key in pushed.get(name, ())
        and row.touches(changes[name].pushed_columns(key))
    ]


def _stale(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    upto: int,
) -> list[tuple[tuple[str, Any], StaleRow]]:
    keys = _pushed_keys(changes)
    found = stale_rows(session, tables, keys, node_id, last_version, upto)
    return _touching(found, keys, changes)


def _rule_stale_rows(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    strategies: Mapping[str, str],
    upto: int,
) -> tuple[dict[tuple[str, tuple[Any, ...]], int], list[dict[str, Any]]]:
    """Decide the direct conflicts of a stale push by the node's strategies
    (see :mod:`.stale`), before writing: operations the server's side wins
    are taken out of ``changes``.

    ``upto`` is the counter's value the push read first: a row changed in a
    version numbered after it is not ruled on here, and the scan under the
    counter lock (:func:`find_conflicts`) refuses it as a conflict.

    :return: the rows ruled on, with the version each was decided at, and
        the answer's ``resolved`` entries.
    """
    ruled: dict[tuple[str, tuple[Any, ...]], int] = {}
    entries: list[dict[str, Any]] = []
    if not strategies:
        return ruled, entries
    candidates = [
        (name, key, row)
        for (name, key), row in _stale(
            session, tables, changes, node_id, last_version, upto
        )
        if name in strategies
    ]
    by_table: dict[str, list[tuple[tuple[Any, ...], StaleRow]]] = {}
    for name, key, row in candidates:
        by_table.setdefault(name, []).append((key, row))
    for name, rows in by_table.items():
        target = changes[name]
        current = _server_rows(session, target, [key for key, _ in rows])
        inserts = {op.row_key for op in target.inserts}
        deletes = {op.row_key for op in target.deletes}
        discarded: set[tuple[Any, ...]] = set()
        for key, row in rows:
            if key in inserts:
                continue  # a key taken on both sides: the node re-keys
            if row.inserted and key in current and target.info.single_integer_key:
                continue  # a new row under the key: the node re-keys its own
            pushed = target.pushed_columns(key)
            if pushed is not None and key not in current:
                continue  # a patch cannot bring a deleted row back: the node merges
            command = DELETE if key in deletes else UPDATE
            ruling = rule(strategies[name], command, key in current)
            both = None if pushed is None else overlap(pushed, row.columns)
            if not ruling.apply and both is not None:
                # The server keeps the columns both changed; the node's other
                # columns are written (or nothing, when none is left).
                target.drop_columns(key, both)
            elif not ruling.apply:
                discarded.add(key)
            ruled[(name, key)] = row.version
            entry = ruling_entry(name, target.wire_key(key), ruling, current.get(key))
            if both is not None:
                entry["columns"] = sorted(both)
            entries.append(entry)
        if discarded:
            target.discard(discarded)
    return ruled, entries


def _server_rows(
    session: Session, target: _TableChanges, keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The server's current rows among ``keys``, in their JSON form."""
    info = target.info
    pk = list(info.pk_columns)
    columns = list(info.synced_columns)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for batch in batches(keys, KEY_BATCH):
        query = sa.select(*columns).where(key_filter(pk, batch))
        for values in session.execute(query):
            row = dict(zip((c.name for c in columns), values, strict=True))
            key = tuple(row[c.name] for c in pk)
            found[key] = {
                name: target.codecs[name].to_json(value) for name, value in row.items()
            }
    return found


def _referenced_parents(
    schema: TrackedSchema, changes: Mapping[str, _TableChanges]
) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Per parent table with one integer key column, the keys that rows the
    push writes point at, by their log text (see :func:`_replaced`)."""
    by_table = {info.table: info for info in schema.tables.values()}
    wanted: dict[str, dict[str, tuple[Any, ...]]] = {}
    for target in changes.values():
        written = [target.rows[op.row_key] for op in target.written]
        if not written:
            continue
        for constraint in target.info.table.foreign_key_constraints:
            parent = by_table.get(constraint.referred_table)
            if parent is None or not parent.single_integer_key:
                continue
            (element,) = constraint.elements
            column = element.parent.name
            for row in written:
                value = row.get(column)
                if type(value) is int:
                    wanted.setdefault(parent.name, {})[encode_key((value,))] = (value,)
    return wanted


def _replaced(
    found: Mapping[tuple[str, Any], StaleRow],
    parents: Mapping[str, Mapping[str, tuple[Any, ...]]],
) -> list[dict[str, Any]]:
    """Parents that rows of the push point at, and that another writer gave
    to a new row after the node's last pull: the key of a table with one
    integer key column was deleted and inserted again (the server app's
    ``max(id) + 1``), so the node, which has not seen the new row, meant the
    old one. Accepted, its row would silently join the new parent; refused,
    the node pulls, meets the replacement, and its merge decides (a
    ``dependency`` conflict, see :doc:`/conflicts`)."""
    wanted = {name: set(by_text.values()) for name, by_text in parents.items()}
    return [
        {
            "table": name,
            # One integer key column: the wire key is the integer itself.
            "key": list(key) if isinstance(key, tuple) else [key],
            "version": row.version,
            "replaced": True,
        }
        for (name, key), row in sorted(found.items(), key=lambda item: str(item[0]))
        if row.inserted and key in wanted.get(name, ())
    ]


def broken_references(
    session: Session, schema: TrackedSchema, changes: Mapping[str, _TableChanges]
) -> list[dict[str, Any]]:
    """Foreign keys between tracked tables that the push leaves dangling.

    Checked by the server itself, after the push's writes and under the
    counter lock, because SQLite (without ``PRAGMA foreign_keys``) would
    accept them silently: a written row pointing at a missing tracked
    parent, and a deleted row that tracked rows still point at.
    """
    found: list[dict[str, Any]] = []
    by_table = {info.table: info for info in schema.tables.values()}
    for name, target in changes.items():
        table = target.info.table
        written = [target.rows[op.row_key] for op in target.written]
        for constraint in table.foreign_key_constraints:
            parent = by_table.get(constraint.referred_table)
            if parent is None or not written:
                continue
            columns = [e.parent.name for e in constraint.elements]
            # A patch that leaves the reference alone does not check it.
            wanted = {
                tuple(row[c] for c in columns)
                for row in written
                if all(row.get(c) is not None for c in columns)
            }
            targets = [e.column for e in constraint.elements]
            present: set[tuple[Any, ...]] = set()
            for batch in batches(list(wanted), KEY_BATCH):
                query = sa.select(*targets).where(key_filter(targets, batch))
                present |= {tuple(row) for row in session.execute(query)}
            found += [
                {"table": name, "references": parent.name, "missing": list(values)}
                for values in wanted - present
            ]
    for name, target in changes.items():
        deleted = [op.row_key for op in target.deletes]
        if not deleted:
            continue
        for child in schema.tables.values():
            for constraint in child.table.foreign_key_constraints:
                if constraint.referred_table is not target.info.table:
                    continue
                pointing = key_reference(constraint, target.info)
                if pointing is None:
                    continue
                for batch in batches(deleted, KEY_BATCH):
                    query = sa.select(*pointing).where(key_filter(pointing, batch))
                    for row in session.execute(query.distinct()):
                        found.append(
                            {
                                "table": name,
                                "key": target.wire_key(tuple(row)),
                                "referenced_by": child.name,
                            }
                        )
    return found


def _conflict_error(conflicts: list[dict[str, Any]]) -> PushRejectedError:
    return PushRejectedError(
        f"The server changed {len(conflicts)} of the pushed row(s) in versions "
        "the node has not pulled; pull, merge and push again.",
        conflicts[:MAX_LISTED],
    )


def _explain_integrity_error(
    session: Session,
    tables: LogTables,
    changes: Mapping[str, _TableChanges],
    node_id: int,
    last_version: int,
    error: Exception,
) -> PushRejectedError:
    try:
        conflicts = find_conflicts(session, tables, changes, node_id, last_version)
        if conflicts:
            return _conflict_error(conflicts)
        entries = unique_violations(session, changes)
    finally:
        session.rollback()
    if entries:
        first = entries[0]
        return UniqueConstraintError(
            f"The push breaks a unique constraint: {first['table']} "
            f"{first['key']} on ({', '.join(first['columns'])}); "
            f"{len(entries)} row(s) in all.",
            entries[:MAX_LISTED],
        )
    if isinstance(error, StaleDataError):
        return PushRejectedError(
            "The push updates rows that no longer exist on the server; pull, "
            "merge and push again.",
            code="push.refused",
        )
    detail = str(getattr(error, "orig", error)).strip().splitlines()[0]
    return PushRejectedError(
        f"The database refused the push ({detail}); nothing was written.",
        code="push.refused",
    )


def unique_violations(
    session: Session, changes: Mapping[str, _TableChanges]
) -> list[dict[str, Any]]:
    """Pushed rows that collide on a unique constraint, with each other or
    with rows already in the database."""
    entries: list[dict[str, Any]] = []
    for name, target in changes.items():
        written = target.written
        if not written:
            continue
        # Updates cannot break the key; inserts and restores can.
        updated = {op.row_key for op in target.updates}
        pk_names = tuple(c.name for c in target.info.pk_columns)
        for columns in unique_column_sets(target.info.table, primary_key=True):
            is_pk = columns == pk_names
            holders: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            probe = [op for op in written if not is_pk or op.row_key not in updated]
            for op in probe:
                pushed = target.rows[op.row_key]
                if not all(c in pushed for c in columns):
                    continue  # a patch that leaves these columns alone
                values = tuple(pushed[c] for c in columns)
                if None in values:
                    continue
                if values in holders:
                    entries.append(_entry(target, name, op.row_key, columns, None))
                holders.setdefault(values, op.row_key)
            table = target.info.table
            selected = [table.c[c] for c in columns]
            pk = list(target.info.pk_columns)
            for batch in batches(list(holders), KEY_BATCH):
                query = sa.select(*pk, *selected).where(key_filter(selected, batch))
                for row in session.execute(query):
                    existing = tuple(row[: len(pk)])
                    values = tuple(row[len(pk) :])
                    pushed_key = holders.get(values)
                    if pushed_key is not None and (is_pk or pushed_key != existing):
                        entries.append(
                            _entry(target, name, pushed_key, columns, existing)
                        )
    return entries


def _entry(
    target: _TableChanges,
    name: str,
    key: tuple[Any, ...],
    columns: tuple[str, ...],
    existing: tuple[Any, ...] | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "table": name,
        "key": target.wire_key(key),
        "columns": list(columns),
    }
    if existing is not None:
        entry["existing_key"] = target.wire_key(existing)
    return entry
