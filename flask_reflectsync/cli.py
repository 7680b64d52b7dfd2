"""``flask reflectsync ...``: the server's command line.

The group is added to ``app.cli`` by ``init_app`` under the name in
``REFLECTSYNC_CLI_GROUP`` (default ``reflectsync``). Every command runs inside
an app context.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from .errors import ConfigurationError
from .reflection.changes import (
    Change,
    SchemaCreated,
    SchemaDropped,
    SchemaRenamed,
    TableAltered,
    TableCreated,
    TableDropped,
    TableRenamed,
)
from .tracking.numbering import number_versions
from .tracking.tables import current_version

cli = AppGroup(
    "reflectsync",
    help="Inspect the reflected catalog and the sync server's nodes.",
)


def _state() -> Any:
    state = current_app.extensions.get("reflectsync")
    if state is None:
        raise click.ClickException(
            "The ReflectSync extension is not registered on this app; "
            "call sync.init_app(app, db) in the app factory."
        )
    return state


def describe_change(change: Change) -> str:
    """One line a person can read for a reflection change record."""
    if isinstance(change, SchemaCreated):
        return f"schema created: {change.schema.name}"
    if isinstance(change, SchemaDropped):
        return f"schema dropped: {change.schema.name}"
    if isinstance(change, SchemaRenamed):
        return f"schema renamed: {change.old_name} -> {change.new_name}"
    if isinstance(change, TableCreated):
        return f"{change.table.kind} created: {_qualified(change.table)}"
    if isinstance(change, TableDropped):
        return f"{change.table.kind} dropped: {_qualified(change.table)}"
    if isinstance(change, TableRenamed):
        schema = change.table.schema_name
        return (
            f"table renamed: {schema}.{change.old_name} -> {schema}.{change.new_name}"
        )
    if isinstance(change, TableAltered):
        parts = []
        for column in change.changes:
            if column.kind == "renamed":
                parts.append(f"column {column.old_name} renamed to {column.name}")
            elif column.kind == "altered":
                parts.append(f"column {column.name} {', '.join(column.fields)} changed")
            else:
                parts.append(f"column {column.name} {column.kind}")
        parts += [f"{attribute} changed" for attribute in change.attributes]
        return f"table altered: {_qualified(change.table)} ({'; '.join(parts)})"
    return repr(change)  # pragma: no cover - every record type is handled above


def _qualified(table: Any) -> str:
    return f"{table.schema_name}.{table.name}"


@cli.command("reflect")
@click.option(
    "--force",
    is_flag=True,
    help="Compare everything, even if the probe says nothing changed.",
)
def reflect_command(force: bool) -> None:
    """Reflect the database now and print the changes found."""
    state = _state()
    changes = state.extension.reflect(force=force)
    if not changes:
        click.echo("No changes.")
    for change in changes:
        click.echo(describe_change(change))


@cli.command("schemas")
@click.option("--deleted", is_flag=True, help="Also list dropped schemas.")
def schemas_command(deleted: bool) -> None:
    """List the schemas (refreshing them first, like GET /schemas)."""
    from .blueprints.catalog import catalog_for

    schemas = catalog_for(current_app._get_current_object()).list_schemas(  # type: ignore[attr-defined]
        include_deleted=deleted
    )
    rows = [
        (str(s.id), s.name, s.oid, _when(s.last_synced), "yes" if s.deleted else "")
        for s in schemas
    ]
    _table(("id", "name", "oid", "last synced", "deleted"), rows)


@cli.command("tables")
@click.argument("schema")
@click.option("--deleted", is_flag=True, help="Also list dropped tables.")
def tables_command(schema: str, deleted: bool) -> None:
    """List the tables of SCHEMA (a name or a catalog id), refreshing them first."""
    from .blueprints.catalog import catalog_for
    from .errors import SyncError

    catalog = catalog_for(current_app._get_current_object())  # type: ignore[attr-defined]
    schemas = catalog.list_schemas(include_deleted=True)
    match = [s for s in schemas if str(s.id) == schema or s.name == schema]
    live = [s for s in match if not s.deleted]
    if not match:
        names = ", ".join(s.name for s in schemas if not s.deleted)
        raise click.ClickException(f"No schema {schema!r}; the schemas are: {names}.")
    try:
        tables = catalog.list_tables((live or match)[0].id, include_deleted=deleted)
    except SyncError as error:
        raise click.ClickException(error.message) from error
    rows = [
        (
            str(t.id),
            t.name,
            t.kind,
            t.oid,
            _when(t.last_synced),
            "yes" if t.deleted else "",
        )
        for t in tables
    ]
    _table(("id", "name", "kind", "oid", "last synced", "deleted"), rows)


@cli.group("nodes", invoke_without_command=True)
@click.pass_context
@with_appcontext
def nodes_command(context: click.Context) -> None:
    """List registered nodes: when each was last seen, the version it has
    acknowledged and how far behind it is (lag), and its state.

    \b
    States: active; inactive (not seen for longer than
    REFLECTSYNC_NODE_INACTIVE_DAYS: no longer pins trim, told to repair
    when it returns); retired; revoked.
    """
    if context.invoked_subcommand is not None:
        return
    state = _state()
    found = state.extension.nodes(current_app._get_current_object())  # type: ignore[attr-defined]
    number_versions(state.db.engine, state.tables)
    with state.db.engine.connect() as connection:
        current = current_version(connection, state.tables)
    if not found:
        click.echo("No registered nodes.")
        return
    rows = [
        (
            str(node.id),
            node.name,
            node.state,
            _when(node.registered_at),
            _when(node.last_seen_at) if node.last_seen_at else "never",
            str(node.version),
            str(node.lag),
            _principal(node.principal),
        )
        for node in found
    ]
    _table(
        (
            "id",
            "name",
            "state",
            "registered",
            "last seen",
            "pulled up to",
            "behind",
            "principal",
        ),
        rows,
    )
    click.echo(f"Server version: {current}")


@nodes_command.command("revoke")
@click.argument("node_id", type=click.IntRange(min=1), metavar="ID")
def revoke_command(node_id: int) -> None:
    """Refuse node ID on every signed route from now on (a lost device)."""
    _fleet_mark("revoke_node", node_id)
    click.echo(f"Node {node_id} revoked: the server refuses its requests.")


@nodes_command.command("retire")
@click.argument("node_id", type=click.IntRange(min=1), metavar="ID")
def retire_command(node_id: int) -> None:
    """Stop node ID from pinning the trim watermark; it must repair if it
    comes back."""
    _fleet_mark("retire_node", node_id)
    click.echo(
        f"Node {node_id} retired: it no longer holds back trimming, and must "
        "repair if it comes back."
    )


def _fleet_mark(method: str, node_id: int) -> None:
    from .errors import SyncError

    state = _state()
    try:
        getattr(state.extension, method)(node_id, current_app._get_current_object())  # type: ignore[attr-defined]
    except SyncError as error:
        raise click.ClickException(error.message) from error


def _principal(principal: dict[str, Any]) -> str:
    """A node's principal in one cell: ``region=north team=7``."""
    return " ".join(f"{key}={value}" for key, value in sorted(principal.items()))


