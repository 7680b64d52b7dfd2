"""The survey's offline node: a field tablet's program.

It keeps its own SQLite database, records observations while offline, and
synchronises with the server when asked::

    flask --app example_app.server run &             # the server, on :5000
    python -m example_app.node record "North marsh" heron 3
    python -m example_app.node list
    python -m example_app.node sync

Options: ``--server`` (default ``http://127.0.0.1:5000/sync``), ``--name``
(default ``tablet``) and ``--database`` (default ``sqlite:///NAME.db``, so
each tablet named on one machine has a file of its own); the server must
allow the tablet to register (``REFLECTSYNC_OPEN_REGISTRATION`` or a token,
passed with ``--token``).

The tablet imports only :mod:`example_app.models` (plain SQLAlchemy), never
the server app: a node needs no Flask app, and the same module serves
``reflectsync-node --models example_app.models``.
"""

from __future__ import annotations

import click
import sqlalchemy as sa

from flask_reflectsync.client import SyncClient
from flask_reflectsync.errors import SyncError
from flask_reflectsync.node.cli import describe_conflict

from .models import Base, Observation, Site

MODELS = [Site, Observation]


def open_client(server: str, database: str, name: str) -> SyncClient:
    """The tablet's client, with its tables created if missing."""
    engine = sa.create_engine(database)
    # The client first: it creates a new SQLite file readable by its owner
    # only, before anything else opens it.
    client = SyncClient(server, engine, MODELS, name=name)
    Base.metadata.create_all(engine, tables=[m.__table__ for m in MODELS])
    return client


def close_client(client: SyncClient) -> None:
    """Close the client and its engine (an engine left open leaks its SQLite
    connections, which Python 3.13 reports as ResourceWarnings)."""
    client.close()
    client.engine.dispose()


@click.group()
@click.option("--server", default="http://127.0.0.1:5000/sync", show_default=True)
@click.option(
    "--database",
    help="The tablet's database URL.  [default: sqlite:///NAME.db]",
)
@click.option("--name", default="tablet", show_default=True)
@click.pass_context
def cli(ctx: click.Context, server: str, database: str | None, name: str) -> None:
    """A field tablet of the survey: record offline, sync when online."""
    ctx.obj = open_client(server, database or f"sqlite:///{name}.db", name)
    ctx.call_on_close(lambda: close_client(ctx.obj))


@cli.command()
@click.argument("site")
@click.argument("species")
@click.argument("count", type=int)
@click.pass_obj
def record(client: SyncClient, site: str, species: str, count: int) -> None:
    """Record COUNT individuals of SPECIES at SITE (works offline)."""
    with client.Session() as session:
        found = session.scalars(sa.select(Site).where(Site.name == site)).first()
        if found is None:
            found = Site(name=site)
            session.add(found)
        session.add(Observation(site=found, species=species, count=count))
        session.commit()
    click.echo(
        f"Recorded {count} {species} at {site}; "
        f"{client.pending_operations()} change(s) wait for the next sync."
    )


@cli.command("list")
@click.pass_obj
def list_command(client: SyncClient) -> None:
    """List the observations on this tablet."""
    with client.Session() as session:
        rows = session.execute(
            sa.select(Site.name, Observation.species, Observation.count)
            .join(Observation.site)
            .order_by(Site.name, Observation.species)
        ).all()
    for site, species, count in rows:
        click.echo(f"{site:<20} {species:<15} {count:>5}")
    if not rows:
        click.echo("No observations yet.")


@cli.command()
@click.option("--token", help="The server's registration token, if it needs one.")
@click.pass_obj
def sync(client: SyncClient, token: str | None) -> None:
    """Register if needed, then push, pull and merge."""
    try:
        if not client.is_registered():
            click.echo(f"Registered as node {client.register(token=token)}.")
        result = client.synchronize()
    except SyncError as error:
        raise click.ClickException(error.message) from error
    pulled = sum(p.operations for p in result.pulled)
    click.echo(
        f"Pushed {result.pushed.operations}, merged {pulled}; "
        f"now at version {client.last_version}."
    )
    for conflict in result.conflicts:
        click.echo(f"  {describe_conflict(conflict)}")


if __name__ == "__main__":
    cli()
