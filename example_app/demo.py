"""A self-contained demo on SQLite: a survey server on loopback, two field
tablets that edit offline and conflict, and a table made by raw SQL showing
up in the reflected catalog with its signal.

Run from the repository root::

    python -m example_app.demo
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from flask_reflectsync import signals
from flask_reflectsync.client import SyncClient
from flask_reflectsync.node.cli import describe_conflict

from .server import Observation, Site, create_app, db, sync

MODELS = [Site, Observation]


@contextmanager
def served(app: Flask) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{Path(folder) / 'server.db'}",
                "SECRET_KEY": "demo only",
                "REFLECTSYNC_OPEN_REGISTRATION": True,
            }
        )
        sync.catalog_access(lambda: True)  # the demo's catalog UI is open
        with served(app) as url:
            Demo(app, url, Path(folder)).run()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


class Demo:
    def __init__(self, app: Flask, url: str, folder: Path) -> None:
        self.app, self.url, self.folder = app, url, folder
        self.nodes: list[SyncClient] = []

    def node(self, name: str) -> SyncClient:
        engine = sa.create_engine(f"sqlite:///{self.folder / name}.db")
        db.metadata.create_all(engine, tables=[m.__table__ for m in MODELS])
        client = SyncClient(self.url + "/sync", engine, MODELS, name=name)
        client.register()
        self.nodes.append(client)
        return client

    def run(self) -> None:
        print(f"Survey server on {self.url}, database on SQLite.\n")
        a, b = self.node("tablet-a"), self.node("tablet-b")
        print(f"1. Two field tablets register: nodes {a.node_id} and {b.node_id}.")

        print("\n2. Offline, each records a new site with an observation.")
        print("   Both give their site id 1: their keys collide.")
        self.edit(
            a,
            lambda s: s.add(
                Site(
                    name="North marsh",
                    observations=[Observation(species="heron", count=3)],
                )
            ),
        )
        self.edit(
            b,
            lambda s: s.add(
                Site(
                    name="Reed bed",
                    observations=[Observation(species="egret", count=1)],
                )
            ),
        )
        self.synchronize(a, b, a)

        heron = self.find(a, "heron")
        egret = self.find(a, "egret")
        print("\n3. Both correct the heron count offline: A says 4, B says 6.")
        print("   Default rule: the last pusher's values win.")
        self.edit(a, lambda s: setattr(s.get(Observation, heron), "count", 4))
        self.edit(b, lambda s: setattr(s.get(Observation, heron), "count", 6))
        self.synchronize(a, b)

        print("\n4. A deletes the egret observation while B corrects it to 2.")
        print("   Default rule: an update beats a concurrent delete.")
        self.edit(a, lambda s: s.delete(s.get(Observation, egret)))
        self.edit(b, lambda s: setattr(s.get(Observation, egret), "count", 2))
        self.synchronize(a, b)

        print("\n5. Everyone synchronises once more.")
        self.synchronize(a, b)
        self.show_state()

        self.reflection()
        for client in self.nodes:
            client.close()
            client.engine.dispose()

    def edit(self, node: SyncClient, change: Any) -> None:
        with node.Session() as session:
            change(session)
            session.commit()

    def find(self, node: SyncClient, species: str) -> int:
        with node.Session() as session:
            return session.scalars(
                sa.select(Observation.id).where(Observation.species == species)
            ).one()

    def synchronize(self, *nodes: SyncClient) -> None:
        for node in nodes:
            result = node.synchronize()
            pushed = result.pushed.operations
            pulled = sum(p.operations for p in result.pulled)
            print(
                f"   {node.name}: pushed {pushed}, merged {pulled}, "
                f"now at version {node.last_version}"
            )
            for conflict in result.conflicts:
                print(f"     - {describe_conflict(conflict)}")

    def show_state(self) -> None:
        query = (
            sa.select(Observation.id, Site.name, Observation.species, Observation.count)
            .join(Site)
            .order_by(Observation.id)
        )
        with self.app.app_context():
            server = [tuple(row) for row in db.session.execute(query)]
        print("\n   The server's observations (id, site, species, count):")
        for row in server:
            print(f"     {row}")
        same = all(self.rows(node, query) == server for node in self.nodes)
        print(f"   Both tablets hold exactly the same rows: {same}.")
        if not same:
            raise SystemExit("the replicas did not converge")

    def rows(self, node: SyncClient, query: Any) -> list[tuple[Any, ...]]:
        with node.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]

    def reflection(self) -> None:
        print("\n6. Someone creates a table with raw SQL, outside the app.")
        with self.app.app_context():
            sync.reflect()  # the catalog as it is now, before the change
            engine = sa.create_engine(db.engine.url)
        heard: list[str] = []

        def announce(sender: Flask, table: Any, **extra: Any) -> None:
            heard.append(table.name)
            print(
                f"   signal table_created: {table.schema_name}.{table.name} "
                f"(catalog id {table.id})"
            )

        signals.table_created.connect(announce, sender=self.app)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    "CREATE TABLE weather_log (id INTEGER PRIMARY KEY, "
                    "noted_at TEXT NOT NULL, wind_kmh INTEGER)"
                )
            engine.dispose()
            with httpx.Client(base_url=self.url + "/sync") as http:
                schema = http.get("/schemas").json()["schemas"][0]
                tables = http.get(f"/schemas/{schema['id']}/tables").json()["tables"]
                table = next(t for t in tables if t["name"] == "weather_log")
                columns = http.get(f"/tables/{table['id']}").json()["table"]["columns"]
        finally:
            signals.table_created.disconnect(announce, sender=self.app)
        print(
            f"   GET /sync/schemas/{schema['id']}/tables lists: "
            f"{', '.join(sorted(t['name'] for t in tables))}"
        )
        print(
            f"   GET /sync/tables/{table['id']} columns: "
            f"{', '.join(c['name'] + ' ' + c['type'] for c in columns)}"
        )
        if heard != ["weather_log"]:
            raise SystemExit("the table_created signal was not sent")
        print("\nDone.")


if __name__ == "__main__":
    main()
