"""Pulled patches made whole again on the node (see
:ref:`patches in pull pages <pull-patches>`).

A pull page sends an updated row as a *patch*: its key, the columns
changed since the node's version (``changed``) and ``null`` in the others.
The node knows the others already: the server has not changed them since
the node last synchronised them, so the server's value of such a column is

* the node's *base* of it when the node has a queued update of the column
  (the value it replaced, see :mod:`.bases`), or else
* the node's own current value.

:func:`complete_patches` rebuilds each patched row that way, in the
merge's transaction, before the merge decides anything: every step after it
(conflicts, strategies, :class:`~flask_reflectsync.node.conflicts.Conflict`
``server`` rows, writes) sees whole rows, as before, and a callable's
``server`` row holds the server's values, not the node's.

Where the node cannot know the server's values, it asks the server for the
whole row (through the merge's fetcher, so no lock is held while waiting):
a row it does not have (deleted locally, or never had), a row whose key
it reuses for a row of its own (a queued insert or a replaced row), and a
queued update whose earlier values are not all kept (a bulk ``update()``
keeps no base). A row the server no longer has by then is left out: its
delete is in a later version, which the next page brings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..rows import read_rows, row_key
from ..tracking import UPDATE, TrackedTable
from .bases import read_base

if TYPE_CHECKING:
    from .merge import Fetcher, MergeSchema, PulledTable
    from .queue import LocalQueue


def complete_patches(
    connection: sa.Connection,
    schema: MergeSchema,
    queue: LocalQueue,
    page: Sequence[PulledTable],
    fetch: Fetcher,
) -> list[PulledTable]:
    """``page`` with every patched row whole (see the module's text); parts
    without patches are returned as they are, the others as new parts."""
    return [
        _completed(connection, schema.tables[part.table], queue, part, fetch)
        if part.changed is not None and part.table in schema.tables
        else part
        for part in page
    ]


def _completed(
    connection: sa.Connection,
    info: TrackedTable,
    queue: LocalQueue,
    part: PulledTable,
    fetch: Fetcher,
) -> PulledTable:
    assert part.changed is not None
    patched = [n for n, mark in enumerate(part.changed) if mark is not None]
    if not patched:
        return part
    rows = part.rows
    keys = [row_key(info, rows[n]) for n in patched]
    local = {row_key(info, r): r for r in read_rows(connection, info, keys)}
    whole: dict[int, dict[str, Any]] = {}
    asked: dict[int, tuple[Any, ...]] = {}
    for n, key in zip(patched, keys, strict=True):
        mark = part.changed[n]
        assert mark is not None
        mine = local.get(key)
        text = info.encode_key(key)
        queued = queue.get(info.name, text) if queue.commands else None
        if mine is None or (
            queued is not None
            and (queued != UPDATE or (info.name, text) in queue.replaced)
        ):
            asked[n] = key
            continue
        known = dict(mine)
        if queued == UPDATE:
            columns = queue.columns_of(info.name, text)
            base = read_base(connection, info, text)
            if columns is None or any(
                c not in base for c in columns if c not in mark
            ):
                asked[n] = key
                continue
            known.update({c: base[c] for c in columns if c not in mark})
        known.update({c: rows[n][c] for c in mark if c in rows[n]})
        whole[n] = known
    if asked:
        found = fetch(info.name, list(asked.values()))
        for n, key in asked.items():
            if key in found:
                whole[n] = {c: found[key].get(c) for c in part.columns}
    rows = [whole.get(n, row) for n, row in enumerate(rows)]
    kept = [n for n in range(len(rows)) if n in whole or part.changed[n] is None]
    return dataclasses.replace(
        part,
        values=[[rows[n].get(c) for n in kept] for c in part.columns],
        commands="".join(part.commands[n] for n in kept),
        changed=[part.changed[n] for n in kept],
    )
