"""Serving changes to nodes: paged pulls (the streamed full repair is in
:mod:`.repair`, re-exported here).

A pull page holds the logged operations after the node's version of at
most ``limit`` rows (and at most :data:`SCAN_FACTOR` times ``limit``
operations), compressed to one per row, with the rows' *current* payloads read
from the live tables. Per table, the page carries those rows column-wise
(column names once, one array of values per column and one command letter
per row) and the keys of the deleted rows: a row's key travels once. Pages
are cut by ``(version, operation id)``, so a node far behind resumes exactly
where the last page ended (``cursor``), and any server process can serve the
next page. An insert or update whose row is gone by the time the page is
served is sent as a delete: the payload is always the row's latest state,
and a later page repeats nothing that matters.

Compression keeps two facts a node needs about integer keys: a row added
and removed within the page is sent as a delete (the key was taken), and a
row deleted and added again is sent as a delete and an insert of the same
key (a new row under an old key; the node applies the delete first), not as
an update.

The node's own versions are left out: it already has those changes.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..rows import batches, key_filter
from ..tracking import (
    DELETE,
    INSERT,
    UPDATE,
    LogTables,
    TrackedTable,
    compressed_commands,
    decode_key,
    encode_key,
)
from ..tracking.compression import REPLACED
from ..tracking.numbering import number_versions
from ..tracking.tables import current_version
from ..wire.codec import key_codecs, key_from_log, stores_time_zones, synced_codecs
from ..wire.messages import BIGINT_MAX, validate
from .key_blocks import reserve_key_blocks
from .nodes import nodes_table
from .pull_rows import leave_out_own_rows, patched_columns
from .pull_scopes import RowWalk, Share, entering_children, walk_rows
from .push_decode import KEY_BATCH
from .repair import check_repair_accepted as check_repair_accepted
from .repair import repair_stream as repair_stream
from .schema import TrackedSchema
from .trim import check_not_trimmed


def read_page(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    message: Any,
    *,
    page_size: int,
    share: Share | None = None,
) -> dict[str, Any]:
    """One page of the changes after the node's version, read without
    writing anything: serving it is recorded by :func:`record_pulled`.

    :param share: the node's share when scopes are declared (see
        :mod:`.pull_scopes`): only its rows are served, and rows that left
        it are listed as ``evicted``.

    :param page_size: the most rows a page may hold (see :func:`_window`);
        a request's ``limit`` can only lower it.
    :return: ``{"changes", "until", "version", "cursor", "operations"}`` and,
        on the first page of a pull, ``"total"``; ``changes`` holds, by table
        name, ``{"columns", "values", "commands", "deleted"}`` (see
        :doc:`/protocol`). ``operations`` counts the logged operations the
        page covers (before compression to one per row), ``total`` those
        the whole pull covers: a progress bar's position and length.
    """
    request = validate(message, "PullRequest")
    since: int = request["since"]
    limit = min(request.get("limit", page_size), page_size)
    after = _parse_cursor(request.get("cursor"), since)
    # Versions committed so far get their numbers first (in a transaction of
    # their own), so the page holds everything committed before the pull.
    number_versions(session.get_bind(clause=tables.versions), tables)
    check_not_trimmed(session, tables, since, "last pulled version")
    current = current_version(session, tables)
    if since > current:
        raise ValidationError(
            f"since {since} is newer than the server's latest version "
            f"{current}; the node must repair from this server.",
            code="pull.ahead_of_server",
        )

    versions, operations = tables.versions, tables.operations
    selected: list[Any] = [
        versions.c.number,
        operations.c.id,
        operations.c.table_name,
        operations.c.row_key,
        operations.c.command,
        versions.c.node_id,
        operations.c.changed_columns,
    ]
    if share is not None:
        selected += [operations.c.scope_before, operations.c.scope_after]

    def served(position: tuple[int, int] | None) -> sa.Select[Any]:
        query = (
            sa.select(*selected)
            .join(versions, versions.c.id == operations.c.version_id)
            .where(
                _after(versions.c.number, operations.c.id, since, position),
                versions.c.number <= current,
            )
        )
        if share is not None:
            query = query.where(share.log_filter(operations))
        return query

    order = (versions.c.number, operations.c.id)
    window, more = _window(session, served, order, after, limit)
    numbers, op_ids, names, keys, logged, writers, changed, *tags = window
    # A progress total for the node, counted on a pull's first page only:
    # counting what is left on every page would cost the square of a pull.
    total: int | None = None
    if after is None:
        total = len(numbers) if not more else _count(session, served(None))
    if more:
        last_number, last_id = numbers[-1], op_ids[-1]
        # The last version may continue on the next page.
        until = max(since, last_number - 1)
        cursor: str | None = f"{last_number}:{last_id}"
    else:
        until, cursor = current, None

    aware = stores_time_zones(session.get_bind(clause=operations).dialect)
    # Two facts about integer keys survive compression: a row added and
    # removed within the page is sent as a delete (its key was taken), and a
    # row deleted and added again as a delete plus an insert (a new row
    # under an old key), not as an update. See :ref:`reused-keys`.
    integer_keyed = {n for n, t in schema.tables.items() if t.single_integer_key}
    commands = compressed_commands(
        names, keys, logged, report_vanished=True, watch_replaced=integer_keyed
    )
    patched = patched_columns(names, keys, logged, changed, writers, node_id)
    walk: RowWalk | None = None
    if share is not None:
        walk = walk_rows(
            share, names, keys, logged, tags[0], tags[1], writers, node_id
        )
    leave_out_own_rows(
        commands, names, keys, logged, writers, changed, node_id, patched
    )
    if walk is not None:
        # A row the node itself moved out of its share still leaves it.
        for name, key in walk.out_last:
            if walk.had.get((name, key)) and key not in commands.get(name, {}):
                commands.setdefault(name, {})[key] = UPDATE
    changes: dict[str, Any] = {}
    brought: dict[str, dict[str, str]] = {}
    for name, info in schema.tables.items():
        keyed = {**brought.pop(name, {}), **commands.get(name, {})}
        if not keyed:
            continue
        scoped = None if share is None else _ShareView(share, walk, name)
        part = table_changes(
            session, info, keyed, aware, patched.get(name, {}), scoped
        )
        if part is not None:
            changes[name] = part
        if share is not None and scoped is not None and scoped.entered:
            children = entering_children(session, share, name, scoped.entered)
            for child, child_keys in children.items():
                child_info = schema.tables[child]
                into = brought.setdefault(child, {})
                for child_key in child_keys:
                    text = child_info.encode_key(child_key)
                    into[text] = INSERT
                    scoped_child = (child, text)
                    assert walk is not None
                    walk.had.setdefault(scoped_child, False)
    page: dict[str, Any] = {
        "changes": changes,
        "until": until,
        "version": current,
        "cursor": cursor,
        "operations": len(numbers),
    }
    if total is not None:
        page["total"] = total
    return page


def record_pulled(
    session: Session,
    tables: LogTables,
    schema: TrackedSchema,
    node_id: int,
    page: dict[str, Any],
    message: Any,
    *,
    now: datetime.datetime | None = None,
) -> None:
    """Write what serving ``page`` (from :func:`read_page`) to the node
    means, without committing: the node's ``last_pulled_version`` (how far
    the log may be trimmed) and ``last_seen_at``, and the key blocks the
    request asked for, added to the page as ``"keys"``.

    The caller commits before sending the page: a node must never hold keys
    the server has not reserved for it.

    :param message: the pull request, already validated by :func:`read_page`.
    """
    nodes = nodes_table(tables)
    session.execute(
        sa.update(nodes)
        .where(nodes.c.id == node_id)
        .values(
            last_pulled_version=page["until"],
            last_seen_at=now or datetime.datetime.now(datetime.timezone.utc),
        )
    )
    blocks = reserve_key_blocks(session, schema, message.get("keys") or ())
    if blocks:
        page["keys"] = blocks


#: A page reads at most this many times its size of logged operations.
SCAN_FACTOR = 10


def _window(
    session: Session,
    served: Callable[[tuple[int, int] | None], sa.Select[Any]],
    order: Sequence[sa.ColumnElement[Any]],
    after: tuple[int, int] | None,
    limit: int,
) -> tuple[list[list[Any]], bool]:
    """The operations of one page, column by column, and whether more
    follow.

    A page holds the operations of at most ``limit`` rows: the log is read
    ``limit`` operations at a time, after ``after``, until the next
    operation would bring a row more, or ``limit`` x :data:`SCAN_FACTOR`
    operations are read. Many changes of the same rows (a row updated again
    and again) thus travel in one page, as one change each, instead of
    being sent again page after page; where every operation is a row of its
    own, a page is the ``limit`` operations it always was.

    :param served: the query of the operations after a position (``None``:
        after the pull's ``since``).
    :param order: the log's order (version number, operation id).
    """
    window: list[list[Any]] | None = None
    seen: set[tuple[str, str]] = set()
    position = after
    read = 0
    while True:
        query = served(position).order_by(*order).limit(limit + 1)
        chunk = _columns(session, query, ("number", "id"))
        numbers, op_ids, names, keys = chunk[:4]
        fetched = min(len(numbers), limit)
        end, cut = fetched, False
        for index in range(fetched):
            row = (names[index], keys[index])
            if row not in seen:
                if len(seen) == limit:
                    end, cut = index, True
                    break
                seen.add(row)
        if window is None:
            window = [column[:end] for column in chunk]
        else:
            for column, part in zip(window, chunk, strict=True):
                column.extend(part[:end])
        read += end
        if cut:
            return window, True
        if len(numbers) <= limit:
            return window, False
        if read >= limit * SCAN_FACTOR:
            return window, True
        position = (numbers[end - 1], op_ids[end - 1])


def _count(session: Session, query: sa.Select[Any]) -> int:
    counted = sa.select(sa.func.count()).select_from(query.subquery())
    return int(session.execute(counted).scalar() or 0)


def change_count(page: Mapping[str, Any]) -> int:
    """How many rows a pull page changes (written and deleted)."""
    return sum(
        len(table["commands"]) + len(table["deleted"][0])
        for table in page["changes"].values()
    )


def _parse_cursor(cursor: str | None, since: int) -> tuple[int, int] | None:
    if cursor is None:
        return None
    number, _, op_id = cursor.partition(":")
    position = int(number), int(op_id)
    if max(position) > BIGINT_MAX:
        raise ValidationError(
            f"cursor {cursor!r} points past any version; start the pull again."
        )
    if position[0] <= since:
        raise ValidationError("cursor points before since; start the pull again.")
    return position


def _after(
    number: sa.ColumnElement[Any],
    op_id: sa.ColumnElement[Any],
    since: int,
    after: tuple[int, int] | None,
) -> sa.ColumnElement[bool]:
    """Operations after version ``since``, or after the cursor's operation."""
    if after is None:
        return number > since
    return sa.or_(number > after[0], sa.and_(number == after[0], op_id > after[1]))


def table_changes(
    session: Session,
    info: TrackedTable,
    commands: Mapping[str, str],
    aware: bool,
    patched: Mapping[str, frozenset[str] | None] = {},  # noqa: B006 (read only)
    scoped: _ShareView | None = None,
) -> dict[str, Any] | None:
    """One table's part of a page, in wire form: the current rows of the keys
    inserted or updated, column by column, with their commands, and the
    deleted keys (a row gone since is sent as a delete). ``None`` when
    nothing is left.

    :param commands: compressed commands by logged key text.
    :param patched: by logged key text, the columns an update changed (see
        :func:`.pull_rows.patched_columns`); rows not named are whole.
    :param scoped: the node's share of the table: rows outside it are not
        sent (those the node had are listed in ``evicted``), rows the node
        did not have are sent as inserts.
    """
    codecs = list(synced_codecs(info, aware_storage=aware).values())
    pk_codecs = key_codecs(info, codecs)
    table_columns = list(info.synced_columns)
    positions = [table_columns.index(c) for c in info.pk_columns]
    integer = info.single_integer_key
    # Each row is identified by its integer key, or else by its logged text
    # (the database's rows are encoded the same way to be matched). No tuple
    # per row where it can be helped: the garbage collector scans every
    # container allocated, and a page allocates them by the thousand.
    numbers = _integer_keys(list(commands)) if integer else None
    wanted: dict[Any, str] = {}
    typed: dict[str, tuple[Any, ...]] = {}
    gone: list[Any] = []
    if numbers is not None:
        wanted = dict(zip(numbers, commands.values(), strict=True))
        if DELETE in commands.values():
            gone = [n for n, c in wanted.items() if c == DELETE]
            wanted = {n: c for n, c in wanted.items() if c != DELETE}
    else:
        for text, command in commands.items():
            ident: Any = _integer_key(text) if integer else None
            if ident is None:
                ident = text
                typed[text] = key_from_log(decode_key(text), pk_codecs)
            if command == DELETE:
                gone.append(ident)
            else:
                wanted[ident] = command

    single = len(positions) == 1
    keys = [(typed[i][0] if single else typed[i]) if i in typed else i for i in wanted]
    values = _current_rows(
        session, info, keys, None if scoped is None else scoped.condition
    )
    if integer:
        idents: list[Any] = values[positions[0]]
    else:
        key_columns = [values[p] for p in positions]
        idents = [encode_key(k) for k in zip(*key_columns, strict=True)]
    if any(ident not in wanted for ident in idents):
        # A row matched without being asked for (a case-insensitive
        # collation): leave it out.
        kept = [n for n, ident in enumerate(idents) if ident in wanted]
        values = [[column[n] for n in kept] for column in values]
        idents = [idents[n] for n in kept]
    found = set(idents)
    missing = [ident for ident in wanted if ident not in found]
    evicted: list[Any] = []
    if scoped is not None:
        text_of = _text_of
        if missing:
            # Outside the share now, or gone: the node had the row, or not.
            asked = [
                (typed[i][0] if single else typed[i]) if i in typed else i
                for i in missing
            ]
            present = _present_keys(session, info, asked, integer, positions)
            outside = [i for i in missing if i in present]
            missing = [i for i in missing if i not in present]
            evicted = [i for i in outside if scoped.had(text_of(i))]
        for ident in idents:
            text = text_of(ident)
            if not scoped.had(text):
                wanted[ident] = INSERT
                scoped.whole.add(text)
                scoped.entered.append(
                    typed[ident] if ident in typed else (ident,)
                )
            elif scoped.left(text):
                if wanted[ident] == INSERT:
                    continue
                scoped.whole.add(text)
    gone += missing
    if REPLACED in wanted.values():
        # A new row under an old key: the old row's delete, then the insert.
        gone += [ident for ident in idents if wanted[ident] == REPLACED]
        wanted = {i: INSERT if c == REPLACED else c for i, c in wanted.items()}

    for i, codec in enumerate(codecs):
        if not codec.json_as_is:
            encode = codec.encode
            values[i] = [None if v is None else encode(v) for v in values[i]]
    deleted = _wire_keys(gone, typed, pk_codecs, len(positions))
    if not idents and not gone and not evicted:
        return None
    part: dict[str, Any] = {
        "columns": [c.name for c in codecs],
        "values": values,
        "commands": "".join([wanted[ident] for ident in idents]),
        "deleted": deleted,
    }
    if evicted:
        part["evicted"] = _wire_keys(evicted, typed, pk_codecs, len(positions))
    if scoped is not None and scoped.whole:
        patched = {k: v for k, v in patched.items() if k not in scoped.whole}
    if patched:
        position = {c.name: n for n, c in enumerate(codecs)}
        marks: list[list[int] | None] = []
        for ident in idents:
            text = f"[{ident}]" if type(ident) is int else ident
            columns = patched.get(text) if wanted[ident] != INSERT else None
            marks.append(
                None
                if columns is None
                else sorted(position[c] for c in columns if c in position)
            )
        if any(mark is not None for mark in marks):
            part["changed"] = marks
            _leave_out_unchanged(values, marks, positions)
    return part


def _leave_out_unchanged(
    values: list[list[Any]], marks: Sequence[list[int] | None], keys: Sequence[int]
) -> None:
    """Make each marked row a patch: its values in the columns it did not
    change are sent as ``null`` (the node completes them, see
    :ref:`patches in pull pages <pull-patches>`); its key columns and the
    marked ones stay."""
    kept = set(keys)
    for n, mark in enumerate(marks):
        if mark is None:
            continue
        shown = kept.union(mark)
        for position, column in enumerate(values):
            if position not in shown:
                column[n] = None


class _ShareView:
    """One table's part of a node's share, while a page is served."""

    def __init__(self, share: Share, walk: RowWalk | None, name: str) -> None:
        self.name = name
        self.walk = walk
        self.condition = share.condition(share.tables[name])
        #: Logged keys sent whole (entering the share, or back in it).
        self.whole: set[str] = set()
        #: Typed keys of rows that entered the share (their children follow).
        self.entered: list[tuple[Any, ...]] = []

    def had(self, text: str) -> bool:
        """Whether the node had the row before the page (rows of tables
        not routed: yes)."""
        if self.walk is None:
            return True
        return self.walk.had.get((self.name, text), True)

    def left(self, text: str) -> bool:
        return self.walk is not None and (self.name, text) in self.walk.left


def _text_of(ident: Any) -> str:
    """The logged key text of a page row's identity (an integer key, or
    the text itself)."""
    return f"[{ident}]" if type(ident) is int else str(ident)


def _wire_keys(
    idents: Sequence[Any],
    typed: Mapping[str, tuple[Any, ...]],
    pk_codecs: Sequence[Any],
    width: int,
) -> list[list[Any]]:
    """Keys in wire form, column-wise (as ``deleted`` and ``evicted``)."""
    columns: list[list[Any]] = [[] for _ in range(width)]
    for ident in idents:
        key = typed[ident] if ident in typed else (ident,)
        for column, codec, value in zip(columns, pk_codecs, key, strict=True):
            column.append(codec.to_json(value))
    return columns


def _present_keys(
    session: Session,
    info: TrackedTable,
    keys: Sequence[Any],
    integer: bool,
    positions: Sequence[int],
) -> set[Any]:
    """The identities (as :func:`table_changes` keeps them) of the rows
    among ``keys`` that exist, in any share."""
    values = _current_rows(session, info, keys, key_only=True)
    if integer:
        return set(values[0])
    return {encode_key(k) for k in zip(*values, strict=True)}


def _integer_keys(texts: list[str]) -> list[int] | None:
    """The values of logged one-integer keys (``["[7]", "[8]"]``), parsed in
    one go, or ``None`` if some text is not one.

    The texts are joined into one JSON array (``[7,8]``); as none holds a
    comma, each gave exactly one value when the counts match.
    """
    joined = "".join(texts)
    if "," in joined or joined[:1] != "[" or joined[-1:] != "]":
        return None
    try:
        values = json.loads(joined.replace("][", ","))
    except ValueError:
        return None
    if len(values) != len(texts) or not all(type(v) is int for v in values):
        return None
    return values  # type: ignore[no-any-return]


def _integer_key(text: str) -> int | None:
    """The value of a logged one-integer key (``"[7]"``), or ``None``."""
    if text[:1] != "[" or text[-1:] != "]":
        return None
    try:
        return int(text[1:-1])
    except ValueError:
        return None


#: Key column types PostgreSQL compares with ``= ANY(array)`` as they are.
_ARRAY_KEYS = (sa.Integer, sa.String, sa.Uuid, sa.Date)


def _current_rows(
    session: Session,
    info: TrackedTable,
    keys: Sequence[Any],
    share_condition: sa.ColumnElement[bool] | None = None,
    *,
    key_only: bool = False,
) -> list[list[Any]]:
    """The live rows among ``keys`` (values for a one-column key, tuples
    otherwise), column by column (see :func:`_columns`): one ``=
    ANY(array)`` query on PostgreSQL for a one-column key, batched ``IN``
    queries elsewhere.

    :param share_condition: only rows that also meet it (a node's share).
    :param key_only: read the key columns only.
    """
    table_columns = list(info.pk_columns if key_only else info.synced_columns)
    if not keys:
        return [[] for _ in table_columns]
    pk = list(info.pk_columns)
    dialect = session.get_bind(clause=info.table).dialect
    kind = pk[0].type
    if (
        dialect.name == "postgresql"
        and len(pk) == 1
        and isinstance(kind, _ARRAY_KEYS)
        and not isinstance(kind, sa.Enum)
        and not getattr(kind, "collation", None)
    ):
        array = postgresql.ARRAY(kind)
        condition: sa.ColumnElement[bool]
        if isinstance(kind, sa.Integer) and all(type(k) is int for k in keys):
            # One string of array text instead of thousands of values for the
            # driver to adapt; unnested once, in a subquery.
            text = "{" + ",".join(map(str, keys)) + "}"
            unnested = sa.func.unnest(sa.cast(sa.bindparam("keys", text), array))
            condition = pk[0].in_(sa.select(unnested).scalar_subquery())
        else:
            param = sa.bindparam("keys", list(keys), type_=array)
            condition = pk[0] == sa.any_(sa.cast(param, array))
        query = sa.select(*table_columns).where(condition)
        if share_condition is not None:
            query = query.where(share_condition)
        return _columns(session, query, ())
    found: list[list[Any]] = [[] for _ in table_columns]
    for batch in batches(keys, KEY_BATCH):
        condition = pk[0].in_(batch) if len(pk) == 1 else key_filter(pk, batch)
        query = sa.select(*table_columns).where(condition)
        if share_condition is not None:
            query = query.where(share_condition)
        for column, more in zip(found, _columns(session, query, ()), strict=True):
            column += more
    return found


def _columns(
    session: Session, query: sa.Select[Any], order: Sequence[str]
) -> list[list[Any]]:
    """The result of ``query``, one list of values per selected column.

    No SQLAlchemy row object is made per row: on a page of thousands of rows
    those objects cost more than the query, mostly in garbage collector
    passes. On PostgreSQL (psycopg), when every column has a type the driver
    reads from an array exactly as from a single value, the database hands
    over each column as one array (``array_agg``, every aggregate in the
    same ``order``), so not even the driver makes an object per row.
    Elsewhere the rows are read from the driver's cursor and turned into
    columns in one step, with each column type's result processing applied
    a column at a time.

    :param order: keys of selected columns by which the rows must be sorted,
        as ``query`` sorts them.
    """
    selected = list(query.selected_columns)
    connection = session.connection(bind_arguments={"clause": query})
    dialect = connection.dialect
    if (dialect.name, dialect.driver) == ("postgresql", "psycopg") and all(
        _plain_array_type(c.type) for c in selected
    ):
        inner = query.subquery()
        # Untyped, so the driver's own values arrive unprocessed.
        aggregates = [
            sa.func.array_agg(column, type_=sa.types.NullType()) for column in inner.c
        ]
        arrays = connection.execute(sa.select(*aggregates)).one()
        # An array of a type psycopg has no loader for (a String column over
        # citext, an enum or a domain) arrives as its text: read rows instead.
        if all(values is None or isinstance(values, list) for values in arrays):
            # Aggregates of one query level read the same rows in the same
            # order, so the arrays line up; the subquery's order usually
            # survives, and is restored here when it does not.
            columns = [[] if values is None else values for values in arrays]
            return _in_order(columns, [list(inner.c.keys()).index(k) for k in order])
    result = connection.execute(query)
    try:
        cursor = result.cursor
        described = [d[1] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        result.close()
    columns = [list(c) for c in zip(*rows, strict=True)]
    if not columns:
        return [[] for _ in selected]
    for i, (column, type_code) in enumerate(zip(selected, described, strict=True)):
        impl = column.type.dialect_impl(dialect)
        process = impl.result_processor(dialect, type_code)
        if process is not None:
            columns[i] = [process(v) for v in columns[i]]
    return columns


def _in_order(columns: list[list[Any]], order: Sequence[int]) -> list[list[Any]]:
    """``columns`` with their rows sorted by the columns at ``order``."""
    if not order or not columns[0]:
        return columns
    keys = list(zip(*[columns[i] for i in order], strict=True))
    if all(a <= b for a, b in zip(keys, keys[1:])):  # noqa: B905
        return columns
    sequence = sorted(range(len(keys)), key=keys.__getitem__)
    return [[column[n] for n in sequence] for column in columns]


def _plain_array_type(kind: sa.types.TypeEngine[Any]) -> bool:
    """Whether psycopg reads an array of this type into the same Python
    values SQLAlchemy returns for single values."""
    if isinstance(kind, (sa.types.TypeDecorator, sa.Enum, sa.JSON, sa.ARRAY)):
        return False
    if isinstance(kind, sa.Float):
        return not kind.asdecimal
    if isinstance(kind, sa.Numeric):
        return bool(kind.asdecimal)
    if isinstance(kind, sa.Uuid):
        return bool(kind.as_uuid)
    return isinstance(
        kind,
        (
            sa.Integer,
            sa.String,
            sa.Boolean,
            sa.Date,
            sa.DateTime,
            sa.Time,
            sa.LargeBinary,
        ),
    )
