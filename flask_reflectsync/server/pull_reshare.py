"""A node whose principal changed receives the difference between its old
share and its new one, not a repair (framework-free, server side; used by
the pull route; see :doc:`/scopes`, "Moves").

When the app re-binds a node (the user moved team) and the rules are the
same, the server still knows what the node holds: its old share, as of the
version it last pulled, since it was served under the stored old principal
(``reflectsync_nodes.served_principal``). So the pull first brings the node
up to the current version *under the old principal* (ordinary pages, with
their evictions), and then, once it is current, serves one page that moves
it, read in one snapshot:

* every row of the new share that is not in the old one, whole, as an
  insert (children follow their parents, since each table's share
  condition follows the foreign keys);
* the key of every row of the old share that is not in the new one, as an
  eviction; and of every row whose log entries after that version, numbered
  or not yet, name an old share's tag, unless it is in the new share now: a
  change committed before the snapshot but numbered after it would reach
  the node under the new share's tags only, so a row it moved out of the
  old share (or deleted) would never be evicted otherwise.

Rows in both shares are not sent: the node has them, and changes to them
after the page reach it under the new tags. The same transaction records
the new principal as the one the node is served under. Conditions are
compared with ``CASE`` so that a ``NULL`` (a row in no share) is never
read as "in the share".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..rows import batches, key_filter
from ..tracking import INSERT, TrackedTable, decode_key
from ..tracking.tables import current_version
from ..wire.codec import key_codecs, key_from_log, stores_time_zones, synced_codecs
from .nodes import nodes_table
from .pull import table_changes
from .pull_scopes import Share
from .push_decode import KEY_BATCH
from .schema import TrackedSchema
from .scopes import principal_text


def reshare_page(
    engine: sa.Engine,
    tables: Any,
    schema: TrackedSchema,
    node_id: int,
    since: int,
    old: Share,
    new: Share,
    scoped_as: str | None,
    check: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """The page moving node ``node_id``, current at version ``since``, from
    share ``old`` to share ``new``, committed with the new principal
    recorded as served (under the digest ``scoped_as``).

    If versions were numbered after ``since`` meanwhile, nothing is moved:
    the page is empty and says ``moving``, and the node pulls again (the
    catch-up under the old principal comes first).

    :param check: called with the page before the move is recorded; what
        it raises rolls the move back.
    """
    options: dict[str, Any] = {}
    if engine.dialect.name in ("postgresql", "mysql", "mariadb"):
        options["isolation_level"] = "REPEATABLE READ"
    with engine.connect().execution_options(**options) as connection:
        session = Session(bind=connection)
        with session.begin():
            current = current_version(session, tables)
            if current != since:
                return _page({}, since, current, moving=True)
            aware = stores_time_zones(engine.dialect)
            changes: dict[str, Any] = {}
            for name, info in schema.tables.items():
                if not new.routed(name):
                    continue
                part = _moved_table(session, tables, info, since, old, new, aware)
                if part is not None:
                    changes[name] = part
            page = _page(changes, since, current, moving=False)
            if check is not None:
                # Before the move is recorded: a refused page (a schema the
                # node cannot store, see schema_check) leaves it unmoved.
                check(page)
            nodes = nodes_table(tables)
            session.execute(
                sa.update(nodes)
                .where(nodes.c.id == node_id)
                .values(
                    scoped_as=scoped_as,
                    served_principal=principal_text(new.node.principal),
                )
            )
    return page


def _page(
    changes: dict[str, Any], since: int, current: int, *, moving: bool
) -> dict[str, Any]:
    operations = 0
    for part in changes.values():
        operations += len(part.get("commands", ""))
        evicted = part.get("evicted")
        operations += len(evicted[0]) if evicted else 0
    page: dict[str, Any] = {
        "changes": changes,
        "until": since,
        "version": current,
        "cursor": None,
        "operations": operations,
    }
    if moving:
        page["moving"] = True
    return page


def _outside(condition: sa.ColumnElement[bool] | None) -> sa.ColumnElement[bool]:
    """Rows not in a share (``NULL`` counts as outside)."""
    if condition is None:
        return sa.false()
    return sa.case((condition, 0), else_=1) == 1


def _moved_table(
    session: Session,
    tables: Any,
    info: TrackedTable,
    since: int,
    old: Share,
    new: Share,
    aware: bool,
) -> dict[str, Any] | None:
    """One table's part of the moving page (see the module's docstring)."""
    pk = list(info.pk_columns)
    old_in, new_in = old.condition(info), new.condition(info)
    codecs = list(synced_codecs(info, aware_storage=aware).values())
    pk_codecs = key_codecs(info, codecs)

    everything = sa.true()
    entering = [
        tuple(row)
        for row in session.execute(
            sa.select(*pk)
            .where(everything if new_in is None else new_in, _outside(old_in))
            .order_by(*pk)
        )
    ]
    leaving = {
        tuple(row)
        for row in session.execute(
            sa.select(*pk).where(
                everything if old_in is None else old_in, _outside(new_in)
            )
        )
    }
    leaving |= _left_since(session, tables, info, since, old, new_in, pk_codecs)

    part: dict[str, Any] | None = None
    if entering:
        commands = {info.encode_key(key): INSERT for key in entering}
        part = table_changes(session, info, commands, aware)
    if not leaving:
        return part
    if part is None:
        part = {
            "columns": [c.name for c in codecs],
            "values": [[] for _ in codecs],
            "commands": "",
            "deleted": [[] for _ in pk],
        }
    ordered = sorted(leaving, key=info.encode_key)
    part["evicted"] = [
        [codec.to_json(key[n]) for key in ordered] for n, codec in enumerate(pk_codecs)
    ]
    return part


def _left_since(
    session: Session,
    tables: Any,
    info: TrackedTable,
    since: int,
    old: Share,
    new_in: sa.ColumnElement[bool] | None,
    pk_codecs: Sequence[Any],
) -> set[tuple[Any, ...]]:
    """Rows whose log entries after ``since`` (numbered later, or not yet)
    name a tag of the old share, and that are not in the new share now."""
    if not old.tags:
        return set()
    operations, versions = tables.operations, tables.versions
    tags = sorted(old.tags)
    query = (
        sa.select(operations.c.row_key)
        .join(versions, versions.c.id == operations.c.version_id)
        .where(
            operations.c.table_name == info.name,
            sa.or_(versions.c.number.is_(None), versions.c.number > since),
            sa.or_(
                operations.c.scope_before.in_(tags), operations.c.scope_after.in_(tags)
            ),
        )
        .distinct()
    )
    texts = [row[0] for row in session.execute(query)]
    if not texts:
        return set()
    keys = [key_from_log(decode_key(text), pk_codecs) for text in texts]
    pk = list(info.pk_columns)
    kept: set[tuple[Any, ...]] = set()
    if new_in is not None:
        for batch in batches(keys, KEY_BATCH):
            kept.update(
                tuple(row)
                for row in session.execute(
                    sa.select(*pk).where(key_filter(pk, batch, inline=True), new_in)
                )
            )
    return {key for key in keys if key not in kept}

