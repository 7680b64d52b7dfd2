"""The tracked tables a server exposes, looked up by their logged name."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from ..errors import ExcludedColumnError
from ..tracking import TrackedTable, tracked_tables


@dataclass(frozen=True)
class TrackedSchema:
    """The tracked tables on one metadata, by name, in dependency order.

    :param tables: tracked tables by their logged name (``schema.name`` when
        the table has a schema), parents before children.
    """

    tables: dict[str, TrackedTable]

    @classmethod
    def of(cls, metadata: sa.MetaData) -> TrackedSchema:
        """The tracked tables defined on ``metadata``."""
        found = {info.table: info for info in tracked_tables(metadata)}
        ordered = [found[t] for t in metadata.sorted_tables if t in found]
        return cls({info.name: info for info in ordered})

    def get(self, name: str) -> TrackedTable | None:
        """The tracked table called ``name``, or ``None``."""
        return self.tables.get(name)

    def in_dependency_order(self, names: Iterable[str]) -> list[str]:
        """``names`` sorted parents first (foreign keys point backwards)."""
        wanted = set(names)
        return [name for name in self.tables if name in wanted]


def excluded_column(table: str, column: str, where: str) -> ExcludedColumnError:
    """The refusal of a column kept out of sync (``track(exclude=...)``)
    that a push or a query names: every route refuses it the same way."""
    return ExcludedColumnError(
        f"{where}: column {column!r} of table {table!r} is kept out of sync "
        "(track(exclude=...) or track(only=...)): the server never sends it "
        "and nodes may not write it.",
        table=table,
        column=column,
    )
