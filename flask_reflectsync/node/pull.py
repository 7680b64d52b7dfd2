"""The node's pull: pages asked for and merged one local transaction each,
never holding the node's write lock while waiting for the server; a node
that never pulled bootstrapped from a repair when the server trimmed its
log.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import signals
from ..errors import GoneError, ProtocolMismatchError, UniqueConstraintError
from ..tracking import DELETE, UPDATE, TrackedTable
from ..wire.codec import DECODE_ERRORS, stores_time_zones, synced_codecs
from ..wire.messages import PROTOCOL_VERSION
from ..wire.page import decode_columns
from . import catch_up as _catch_up
from . import keys as _keys
from . import push as _push
from . import query as _query
from . import schema as _schema
from . import set_aside as _set_aside
from .conflicts import Conflict, RememberedResolutions
from .evict import decode_evictions, evict
from .merge import MergeResult, PulledTable, merge_page, rekey_unseen
from .queue import LocalQueue
from .results import PullProgress, PullResult
from .state import State, record_synced
from .tables import NODE_KEYS, NODE_LOG

if TYPE_CHECKING:
    from .client import SyncClient


#: How many times a page's merge may start again for rows from the server
#: before it fetches them inside its transaction.
_MERGE_ROUNDS = 20


def pull(
    client: SyncClient,
    progress: Callable[[int, int], Any] | None = None,
    *,
    on_page: Callable[[PullProgress], Any] | None = None,
) -> PullResult:
    """What :meth:`SyncClient.pull` does."""
    with client._lock:
        client._registered()
        _schema.check_local(client)
        _push.settle_push(client)
        # Tables the node never synchronised get the server's rows first:
        # the pages below start past them.
        conflicts: list[Conflict] = _catch_up.catch_up(client, client._state())
        state = client._state()
        synced = [n for n in client.schema.tables if n not in client._not_on_server]
        since = state.last_version
        # A pull cut off inside a version resumes where it stopped.
        cursor = state.pull_cursor
        count = done = 0
        total: int | None = None
        version = since
        first = True
        removed = [0]  # rows evicted (see evict.py)
        unserved: dict[str, list[str]] = {}
        moving = 0
        while True:
            message: dict[str, Any] = {
                "protocol": PROTOCOL_VERSION,
                "since": since,
            }
            if cursor is not None:
                message["cursor"] = cursor
            if client.page_size is not None:
                message["limit"] = client.page_size
            wanted = _keys.blocks_wanted(client) if first else []
            if wanted:
                message["keys"] = wanted
            try:
                page = _schema.sending(
                    client, functools.partial(_ask_page, client, message)
                )
            except GoneError as error:
                if error.code == SHARE_CHANGED and first and nothing_queued(client):
                    # Served under another principal or other rules: the
                    # node's share is copied again (it loses nothing).
                    return bootstrap(client, progress, on_page)
                if not first or not never_pulled(client, state):
                    raise
                return bootstrap(client, progress, on_page)
            first = False
            if isinstance(page.get("unserved"), dict):
                unserved.update(_schema.note_unserved(client, page["unserved"]))
            if page.get("keys"):
                _keys.store_blocks(client, page["keys"])
            changes = decode_page(client, page)
            evictions = decode_evictions(client, page)
            result = merge(
                client,
                changes,
                page["until"],
                page["cursor"],
                evictions,
                removed,
                synced=synced,
            )
            for conflict in result.conflicts:
                signals.conflict_resolved.send(client, conflict=conflict)
            conflicts += result.conflicts
            count += sum(len(part) for part in changes)
            version = page["until"]
            cursor = page["cursor"]
            if type(page.get("total")) is int and total is None:
                total = page["total"]
            operations = page.get("operations")
            if type(operations) is not int:  # an older server: rows
                operations = sum(len(part) for part in changes)
            done += operations
            if progress is not None:
                progress(version, int(page.get("version", version)))
            if on_page is not None:
                server_version = int(page.get("version", version))
                on_page(PullProgress(version, server_version, done, total))
            if cursor is None and page.get("moving") is True and moving < _MOVING_PAGES:
                # The node's principal changed: it is brought up to date
                # under the old one, then moved to its new share.
                moving += 1
                since = version
                continue
            if cursor is None:
                return PullResult(
                    version, count, conflicts, evicted=removed[0], unserved=unserved
                )


def _ask_page(
    client: SyncClient, message: dict[str, Any], fields: dict[str, Any]
) -> dict[str, Any]:
    """One ``POST /pull`` of ``message`` with the schema ``fields``."""
    return client._call("POST", "/pull", message={**message, **fields})


#: How many pages answered "moving" one pull follows (the server's writes
#: may keep the node from being current for a while; the next pull goes on).
_MOVING_PAGES = 100

#: The code of a pull refused because the node's share changed.
SHARE_CHANGED = "pull.share_changed"


def nothing_queued(client: SyncClient) -> bool:
    """Whether the node has nothing to push (repairing it loses nothing)."""
    return client._state().push_id is None and client.pending_operations() == 0


def never_pulled(client: SyncClient, state: State) -> bool:
    """Whether repairing this node loses nothing: it has never pulled
    (nor started to), and has nothing to push."""
    return (
        state.last_version == 0
        and state.pull_cursor is None
        and state.push_id is None
        and client.pending_operations() == 0
    )


def bootstrap(
    client: SyncClient,
    progress: Callable[[int, int], Any] | None,
    on_page: Callable[[PullProgress], Any] | None,
) -> PullResult:
    copied = client.repair()
    pulled = client.pull(progress, on_page=on_page)
    return PullResult(
        pulled.version, pulled.operations, pulled.conflicts, repaired=copied
    )


def merge(
    client: SyncClient,
    changes: list[PulledTable],
    until: int,
    cursor: str | None,
    evictions: Mapping[str, list[tuple[Any, ...]]] | None = None,
    removed: list[int] | None = None,
    *,
    synced: Collection[str] = (),
) -> MergeResult:
    """Merge one page in one local transaction, never holding the node's
    write lock while waiting for the server.

    When the merge needs rows from the server (to settle a conflict), the
    transaction is rolled back, the rows are fetched with no lock held,
    and the merge starts again from the queue as it is then: a local
    write made meanwhile is part of the decision, never overwritten by a
    plan made without it. Each round fetches rows the earlier ones did
    not, so it ends; past ``_MERGE_ROUNDS`` the rows are fetched in the
    transaction, as a last resort.

    :param synced: tables to record as synchronised with the page (see
        :mod:`.catch_up`).
    """
    fetched: dict[str, dict[tuple[Any, ...], dict[str, Any] | None]] = {}
    resolutions = RememberedResolutions(client.resolutions)
    for round_ in range(1, _MERGE_ROUNDS + 1):
        fetch = functools.partial(fetch_known, client, fetched, round_ == _MERGE_ROUNDS)
        try:
            with client._begin() as connection:
                gone = evict(connection, client, evictions) if evictions else 0
                result = merge_page(
                    connection,
                    client.schema,
                    NODE_LOG,
                    changes,
                    resolutions,
                    fetch,
                    NODE_KEYS,
                    _keys.reserved_keys if client.key_blocks else None,
                )
                client._set_state(connection, last_version=until, pull_cursor=cursor)
                if synced:
                    record_synced(connection, synced)
            if removed is not None:
                removed[0] += gone
            return result
        except _NeedRows as need:
            found = _query.fetch(client, need.table, need.keys)
            known = fetched.setdefault(need.table, {})
            known.update({k: found.get(k) for k in need.keys})
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_known(
    client: SyncClient,
    fetched: dict[str, dict[tuple[Any, ...], dict[str, Any] | None]],
    last: bool,
    table: str,
    keys: Sequence[tuple[Any, ...]],
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The merge's fetcher: server rows already fetched, or
    :class:`_NeedRows` for the others (on the ``last`` round: fetched
    there and then)."""
    known = fetched.setdefault(table, {})
    missing = [k for k in keys if k not in known]
    if missing and not last:
        raise _NeedRows(table, missing)
    if missing:
        found = _query.fetch(client, table, missing)
        known.update({k: found.get(k) for k in missing})
    return {k: row for k in keys if (row := known[k]) is not None}


