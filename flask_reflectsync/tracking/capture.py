"""Session listeners that write the operations log in the change's transaction.

How it works, and why:

* ``after_flush`` sees the flushed objects (``session.new``, ``dirty`` and
  ``deleted`` still hold their pre-flush state) and writes one operation per
  changed tracked row with a single executemany on the session's own
  connection. The operations therefore commit or roll back with the data,
  including a SAVEPOINT rollback.
* The first operation of a transaction also inserts its ``reflectsync_versions``
  row (in the same statement as the operations on PostgreSQL). On PostgreSQL
  and MySQL it commits un-numbered, and :mod:`.numbering` numbers committed
  versions later, so tracked writers never wait for each other's COMMIT.
  On SQLite (and in a transaction that holds the counter lock already, or
  is joined into a caller's transaction) its ``number`` is handed out in
  ``before_commit``, after a final flush, by incrementing the one-row
  counter table, whose row lock is held until COMMIT: version N+1 can only
  be handed out after N has committed. Either way readers see versions
  appear in order, without gaps.
* ``do_orm_execute`` captures bulk ``insert()``, ``update()`` and ``delete()``
  run through ``session.execute``, which bypass flush events.
* Link rows of ``secondary=`` relationships are written by the unit of
  work's dependency processor as plain-table statements, not as objects:
  for tracked plain tables (:ref:`association-tables`), ``before_flush``
  marks the session's connection and an ``after_execute`` listener on its
  engine records the keys of the ``INSERT``/``DELETE``/``UPDATE`` statements
  the flush runs on them; ``after_flush`` logs them with the objects'
  operations. Only statements of a flush count (a Core statement run
  through ``session.execute`` is logged by ``do_orm_execute``), so nothing
  is logged twice.
* ``after_soft_rollback`` forgets the transaction's version row when the
  savepoint or transaction that created it is rolled back.

Listeners are module-level functions registered on one sessionmaker (or
scoped session, or Session subclass), never on the global ``Session`` class.

The module stays above the layout's ~500 lines on purpose: the listeners
share one transaction's state (:class:`_TransactionLog`, the keys in
``session.info``), and their order across flush, commit and rollback is
what keeps the log exact; split apart, that order could not be read in one
place.
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import (
    InstanceState,
    ORMExecuteState,
    Session,
    SessionTransaction,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.base import NO_VALUE, instance_state

from ..errors import ConfigurationError, TrackingError
from ..rows import key_filter
from .columns import encode_columns
from .numbering import (
    feed_channel,
    lock_and_number,
    notify_numbered,
    number_soon,
    numbered_after_commit,
)
from .registry import (
    TrackedTable,
    plain_tracked,
    tracked_plain_tables,
    tracked_table_by_table,
    tracked_table_for,
)
from .tables import DELETE, INSERT, NO_ROW, UPDATE, VERSION_ROW, LogTables
from .triggers import captured_tables, stand_down
from .writer import insert_operations, insert_version

#: Key in ``session.info`` under which a caller may put extra column values
#: for the transaction's ``reflectsync_versions`` row (the sync server puts the
#: pushing node and push id there).
VERSION_ROW_VALUES = "reflectsync.version_row_values"

_TX_KEY = "reflectsync.tx"
_ORIGINALS_KEY = "reflectsync.originals"
_TAGS_KEY = "reflectsync.tags_before"
_COMMITTING_KEY = "reflectsync.committing"
_LOCKED_KEY = "reflectsync.counter_locked"
_LINKS_KEY = "reflectsync.links"
#: Set when a flush left operations to capture triggers: on SQLite their
#: version is numbered at commit (see _before_commit).
_TRIGGERED_KEY = "reflectsync.triggered"
#: Key in a connection's ``info``: a weak reference to the session whose
#: flush runs on it (see :func:`_after_execute`).
_FLUSHING_KEY = "reflectsync.flushing_session"

# Engines the link-row listener is installed on (weak: test engines go away).
_link_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


#: What an :class:`OperationLog` calls to keep the replaced values of
#: updates: ``keep(connection, version_id, [(info, key, {column: value})])``.
BaseKeeper = Callable[
    [sa.Connection, int, list[tuple["TrackedTable", tuple[Any, ...], dict[str, Any]]]],
    None,
]


@dataclass
class OperationLog:
    """Where and how one set of sessions logs operations.

    :param tables: the log tables (see :func:`~.tables.define_tables`).
    :param assign_versions: number each committed transaction (the server).
        A node leaves its versions unnumbered: they are its push queue.
    :param keep_bases: a node's: called after a flush logged updates, with
        the session's connection, the version row's id and, per updated
        row, its table, key and the values its changed columns had before
        (see :doc:`/conflicts`). ``None`` (the server): nothing is kept,
        nothing costs.
    """

    tables: LogTables
    assign_versions: bool = True
    keep_bases: BaseKeeper | None = None
    #: The server's share tags (see :mod:`flask_reflectsync.server.scopes`):
    #: for a tracked table, how to read its rows' tags by key, or ``None``
    #: when the table's operations carry none.
    tags: Callable[[TrackedTable], TagReader | None] | None = None
    #: For a routed table whose tag is one of its own mapped columns: that
    #: attribute and how to tag an object's value of it (see
    #: :data:`ObjectTagger`), so a flush tags its objects without reading
    #: them back; ``None``: every tag is read from the database.
    object_tags: Callable[[TrackedTable], ObjectTagger | None] | None = None
    #: ``REFLECTSYNC_CAPTURE = "triggers"`` (PostgreSQL): the operations of
    #: tables whose capture triggers are installed are left to them (see
    #: :mod:`.triggers`), except in a transaction that logs itself (one
    #: with :data:`VERSION_ROW_VALUES`: a push), where the triggers stand
    #: down instead.
    database_capture: bool = False


#: Reads the share tags of rows by logged key text (the tags of rows not
#: found are left out).
TagReader = Callable[[sa.Connection, Sequence[str]], Mapping[str, str]]

#: The mapped attribute holding a routed table's tag value, and the tag of a
#: value of it as the database would store it, or ``None`` when the value
#: may not be stored as it is (a type the column converts): read back then.
ObjectTagger = tuple[str, Callable[[Any], "str | None"]]


@dataclass
class _TransactionLog:
    """Per-transaction state kept in ``session.info``."""

    # The savepoint or root transaction whose rollback undoes the version row.
    owner: SessionTransaction
    version_id: int
    numbered: bool = False
    checked_binds: set[Any] = field(default_factory=set)
    # Numbered in before_commit (SQLite; or the transaction holds the
    # counter lock), rather than after commit (see .numbering).
    at_commit: bool = True
    # Once numbered at commit: the number, and (when asked, number_now) how
    # many operations the version holds.
    number: int | None = None
    operation_count: int | None = None
    # Numbered after commit by this engine's numbering thread (PostgreSQL),
    # which the commit pokes: found once, with the version row.
    soon: tuple[sa.Engine, LogTables] | None = None


@dataclass
class _Batch:
    """Operations ready for the driver, and the tracked tables they touch."""

    # Parallel lists of strings rather than a list of tuples: strings are not
    # tracked by the garbage collector (see _collect_inserts).
    names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    tables: set[TrackedTable] = field(default_factory=set)
    # The changed columns of updates, by position in the lists above (see
    # tracking.columns): sparse, so inserts cost nothing here.
    changed: dict[int, str] = field(default_factory=dict)
    # The share tags rows had before a bulk statement changed them, by
    # (table name, key) (server with scopes only; see OperationLog.tags).
    tags_before: dict[tuple[str, str], str] = field(default_factory=dict)
    # The share tags rows have after the flush, taken from the flushed
    # objects, by position in the lists above (see OperationLog.object_tags).
    tags_after: dict[int, str] = field(default_factory=dict)
    # Updates' replaced values, for a log that keeps them (a node's).
    originals: list[tuple[TrackedTable, tuple[Any, ...], dict[str, Any]]] = field(
        default_factory=list
    )

    def add(
        self,
        info: TrackedTable,
        key: tuple[Any, ...],
        command: str,
        columns: Iterable[str] | None = None,
    ) -> None:
        if columns is not None:
            self.changed[len(self.keys)] = encode_columns(columns)  # type: ignore[assignment]
        self.names.append(info.name)
        self.keys.append(info.encode_key(key))
        self.commands.append(command)
        self.tables.add(info)

    def extend(
        self,
        info: TrackedTable,
        keys: Iterable[tuple[Any, ...]],
        command: str,
        columns: Sequence[Iterable[str] | None] | Iterable[str] | None = None,
        by_server: bool = False,
    ) -> None:
        encoded = [info.encode_key(key) for key in keys]
        if columns is not None and command == UPDATE:
            start = len(self.keys)
            if isinstance(columns, (set, frozenset)):
                text = encode_columns(columns, by_server=by_server)
                assert text is not None
                self.changed.update((start + n, text) for n in range(len(encoded)))
            else:
                texts: dict[Any, str | None] = {}  # one encoding per set
                for n, names in enumerate(columns):
                    if names is None:
                        continue
                    if isinstance(names, frozenset):
                        if names not in texts:
                            texts[names] = encode_columns(names, by_server=by_server)
                        text = texts[names]
                    else:
                        text = encode_columns(names, by_server=by_server)
                    if text is not None:
                        self.changed[start + n] = text
        self.keys.extend(encoded)
        self.names.extend([info.name] * len(encoded))
        self.commands.extend([command] * len(encoded))
        self.tables.add(info)

    def changed_columns(self) -> list[str | None] | None:
        """The changed columns of every operation, or ``None`` when no
        operation has any."""
        if not self.changed:
            return None
        changed = self.changed
        return [changed.get(n) for n in range(len(self.keys))]


#: A log, or a function that picks the log of a session (``None``: the
#: session's changes are not logged), as given to :func:`start_tracking`.
LogChoice = OperationLog | Callable[[Session], OperationLog | None]

_logs: weakref.WeakKeyDictionary[type[Session], LogChoice] = (
    weakref.WeakKeyDictionary()
)


def _session_class(target: Any) -> type[Session]:
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        target = target.class_
    if not (isinstance(target, type) and issubclass(target, Session)):
        raise ConfigurationError(
            f"Cannot track changes on {target!r}: pass a sessionmaker, a "
            "scoped_session or a Session subclass."
        )
    if target is Session:
        raise ConfigurationError(
            "Refusing to listen on the global Session class; pass the app's "
            "db.session or your own sessionmaker so listeners stay scoped."
        )
    return target


_LISTENERS = (
    ("before_flush", "_before_flush"),
    ("after_flush", "_after_flush"),
    ("before_commit", "_before_commit"),
    ("after_commit", "_after_commit"),
    ("after_soft_rollback", "_after_soft_rollback"),
    ("after_transaction_end", "_after_transaction_end"),
    ("do_orm_execute", "_do_orm_execute"),
)


def start_tracking(target: Any, log: LogChoice) -> None:
    """Log changes to tracked models made through ``target``'s sessions.

    Calling it again for the same target replaces the log and adds no
    listener twice.

    :param target: a :class:`~sqlalchemy.orm.sessionmaker`, a
        :class:`~sqlalchemy.orm.scoped_session` (such as ``db.session``) or a
        :class:`~sqlalchemy.orm.Session` subclass.
    :param log: where operations go; or a function called with each session
        that returns its log, or ``None`` to leave that session's changes
        unlogged (several Flask apps share one ``db.session``, and each
        decides for itself).
    """
    cls = _session_class(target)
    # Our own (weak) record decides, not event.contains(): the event registry
    # keys listeners by id(), and a new class can reuse a collected one's id.
    if cls not in _logs:
        for name, function in _LISTENERS:
            event.listen(cls, name, globals()[function])
    _logs[cls] = log


def stop_tracking(target: Any) -> None:
    """Remove the listeners :func:`start_tracking` installed on ``target``."""
    cls = _session_class(target)
    if _logs.pop(cls, None) is not None:
        for name, function in _LISTENERS:
            event.remove(cls, name, globals()[function])


def _log_for(session: Session) -> OperationLog | None:
    for klass in type(session).__mro__:
        choice = _logs.get(klass)
        if choice is not None:
            return choice if isinstance(choice, OperationLog) else choice(session)
    return None


# -- flush-time capture ---------------------------------------------------------


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    # A column set on an expired object records no original value, so the ORM
    # cannot tell whether it really changed. Read those originals now, one
    # query per model, so "an update that changes nothing logs nothing" holds
    # for them too. Objects whose attributes were loaded cost nothing here.
    session.info.pop(_ORIGINALS_KEY, None)  # left over by a failed flush
    session.info.pop(_TAGS_KEY, None)
    session.info.pop(_LINKS_KEY, None)
    log = _log_for(session)
    if log is None:
        return
    _watch_link_rows(session)
    if log.tags is not None:
        _read_tags_before(session, log)
    wanted: dict[TrackedTable, list[tuple[InstanceState[Any], list[str]]]] = {}
    for obj in session.dirty:
        state: InstanceState[Any] = sa.inspect(obj)
        if state.key is None:
            continue
        info = tracked_table_for(state.mapper)
        if info is None:
            continue
        column_keys = info.synced_attrs(state.mapper)
        unknown = [
            key
            for key, value in state.committed_state.items()
            if value is NO_VALUE and key in column_keys
        ]
        if unknown:
            wanted.setdefault(info, []).append((state, unknown))
    if not wanted:
        return
    originals: dict[InstanceState[Any], dict[str, Any]] = {}
    for info, items in wanted.items():
        mapper = items[0][0].mapper
        keys = sorted({k for _, unknown in items for k in unknown})
        columns = [mapper.column_attrs[k].columns[0] for k in keys]
        by_key: dict[tuple[Any, ...], InstanceState[Any]] = {
            tuple(state.key[1]): state for state, _ in items if state.key
        }
        query = sa.select(*info.pk_columns, *columns).where(
            key_filter(list(info.pk_columns), list(by_key), inline=True)
        )
        width = len(info.pk_columns)
        connection = session.connection(bind_arguments={"mapper": mapper})
        for row in connection.execute(query):
            found = by_key.get(tuple(row[:width]))
            if found is not None:
                originals[found] = dict(zip(keys, row[width:], strict=True))
    session.info[_ORIGINALS_KEY] = originals


def _after_flush(session: Session, flush_context: Any) -> None:
    log = _log_for(session)
    if log is None:
        return
    originals = session.info.pop(_ORIGINALS_KEY, None) or {}
    batch = _collect(session, originals, log.keep_bases is not None, log.object_tags)
    links: list[tuple[TrackedTable, tuple[Any, ...], str]] = (
        session.info.pop(_LINKS_KEY, None) or []
    )
    for info, key, command in links:
        batch.add(info, key, command)
    batch.tags_before = session.info.pop(_TAGS_KEY, None) or {}
    if batch.keys:
        _write(session, log, batch)


def _watch_link_rows(session: Session) -> None:
    """Mark the connections of tracked plain tables with ``session`` for
    the flush about to run, so :func:`_after_execute` records the link rows
    the unit of work writes on them."""
    plain = tracked_plain_tables()
    if not plain:
        return
    session.info[_LINKS_KEY] = []
    marked: set[int] = set()
    for info in plain:
        try:
            bind = session.get_bind(clause=info.table)
        except sa.exc.UnboundExecutionError:
            continue
        engine = bind.engine
        if engine not in _link_engines:
            event.listen(engine, "after_execute", _after_execute)
            _link_engines.add(engine)
        if id(engine) in marked:
            continue
        marked.add(id(engine))
        connection = session.connection(bind_arguments={"clause": info.table})
        connection.info[_FLUSHING_KEY] = weakref.ref(session)


def _after_execute(
    connection: sa.Connection,
    clause: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    result: Any,
) -> None:
    # Runs for every statement on an engine that has tracked plain tables:
    # return as early and cheaply as possible for all others.
    if not isinstance(clause, (sa.Insert, sa.Delete, sa.Update)):
        return
    info = plain_tracked(clause.table)
    if info is None:
        return
    ref = connection.info.get(_FLUSHING_KEY)
    session: Session | None = ref() if ref is not None else None
    # The mark outlives a failed flush (connection info is kept with the
    # pooled connection): only a flush running now counts.
    if session is None or not session._flushing:
        return
    links = session.info.get(_LINKS_KEY)
    if links is None:
        return
    rows: Sequence[Mapping[str, Any]] = multiparams or [params or {}]
    for row in rows:
        if isinstance(clause, sa.Update):
            # A parent's key changed (ON UPDATE of the link's columns): the
            # old link is gone and a new one exists.
            links.append((info, _link_key(info, row, "old_"), DELETE))
            links.append((info, _link_key(info, row), INSERT))
        else:
            command = INSERT if isinstance(clause, sa.Insert) else DELETE
            links.append((info, _link_key(info, row), command))


def _link_key(
    info: TrackedTable, row: Mapping[str, Any], prefix: str = ""
) -> tuple[Any, ...]:
    try:
        values = tuple(row[prefix + column.key] for column in info.pk_columns)
    except KeyError:
        values = (None,)
    if None in values:
        raise TrackingError(
            f"A flush wrote a row of tracked {info.label} without its whole "
            "primary key in the statement's parameters, so the change cannot "
            "be logged; give the key columns values (not database defaults)."
        )
    return values


def _read_tags_before(session: Session, log: OperationLog) -> None:
    """The share tags of the rows the flush will update or delete, read
    before it does (one query per routed table)."""
    assert log.tags is not None
    wanted: dict[TrackedTable, list[str]] = {}
    readers: dict[TrackedTable, TagReader | None] = {}
    for obj in (*session.deleted, *session.dirty):
        state: InstanceState[Any] = instance_state(obj)
        if state.key is None:
            continue
        info = tracked_table_for(state.mapper)
        if info is None:
            continue
        if info not in readers:
            readers[info] = log.tags(info)
        if readers[info] is not None:
            wanted.setdefault(info, []).append(info.encode_key(tuple(state.key[1])))
    if wanted:
        session.info[_TAGS_KEY] = _tags_of(session, readers, wanted)


def _tags_of(
    session: Session,
    readers: Mapping[TrackedTable, TagReader | None],
    wanted: Mapping[TrackedTable, Sequence[str]],
) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for info, keys in wanted.items():
        reader = readers[info]
        if reader is None or not keys:
            continue
        connection = session.connection(
            bind_arguments={"mapper": info.mapper}
            if info.mapper is not None
            else {"clause": info.table}
        )
        for key, tag in reader(connection, keys).items():
            found[(info.name, key)] = tag
    return found


def _collect(
    session: Session,
    originals: Mapping[InstanceState[Any], Mapping[str, Any]],
    keep_originals: bool = False,
    object_tags: Callable[[TrackedTable], ObjectTagger | None] | None = None,
) -> _Batch:
    # Deletes first, then inserts, then updates: a "row switch" (delete an
    # object and add another with the same key in one flush) must read as
    # delete + insert, which compresses to an update.
    batch = _Batch()
    for obj in session.deleted:
        state: InstanceState[Any] = instance_state(obj)
        info = tracked_table_for(state.mapper)
        if info is not None:
            batch.add(info, _identity(state, info), DELETE)
    taggers: dict[TrackedTable, ObjectTagger | None] = {}
    _collect_inserts(session, batch, object_tags, taggers)
    for obj in session.dirty:
        state = instance_state(obj)
        info = tracked_table_for(state.mapper)
        if info is None:
            continue
        changed = _changed_columns(state, info, originals.get(state, {}))
        if not changed:
            continue
        old_key = _identity(state, info)
        new_key = _current_key(state, info)
        if old_key == new_key:
            batch.add(info, new_key, UPDATE, changed)
            if object_tags is not None:
                _tag_object(batch, state, _tagger(info, object_tags, taggers))
            if keep_originals:
                replaced = _replaced_values(state, info, originals.get(state, {}))
                batch.originals.append((info, new_key, replaced))
        else:  # the primary key itself changed: the old row is gone
            batch.add(info, old_key, DELETE)
            batch.add(info, new_key, INSERT)
    return batch


def _collect_inserts(
    session: Session,
    batch: _Batch,
    object_tags: Callable[[TrackedTable], ObjectTagger | None] | None = None,
    taggers: dict[TrackedTable, ObjectTagger | None] | None = None,
) -> None:
    # The hot loop of capture: one pass per inserted row. It allocates one
    # string per row and no container, because container allocations here
    # trigger garbage-collector passes over all of the session's objects,
    # which cost more than the loop itself (a tag is a string in a dict
    # keyed by position: no container either).
    names, keys, commands = batch.names, batch.keys, batch.commands
    tags_after = batch.tags_after
    last_mapper: Any = None
    info: TrackedTable | None = None
    attr = ""
    single = False
    tagger: ObjectTagger | None = None
    for obj in session.new:
        state = instance_state(obj)
        if state.mapper is not last_mapper:
            last_mapper = state.mapper
            info = tracked_table_for(last_mapper)
            if info is not None:
                batch.tables.add(info)
                single = info.single_integer_key
                attr = info.pk_attrs[0]
                if object_tags is not None and taggers is not None:
                    tagger = _tagger(info, object_tags, taggers)
        if info is None:
            continue
        names.append(info.name)
        commands.append(INSERT)
        if tagger is not None:
            data = state.dict
            if tagger[0] in data:
                found = tagger[1](data[tagger[0]])
                if found is not None:
                    tags_after[len(names) - 1] = found
        if single:
            value = state.dict.get(attr)
            if type(value) is int:
                keys.append(f"[{value}]")
                continue
        keys.append(info.encode_key(_current_key(state, info)))


def _tagger(
    info: TrackedTable,
    object_tags: Callable[[TrackedTable], ObjectTagger | None],
    taggers: dict[TrackedTable, ObjectTagger | None],
) -> ObjectTagger | None:
    if info not in taggers:
        taggers[info] = object_tags(info)
    return taggers[info]


def _tag_object(
    batch: _Batch, state: InstanceState[Any], tagger: ObjectTagger | None
) -> None:
    """Tag the operation just added to ``batch`` from its flushed object,
    when the object holds the tag's value as the database stores it."""
    if tagger is None or tagger[0] not in state.dict:
        return  # expired (a server-side value): read back
    found = tagger[1](state.dict[tagger[0]])
    if found is not None:
        batch.tags_after[len(batch.keys) - 1] = found


