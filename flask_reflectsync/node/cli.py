"""``reflectsync-node``: an offline node from the command line.

Also ``python -m flask_reflectsync``. Every option can come from the
environment, so a kiosk or a cron job needs no arguments::

    export REFLECTSYNC_SERVER_URL=https://example.org/sync
    export REFLECTSYNC_NODE_DATABASE_URL=sqlite:///field.db
    export REFLECTSYNC_NODE_MODELS=myapp.models
    reflectsync-node register --token "$TOKEN"
    reflectsync-node sync

``--models`` names the module(s) defining the ``@track`` models; keep them
in a module of their own that does not build the Flask app (see
:doc:`/client`), and the node imports neither Flask nor the app.

The module is a little over 500 lines because it is every command of the
node's command line with its help text; the work itself is in
:class:`~flask_reflectsync.node.client.SyncClient`.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import sqlalchemy as sa

from ..errors import SyncError
from ..tracking.registry import tracked_classes
from .client import SyncClient
from .results import PullProgress
from .status import SyncStatus
from .transport import Retry, Words

#: The messages' advice in the command line's words.
CLI_WORDS = Words(
    register="run `reflectsync-node register` first",
    register_again="run `reflectsync-node register --force`",
    base_url="--server (REFLECTSYNC_SERVER_URL)",
    token="Pass --token TOKEN (or set REFLECTSYNC_REGISTRATION_TOKEN).",
    secret="set REFLECTSYNC_NODE_SECRET to it",
)

#: Where the node's secret is read from when it is kept out of the database.
SECRET_VARIABLE = "REFLECTSYNC_NODE_SECRET"


class _Node:
    """The options every command shares, and the client built from them."""

    def __init__(
        self,
        server: str | None,
        database: str,
        models: tuple[str, ...],
        name: str,
        retries: int,
    ) -> None:
        self.server = server
        self.database = database
        self.models = models
        self.name = name
        self.retries = retries

    @contextmanager
    def client(
        self,
        *,
        need_server: bool = True,
        print_secret: bool = False,
        create_tables: bool = True,
    ) -> Iterator[SyncClient]:
        if need_server and not self.server:
            raise click.UsageError(
                "Which server? Pass --server URL (with the sync prefix, e.g. "
                "http://host:5000/sync) or set REFLECTSYNC_SERVER_URL."
            )
        classes = _import_models(self.models)
        engine = _engine(self.database)
        try:
            # The client first: it creates a new SQLite file for its owner
            # only, before the tables are created in it.
            client = SyncClient(
                self.server or "",
                engine,
                classes or None,
                name=self.name,
                retries=self.retries,
                on_retry=_say_retry,
                **_secret_options(print_secret),
            )
            client._words = CLI_WORDS
            if create_tables:
                _create_tables(engine, classes, self.database, client)
            try:
                yield client
            except SyncError as error:
                raise click.ClickException(error.message) from error
            finally:
                client.close()
        finally:
            engine.dispose()


def _engine(url: str) -> sa.Engine:
    try:
        return sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as error:
        raise click.UsageError(
            f"--database {url!r} is not a database URL this node can open "
            f"({error}); for example sqlite:///node.db."
        ) from None


def _create_tables(
    engine: sa.Engine, classes: list[type], url: str, client: SyncClient
) -> None:
    """Create the synced tables that are missing (never alter one) in a
    node that has not synchronised yet. A node that has is told to migrate
    instead, which creates the table and fetches the server's rows of it
    (they are behind the node's version: a table created otherwise gets
    them at its next push or pull, see catch_up.py) in one step that says
    what it did."""
    tables: dict[sa.MetaData, list[sa.Table]] = {}
    for cls in classes:
        table: sa.Table = sa.inspect(cls).local_table
        tables.setdefault(table.metadata, []).append(table)
    try:
        present = set(sa.inspect(engine).get_table_names())
        missing = sorted(  # (checked before any table is created)
            t.name for own in tables.values() for t in own if t.name not in present
        )
        if missing:
            state = client._state()
            if state.last_version or state.pull_cursor is not None:
                raise click.ClickException(
                    f"The node's database has no table {', '.join(missing)} "
                    "yet, and it has synchronised already. Run "
                    "`reflectsync-node migrate` first (it creates the table "
                    "and fetches the server's rows of it, which are behind "
                    "the node's version)."
                )
        for metadata, own in tables.items():
            metadata.create_all(engine, tables=own)
    except sa.exc.DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else error
        raise click.ClickException(
            f"Cannot open the node's database {url}: {reason}."
        ) from None


def _secret_options(print_secret: bool) -> dict[str, Any]:
    """Keep the secret out of the database when asked to (``register
    --print-secret``) or when REFLECTSYNC_NODE_SECRET holds it."""
    outside = os.environ.get(SECRET_VARIABLE)
    if not (print_secret or outside):
        return {}

    def show(secret: str) -> None:
        click.echo(
            f"Node secret (not stored in the database; set {SECRET_VARIABLE} "
            f"to it for every other command): {secret}"
        )

    return {
        "secret": lambda: os.environ.get(SECRET_VARIABLE),
        "save_secret": show if print_secret else None,
    }


def _say_retry(retry: Retry) -> None:
    click.echo(retry.describe(), err=True)


def _import_models(modules: tuple[str, ...]) -> list[type]:
    if not modules:
        raise click.UsageError(
            "Which models does this node sync? Pass --models MODULE (the module "
            "that defines your @track models) or set REFLECTSYNC_NODE_MODELS."
        )
    # REFLECTSYNC_NODE_MODELS="a.models b.models" arrives as one string.
    modules = tuple(part for name in modules for part in name.split())
    # A console script, unlike ``python -m`` or ``flask --app``, does not put
    # the working directory on sys.path: a models.py beside it must import.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    exposed: set[int] = set()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise click.UsageError(
                f"Cannot import models module {name!r}: {error}"
            ) from error
        exposed |= {id(value) for value in vars(module).values()}
    # A model defined in the module, or imported into it (an app module
    # re-exporting its models module).
    found = [
        cls
        for cls in tracked_classes()
        if (cls.__module__ in modules or id(cls) in exposed)
        and sa.inspect(cls, raiseerr=False) is not None
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
@click.option(
    "--retries",
    envvar="REFLECTSYNC_NODE_RETRIES",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Times to send a request again when the server is busy or cannot "
    "be reached (env REFLECTSYNC_NODE_RETRIES); each retry is reported on "
    "stderr.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    server: str | None,
    database: str,
    models: tuple[str, ...],
    name: str,
    retries: int,
) -> None:
    """An offline node of a flask-reflectsync server: register it, push its
    changes, pull the server's, or repair it from a full copy.

    The node's secret is kept in its database unless REFLECTSYNC_NODE_SECRET
    is set (see `register --print-secret`)."""
    ctx.obj = _Node(server, database, models, name, retries)


@cli.command()
@click.option(
    "--token",
    envvar="REFLECTSYNC_REGISTRATION_TOKEN",
    help="The server's registration token, if it requires one.",
)
@click.option("--name", help="The node's name (same as the group's --name).")
@click.option(
    "--force",
    is_flag=True,
    help="Register again even if registered: the server gives a new id "
    "(needed when it answers 'Unknown node', e.g. after its database was "
    "reset). Local data and queued changes are kept.",
)
@click.option(
    "--print-secret",
    is_flag=True,
    help=f"Print the node's secret instead of storing it in the database; "
    f"then set {SECRET_VARIABLE} to it for every command.",
)
@click.pass_obj
def register(
    node: _Node, token: str | None, name: str | None, force: bool, print_secret: bool
) -> None:
    """Register this node with the server (once) and keep its secret."""
    if name:
        node.name = name
    with node.client(print_secret=print_secret) as client:
        already = client.is_registered()
        if already and not force:
            click.echo(
                f"Already registered as node {client.node_id} (--force "
                "registers it again)."
            )
            return
        node_id = client.register(token=token, force=force)
    click.echo(f"{'Registered again' if already else 'Registered'} as node {node_id}.")


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
    _conflicts(result.conflicts)
    _set_aside_lines(result.set_aside)


@cli.command()
@click.pass_obj
def pull(node: _Node) -> None:
    """Fetch the server's changes and merge them, page by page."""
    with node.client() as client, _Bar("Pulling changes") as bar:

        def on_page(page: PullProgress) -> None:
            bar.show(page.operations, page.total)

        result = client.pull(on_page=on_page)
    if result.repaired:
        click.echo(
            f"New node: copied {result.repaired} row(s) from the server (its "
            "log is trimmed), then pulled."
        )
    click.echo(
        f"Merged {result.operations} change(s); now at version {result.version}."
    )
    _conflicts(result.conflicts)


