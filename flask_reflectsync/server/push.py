"""Applying a node's push: validate everything, then write it in one transaction.

The order of work, and why:

1. The message is checked against the schema, then every table, column,
   key and value against the tracked models and what their column types
   can store, and inserted integer keys against the key space, before any
   write. A bad push leaves the database exactly as it was.
2. A push id already stored in ``reflectsync_versions.push_id`` is answered
   from there if its content digest matches: a retry after a lost answer
   applies nothing; other content under that id is refused.
3. PostgreSQL sequences are raised past the inserted keys, then rows are
   written through the app's session, one executemany per table and kind
   (inserts parents first, then updates, then deletes children first), so
   the tracking listeners log them into one new version that records the
   node, the push id and its digest.
4. The version counter row is locked, and only then the log is searched for
   versions the node has not seen that touched the same rows (see
   :func:`find_conflicts`). Taking the lock after the writes keeps the lock
   order of every other writer (rows first, counter at commit), so pushes do
   not deadlock with the app; holding it makes "check, then commit" atomic.

This module holds the handler, its retry loop, and the stored answers and
content digests of push ids. The steps live beside it, one idea a module:
:mod:`.push_decode` (step 1: decoding and checking the message),
:mod:`.push_apply` (step 3: sequences and the writes) and
:mod:`.push_conflicts` (step 4, the rulings on stale rows, dangling
references, and the explanation of a constraint violation). The
``name as name`` imports re-export what other code imported from here
before that split.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.orm.exc import StaleDataError

from ..errors import (
    ConfigurationError,
    PushIdReusedError,
    PushRejectedError,
    ServiceBusyError,
    ValidationError,
)
from ..rows import built_once
from ..tracking import LogTables
from ..tracking.capture import (
    VERSION_ROW_VALUES,
    ensure_version,
    has_logged_writes,
    lock_numbering,
    logs_itself,
    number_now,
)
from ..tracking.numbering import number_versions
from ..tracking.tables import TRIMMED_ROW, VERSION_ROW
from ..wire.codec import stores_time_zones
from ..wire.messages import validate
from ..wire.schema import ColumnHistory
from .pull_scopes import Share
from .push_apply import _ADVANCE_SEQUENCE as _ADVANCE_SEQUENCE
from .push_apply import _advance_sequences, _apply, _find_restores
from .push_apply import existing_keys as existing_keys
from .push_apply import lock_sequence as lock_sequence
from .push_conflicts import (
    MAX_LISTED,
    _conflict_error,
    _explain_integrity_error,
    _rule_stale_rows,
    broken_references,
    find_conflicts,
)
from .push_conflicts import unique_violations as unique_violations
from .push_decode import KEY_BATCH as KEY_BATCH
from .push_decode import KEY_SPACE_RESERVE_SHIFT as KEY_SPACE_RESERVE_SHIFT
from .push_decode import PushedOperation as PushedOperation
from .push_decode import _decode, check_key_space
from .push_decode import column_fits as column_fits
from .push_decode import key_ceiling as key_ceiling
from .push_echo import (
    probed_triggers,
    record_database_changes,
    rewriting_tables,
    snapshot,
    trigger_probe,
)
from .schema import TrackedSchema
from .schema_check import check_push
from .stale import store_rulings, stored_rulings
from .trim import check_not_trimmed


@dataclass(frozen=True)
class PushOutcome:
    """What :func:`push` did.

    :param answer: ``{"push_id", "version", "operations"}``, the same for
        every retry of the push id.
    :param applied: whether this call wrote the push (``False`` for a retry
        of a push already applied, and for a push that changes nothing).
    """

    answer: dict[str, Any]
    applied: bool


def stored_push_id(node_id: int, push_id: str) -> str:
    """Push ids are chosen by nodes, so they are stored per node."""
    return f"{node_id}:{push_id}"


#: How many times a push that met a deadlock or lock timeout is tried in all
#: before the node is answered 503 (each try starts from nothing written).
BUSY_TRIES = 4


def push(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    message: Any,
    share: Share | None = None,
    history: Mapping[str, ColumnHistory] | None = None,
    *,
    parse_again: Callable[[], Any] | None = None,
) -> PushOutcome:
    """Apply one push atomically and exactly once.

    Unlike the other handlers, which leave commit to their caller, a push
    owns its transactions, and commits or rolls back ``session`` itself:

    - a deadlock or lock timeout (MariaDB picks a victim among concurrent
      pushes) rolls everything back; the push is then tried again here, in
      a new transaction, after a short random pause, up to
      :data:`BUSY_TRIES` times, so the node sees a 503 only when the
      database stays busy;
    - a constraint violation is explained after the rollback, from what
      other transactions committed meanwhile (the same push, retried
      concurrently, may have won);
    - each try must run under ``READ COMMITTED``, which is set when its
      connection is procured, so no transaction may be open when it starts.

    A caller's pending work cannot survive any of this, so it is refused
    rather than committed or lost along with the push.

    :param session: the app's tracked session. A transaction that only read
        is ended first; one with writes (pending objects, or logged
        operations) is refused.
    :param share: the node's share (see :mod:`.scopes`): a push writing
        outside it is refused whole
        (:class:`~flask_reflectsync.errors.ScopeDeniedError`).
    :param history: the earlier names of the server's columns (PostgreSQL,
        :func:`.column_names.column_history`): a refused row's reason says
        the column was renamed (to which) or dropped.
    :param parse_again: how to parse the request body again. Given, the
        message is this call's to take apart: its rows and operations are
        dropped as they are decoded, so a large push is not held in memory
        twice, and a try after a busy database parses the body again.
    :raises ConfigurationError: if the session's transaction holds writes.
    """
    _check_no_writes(session)
    consume = parse_again is not None
    for attempt in range(1, BUSY_TRIES + 1):
        try:
            return _push_once(
                session, tables, schema, node_id, message, share, history, consume
            )
        except ServiceBusyError:
            if attempt == BUSY_TRIES:
                raise
            time.sleep(random.uniform(0.01, 0.05) * attempt)
            if parse_again is not None:
                message = parse_again()
    raise AssertionError("unreachable")  # pragma: no cover


def _check_no_writes(given: Session) -> None:
    session = given() if isinstance(given, scoped_session) else given
    if not session.in_transaction():
        return
    if session.new or session.dirty or session.deleted or has_logged_writes(session):
        raise ConfigurationError(
            "push() commits or rolls back its own transaction, and the "
            "session it was given holds uncommitted writes: commit or roll "
            "them back before applying a push."
        )
    session.rollback()  # it only read: ending it loses nothing


def _push_once(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    message: Any,
    share: Share | None = None,
    history: Mapping[str, ColumnHistory] | None = None,
    consume: bool = False,
) -> PushOutcome:
    """One try of :func:`push`.

    :param session: the app's tracked session, with no transaction begun.
    :param tables: the log tables.
    :param schema: the tracked tables the server accepts.
    :param node_id: the authenticated node.
    :param message: the decoded request body.
    :return: the answer and whether this call applied the push.
    :raises ValidationError: (4xx) for a malformed push; nothing written.
    :raises PushRejectedError: (409) for a conflict or a constraint
        violation; nothing written.
    """
    request = validate(message, "PushRequest")
    push_id: str = request["push_id"]
    stored = stored_push_id(node_id, push_id)
    digest = content_digest(request)
    bind = session.get_bind(clause=tables.versions)
    if request.get("resolutions"):
        # Versions the app committed so far get their numbers, for the
        # rulings on stale rows to see them (see tracking.numbering); if a
        # numberer is at work, _lock_counter numbers them later. Before this
        # session takes its connection: the numbering takes one of its own
        # from the pool. A push without strategies has no rulings: the
        # conflict scan, under the counter lock, sees every version
        # numbered, and this statement is saved.
        number_versions(bind, tables, wait=False)
    dialect = bind.dialect
    if dialect.name != "sqlite":
        # Later reads must see what other transactions committed meanwhile,
        # in particular after the counter lock (MySQL defaults to snapshots).
        session.connection(
            bind_arguments={"clause": tables.versions},
            execution_options={"isolation_level": "READ COMMITTED"},
        )
    # One statement: the push id's stored version (a retry), the counter
    # and, on PostgreSQL, which tracked tables have triggers (push_echo).
    tracked = tuple(info.table for info in schema.tables.values())
    first = _first_look(session, tables, stored, tracked)
    answer = _stored_answer(session, tables, first.stored, push_id, digest)
    if answer is not None:
        session.rollback()
        return PushOutcome(answer, applied=False)

    try:
        check_push(request, schema, history)
    except BaseException:
        session.rollback()
        raise
    changes = _decode(
        request, schema, aware=stores_time_zones(dialect), consume=consume
    )
    check_key_space(changes)
    last_version: int = request["last_version"]
    strategies: Mapping[str, str] = request.get("resolutions") or {}
    if not any(c.inserts or c.updates or c.deletes for c in changes.values()):
        session.rollback()
        return PushOutcome(
            {"push_id": push_id, "version": None, "operations": 0}, applied=False
        )

    try:
        _check_version(session, tables, last_version, first)
        if share is not None:
            share.check_push(session, changes, written=False)
        _find_restores(session, changes)
        ruled, resolved = _rule_stale_rows(
            session, tables, changes, node_id, last_version, strategies, first.current
        )
        session.info[VERSION_ROW_VALUES] = {
            "node_id": node_id,
            "push_id": stored,
            "push_digest": digest,
        }
        # Logged here, with its node: capture triggers stand down.
        logs_itself(session)
        # What the database may change in the written rows: see push_echo.
        triggered = probed_triggers(first.row, tracked)
        rewriting = rewriting_tables(session, changes, triggered)
        before = snapshot(session, changes, rewriting)
        # Before the rows are written: see _advance_sequences.
        _advance_sequences(session, changes)
        _apply(session, schema, changes)
        record_database_changes(session, changes, rewriting, before)
        if share is not None:
            share.check_push(session, changes, written=True)
        # Recorded even when its operations changed nothing (deletes of rows
        # already gone): the push id must stay, for retries to be answered,
        # with the same rulings.
        version_id = ensure_version(session)
        store_rulings(session, tables, version_id, resolved)
        newest = _lock_counter(session, tables)
        # One scan: the pushed rows, and the parents they point at.
        conflicts = find_conflicts(
            session, tables, changes, node_id, last_version, ruled, schema, newest
        )
        if conflicts:
            raise _conflict_error(conflicts)
        broken = broken_references(session, schema, changes)
        if broken:
            raise PushRejectedError(
                f"The push leaves {len(broken)} row(s) pointing at rows the "
                "server does not have (a parent deleted on one side while "
                "referenced on the other); pull, merge and push again.",
                broken[:MAX_LISTED],
                code="push.broken_reference",
            )
        # Numbered under the counter lock, in the statement that counts the
        # operations for the answer (PostgreSQL), rather than at commit.
        number, count = number_now(session)
        session.commit()
    except (sa.exc.IntegrityError, StaleDataError) as error:
        session.rollback()
        answer = _answer_for(session, tables, stored, push_id, digest)
        if answer is not None:  # the same push, retried concurrently, won
            session.rollback()
            return PushOutcome(answer, applied=False)
        raise _explain_integrity_error(
            session, tables, changes, node_id, last_version, error
        ) from None
    except sa.exc.OperationalError:
        session.rollback()
        raise ServiceBusyError(
            "The database is busy (lock timeout or deadlock); nothing was "
            "written. Send the same push again."
        ) from None
    except BaseException:
        session.rollback()
        raise
    finally:
        session.info.pop(VERSION_ROW_VALUES, None)

    applied: dict[str, Any] = {
        "push_id": push_id,
        "version": number,
        "operations": count,
    }
    if resolved:
        applied["resolved"] = resolved
    return PushOutcome(applied, applied=True)


def content_digest(request: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a push's operations, payloads and patches in canonical JSON
    (sorted keys, no spaces): what a retry of the push id must repeat. The
    protocol version, push id and ``last_version`` are left out.

    The canonical text of a large push is hashed in pieces
    (:func:`_canonical_pieces`) rather than built whole, which would be a
    second copy of the body in memory; a small one in one piece, at C speed.
    The digest is the same, so pushes stored by earlier releases are still
    recognised."""
    content: list[Any] = [request["operations"], request.get("payloads") or {}]
    if request.get("patches"):
        content.append(request["patches"])
    digest = hashlib.sha256()
    pieces = _canonical_pieces(content) if _large(request) else [_canonical(content)]
    for piece in pieces:
        digest.update(piece.encode("ascii"))
    return digest.hexdigest()


