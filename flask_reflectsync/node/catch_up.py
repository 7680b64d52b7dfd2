"""Tracked tables a node has never synchronised (see :doc:`/schema-changes`).

A node pulls the server's changes since its version. A tracked table that
appears on a node that has pulled already (the app's own ``create_all`` of a
new model on an old node file, or a model added to ``SyncClient(models=...)``)
would never receive the server's rows that are older than that version: the
node is past them. So the node's state keeps the tables it has synchronised
(``synced_tables``), and before its next push or pull a table missing from
it has the server's rows fetched (``GET /query``, the node's share) and
merged as the server's inserts, in one local transaction that also records
it. The merge is a pull's: a row the app inserted meanwhile under a key the
server already has is re-keyed (a primary-key conflict), nothing queued is
lost, and nothing is logged for the fetched rows. The node's version does
not move; the changes the pull then brings again are merged as usual.

Node files of earlier releases kept no such list: there a table is taken as
never synchronised when every row it holds is a queued insert (an empty
table too). Fetching a table the node did synchronise is harmless (its rows
are written again as the server has them, under the same rules), so the
guess only costs a request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .. import signals
from ..errors import NotFoundError
from ..tracking import INSERT, TrackedTable
from . import pull as _pull
from . import query as _query
from . import schema as _schema
from .merge import PulledTable
from .queue import LocalQueue
from .state import State, record_synced
from .tables import NODE_LOG

if TYPE_CHECKING:
    from .client import SyncClient
    from .conflicts import Conflict

_log = logging.getLogger("flask_reflectsync.client")


def never_synced(client: SyncClient, state: State) -> list[str]:
    """The node's tracked tables it has never synchronised, parents first
    (none while the node has never pulled: its first pull brings all)."""
    if not state.has_synced:
        return []
    names = [n for n in client.schema.tables if n not in client._not_on_server]
    if state.synced_tables is not None:
        return [n for n in names if n not in state.synced_tables]
    with client.engine.connect() as connection:
        queue = LocalQueue(connection, NODE_LOG)
        return [
            n
            for n in names
            if _only_queued_inserts(connection, client.schema.tables[n], queue)
        ]


def _only_queued_inserts(
    connection: sa.Connection, info: TrackedTable, queue: LocalQueue
) -> bool:
    """Whether every row of the table is one the node inserted and has not
    pushed (so none came from the server)."""
    inserted = {
        key for (table, key), command in queue.commands.items()
        if table == info.name and command == INSERT
    }
    keys = connection.execute(
        sa.select(*info.pk_columns).limit(len(inserted) + 1)
    ).all()
    return len(keys) <= len(inserted) and all(
        info.encode_key(tuple(k)) in inserted for k in keys
    )


def catch_up(client: SyncClient, state: State) -> list[Conflict]:
    """Fetch and merge the server's rows of the tables the node has never
    synchronised, recording them as synchronised; a no-op when there are
    none. Run with the client's lock held and no push in flight.

    :return: the conflicts the merge resolved (re-keyed local inserts).
    """
    names = never_synced(client, state)
    if not names:
        if state.has_synced and state.synced_tables is None:
            # A file of an earlier release with nothing to fetch.
            with client._begin() as connection:
                record_synced(connection, client.schema.tables)
        return []
    parts: list[PulledTable] = []
    fetched: list[str] = []
    for name in names:
        info = client.schema.tables[name]
        try:
            rows = list(_query.server_rows(client, info, {}))
        except NotFoundError as error:
            if error.code != "query.unknown_model":
                raise
            # A table the server does not synchronise (yet): asked again by
            # the next client, never recorded as synchronised.
            client._not_on_server.add(name)
            continue
        fetched.append(name)
        if rows:
            parts.append(_as_inserts(info, rows))
    done = set(client.schema.tables) - set(names) | set(fetched)
    result = _pull.merge(
        client, parts, state.last_version, state.pull_cursor, synced=done
    )
    for conflict in result.conflicts:
        signals.conflict_resolved.send(client, conflict=conflict)
    for part in parts:
        _log.info(
            "Fetched the server's %d row(s) of %s, a table this node had never "
            "synchronised.",
            len(part),
            part.table,
        )
    return result.conflicts


def postponed(error: Exception) -> None:
    """Log a catch-up a push could not make (the node cannot store the
    server's rows): the push goes on, the next pull raises it."""
    _log.warning(
        "The server's rows of a table this node never synchronised cannot "
        "be stored here (%s); the queue is pushed, the table waits.",
        error,
    )


def _as_inserts(info: TrackedTable, rows: list[dict[str, Any]]) -> PulledTable:
    """The server's rows of a table as a pulled page's inserts (checked as
    a page is: the node refuses rows it could not store)."""
    columns = [c.name for c in info.synced_columns if c.name in rows[0]]
    values = [[row.get(c) for row in rows] for c in columns]
    commands = INSERT * len(rows)
    _schema.check_page(info, columns, values, commands, None)
    return PulledTable(info.name, columns, values, commands, [])