def decode_page(client: SyncClient, page: Mapping[str, Any]) -> list[PulledTable]:
    schema = client.schema
    aware = stores_time_zones(client.engine.dialect)
    parts = []
    if not isinstance(page.get("changes"), dict):
        raise ProtocolMismatchError(
            "The server answered a pull without its changes by table: it "
            "runs another version of flask-reflectsync than this node; "
            "upgrade both to the same release."
        )
    for name, wire in page["changes"].items():
        info = schema.tables.get(name)
        if info is None:
            continue  # a table this node does not synchronise
        codecs_ = synced_codecs(info, aware_storage=aware)
        commands = wire["commands"]
        try:
            _schema.check_page(
                info, wire["columns"], wire["values"], commands, wire.get("changed")
            )
        except (KeyError, TypeError, IndexError):
            pass  # malformed: the decoding below says so
        try:
            columns, values = decode_columns(codecs_, wire, len(commands))
            pk = [codecs_[c.name] for c in info.pk_columns]
            deleted = decode_columns(
                {c.name: c for c in pk},
                {"columns": [c.name for c in pk], "values": wire["deleted"]},
                len(wire["deleted"][0]),
            )[1]
        except (*DECODE_ERRORS, KeyError, IndexError):
            raise ProtocolMismatchError(
                f"The server sent changes of {name} that do not fit the "
                "node's table; the server and node schemas differ."
            ) from None
        if commands and any(c.name not in columns for c in info.pk_columns):
            raise ProtocolMismatchError(
                f"The server sent rows of {name} without their keys; the "
                "server and node versions differ."
            )
        keys = list(zip(*deleted, strict=True))
        changed = _changed_columns(name, wire, len(commands))
        parts.append(PulledTable(name, columns, values, commands, keys, changed))
    return parts