def _identity(state: InstanceState[Any], info: TrackedTable) -> tuple[Any, ...]:
    if state.key is not None:
        return tuple(state.key[1])
    return _current_key(state, info)


def _current_key(state: InstanceState[Any], info: TrackedTable) -> tuple[Any, ...]:
    data = state.dict
    values = tuple([data.get(attr) for attr in info.pk_attrs])
    if None in values:
        raise TrackingError(
            f"A flushed {info.label} has no primary key value, "
            "so its change cannot be logged."
        )
    return values


def _changed_columns(
    state: InstanceState[Any], info: TrackedTable, loaded: Mapping[str, Any]
) -> list[str]:
    """The names of the columns whose value changed (empty: the update
    changes nothing and logs nothing). Columns kept out of sync do not
    count: changing only them logs nothing.

    Only attributes with recorded history can have changed; their values
    are compared, so that setting a column to the value it had logs nothing.
    """
    column_attrs = state.mapper.column_attrs
    synced = info.synced_attrs(state.mapper)
    changed: list[str] = []
    for key, original in state.committed_state.items():
        attr = column_attrs.get(key)
        if attr is None or key not in synced:
            continue
        if original is NO_VALUE:
            original = loaded.get(key, NO_VALUE)
        if original is NO_VALUE or not _equal(original, state.dict.get(key)):
            changed.extend(column.name for column in attr.columns[:1])
    return changed