@cli.command()
@click.option(
    "--rename",
    "renames",
    multiple=True,
    metavar="TABLE.OLD=NEW",
    help="Say that the file's column OLD became the models' NEW (repeatable; "
    "TABLE.OLD= for not renamed), where it cannot be told.",
)
@click.pass_obj
def migrate(node: _Node, renames: tuple[str, ...]) -> None:
    """Bring the node's database file to its models (after new model code):
    create tables, rename or add columns, fetch what it could not store."""
    given: dict[str, dict[str, str | None]] = {}
    for text in renames:
        named, equals, new = text.partition("=")
        table, dot, old = named.rpartition(".")
        if not (equals and dot and table and old):
            raise click.BadParameter(
                f"{text!r} is not TABLE.OLD=NEW (for example post.lang=lang_code).",
                param_hint="--rename",
            )
        given.setdefault(table, {})[old] = new or None
    # Tables are created by the migration itself, which then fetches their
    # rows (created empty beforehand, they would never receive them).
    with node.client(create_tables=False) as client:
        done = client.migrate(given or None)
    for name in done.created:
        click.echo(f"Created table {name}.")
    for name, renamed in done.renamed.items():
        for old, new in renamed.items():
            click.echo(f"Renamed {name}.{old} to {new} (data and queue kept).")
    for name, columns in done.added.items():
        click.echo(f"Added {', '.join(f'{name}.{c}' for c in columns)}.")
    if not done.changed:
        click.echo("The node's database already matches its models.")
    else:
        click.echo(f"Fetched {done.fetched} row(s) from the server.")