def _changed_columns(
    name: str, wire: Mapping[str, Any], count: int
) -> list[frozenset[str] | None] | None:
    """A pulled table's ``changed`` marks as column sets, one per written
    row (``None``: the whole row), or ``None`` when every row is whole."""
    marks = wire.get("changed")
    if marks is None:
        return None
    sent = wire["columns"]
    try:
        if len(marks) != count:
            raise IndexError
        return [
            None if mark is None else frozenset(sent[p] for p in mark)
            for mark in marks
        ]
    except (IndexError, TypeError):
        raise ProtocolMismatchError(
            f"The server marked changed columns of {name} that do not match "
            "its rows; the server and node versions differ."
        ) from None


def _refusal_holders(
    client: SyncClient, error: UniqueConstraintError
) -> Iterator[tuple[tuple[str, str], TrackedTable, tuple[Any, ...], str | None]]:
    """For each row a unique refusal names: its ident (``(table, wire key
    as JSON)``, as :meth:`SyncClient._unique_refusals` gives it), its table,
    the holder's typed key and the node's queued command for the holder."""
    with client.engine.connect() as connection:
        queue = LocalQueue(connection, NODE_LOG)
    for entry in error.conflicts:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), list):
            continue
        info = client.schema.tables.get(str(entry.get("table")))
        holder = entry.get("existing_key")
        if info is None or not isinstance(holder, list):
            continue
        key = _set_aside.typed_key(client, info, holder)
        if key is not None:
            ident = (info.name, json.dumps(entry["key"]))
            yield ident, info, key, queue.get(info.name, info.encode_key(key))


def bring_holders(
    client: SyncClient, error: UniqueConstraintError, rows: set[tuple[str, str]]
) -> PullResult | None:
    """Merge the server rows that hold the unique values the push of
    ``rows`` was refused for (``existing_key`` of each entry), so the node's
    own unique-conflict rules decide; sends ``conflict_resolved`` for what
    that merge resolved.

    A holder the node has a queued change for is left alone: its copy is not
    a change of the server's, and merged as one it would overrule the node's
    own change (a queued delete lost to a "server update" that never was).

    :return: the merge's result, or ``None`` if nothing was merged.
    """
    state = client._state()
    parts: list[PulledTable] = []
    for ident, info, key, queued in _refusal_holders(client, error):
        if ident not in rows or queued is not None:
            continue
        found = _query.fetch(client, info.name, [key]).get(key)
        if found is not None:
            columns = list(found)
            values = [[found[c]] for c in columns]
            parts.append(PulledTable(info.name, columns, values, UPDATE, []))
    if not parts:
        return None
    result = merge(client, parts, state.last_version, state.pull_cursor)
    for conflict in result.conflicts:
        signals.conflict_resolved.send(client, conflict=conflict)
    return PullResult(state.last_version, sum(len(p) for p in parts), result.conflicts)


def rekey_unseen_holders(
    client: SyncClient, error: UniqueConstraintError, rows: set[tuple[str, str]]
) -> tuple[set[tuple[str, str]], PullResult | None]:
    """Re-key the node's inserts among ``rows`` that the server refused
    because their primary key holds a row the node cannot see (see
    :func:`~flask_reflectsync.node.merge.rekey_unseen`): refused twice
    with a pull in between, the holder is not in the node's share (a holder
    it could see would have been merged, and the row re-keyed, by that
    pull). Sends ``conflict_resolved`` for each.

    :return: the refused rows (as in ``rows``) that were re-keyed, and a
        result holding their conflicts (``None`` if none was).
    """
    wanted: dict[tuple[str, tuple[Any, ...]], tuple[str, str]] = {}
    for ident, info, key, _ in _refusal_holders(client, error):
        if ident not in rows:
            continue
        # The holder is the row's own key: the primary key collides (which
        # rows are still queued inserts is read again in the transaction).
        if _set_aside.typed_key(client, info, json.loads(ident[1])) == key:
            wanted[(info.name, key)] = ident
    if not wanted:
        return set(), None
    with client._begin() as connection:
        conflicts = rekey_unseen(
            connection,
            client.schema,
            NODE_LOG,
            list(wanted),
            NODE_KEYS,
            _keys.reserved_keys if client.key_blocks else None,
        )
    for conflict in conflicts:
        signals.conflict_resolved.send(client, conflict=conflict)
    if not conflicts:
        return set(), None
    done = {wanted[(c.table, c.key)] for c in conflicts}
    return done, PullResult(client._state().last_version, 0, conflicts)


def refused_by_own_givers(
    client: SyncClient, error: UniqueConstraintError
) -> set[tuple[str, str]]:
    """The refused rows (``(table, wire key as JSON)``) whose holder on the
    server is a row the node deletes in the same push: the value is free
    once the server can delete it (after the pull brings the child that
    stopped it). A holder the node only updates stays a refusal: values
    swapped between rows would be refused again forever."""
    return {
        ident
        for ident, _, _, queued in _refusal_holders(client, error)
        if queued == DELETE
    }


class _NeedRows(Exception):
    """Raised through a merge that needs server rows not fetched yet."""

    def __init__(self, table: str, keys: list[tuple[Any, ...]]) -> None:
        super().__init__(table, keys)
        self.table = table
        self.keys = keys
