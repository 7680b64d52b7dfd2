"""Which rows of a pull page a node must hear of, and which columns
(framework-free, server side; used by :mod:`.pull`).

A node has what it wrote itself. Before field-level sync a page simply left
out the rows the node wrote last; now a row's other columns may have been
changed by others before that, so each updated row's operations in the page
are walked: other writers' columns are added, the node's own taken away
(see :ref:`column-rules`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..tracking import INSERT, UPDATE
from ..tracking.columns import decode_columns, union, written_by_server


def patched_columns(
    names: Sequence[str],
    keys: Sequence[str],
    logged: Sequence[str],
    changed: Sequence[str | None],
    writers: Sequence[int | None],
    node_id: int,
) -> dict[str, dict[str, frozenset[str] | None]]:
    """For the rows whose every operation in the page is an update: the
    columns the node must hear about.

    Those are the columns other writers changed, less the ones the node
    wrote itself after them: a node that pushed ``note`` while the server's
    app changed ``count`` hears of ``count`` alone, and a row it changed
    last in every column it has as it is (an empty set: left out of the
    page). ``None`` is the whole row (an update whose columns are unknown;
    it stays whole even when the node wrote some columns later). What the
    server's database changed in the node's own pushed rows (triggers,
    server defaults, logged in the node's version) counts as another
    writer's change.
    """
    pending: dict[tuple[str, str], frozenset[str] | None] = {}
    mixed: set[tuple[str, str]] = set()
    decoded: dict[str | None, frozenset[str] | None] = {}
    for name, key, command, text, writer in zip(
        names, keys, logged, changed, writers, strict=True
    ):
        ident = (name, key)
        if command != UPDATE:
            mixed.add(ident)
            continue
        if text not in decoded:
            decoded[text] = decode_columns(text)
        columns = decoded[text]
        seen = pending.get(ident, frozenset())
        if writer == node_id and not written_by_server(text):
            if columns is None:
                pending[ident] = frozenset()
            else:
                pending[ident] = None if seen is None else seen - columns
        else:
            pending[ident] = union(seen, columns)
    result: dict[str, dict[str, frozenset[str] | None]] = {}
    for (name, key), columns in pending.items():
        if (name, key) not in mixed:
            result.setdefault(name, {})[key] = columns
    return result


def leave_out_own_rows(
    commands: dict[str, dict[str, str]],
    names: Sequence[str],
    keys: Sequence[str],
    logged: Sequence[str],
    writers: Sequence[int | None],
    changed: Sequence[str | None],
    node_id: int,
    patched: dict[str, dict[str, frozenset[str] | None]],
) -> None:
    """Drop from ``commands`` the rows this node has as they are. A row only
    updated is dropped when no column is left to tell the node of (see
    :func:`patched_columns`), and kept otherwise, even when the node wrote
    last. Any other row is dropped when nothing of another writer's is left
    after the node's own operations on it: the node inserted, deleted or
    wrote the whole row after every other writer's change, or its updates
    rewrote every column the others changed after that. A node whose insert
    is followed by another writer's update and then by its own patch of
    another column must still hear of the row (it lacks that update).

    Such a row, whose first operation in the page is the node's own insert,
    is sent as an update of the columns the others changed (added to
    ``patched``), not as an insert: the node has the row, and an insert
    under the key of a row it holds with a queued update would read as a
    new row under a reused key, set beside its own (a duplicate).

    The node's own versions are read with the others', not left out of the
    scan, so that a row's compressed command sees them: when the server
    restored a row for the node after another node's delete (a stale push
    decided for the node, see :ref:`stale-pushes`), the page must not tell
    the node to delete it.
    """
    if node_id not in writers:
        return
    # By row: the columns others changed that the node has not rewritten
    # since (None: the whole row, or a row others inserted or deleted).
    news: dict[tuple[str, str], frozenset[str] | None] = {}
    # Rows whose first operation in the page is the node's own insert.
    inserted: set[tuple[str, str]] = set()
    for name, key, command, writer, text in zip(
        names, keys, logged, writers, changed, strict=True
    ):
        ident = (name, key)
        # What the database changed in the node's own row is news to it.
        own = writer == node_id and not written_by_server(text)
        if own and command == INSERT and ident not in news:
            inserted.add(ident)
        columns = decode_columns(text) if command == UPDATE else None
        if own:
            seen = news.get(ident, frozenset())
            if columns is None:
                news[ident] = frozenset()
            else:
                news[ident] = None if seen is None else seen - columns
        else:
            news[ident] = None if columns is None else union(
                news.get(ident, frozenset()), columns
            )
    for (name, key), lacking in news.items():
        of_table = patched.get(name)
        if of_table is not None and key in of_table:
            lacking = of_table[key]
        if lacking == frozenset() and name in commands:
            commands[name].pop(key, None)
            if not commands[name]:
                del commands[name]
        elif (name, key) in inserted and commands.get(name, {}).get(key) == INSERT:
            commands[name][key] = UPDATE
            if lacking is not None:
                patched.setdefault(name, {})[key] = lacking