def _no_length() -> Iterator[int]:
    """An empty iterator without a length hint: click's bar then counts
    without a total (an empty list would make the total 0)."""
    yield from ()


class _Bar:
    """A progress bar made when the first figures arrive: with a length
    when the server gives a total, without one (a counter) otherwise."""

    def __init__(self, label: str, show: Any = None, file: Any = None) -> None:
        self.label = label
        self.item_show_func = show
        self.file = file
        self.bar: Any = None

    def __enter__(self) -> _Bar:
        return self

    def show(self, done: int, total: int | None) -> None:
        if self.bar is None:
            # A generator has no length: click then shows a plain count.
            self.bar = click.progressbar(
                _no_length() if total is None else None,
                length=max(total, 1) if total is not None else None,
                label=self.label,
                show_pos=True,
                item_show_func=self.item_show_func,
                file=self.file,
            )
            self.bar.__enter__()
        if self.bar.length is not None and done > self.bar.length:
            self.bar.length = done  # the server changed meanwhile
        self.bar.update(done - self.bar.pos)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@cli.command("sync")
@click.option(
    "--tries",
    default=3,
    show_default=True,
    help="Pushes to attempt when the server holds conflicting changes.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep running: push after local changes, pull when the server's "
    "change feed says so, until Ctrl-C or SIGTERM.",
)
@click.option(
    "--wait",
    default=25.0,
    show_default=True,
    help="With --watch: seconds the server may hold each feed request.",
)
@click.option(
    "--max-backoff",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="With --watch: the longest wait, in seconds, between two tries "
    "while the server cannot be reached or is busy.",
)
@click.pass_obj
def sync_command(
    node: _Node, tries: int, watch: bool, wait: float, max_backoff: float
) -> None:
    """Push, and when the server refuses, pull, merge and push again.

    With --watch, keep the node in sync until stopped (Ctrl-C or SIGTERM
    end it between two operations, never in the middle of one)."""
    if watch:
        with node.client() as client:
            _watch(client, wait, max_backoff)
        return
    with node.client() as client:
        result = client.synchronize(tries=tries)
        version = client.last_version
    pulled = sum(p.operations for p in result.pulled)
    click.echo(
        f"Pushed {result.pushed.operations} operation(s), merged {pulled} "
        f"change(s); now at version {version}."
    )
    _conflicts(result.conflicts)
    _set_aside_lines(result.pushed.set_aside)