def _replaced_values(
    state: InstanceState[Any], info: TrackedTable, loaded: Mapping[str, Any]
) -> dict[str, Any]:
    """The values the changed synced columns of an updated object had
    before the flush, by column name (see :func:`_changed_columns`)."""
    column_attrs = state.mapper.column_attrs
    synced = info.synced_attrs(state.mapper)
    replaced: dict[str, Any] = {}
    for key, original in state.committed_state.items():
        attr = column_attrs.get(key)
        if attr is None or key not in synced:
            continue
        if original is NO_VALUE:
            original = loaded.get(key, NO_VALUE)
        if original is not NO_VALUE and not _equal(original, state.dict.get(key)):
            replaced[attr.columns[0].name] = original
    return replaced


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # incomparable values: count as changed
        return False


# -- writing ----------------------------------------------------------------------


def _write(session: Session, log: OperationLog, batch: _Batch) -> None:
    tables = log.tables
    connection = session.connection(bind_arguments={"clause": tables.operations})
    if log.database_capture and VERSION_ROW_VALUES not in session.info:
        kept = _left_to_orm(batch, captured_tables(connection))
        if kept is not batch:
            session.info[_TRIGGERED_KEY] = True
        batch = kept
        if not batch.keys:
            return
    tx: _TransactionLog | None = session.info.get(_TX_KEY)
    checked = tx.checked_binds if tx is not None else set()
    _check_binds(session, connection, checked, batch.tables)
    scopes = _share_tags(session, log, batch) if log.tags is not None else None
    if tx is None:
        # The version row and the first operations, in one statement where
        # the backend allows.
        tx = _transaction_log(session, log, connection, batch, scopes)
        tx.checked_binds = checked
    else:
        insert_operations(
            connection,
            tables.operations,
            tx.version_id,
            batch.names,
            batch.keys,
            batch.commands,
            batch.changed_columns(),
            scopes,
        )
    if log.keep_bases is not None and batch.originals:
        log.keep_bases(connection, tx.version_id, batch.originals)
    if session.info.get(_COMMITTING_KEY) and tx.at_commit and not tx.numbered:
        # Written by a flush that ran after before_commit (another listener
        # added objects): number it now, the commit follows.
        _assign_number(connection, log, tx)