@cli.command("trim")
@click.option(
    "--through",
    type=click.IntRange(min=0),
    metavar="VERSION",
    help="Trim up to this version instead of the safe watermark; nodes "
    "that have not pulled that far will have to repair.",
)
@click.option(
    "--dry-run", is_flag=True, help="Say what would be trimmed, change nothing."
)
def trim_command(through: int | None, dry_run: bool) -> None:
    """Drop the logged operations every node has pulled.

    By default up to the safe watermark: the lowest version any node that
    is neither revoked, retired nor inactive has pulled. The version rows
    go too, but each node's latest push (it keeps a retried push
    exactly-once).
    """
    from .server import trim
    from .server.settings import ServerSettings

    state = _state()
    tables = state.tables
    settings = ServerSettings.from_config(state.config)
    number_versions(state.db.engine, tables)
    with state.db.engine.begin() as connection:
        current = current_version(connection, tables)
        safe = trim.safe_watermark(connection, tables, settings)
        target = safe if through is None else through
        if target > current:
            raise click.ClickException(
                f"Version {target} does not exist yet; the server is at {current}."
            )
        done = trim.trimmed_through(connection, tables)
        behind = trim.nodes_behind(connection, tables, target, settings)
        if target <= done:
            click.echo(
                f"Nothing to trim: the log is already trimmed through "
                f"version {done} (safe watermark: {safe})."
            )
            return
        ops, versions = tables.operations, tables.versions
        count = connection.execute(
            sa.select(sa.func.count())
            .select_from(ops.join(versions, versions.c.id == ops.c.version_id))
            .where(versions.c.number <= target)
        ).scalar()
        verb = "Would trim" if dry_run else "Trimmed"
        if not dry_run:
            trim.trim(connection, tables, target)
    click.echo(
        f"{verb} {count} operation(s) through version {target} "
        f"(safe watermark: {safe}, server version: {current})."
    )
    if behind:
        click.echo(f"{behind} node(s) had not pulled that far and must repair.")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    if not rows:
        click.echo("Nothing to list.")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in (header, *rows):
        click.echo(
            "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        )


@cli.group("triggers")
def triggers_command() -> None:
    """Capture triggers (REFLECTSYNC_CAPTURE = "triggers"; PostgreSQL, MariaDB
    / MySQL, SQLite): raw SQL and other programs' writes to tracked tables
    are logged too."""


@triggers_command.command("status")
@with_appcontext
def triggers_status_command() -> None:
    """Show, per tracked table, whether its capture triggers are installed."""
    state = _state()
    try:
        found = state.extension.capture_triggers("status")
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None
    if state.config["REFLECTSYNC_CAPTURE"] != "triggers":
        click.echo(
            'REFLECTSYNC_CAPTURE is "orm": installed triggers log, and the '
            "ORM path logs too, so writes are logged twice; remove them or "
            'set REFLECTSYNC_CAPTURE = "triggers".'
            if any(t.state != "missing" for t in found)
            else 'REFLECTSYNC_CAPTURE is "orm": trigger capture is off.'
        )
    _table(("table", "triggers"), [(t.name, t.state) for t in found])


@triggers_command.command("install")
@with_appcontext
def triggers_install_command() -> None:
    """Install (or upgrade) the capture triggers of every tracked table."""
    state = _state()
    try:
        names = state.extension.capture_triggers("install")
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"Capture triggers installed on {len(names)} table(s): " + ", ".join(names)
    )


@triggers_command.command("remove")
@with_appcontext
def triggers_remove_command() -> None:
    """Remove the capture triggers (idempotent)."""
    state = _state()
    try:
        names = state.extension.capture_triggers("remove")
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Capture triggers removed from {len(names)} table(s).")