def _watch(client: SyncClient, wait: float, max_backoff: float) -> None:
    """``sync --watch``: one line per change of the node's status."""

    def say(status: SyncStatus) -> None:
        state = {True: "connected", False: "offline", None: "starting"}[
            status.connected
        ]
        line = (
            f"[{state}] version {status.version}, {status.pending} pending, "
            f"{status.set_aside} set aside"
        )
        if status.last_error:
            line += f"; last error: {status.last_error}"
        click.echo(line, err=True)

    client._status.callback = say
    _say_schema(client, starting=True)
    click.echo("Watching; Ctrl-C to stop.", err=True)
    client.watch(wait=wait, max_backoff=max_backoff, handle_signals=True)
    click.echo(f"Stopped at version {client.last_version}.")


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
        expected: list[int] = []
        with _Bar("Repairing", lambda _: _current(seen)) as bar:

            def on_total(rows: int) -> None:
                expected.append(rows)
                bar.show(0, rows)

            def progress(table: str, rows: int) -> None:
                seen[table] = rows
                bar.show(sum(seen.values()), expected[0] if expected else None)

            total = client.repair(progress=progress, on_total=on_total)
        version = client.last_version
    click.echo(
        f"Copied {total} row(s) from {len(seen)} table(s); now at version {version}."
    )


def _current(seen: dict[str, int]) -> str | None:
    if not seen:
        return None
    table = next(reversed(seen))
    return f"{table}: {seen[table]} rows"


def _say_schema(client: SyncClient, *, starting: bool = False) -> None:
    """One line: whether the node's models, its file and the server's
    tracked tables agree (see SyncClient.check_schema). Starting a watch, a
    server that cannot be reached is no reason to stop: the watch waits."""
    try:
        check = client.check_schema()
    except SyncError as error:
        if not starting:
            raise
        click.echo(f"Schema not checked: {error.message}", err=True)
        return
    if check.same:
        click.echo(f"Schema: {check.message}", err=starting)
        return
    click.echo(
        f"Schema differs from the server's: {check.message} Pulls refuse what "
        "this node cannot store and refused rows are set aside; after new "
        "model code run `reflectsync-node migrate`.",
        err=starting,
    )


@cli.command()
@click.option(
    "--schema",
    "check_schema",
    is_flag=True,
    help="Also ask the server whether its tracked tables are this node's.",
)
@click.pass_obj
def status(node: _Node, check_schema: bool) -> None:
    """Show whether this node is registered, its version and its queue."""
    with node.client(need_server=check_schema) as client:
        if client.is_registered():
            click.echo(f"Registered as node {client.node_id}.")
        elif client.node_id is not None:
            click.echo(
                f"Registered as node {client.node_id}, but its secret is kept "
                f"outside the database and {SECRET_VARIABLE} is not set."
            )
        else:
            click.echo("Not registered: run `reflectsync-node register`.")
        click.echo(f"Server version pulled: {client.last_version}")
        click.echo(f"Changes waiting to be pushed: {client.pending_operations()}")
        aside = len(client.set_aside())
        click.echo(f"Changes set aside (refused by the server): {aside}")
        click.echo(f"Database: {node.database}")
        if check_schema:
            _say_schema(client)


@cli.command("set-aside")
@click.option(
    "--retry",
    "retry",
    metavar="ID|all",
    help="Queue a set-aside change again (after fixing the row).",
)
@click.option(
    "--discard",
    "discard",
    metavar="ID|all",
    help="Give a set-aside change up; the row takes the server's copy back.",
)
@click.pass_obj
def set_aside_command(node: _Node, retry: str | None, discard: str | None) -> None:
    """List the changes the server refused for good, or retry or discard one."""
    if retry and discard:
        raise click.UsageError("Give --retry or --discard, not both.")
    chosen = retry or discard
    ids: list[int] | None = None
    if chosen is not None and chosen != "all":
        if not chosen.isdecimal():
            raise click.BadParameter("an id from the list, or all", param_hint=chosen)
        ids = [int(chosen)]
    with node.client(need_server=discard is not None) as client:
        if retry is not None:
            count = client.retry_set_aside(ids)
            click.echo(f"Queued {count} change(s) again; run `reflectsync-node sync`.")
            return
        if discard is not None:
            count = client.discard_set_aside(ids)
            click.echo(f"Discarded {count} change(s); the server's rows are back.")
            return
        entries = client.set_aside()
    if not entries:
        click.echo("Nothing is set aside.")
    for entry in entries:
        click.echo(
            f"{entry.id}: {_COMMANDS.get(entry.command, entry.command)} of "
            f"{entry.table} {list(entry.key)}: {entry.reason}"
        )


_COMMANDS = {"i": "insert", "u": "update", "d": "delete"}


def _set_aside_lines(entries: list[Any]) -> None:
    for entry in entries:
        click.echo(
            f"  set aside: {entry.table} {list(entry.key)}: {entry.reason} "
            "(see `reflectsync-node set-aside`)"
        )


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