def _left_to_orm(batch: _Batch, captured: frozenset[str]) -> _Batch:
    """``batch`` without the operations of tables whose capture triggers
    log them already (so nothing is logged twice)."""
    if not captured or not any(info.name in captured for info in batch.tables):
        return batch
    kept = _Batch()
    changed = batch.changed
    for n, name in enumerate(batch.names):
        if name in captured:
            continue
        if n in changed:
            kept.changed[len(kept.keys)] = changed[n]
        if n in batch.tags_after:
            kept.tags_after[len(kept.keys)] = batch.tags_after[n]
        kept.names.append(name)
        kept.keys.append(batch.keys[n])
        kept.commands.append(batch.commands[n])
    kept.tables = {info for info in batch.tables if info.name not in captured}
    kept.tags_before = batch.tags_before
    kept.originals = [o for o in batch.originals if o[0].name not in captured]
    return kept


def logs_itself(session: Session) -> None:
    """The session's transaction is logged by the extension alone (a push,
    which records its node with the version): capture triggers, where
    installed, log nothing for it. Call before its first write."""
    if isinstance(session, scoped_session):
        session = session()
    log = _log_for(session)
    if log is None or not log.database_capture:
        return
    connection = session.connection(bind_arguments={"clause": log.tables.operations})
    if connection.dialect.name == "postgresql":
        stand_down(connection)
    else:
        # Row-level triggers recognise the push by its version row (see
        # .row_triggers): it must exist before the first write.
        stand_down(connection, _transaction_log(session, log, connection).version_id)