def _large(request: Mapping[str, Any]) -> bool:
    """Whether a push message has a list of operations, or a block of rows
    (``payloads``, ``patches``), longer than :data:`_DIGEST_CHUNK`."""
    blocks = list((request.get("payloads") or {}).values())
    for table_blocks in (request.get("patches") or {}).values():
        blocks += table_blocks if isinstance(table_blocks, list) else ()
    rows = [b.get("rows") for b in blocks if isinstance(b, dict)]
    lengths = [len(request["operations"])]
    lengths += [len(r) for r in rows if isinstance(r, list)]
    return max(lengths) > _DIGEST_CHUNK


#: The most list items :func:`_canonical_pieces` encodes in one piece.
_DIGEST_CHUNK = 2000
#: Lists of at most this many items are encoded item by item.
_FEW = 16


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _canonical_pieces(value: Any) -> Iterator[str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))`` in
    pieces whose concatenation is exactly that text: long lists a slice at a
    time, objects and lists of a few items item by item, the rest whole (at
    C speed)."""
    if isinstance(value, list) and len(value) > _DIGEST_CHUNK:
        yield "["
        for start in range(0, len(value), _DIGEST_CHUNK):
            if start:
                yield ","
            # A slice's text without its brackets: its items, comma-separated.
            yield _canonical(value[start : start + _DIGEST_CHUNK])[1:-1]
        yield "]"
    elif isinstance(value, list) and len(value) <= _FEW:
        # A few large items (the content, a table's blocks of patches).
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ","
            yield from _canonical_pieces(item)
        yield "]"
    elif isinstance(value, dict):
        yield "{"
        for index, name in enumerate(sorted(value)):
            if index:
                yield ","
            yield _canonical(name)
            yield ":"
            yield from _canonical_pieces(value[name])
        yield "}"
    else:
        yield _canonical(value)


@dataclass(frozen=True)
class _FirstLook:
    """What a push reads before anything else, in one statement.

    :param stored: the version row stored under the push id (``id``,
        ``number``, ``push_digest``), or ``None``.
    :param current: the latest committed version.
    :param trimmed: the version the log is trimmed through.
    :param row: the whole row (with the trigger probe's columns on
        PostgreSQL).
    """

    stored: Any
    current: int
    trimmed: int
    row: Any = None


def _first_look(
    session: Session,
    tables: LogTables,
    stored: str,
    triggers_of: Sequence[sa.Table] = (),
) -> _FirstLook:
    """The push id's stored version row and the two counter rows, in one
    round trip (a left join from a one-row table, so the counters come back
    whether or not the id is stored), with, on PostgreSQL, which of
    ``triggers_of`` have triggers (:func:`.push_echo.trigger_probe`; read
    them from :attr:`_FirstLook.row`). The statement is built once per
    process and set of tables."""
    versions, counter = tables.versions, tables.counter
    connection = session.connection(bind_arguments={"clause": versions})
    dialect = connection.dialect
    probed = tuple(triggers_of)

    def build() -> sa.Select[Any]:
        def value(row: int) -> sa.ScalarSelect[Any]:
            return (
                sa.select(counter.c.value).where(counter.c.id == row).scalar_subquery()
            )

        found = (
            sa.select(versions.c.id, versions.c.number, versions.c.push_digest)
            .where(versions.c.push_id == sa.bindparam("stored"))
            .subquery()
        )
        one = sa.select(sa.literal(1).label("one")).subquery()
        return sa.select(
            value(VERSION_ROW).label("current"),
            value(TRIMMED_ROW).label("trimmed"),
            found.c.id,
            found.c.number,
            found.c.push_digest,
            *(trigger_probe(dialect, probed) or ()),
        ).select_from(one.outerjoin(found, sa.true()))

    key = ("first look", counter, dialect.name, probed)
    statement = built_once(versions, key, build)
    row = connection.execute(statement, {"stored": stored}).one()
    return _FirstLook(
        stored=row if row.id is not None else None,
        current=int(row.current or 0),
        trimmed=int(row.trimmed or 0),
        row=row,
    )


def _answer_for(
    session: Session, tables: LogTables, stored: str, push_id: str, digest: str
) -> dict[str, Any] | None:
    """The answer already given to this push id, or ``None``.

    :raises PushIdReusedError: if the id was applied with other content
        (versions from before digests were stored match any content).
    """
    versions = tables.versions
    row = session.execute(
        sa.select(versions.c.id, versions.c.number, versions.c.push_digest).where(
            versions.c.push_id == stored
        )
    ).first()
    return _stored_answer(session, tables, row, push_id, digest)


def _stored_answer(
    session: Session,
    tables: LogTables,
    row: Any,
    push_id: str,
    digest: str,
) -> dict[str, Any] | None:
    """The answer of the push stored as version ``row`` (``None``: none is).

    :raises PushIdReusedError: if the id was applied with other content
        (versions from before digests were stored match any content).
    """
    if row is None:
        return None
    if row.push_digest is not None and row.push_digest != digest:
        session.rollback()
        raise PushIdReusedError(
            f"Push id {push_id!r} was already applied (version {row.number}) "
            "with other operations or rows; a retry must send exactly what "
            "the first attempt sent, and new changes need a new push id.",
            push_id=push_id,
        )
    operations = tables.operations
    count = session.execute(
        sa.select(sa.func.count())
        .select_from(operations)
        .where(operations.c.version_id == row.id)
    ).scalar()
    answer: dict[str, Any] = {
        "push_id": push_id,
        "version": row.number,
        "operations": count,
    }
    resolved = stored_rulings(session, tables, row.id)
    if resolved:
        answer["resolved"] = resolved
    return answer


def _check_version(
    session: Session, tables: LogTables, last_version: int, first: _FirstLook
) -> None:
    # Conflicts are found in the log after last_version: it must still be there.
    check_not_trimmed(
        session, tables, last_version, "last pulled version", done=first.trimmed
    )
    if last_version > first.current:
        raise ValidationError(
            f"last_version {last_version} is newer than the server's latest "
            f"version {first.current}; the node must repair from this server."
        )


def _lock_counter(session: Session, tables: LogTables) -> int:
    # Numbers what committed meanwhile, so the conflict check sees it all;
    # returns the newest number.
    return lock_numbering(session)
