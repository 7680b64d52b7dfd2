"""``reflectsync-node``: an offline node from the command line.

Also ``python -m flask_reflectsync``. Every option can come from the
environment, so a kiosk or a cron job needs no arguments::

    export REFLECTSYNC_SERVER_URL=https://example.org/sync
    export REFLECTSYNC_NODE_DATABASE_URL=sqlite:///field.db
    export REFLECTSYNC_NODE_MODELS=myapp.models
    reflectsync-node register --token "$TOKEN"
    reflectsync-node sync
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import sqlalchemy as sa

from .client import SyncClient
from .errors import SyncError
from .tracking.registry import tracked_classes


class _Node:
    """The options every command shares, and the client built from them."""

    def __init__(
        self, server: str | None, database: str, models: tuple[str, ...], name: str
    ) -> None:
        self.server = server
        self.database = database
        self.models = models
        self.name = name

    @contextmanager
    def client(self, *, need_server: bool = True) -> Iterator[SyncClient]:
        if need_server and not self.server:
            raise click.UsageError(
                "Which server? Pass --server URL (with the sync prefix, e.g. "
                "http://host:5000/sync) or set REFLECTSYNC_SERVER_URL."
            )
        classes = _import_models(self.models)
        engine = sa.create_engine(self.database)
        # A node keeps the synced tables: create what is missing, never alter.
        tables: dict[sa.MetaData, list[sa.Table]] = {}
        for cls in classes:
            table: sa.Table = sa.inspect(cls).local_table
            tables.setdefault(table.metadata, []).append(table)
        for metadata, own in tables.items():
            metadata.create_all(engine, tables=own)
        client = SyncClient(self.server or "", engine, classes or None, name=self.name)
        try:
            yield client
        except SyncError as error:
            raise click.ClickException(error.message) from error
        finally:
            client.close()
            engine.dispose()


def _import_models(modules: tuple[str, ...]) -> list[type]:
    if not modules:
        raise click.UsageError(
            "Which models does this node sync? Pass --models MODULE (the module "
            "that defines your @track models) or set REFLECTSYNC_NODE_MODELS."
        )
    # REFLECTSYNC_NODE_MODELS="a.models b.models" arrives as one string.
    modules = tuple(part for name in modules for part in name.split())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise click.UsageError(
                f"Cannot import models module {name!r}: {error}"
            ) from error
    found = [
        cls
        for cls in tracked_classes()
        if cls.__module__ in modules and sa.inspect(cls, raiseerr=False) is not None
    ]
    if not found:
        raise click.UsageError(
            f"No @track models were defined by {', '.join(modules)}."
        )
    return sorted(found, key=lambda cls: cls.__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="REFLECTSYNC_SERVER_URL",
    metavar="URL",
    help="The server's sync URL, prefix included (env REFLECTSYNC_SERVER_URL).",
)
@click.option(
    "--database",
    envvar="REFLECTSYNC_NODE_DATABASE_URL",
    metavar="URL",
    default="sqlite:///reflectsync-node.db",
    show_default=True,
    help="This node's database (env REFLECTSYNC_NODE_DATABASE_URL).",
)
@click.option(
    "--models",
    envvar="REFLECTSYNC_NODE_MODELS",
    metavar="MODULE",
    multiple=True,
    help="Module(s) defining the @track models to sync; repeat the "
    "option or separate with spaces in REFLECTSYNC_NODE_MODELS.",
)
@click.option(
    "--name",
    envvar="REFLECTSYNC_NODE_NAME",
    default="",
    help="The node's name, sent when it registers.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    server: str | None,
    database: str,
    models: tuple[str, ...],
    name: str,
) -> None:
    """An offline node of a flask-reflectsync server: register it, push its
    changes, pull the server's, or repair it from a full copy."""
    ctx.obj = _Node(server, database, models, name)


@cli.command()
@click.option(
    "--token",
    envvar="REFLECTSYNC_REGISTRATION_TOKEN",
    help="The server's registration token, if it requires one.",
)
@click.option("--name", help="The node's name (same as the group's --name).")
@click.pass_obj
def register(node: _Node, token: str | None, name: str | None) -> None:
    """Register this node with the server (once) and keep its secret."""
    if name:
        node.name = name
    with node.client() as client:
        already = client.is_registered()
        node_id = client.register(token=token)
    click.echo(
        f"{'Already registered' if already else 'Registered'} as node {node_id}."
    )