def _share_tags(
    session: Session, log: OperationLog, batch: _Batch
) -> tuple[list[str | None], list[str | None]] | None:
    """The share tags of ``batch``'s operations, before and after (``None``
    when no operation is of a routed table): after, read from the rows as
    written; before, read before the change (:func:`_read_tags_before`,
    the bulk paths), else the last tag the log holds for the row (an
    update that changed no share keeps its row's tag)."""
    assert log.tags is not None
    readers: dict[str, TagReader | None] = {}
    infos = {info.name: info for info in batch.tables}
    for name, info in infos.items():
        readers[name] = log.tags(info)
    if not any(readers.values()):
        return None
    written: dict[str, list[str]] = {}
    operations = list(zip(batch.names, batch.keys, batch.commands, strict=True))
    known = batch.tags_after
    for n, (name, text, command) in enumerate(operations):
        if command != DELETE and n not in known and readers.get(name) is not None:
            written.setdefault(name, []).append(text)
    after = _tags_of(
        session,
        {infos[n]: readers[n] for n in written},
        {infos[n]: keys for n, keys in written.items()},
    )
    before_all = batch.tags_before
    missing: dict[str, list[str]] = {}
    result_before: list[str | None] = []
    result_after: list[str | None] = []
    for n, (name, text, command) in enumerate(operations):
        if readers.get(name) is None:
            result_before.append(None)
            result_after.append(None)
            continue
        key = text
        if command == DELETE:
            now = NO_ROW
        else:
            now = known.get(n) or after.get((name, key), NO_ROW)
        if command == INSERT:
            was: str | None = NO_ROW
        else:
            was = before_all.get((name, key))
            if was is None:
                if command == UPDATE:
                    was = now
                else:
                    missing.setdefault(name, []).append(text)
        result_before.append(was)
        result_after.append(now)
    if missing:
        last = _last_logged_tags(session, log, missing)
        for n, (name, text) in enumerate(zip(batch.names, batch.keys, strict=True)):
            if result_before[n] is None and readers.get(name) is not None:
                result_before[n] = last.get((name, text), NO_ROW)
    return result_before, result_after


def _last_logged_tags(
    session: Session, log: OperationLog, wanted: Mapping[str, Sequence[str]]
) -> dict[tuple[str, str], str]:
    """The share tag each row had after its last logged operation: what a
    row deleted without its tag read before had."""
    operations = log.tables.operations
    after = operations.c.scope_after
    found: dict[tuple[str, str], str] = {}
    connection = session.connection(bind_arguments={"clause": operations})
    for name, texts in wanted.items():
        for start in range(0, len(texts), 500):
            part = texts[start : start + 500]
            query = (
                sa.select(operations.c.row_key, after)
                .where(
                    operations.c.table_name == name,
                    operations.c.row_key.in_(part),
                    after.is_not(None),
                    after != NO_ROW,
                )
                .order_by(operations.c.id)
            )
            for row_key, tag in connection.execute(query):
                found[(name, row_key)] = tag
    return found


def _tracked(session: Session) -> tuple[Session, OperationLog]:
    """The real session behind ``session`` (which may be ``db.session``) and
    its log; for callers outside the listeners."""
    if isinstance(session, scoped_session):
        session = session()
    log = _log_for(session)
    if log is None:
        raise ConfigurationError(
            "This session is not tracked; call start_tracking() on its "
            "sessionmaker first."
        )
    return session, log


def record_operations(
    session: Session,
    info: TrackedTable,
    keys: Iterable[tuple[Any, ...]],
    command: str,
    columns: Sequence[Iterable[str] | None] | frozenset[str] | None = None,
    *,
    by_server: bool = False,
) -> None:
    """Log operations for rows written in a way the listeners cannot see.

    For code that writes tracked rows straight through the driver for speed
    (the sync server applies large pushes so on PostgreSQL): it must call this
    in the same transaction, with the keys it wrote.

    :param session: the tracked session (or ``db.session``) whose transaction
        wrote the rows.
    :param info: the tracked table (:func:`.registry.tracked_table_for`).
    :param keys: the primary keys written, in key-column order.
    :param command: ``"i"``, ``"u"`` or ``"d"``.
    :param columns: for updates, the names of the columns written: one set
        for every key (a ``frozenset``), or one per key; ``None``: every
        column.
    :param by_server: the columns are ones the database itself changed in
        rows a node pushed (triggers, server defaults; see
        :func:`.columns.written_by_server`).
    """
    session, log = _tracked(session)
    batch = _batch(info, keys, command, columns, by_server)
    if batch.keys:
        _write(session, log, batch)


