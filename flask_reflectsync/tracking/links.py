"""Which tracked models point at tables that are not tracked.

A tracked model whose ``secondary=`` relationship writes an untracked
association table, or whose foreign key references an untracked table,
diverges on the nodes without a word: the link rows (or the referenced
rows) never travel. :func:`untracked_links` names them, for the start-up
warning (:class:`~flask_reflectsync.errors.UntrackedLinkWarning`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from .registry import TrackedTable


def untracked_links(tracked: Iterable[TrackedTable]) -> dict[str, list[str]]:
    """For every tracked model (by label) that points at an untracked
    table, the names of those tables, sorted.

    :param tracked: the tracked tables of one metadata (mapped classes and
        plain tables).
    """
    infos = list(tracked)
    tables = {info.table for info in infos}
    found: dict[str, set[str]] = {}
    for info in infos:
        missing = found.setdefault(info.label, set())
        for fk in info.table.foreign_keys:
            target = _referenced(fk)
            if target is not None and target not in tables:
                missing.add(target.fullname)
        if info.mapper is None:
            continue
        for prop in info.mapper.relationships:
            if prop.viewonly:
                continue
            secondary = prop.secondary
            if isinstance(secondary, sa.Table) and secondary not in tables:
                missing.add(secondary.fullname)
            target_table = prop.mapper.local_table
            if isinstance(target_table, sa.Table) and target_table not in tables:
                missing.add(target_table.fullname)
    return {label: sorted(names) for label, names in found.items() if names}


def _referenced(fk: sa.ForeignKey) -> Any:
    try:
        return fk.column.table
    except (sa.exc.NoReferencedTableError, sa.exc.NoReferencedColumnError):
        return None  # declared on a table not defined (yet): nothing to say


def describe(links: dict[str, list[str]]) -> str:
    """The warning's sentence for ``links`` (see :func:`untracked_links`)."""
    parts = [f"{label} -> {', '.join(names)}" for label, names in sorted(links.items())]
    return (
        "Tracked models point at tables that are not tracked, whose rows "
        f"never reach the nodes: {'; '.join(parts)}. Track those tables too "
        "(track(Model) or, for an association table, track(table)), or the "
        "links are lost on every node."
    )
