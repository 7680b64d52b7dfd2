"""Bringing a node's database file to its models (see :doc:`/schema-changes`):
what :meth:`SyncClient.migrate <flask_reflectsync.client.SyncClient.migrate>`
does after the node's app got the server's new model code.

In one local transaction (SQLite's DDL is transactional): tables the models
name and the file lacks are created; a column the models name and the file
lacks is either an old column of the file renamed (``ALTER TABLE ... RENAME
COLUMN``, keeping its data, and the queued operations, the kept bases and
the set-aside rows rewritten to the new name) or added. Which old column
became which is, in turn: what the app says (``renames``), what the
server's catalog knows (asked with ``POST /schema-check`` when a table both
lost and gained columns: a PostgreSQL server tells renames and drops by
column identity), then the shape (each the other's only candidate by kind
of value, then by exact type); what none of them decides is refused with
the candidates named, nothing changed. Then what the node could not store
before is fetched from the server: the added columns' values of the rows it
has, and the rows of the new tables. Columns the file has and the models no
longer name are left in place (their data is kept; nothing syncs them).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import ConfigurationError
from ..rows import read_rows, row_key, write_rows
from ..tracking import TrackedTable
from ..wire.codec import codec_for
from ..wire.messages import PROTOCOL_VERSION
from ..wire.schema import pair_by_kind
from . import push as _push
from .keys import HighWater
from .query import server_rows
from .state import record_synced
from .tables import NODE_BASES, NODE_KEYS, NODE_LOG, NODE_SET_ASIDE

if TYPE_CHECKING:
    from .client import SyncClient


@dataclass(frozen=True)
class Migration:
    """What :meth:`SyncClient.migrate` did.

    :param created: the tables created, by name.
    :param renamed: by table, the columns renamed (``{old: new}``).
    :param added: by table, the columns added.
    :param fetched: rows fetched from the server (of new tables, and rows
        whose added columns were filled).
    """

    created: list[str] = field(default_factory=list)
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)
    added: dict[str, list[str]] = field(default_factory=dict)
    fetched: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything was created, renamed or added."""
        return bool(self.created or self.renamed or self.added)


#: Renames the app gives :meth:`SyncClient.migrate`: by table, each old
#: column's new name (``None``: not renamed, the new columns are added).
Renames = Mapping[str, Mapping[str, "str | None"]]


def migrate(client: SyncClient, renames: Renames | None = None) -> Migration:
    """What :meth:`SyncClient.migrate` does."""
    with client._lock:
        client._registered()
        # A push in flight was built with the old names: settled first.
        _push.settle_push(client)
        if client._state().push_id is not None:
            raise ConfigurationError(
                "A push of this node is still unanswered; push (or "
                "synchronize) first, then migrate."
            )
        told = _server_told(client)
        with client._begin() as connection:
            plan = _plan(client, connection, told, renames or {})
            for name in plan.created:
                client.schema.tables[name].table.create(connection)
            for name, renamed in plan.renamed.items():
                for old, new in renamed.items():
                    _rename(connection, client.schema.tables[name], old, new)
            for name, columns in plan.added.items():
                info = client.schema.tables[name]
                for column in columns:
                    _add(connection, info.table.c[column])
            if plan.created:
                HighWater(connection, NODE_KEYS).raise_to_tables(client.schema)
        client._local_checked = False
        client._description = None
        client._digests = None
        fetched = _fetch(client, plan)
        client._unserved.clear()
        return Migration(plan.created, plan.renamed, plan.added, fetched)


#: What the server's catalog told of a table's old columns: by table, each
#: column's new name, or ``None`` for dropped.
Told = dict[str, dict[str, "str | None"]]


def _file_columns(
    connection: sa.Connection, client: SyncClient
) -> dict[str, tuple[dict[str, Any], list[sa.Column[Any]]]]:
    """By tracked table on the file that has columns the models no longer
    name *and* columns it lacks: the former (inspected) and the latter."""
    inspector = sa.inspect(connection)
    existing = set(inspector.get_table_names())
    found = {}
    for info in client._schema_on(connection).tables.values():
        table = info.table
        if table.name not in existing:
            continue
        on_file = {c["name"]: c for c in inspector.get_columns(table.name)}
        unused = {n: c for n, c in on_file.items() if n not in table.c}
        wanted = [c for c in table.columns if c.name not in on_file]
        if unused and wanted:
            found[info.name] = (unused, wanted)
    return found