def has_logged_writes(session: Session) -> bool:
    """Whether the session's transaction has logged an operation (or been
    given its version row) that is not committed yet."""
    return session.info.get(_TX_KEY) is not None


def ensure_version(session: Session) -> int:
    """Give the session's transaction its version row now, even if it logged
    no operation, and return the row's id; it is numbered at commit.

    The sync server calls it for every applied push, so that a push whose
    operations changed nothing (deleting rows already gone) is still recorded
    with its push id, and a retry is answered from it.

    :param session: a tracked session, or a scoped session (``db.session``).
    :raises ConfigurationError: if the session is not tracked.
    """
    session, log = _tracked(session)
    connection = session.connection(bind_arguments={"clause": log.tables.operations})
    return _transaction_log(session, log, connection).version_id


def _transaction_log(
    session: Session,
    log: OperationLog,
    connection: sa.Connection,
    batch: _Batch | None = None,
    scopes: tuple[Sequence[str | None], Sequence[str | None]] | None = None,
) -> _TransactionLog:
    """The transaction's version row, created (with ``batch``'s operations,
    if given) when it has none yet."""
    tx = session.info.get(_TX_KEY)
    if tx is not None:
        return tx  # type: ignore[no-any-return]
    values: dict[str, Any] = {
        "created_at": datetime.datetime.now(datetime.timezone.utc)
    }
    values.update(session.info.get(VERSION_ROW_VALUES) or {})
    tables = log.tables
    first = batch or _Batch()
    version_id = insert_version(
        connection,
        tables.versions,
        tables.operations,
        values,
        first.names,
        first.keys,
        first.commands,
        first.changed_columns(),
        scopes,
    )
    owner = session.get_nested_transaction() or session.get_transaction()
    assert owner is not None
    soon: tuple[sa.Engine, LogTables] | None = None
    if session.info.get(_LOCKED_KEY) or not numbered_after_commit(connection.dialect):
        at_commit = True
    else:
        # A session joined into a caller's transaction (a test fixture's
        # outer transaction, never committed): numbered at commit, inside
        # it, as a numberer in a transaction of its own could not see it.
        bind = session.get_bind(clause=tables.operations)
        at_commit = isinstance(bind, sa.Connection)
        if (
            isinstance(bind, sa.Engine)
            and bind.dialect.name == "postgresql"
            and log.assign_versions
        ):
            soon = (bind, tables)
    tx = _TransactionLog(
        owner=owner, version_id=version_id, at_commit=at_commit, soon=soon
    )
    session.info[_TX_KEY] = tx
    return tx


def lock_numbering(session: Session) -> int:
    """Lock the version counter for the rest of the session's transaction,
    and number every version committed so far; return the newest number
    (no version is numbered above it until the transaction ends).

    For the sync server's push: after it, the log holds a number for every
    committed version (so a conflict check sees them all), and no version
    can be numbered by anyone else until the transaction ends; the
    transaction's own version is numbered at its commit. The transaction
    must read committed data (``READ COMMITTED``).

    :param session: a tracked session, or a scoped session (``db.session``).
    """
    session, log = _tracked(session)
    connection = session.connection(bind_arguments={"clause": log.tables.operations})
    tx: _TransactionLog | None = session.info.get(_TX_KEY)
    newest = lock_and_number(
        connection, log.tables, own=None if tx is None else tx.version_id
    )
    session.info[_LOCKED_KEY] = True
    if tx is not None:
        tx.at_commit = True
    return newest


def _check_binds(
    session: Session,
    connection: sa.Connection,
    checked: set[Any],
    touched: Iterable[TrackedTable],
) -> None:
    # The operations must commit with the data, so both must live in the same
    # database and go through the same connection.
    for info in touched:
        target: Any = info.mapper if info.mapper is not None else info.table
        if target in checked:
            continue
        # Compare engines: a session may be bound to a Connection.
        if _bind_of(session, info).engine is not connection.engine:
            raise ConfigurationError(
                f"{info.label} is stored in another database than "
                "the operations log; tracked models must share the bind of the "
                "extension's tables."
            )
        checked.add(target)


def _bind_of(session: Session, info: TrackedTable) -> Any:
    """The session's bind for ``info``'s rows (a mapped class's or a plain
    table's)."""
    if info.mapper is not None:
        return session.get_bind(mapper=info.mapper)
    return session.get_bind(clause=info.table)


def number_now(session: Session) -> tuple[int, int]:
    """Number the session's version now, and count its operations: for a
    transaction that holds the counter lock (:func:`lock_numbering`) and
    commits next, which needs its number before the commit (the sync
    server's push answer). On PostgreSQL one statement moves the counter,
    numbers the version, counts its operations and notifies the change
    feed; the commit's own numbering is then skipped.

    Pending objects are flushed first, so the count covers every operation
    of the transaction; nothing may be written after this call.

    :param session: a tracked session, or a scoped session (``db.session``).
    :return: the version's number and how many operations it holds.
    :raises ConfigurationError: if the transaction has no version row, or
        does not hold the counter lock.
    """
    session, log = _tracked(session)
    session.flush()
    tx: _TransactionLog | None = session.info.get(_TX_KEY)
    if tx is None or not tx.at_commit or not session.info.get(_LOCKED_KEY):
        raise ConfigurationError(
            "number_now() needs a transaction with a version row "
            "(ensure_version) that holds the counter lock (lock_numbering)."
        )
    connection = session.connection(bind_arguments={"clause": log.tables.operations})
    if not tx.numbered:
        _assign_number(connection, log, tx, count=True)
    if tx.number is None or tx.operation_count is None:
        operations = log.tables.operations
        tx.operation_count = connection.execute(
            sa.select(sa.func.count())
            .select_from(operations)
            .where(operations.c.version_id == tx.version_id)
        ).scalar_one()
        if tx.number is None:
            versions = log.tables.versions
            tx.number = connection.execute(
                sa.select(versions.c.number).where(versions.c.id == tx.version_id)
            ).scalar_one()
    return int(tx.number), int(tx.operation_count)


#: One statement numbering a transaction's version on PostgreSQL, under the
#: counter lock: the counter moved, the version numbered, the change feed
#: notified, and (when asked) the version's operations counted.
_NUMBER_PG = (
    "WITH c AS (UPDATE {counter} SET value = value + 1 WHERE id = %(row)s "
    "RETURNING value), "
    "v AS (UPDATE {versions} SET number = (SELECT value FROM c) "
    "WHERE id = %(id)s RETURNING number) "
    "SELECT (SELECT number FROM v), pg_notify(%(channel)s, ''), {count}"
)