@cli.command()
@click.pass_obj
def push(node: _Node) -> None:
    """Send this node's queued changes to the server."""
    with node.client() as client:
        result = client.push()
    if result.push_id is None:
        click.echo("Nothing to push.")
    else:
        click.echo(
            f"Pushed {result.operations} operation(s): server version {result.version}."
        )


@cli.command()
@click.pass_obj
def pull(node: _Node) -> None:
    """Fetch the server's changes and merge them, page by page."""
    with node.client() as client:
        start = client.last_version
        bars: list[Any] = []

        def progress(version: int, server_version: int) -> None:
            if not bars:  # the total is known once the first page arrives
                bar = click.progressbar(
                    length=max(server_version - start, 1),
                    label="Pulling versions",
                    show_pos=True,
                )
                bar.__enter__()
                bars.append(bar)
            bars[0].update(version - start - bars[0].pos)

        try:
            result = client.pull(progress=progress)
        finally:
            for bar in bars:
                bar.__exit__(None, None, None)
    click.echo(
        f"Merged {result.operations} change(s); now at version {result.version}."
    )
    _conflicts(result.conflicts)


@cli.command("sync")
@click.option(
    "--tries",
    default=3,
    show_default=True,
    help="Pushes to attempt when the server holds conflicting changes.",
)
@click.pass_obj
def sync_command(node: _Node, tries: int) -> None:
    """Push, and when the server refuses, pull, merge and push again."""
    with node.client() as client:
        result = client.synchronize(tries=tries)
        version = client.last_version
    pulled = sum(p.operations for p in result.pulled)
    click.echo(
        f"Pushed {result.pushed.operations} operation(s), merged {pulled} "
        f"change(s); now at version {version}."
    )
    _conflicts(result.conflicts)


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def repair(node: _Node, yes: bool) -> None:
    """Replace this node's data with the server's copy (queued changes are lost)."""
    with node.client() as client:
        pending = client.pending_operations()
        if pending and not yes:
            click.confirm(
                f"{pending} unpushed change(s) will be lost. Repair?", abort=True
            )
        seen: dict[str, int] = {}
        # The total is not known in advance: the bar counts rows as they come.
        bar: Any
        with click.progressbar(
            iter(()),
            label="Repairing",
            show_pos=True,
            item_show_func=lambda _: _current(seen),
        ) as bar:

            def progress(table: str, rows: int) -> None:
                done = sum(seen.values())
                seen[table] = rows
                bar.update(sum(seen.values()) - done)

            total = client.repair(progress=progress)
        version = client.last_version
    click.echo(
        f"Copied {total} row(s) from {len(seen)} table(s); now at version {version}."
    )


def _current(seen: dict[str, int]) -> str | None:
    if not seen:
        return None
    table = next(reversed(seen))
    return f"{table}: {seen[table]} rows"


@cli.command()
@click.pass_obj
def status(node: _Node) -> None:
    """Show whether this node is registered, its version and its queue."""
    with node.client(need_server=False) as client:
        if client.is_registered():
            click.echo(f"Registered as node {client.node_id}.")
        else:
            click.echo("Not registered: run `reflectsync-node register`.")
        click.echo(f"Server version pulled: {client.last_version}")
        click.echo(f"Changes waiting to be pushed: {client.pending_operations()}")
        click.echo(f"Database: {node.database}")


_OUTCOMES = {
    "server": "the server's version was kept",
    "node": "this node's version was kept",
    "values": "merged values were written",
    "rekeyed": "both rows were kept",
    "deleted": "the row stays deleted",
}


def describe_conflict(conflict: Any) -> str:
    """One line a person can read for a resolved conflict."""
    outcome = _OUTCOMES.get(conflict.resolution, conflict.resolution or "unresolved")
    line = (
        f"{conflict.kind} conflict on {conflict.table} {list(conflict.key)}: {outcome}"
    )
    if conflict.new_key is not None:
        line += f" (the local row now has key {list(conflict.new_key)})"
    return line


def _conflicts(conflicts: list[Any]) -> None:
    for conflict in conflicts:
        click.echo(f"  {describe_conflict(conflict)}")


def main() -> None:
    """Entry point of the ``reflectsync-node`` console script."""
    cli(prog_name="reflectsync-node")