def _server_told(client: SyncClient) -> Told:
    """Ask the server (``POST /schema-check``, with no lock held) what its
    catalog knows of the file's old columns, where a table both lost and
    gained columns: renamed to which, or dropped (PostgreSQL servers; others
    know nothing, and the shape decides)."""
    with client.engine.connect() as connection:
        tables = _file_columns(connection, client)
    if not tables:
        return {}
    description = {}
    for name, (unused, wanted) in tables.items():
        # The table as the file has it: the server compares it as an old
        # node's.
        info = client.schema.tables[name]
        lacking = {c.name for c in wanted}
        kinds = {
            c.name: codec_for(c).kind
            for c in info.synced_columns
            if c.name not in lacking
        }
        for column, found in unused.items():
            kinds[column] = _kind(found)
        description[name] = kinds
    answer = client._call(
        "POST",
        "/schema-check",
        message={"protocol": PROTOCOL_VERSION, "schema": description},
    )
    told: Told = {}
    for difference in answer.get("differences") or []:
        if not isinstance(difference, dict) or difference.get("known") is not True:
            continue
        table, column = str(difference.get("table")), str(difference.get("column"))
        if difference.get("problem") != "node_only_column" or table not in tables:
            continue
        if column not in tables[table][0]:
            continue
        partner = difference.get("renamed_to")
        told.setdefault(str(table), {})[str(column)] = (
            str(partner) if isinstance(partner, str) else None
        )
    return told


def _kind(inspected: Mapping[str, Any]) -> str:
    return codec_for(sa.Column(inspected["name"], inspected["type"])).kind


def _plan(
    client: SyncClient, connection: sa.Connection, told: Told, renames: Renames
) -> Migration:
    inspector = sa.inspect(connection)
    existing = set(inspector.get_table_names())
    plan = Migration()
    tables = client._schema_on(connection).tables
    unknown = [t for t in renames if t not in tables]
    if unknown:
        raise ConfigurationError(
            f"renames names {', '.join(unknown)}, which this node does not track."
        )
    for info in tables.values():
        table = info.table
        if table.name not in existing:
            plan.created.append(info.name)
            continue
        on_file = {c["name"]: c for c in inspector.get_columns(table.name)}
        wanted = [c for c in table.columns if c.name not in on_file]
        unused = {n: c for n, c in on_file.items() if n not in table.c}
        given = _given(info.name, renames.get(info.name, {}), unused, wanted)
        # The app's word first, then the server's catalog, then the shape.
        decided: dict[str, str | None] = {**told.get(info.name, {}), **given}
        decided = {
            old: new
            for old, new in decided.items()
            if old in unused and (new is None or new in table.c)
        }
        taken = {new for new in decided.values() if new is not None}
        pairs, unclear = _pair_by_shape(
            connection,
            {n: c for n, c in unused.items() if n not in decided},
            [c for c in wanted if c.name not in taken],
        )
        if unclear:
            raise _ambiguous(info.name, unclear)
        renamed = {
            **{old: new for old, new in decided.items() if new is not None},
            **pairs,
        }
        if renamed:
            plan.renamed[info.name] = renamed
        added = [c.name for c in wanted if c.name not in renamed.values()]
        if added:
            plan.added[info.name] = added
        left = [n for n in unused if n not in renamed]
        if left and wanted and _queued(connection, info.name):
            raise ConfigurationError(
                f"The node's file has {', '.join(f'{info.name}.{n}' for n in left)}"
                f", which the models no longer name, and changes of {info.name} "
                "are queued: their values there could not be pushed under a new "
                "name. Rename the column in the file yourself (ALTER TABLE ... "
                "RENAME COLUMN) or say which it became (migrate(renames=...), "
                "reflectsync-node migrate --rename), then migrate."
            )
    return plan


def _given(
    table: str,
    given: Mapping[str, str | None],
    unused: Mapping[str, Any],
    wanted: list[sa.Column[Any]],
) -> dict[str, str | None]:
    """The app's renames of ``table``, checked against the file and the
    models."""
    names = {c.name for c in wanted}
    for old, new in given.items():
        if old not in unused:
            raise ConfigurationError(
                f"renames: {table}.{old} is not a column of the node's file "
                "that the models no longer name."
            )
        if new is not None and new not in names:
            raise ConfigurationError(
                f"renames: {table}.{new} is not a column the models name and "
                "the node's file lacks."
            )
    return dict(given)