def _assign_number(
    connection: sa.Connection,
    log: OperationLog,
    tx: _TransactionLog,
    *,
    count: bool = False,
) -> None:
    if connection.dialect.name == "postgresql":
        prepare = connection.dialect.identifier_preparer
        operations = prepare.format_table(log.tables.operations)
        statement = _NUMBER_PG.format(
            counter=prepare.format_table(log.tables.counter),
            versions=prepare.format_table(log.tables.versions),
            count=(
                f"(SELECT count(*) FROM {operations} WHERE version_id = %(id)s)"
                if count
                else "NULL"
            ),
        )
        found = connection.exec_driver_sql(
            statement,
            {
                "row": VERSION_ROW,
                "id": tx.version_id,
                "channel": feed_channel(log.tables),
            },
        ).one()
        if found[0] is not None:
            tx.number, tx.operation_count = int(found[0]), found[2]
            tx.numbered = True
            return
        # No counter row (a migration left it out): the general way below
        # creates it (the NOTIFY was sent; a listener woken early re-reads).
    counter = log.tables.counter
    bump = (
        sa.update(counter)
        .where(counter.c.id == VERSION_ROW)
        .values(value=counter.c.value + 1)
    )
    if connection.dialect.update_returning:
        number = connection.execute(bump.returning(counter.c.value)).scalar()
    else:
        updated = connection.execute(bump).rowcount
        number = (
            connection.execute(
                sa.select(counter.c.value).where(counter.c.id == VERSION_ROW)
            ).scalar()
            if updated
            else None
        )
    if number is None:
        # The counter row is created by create_all; a table created by a
        # migration may lack it. (Two first writers racing here make one fail
        # loudly on the primary key, never hand out a number twice.)
        connection.execute(sa.insert(counter).values(id=VERSION_ROW, value=1))
        number = 1
    versions = log.tables.versions
    connection.execute(
        sa.update(versions).where(versions.c.id == tx.version_id).values(number=number)
    )
    # Under the counter lock held through commit already (SQLite's write
    # lock, a push's counter lock): the feed's listeners hear of it.
    notify_numbered(connection, log.tables)
    tx.number = int(number)
    tx.numbered = True


# -- transaction boundaries --------------------------------------------------------


def _before_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # releasing a savepoint, not committing
    log = _log_for(session)
    if log is None or not log.assign_versions:
        return
    tx = session.info.get(_TX_KEY)
    if tx is not None and not tx.at_commit:
        return  # numbered after commit (see .numbering)
    # The commit's own final flush runs after this hook; flush now so every
    # operation of the transaction exists before its version is numbered.
    session.flush()
    session.info[_COMMITTING_KEY] = True
    tx = session.info.get(_TX_KEY)
    if session.info.pop(_TRIGGERED_KEY, False):
        connection = session.connection(
            bind_arguments={"clause": log.tables.operations}
        )
        if connection.dialect.name == "sqlite":
            # The capture triggers' version of this transaction (never
            # numbered by them): numbered now, under the write lock held
            # through the commit, as the ORM path's own is.
            lock_and_number(
                connection,
                log.tables,
                own=tx.version_id if tx is not None else None,
            )
    if tx is not None and tx.at_commit and not tx.numbered:
        connection = session.connection(
            bind_arguments={"clause": log.tables.operations}
        )
        _assign_number(connection, log, tx)


def _after_commit(session: Session) -> None:
    """A server's version left for numbering after commit (see
    :mod:`.numbering`) on PostgreSQL: number it soon, so its ``NOTIFY``
    wakes the change feed in every process at once (no SQL here: the
    numbering runs in a thread of its own)."""
    tx: _TransactionLog | None = session.info.get(_TX_KEY)
    if tx is not None and not tx.at_commit and tx.soon is not None:
        number_soon(*tx.soon)


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    tx: _TransactionLog | None = session.info.get(_TX_KEY)
    if tx is None:
        return
    # The database rolled back to the nearest savepoint or to the start of the
    # root transaction; if our version row was created inside it, it is gone.
    boundary: SessionTransaction | None = previous
    while boundary is not None and not (boundary.nested or boundary.parent is None):
        boundary = boundary.parent
    owner: SessionTransaction | None = tx.owner
    while owner is not None:
        if owner is boundary:
            session.info.pop(_TX_KEY, None)
            session.info.pop(_COMMITTING_KEY, None)
            return
        owner = owner.parent


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_LINKS_KEY, None)
        session.info.pop(_TX_KEY, None)
        session.info.pop(_COMMITTING_KEY, None)
        session.info.pop(_LOCKED_KEY, None)
        session.info.pop(_TRIGGERED_KEY, None)


# -- bulk statements ---------------------------------------------------------------


def _do_orm_execute(state: ORMExecuteState) -> Any:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    log = _log_for(state.session)
    if log is None:
        return None
    info = _statement_target(state)
    if info is None:
        return None
    if state.is_insert:
        return _bulk_insert(state, log, info)
    return _bulk_update_or_delete(state, log, info)


def _statement_target(state: ORMExecuteState) -> TrackedTable | None:
    mapper = state.bind_mapper
    if mapper is not None:
        return tracked_table_for(mapper)
    table = getattr(state.statement, "table", None)
    if table is None:
        return None
    deannotate = getattr(table, "_deannotate", None)
    return tracked_table_by_table(deannotate() if deannotate else table)


def _row_keys(
    rows: Sequence[Mapping[Any, Any]], info: TrackedTable
) -> list[tuple[Any, ...]] | None:
    """The primary key of every parameter row, or ``None`` if one lacks it.

    Rows may name key columns by attribute, column key or column name; the
    names are found on the first row and then read from each (bulk pushes
    go through here with thousands of rows).
    """
    if not rows:
        return None
    names = []
    for attr, column in zip(info.pk_attrs, info.pk_columns, strict=True):
        for name in (attr, column.key, column.name):
            if name in rows[0]:
                names.append(name)
                break
        else:
            return None
    try:
        if len(names) == 1:
            (name,) = names
            keys = [(row[name],) for row in rows]
        else:
            keys = [tuple([row[name] for name in names]) for row in rows]
    except KeyError:
        return None
    if any(None in key for key in keys):
        return None
    return keys


def _parameter_rows(state: ORMExecuteState) -> list[Mapping[str, Any]]:
    params: Any = state.parameters
    if not params:
        return []
    if isinstance(params, Mapping):
        return [params]
    return list(params)


