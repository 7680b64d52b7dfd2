"""A live sync server and several SQLite nodes (SyncClient) in one process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flask_reflectsync.client import SyncClient
from flask_reflectsync.sqlite import use_immediate_transactions

from .conftest import AppFactory
from .http_server import ServerEnv, server_env


@dataclass
class Cluster:
    """A served app and the nodes made for it."""

    server: ServerEnv
    directory: Path
    nodes: list[SyncClient] = field(default_factory=list)

    @property
    def models(self) -> list[Any]:
        m = self.server.env.models
        return [m.Country, m.City, m.Tag, m.Translation, self.server.Sample]

    @property
    def tables(self) -> list[sa.Table]:
        return [model.__table__ for model in self.models]

    def node(self, name: str | None = None, **options: Any) -> SyncClient:
        """A new registered node on its own SQLite file."""
        name = name or f"node{len(self.nodes) + 1}"
        engine = sa.create_engine(f"sqlite:///{self.directory / name}.db")
        self.server.env.db.metadata.create_all(engine, tables=self.tables)
        options.setdefault("models", self.models)
        try:
            client = SyncClient(self.server.base, engine, name=name, **options)
        except BaseException:
            engine.dispose()  # no node to close it later (3.13 warns of leaks)
            raise
        self.nodes.append(client)
        client.register()
        return client

    def server_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        return rows_of(self.server.env.db.engine, self.tables)

    def node_rows(self, node: SyncClient) -> dict[str, list[tuple[Any, ...]]]:
        return rows_of(node.engine, self.tables)

    def assert_converged(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every node holds exactly the server's rows; returns them."""
        expected = self.server_rows()
        for node in self.nodes:
            assert self.node_rows(node) == expected, node.name
            assert node.pending_operations() == 0, node.name
        return expected

    def settle(self, rounds: int = 2) -> None:
        """Synchronise every node, in turn, ``rounds`` times."""
        for _ in range(rounds):
            for node in self.nodes:
                node.synchronize(tries=5)


def rows_of(
    engine: sa.Engine, tables: list[sa.Table]
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, sorted, with values made comparable across
    backends (naive UTC datetimes, floats for decimals)."""
    state = {}
    with engine.connect() as connection:
        for table in tables:
            rows = connection.execute(sa.select(table)).all()
            state[table.name] = sorted(
                (tuple(_plain(v) for v in row) for row in rows), key=repr
            )
    return state


def _plain(value: Any) -> Any:
    import datetime

    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


@contextmanager
def cluster(make_app: AppFactory, directory: Path, **config: Any) -> Iterator[Cluster]:
    with server_env(make_app, **config) as served:
        use_immediate_transactions(served.env.db.engine)
        found = Cluster(served, directory)
        try:
            yield found
        finally:
            for node in found.nodes:
                node.close()
                node.engine.dispose()