def _pair_by_shape(
    connection: sa.Connection, old: Mapping[str, Any], wanted: list[sa.Column[Any]]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Old columns of the file paired with new columns of the models: by
    the kind of value they hold, each the other's only candidate (``a -> x``
    and ``b -> y`` when one pair holds strings and the other integers);
    where that does not decide, by exact type among the candidates
    (``VARCHAR(8)`` beside a ``VARCHAR(200)``). Returns the pairs and, for
    the old columns still undecided, their candidates."""
    dialect = connection.dialect
    pairs, unclear = pair_by_kind(
        {n: _kind(c) for n, c in old.items()},
        {c.name: codec_for(c).kind for c in wanted},
    )
    if not unclear:
        return pairs, {}
    by_name = {c.name: c for c in wanted}
    among = {n for found in unclear.values() for n in found}
    exact, still = pair_by_kind(
        {n: old[n]["type"].compile(dialect=dialect) for n in unclear},
        {n: by_name[n].type.compile(dialect=dialect) for n in sorted(among)},
    )
    pairs.update(exact)
    return pairs, {n: unclear[n] for n in unclear if n not in exact}


def _ambiguous(table: str, unclear: Mapping[str, list[str]]) -> ConfigurationError:
    said = "; ".join(
        f"{table}.{old} to {' or '.join(found)}" for old, found in unclear.items()
    )
    chosen: dict[str, str] = {}
    for old, found in unclear.items():
        free = [c for c in found if c not in chosen.values()]
        chosen[old] = (free or found)[0]
    example = ", ".join(f"{old!r}: {new!r}" for old, new in chosen.items())
    return ConfigurationError(
        f"Which columns of {table} were renamed cannot be told: the node's "
        f"file could have renamed {said} (the same type of value; the server "
        "does not know either). Nothing was changed. Say it: "
        f"migrate(renames={{{table!r}: {{{example}}}}}) (None for a column "
        f"that was not renamed), or reflectsync-node migrate --rename "
        f"{table}.OLD=NEW, or rename the columns in the file yourself (ALTER "
        "TABLE ... RENAME COLUMN), then migrate."
    )


def _queued(connection: sa.Connection, table: str) -> bool:
    operations = NODE_LOG.operations
    found = connection.execute(
        sa.select(operations.c.id).where(operations.c.table_name == table).limit(1)
    ).first()
    return found is not None


def _rename(
    connection: sa.Connection, info: TrackedTable, old: str, new: str
) -> None:
    preparer = connection.dialect.identifier_preparer
    connection.execute(
        sa.text(
            f"ALTER TABLE {preparer.format_table(info.table)} RENAME COLUMN "
            f"{preparer.quote(old)} TO {preparer.quote(new)}"
        )
    )
    # The node's own records name columns: queued updates' changed columns,
    # kept bases, set-aside rows.
    operations = NODE_LOG.operations
    queued = connection.execute(
        sa.select(operations.c.id, operations.c.changed_columns).where(
            operations.c.table_name == info.name,
            operations.c.changed_columns.is_not(None),
        )
    ).all()
    for ident, text in queued:
        names = json.loads(text)
        if old in names:
            renamed = sorted(new if n == old else n for n in names)
            connection.execute(
                sa.update(operations)
                .where(operations.c.id == ident)
                .values(changed_columns=json.dumps(renamed))
            )
    for table, column in ((NODE_BASES, "base_values"), (NODE_SET_ASIDE, "row")):
        rows = connection.execute(
            sa.select(table.c.id, table.c[column]).where(
                table.c.table_name == info.name, table.c[column].is_not(None)
            )
        ).all()
        for ident, text in rows:
            values: dict[str, Any] = json.loads(text)
            if old in values:
                values[new] = values.pop(old)
                connection.execute(
                    sa.update(table)
                    .where(table.c.id == ident)
                    .values({column: json.dumps(values)})
                )


def _add(connection: sa.Connection, column: sa.Column[Any]) -> None:
    """``ALTER TABLE ... ADD COLUMN``: nullable (SQLite adds a ``NOT NULL``
    column only with a default, and the rows it has get their values from
    the server next), with the column's server default."""
    dialect = connection.dialect
    preparer = dialect.identifier_preparer
    kind = column.type.compile(dialect=dialect)
    default = ""
    server_default = column.server_default
    if isinstance(server_default, sa.DefaultClause):
        arg = server_default.arg
        text = (
            str(arg.compile(dialect=dialect))
            if isinstance(arg, sa.sql.ClauseElement)
            else "'" + str(arg).replace("'", "''") + "'"
        )
        default = f" DEFAULT {text}"
    connection.execute(
        sa.text(
            f"ALTER TABLE {preparer.format_table(column.table)} ADD COLUMN "
            f"{preparer.quote(column.name)} {kind}{default}"
        )
    )


def _fetch(client: SyncClient, plan: Migration) -> int:
    """Fetch, with no lock held while waiting for the server, the rows of
    the new tables and the added columns of the rows the node has; write
    them in one transaction, logging nothing."""
    fetched = 0
    inserts: dict[str, list[dict[str, Any]]] = {}
    for name in plan.created:
        info = client.schema.tables[name]
        inserts[name] = list(server_rows(client, info, {}))
    filled: dict[str, list[dict[str, Any]]] = {}
    for name, columns in plan.added.items():
        info = client.schema.tables[name]
        keys = [c.name for c in info.pk_columns]
        filled[name] = [
            {c: row[c] for c in (*keys, *columns) if c in row}
            for row in server_rows(client, info, {})
        ]
    with client._begin() as connection:
        for name, rows in inserts.items():
            info = client.schema.tables[name]
            have = {
                row_key(info, r)
                for r in read_rows(connection, info, [row_key(info, r) for r in rows])
            }
            fresh = [r for r in rows if row_key(info, r) not in have]
            write_rows(connection, info, fresh, [])
            fetched += len(fresh)
        # The new tables hold the server's rows now (see catch_up.py; a
        # file of an earlier release keeps no list yet: the catch-up finds
        # them holding the server's rows).
        if client._state(connection).synced_tables is not None:
            record_synced(connection, inserts)
        for name, rows in filled.items():
            info = client.schema.tables[name]
            present = {
                row_key(info, r)
                for r in read_rows(connection, info, [row_key(info, r) for r in rows])
            }
            updates = [r for r in rows if row_key(info, r) in present]
            write_rows(connection, info, [], updates)
            fetched += len(updates)
    return fetched