def _statement_values(statement: Any) -> list[Mapping[str, Any]]:
    # ``insert().values(...)``: single and multi-row forms. Keys may be
    # strings, Columns or ORM attributes; normalise them to names.
    rows: list[Mapping[str, Any]] = []
    multi = getattr(statement, "_multi_values", ()) or ()
    for group in multi:
        for row in group:
            if isinstance(row, Mapping):
                rows.append({_name(k): v for k, v in row.items()})
    single = getattr(statement, "_values", None)
    if single:
        rows.append({_name(k): v for k, v in single.items()})
    return rows


def _name(key: Any) -> str:
    if isinstance(key, str):
        return key
    return str(getattr(key, "key", None) or getattr(key, "name", key))


def _bulk_insert(state: ORMExecuteState, log: OperationLog, info: TrackedTable) -> Any:
    statement: Any = state.statement
    class_name = info.label
    if getattr(statement, "_post_values_clause", None) is not None:
        raise TrackingError(
            f"An upsert (ON CONFLICT / ON DUPLICATE KEY) into tracked {class_name} "
            "cannot be logged; add or merge the objects through the session."
        )
    rows = _parameter_rows(state) or _statement_values(statement)
    keys = _row_keys(rows, info)
    if keys is not None:
        result = state.invoke_statement()
        _write(state.session, log, _batch(info, keys, INSERT))
        return result

    # The keys are generated by the database: ask for them back.
    dialect = _bind_of(state.session, info).dialect
    supported = (
        dialect.insert_executemany_returning
        if state.is_executemany
        else dialect.insert_returning
    )
    if getattr(statement, "_returning", ()) or not supported:
        raise TrackingError(
            f"Bulk INSERT into tracked {class_name} without primary key values "
            "cannot be logged here; give the keys in the parameters, or add "
            "the objects through the session."
        )
    returning = (
        list(info.pk_columns)
        if info.mapper is None
        else [getattr(info.mapper.class_, a) for a in info.pk_attrs]
    )
    result = state.invoke_statement(statement=statement.returning(*returning))
    frozen = result.freeze()
    generated = [tuple(row) for row in frozen().all()]
    _write(state.session, log, _batch(info, generated, INSERT))
    return frozen()


def _bulk_update_or_delete(
    state: ORMExecuteState, log: OperationLog, info: TrackedTable
) -> Any:
    statement: Any = state.statement
    class_name = info.label
    command = UPDATE if state.is_update else DELETE
    assigned: set[str] = set()
    if state.is_update:
        assigned = {name for row in _statement_values(statement) for name in row}
        ordered = getattr(statement, "_ordered_values", None) or ()
        assigned |= {_name(k) for k, _ in ordered}
        pk_names = set(info.pk_attrs) | {c.key for c in info.pk_columns}
        if assigned & pk_names:
            raise TrackingError(
                f"A bulk UPDATE that changes the primary key of tracked {class_name} "
                "cannot be logged; change the key through the session."
            )
        if info.excluded:
            if state.is_executemany:
                assigned |= {n for row in _parameter_rows(state) for n in row}
            if info.only_excluded(assigned - pk_names):
                # Sets only columns kept out of sync: nothing that travels
                # changed, so nothing is logged.
                return state.invoke_statement()

    if state.is_executemany:
        # ORM "bulk UPDATE by primary key": the keys are in the parameters.
        rows = _parameter_rows(state)
        named = _row_keys(rows, info)
        if named is None:
            raise TrackingError(
                f"A bulk {'UPDATE' if state.is_update else 'DELETE'} of tracked "
                f"{class_name} with parameter sets must name the primary key "
                "in every set to be logged."
            )
        before = _bulk_tags_before(state, log, info, named)
        result = state.invoke_statement()
        columns = None
        if state.is_update:
            # Parameter sets mostly share their names: one set per shape.
            shapes: dict[tuple[str, ...], frozenset[str]] = {}
            columns = []
            for row in rows:
                shape = tuple(row)
                found = shapes.get(shape)
                if found is None:
                    found = shapes[shape] = _column_names(info, {*shape, *assigned})
                columns.append(found)
        batch = _batch(info, named, command, columns)
        batch.tags_before = before
        _write(state.session, log, batch)
        return result

    # Lock and read the keys the statement will touch, then restrict the
    # statement to exactly those keys: what is logged is what changed, even
    # if another transaction inserts a matching row in between.
    pk_columns = list(info.pk_columns)
    select = sa.select(*pk_columns)
    if statement.whereclause is not None:
        select = select.where(statement.whereclause)
    keys = [
        tuple(row)
        for row in state.session.execute(
            select.with_for_update(), execution_options={"autoflush": True}
        )
    ]
    restricted = statement.where(key_filter(pk_columns, keys, inline=True))
    before = _bulk_tags_before(state, log, info, keys)
    result = state.invoke_statement(statement=restricted)
    if keys:
        changed = _column_names(info, assigned) if state.is_update else None
        batch = _batch(info, keys, command, changed)
        batch.tags_before = before
        _write(state.session, log, batch)
    return result


def _bulk_tags_before(
    state: ORMExecuteState,
    log: OperationLog,
    info: TrackedTable,
    keys: Sequence[tuple[Any, ...]],
) -> dict[tuple[str, str], str]:
    """The share tags of the rows a bulk statement is about to change."""
    reader = log.tags(info) if log.tags is not None else None
    if reader is None or not keys:
        return {}
    texts = [info.encode_key(tuple(key)) for key in keys]
    return _tags_of(state.session, {info: reader}, {info: texts})


def _column_names(info: TrackedTable, names: Iterable[str]) -> frozenset[str]:
    """The column names of a bulk UPDATE's assigned names (attribute names,
    column keys or column names), leaving out the primary key and the
    columns kept out of sync."""
    attrs: Any = info.mapper.column_attrs if info.mapper is not None else {}
    by_key = {column.key: column.name for column in info.table.columns}
    pk = {column.name for column in info.pk_columns}
    found = set()
    for name in names:
        attr = attrs.get(name)
        column = attr.columns[0].name if attr is not None else by_key.get(name, name)
        if column not in pk and column not in info.excluded:
            found.add(column)
    return frozenset(found)


def _batch(
    info: TrackedTable,
    keys: Iterable[tuple[Any, ...]],
    command: str,
    columns: Sequence[Iterable[str] | None] | frozenset[str] | None = None,
    by_server: bool = False,
) -> _Batch:
    batch = _Batch()
    batch.extend(info, keys, command, columns, by_server)
    return batch

