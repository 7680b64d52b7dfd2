"""Bringing a node's database file to its models (see :doc:`/schema-changes`):
what :meth:`SyncClient.migrate <flask_reflectsync.client.SyncClient.migrate>`
does after the node's app got the server's new model code.

In one local transaction (SQLite's DDL is transactional): tables the models
name and the file lacks are created; a column the models name and the file
lacks is, when the same table has exactly one column the models no longer
name and it holds the same kind of value, the old one renamed (``ALTER
TABLE ... RENAME COLUMN``, keeping its data, and the queued operations, the
kept bases and the set-aside rows rewritten to the new name), otherwise
added. Then what the node could not store before is fetched from the
server: the added columns' values of the rows it has, and the rows of the
new tables. Columns the file has and the models no longer name are left in
place (their data is kept; nothing syncs them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..errors import ConfigurationError
from ..rows import read_rows, row_key, write_rows
from ..tracking import TrackedTable
from ..wire.codec import codec_for
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


def migrate(client: SyncClient) -> Migration:
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
        with client._begin() as connection:
            plan = _plan(client, connection)
            for name in plan.created:
                client.schema.tables[name].table.create(connection)
            for name, renames in plan.renamed.items():
                for old, new in renames.items():
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


def _plan(client: SyncClient, connection: sa.Connection) -> Migration:
    inspector = sa.inspect(connection)
    existing = set(inspector.get_table_names())
    plan = Migration()
    for info in client._schema_on(connection).tables.values():
        table = info.table
        if table.name not in existing:
            plan.created.append(info.name)
            continue
        on_file = {c["name"]: c for c in inspector.get_columns(table.name)}
        wanted = [c for c in table.columns if c.name not in on_file]
        if not wanted:
            continue
        unused = [n for n in on_file if n not in table.c]
        if len(unused) == 1:
            old = on_file[unused[0]]
            partner = _renamed_to(connection, old, wanted)
            if partner is not None:
                plan.renamed[info.name] = {old["name"]: partner.name}
                wanted = [c for c in wanted if c is not partner]
        if wanted:
            plan.added[info.name] = [c.name for c in wanted]
        unused = [n for n in unused if n not in plan.renamed.get(info.name, {})]
        if unused and _queued(connection, info.name):
            raise ConfigurationError(
                f"The node's file has {', '.join(f'{info.name}.{n}' for n in unused)}"
                f", which the models no longer name, and changes of {info.name} "
                "are queued: their values there could not be pushed under a new "
                "name. Rename the column in the file yourself (ALTER TABLE ... "
                "RENAME COLUMN), then migrate."
            )
    return plan


def _renamed_to(
    connection: sa.Connection, old: Any, wanted: list[sa.Column[Any]]
) -> sa.Column[Any] | None:
    """The new column the file's only unused column was renamed to: the only
    one holding the same kind of value, or among several, the only one of
    exactly its type (``VARCHAR(8)`` beside a ``VARCHAR(200)``)."""
    kind = codec_for(sa.Column(old["name"], old["type"])).kind
    same = [c for c in wanted if codec_for(c).kind == kind]
    if len(same) > 1:
        dialect = connection.dialect
        text = old["type"].compile(dialect=dialect)
        same = [c for c in same if c.type.compile(dialect=dialect) == text]
    return same[0] if len(same) == 1 else None


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
