"""Which rows of a pull page a node must hear of, and which columns
(framework-free, server side; used by :mod:`.pull`).

A node has what it wrote itself. Before field-level sync a page simply left
out the rows the node wrote last; now a row's other columns may have been
changed by others before that, so each updated row's operations in the page
are walked: other writers' columns are added, the node's own taken away
(see :ref:`column-rules`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..tracking import UPDATE
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
    writers: Sequence[int | None],
    changed: Sequence[str | None],
    node_id: int,
    patched: Mapping[str, Mapping[str, frozenset[str] | None]],
) -> None:
    """Drop from ``commands`` the rows this node changed last: it has them
    as they are. A row only updated is dropped when no column is left to
    tell the node of (see :func:`patched_columns`), and kept otherwise,
    even when the node wrote last.

    The node's own versions are read with the others', not left out of the
    scan, so that a row's compressed command sees them: when the server
    restored a row for the node after another node's delete (a stale push
    decided for the node, see :ref:`stale-pushes`), the page must not tell
    the node to delete it.
    """
    if node_id not in writers:
        return
    last: dict[tuple[str, str], bool] = {}
    for name, key, writer, text in zip(names, keys, writers, changed, strict=True):
        # What the database changed in the node's own row is news to it.
        last[(name, key)] = writer == node_id and not written_by_server(text)
    for (name, key), own in last.items():
        columns = patched.get(name, {}).get(key, False)
        if columns is not False:
            own = columns == frozenset()
        if own and name in commands:
            commands[name].pop(key, None)
            if not commands[name]:
                del commands[name]
