"""The share tag capture logs for each operation is the tag of the row as
the database stores it (see :doc:`/scopes`, "How pulls find a share").

A flush tags the objects of an ``equals`` rule from their own attribute
when the database stores that value as it is (plain strings, integers,
booleans), and reads the row back otherwise. Either way the logged tag must
be the stored row's: a tag made from a value the column converted would
route the row to a share that does not exist, and the node it belongs to
would never get it. Checked on every backend: the log against the rows,
and a node's pull over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from flask_reflectsync import track
from flask_reflectsync.client import SyncClient
from flask_reflectsync.server.scopes import tag

from .conftest import AppFactory
from .http_server import SECRET_KEY, served


@dataclass
class Teams:
    env: Any
    url: str
    Visit: Any
    directory: Path

    def node(self, team: Any) -> SyncClient:
        engine = sa.create_engine(f"sqlite:///{self.directory}/team{team}.db")
        self.env.db.metadata.create_all(engine, tables=[self.Visit.__table__])
        client = SyncClient(self.url + "/sync", engine, models=[self.Visit])
        client.register(info={"team": team})
        return client


@pytest.fixture
def teams(make_app: AppFactory, tmp_path: Path) -> Iterator[Teams]:
    env = make_app(SECRET_KEY=SECRET_KEY, REFLECTSYNC_OPEN_REGISTRATION=False)
    db = env.db

    @track
    class Visit(db.Model):  # type: ignore[name-defined]
        __tablename__ = "visit"
        id: Mapped[int] = mapped_column(primary_key=True)
        team: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
        place: Mapped[str] = mapped_column(sa.String(40))

    env.sync.scope(Visit, Visit.team, equals="team")
    for model in vars(env.models).values():
        env.sync.scope(model, hidden=True)

    @env.sync.registration_check
    def principal(registration: dict[str, Any]) -> dict[str, Any]:
        return {"team": registration.get("info", {}).get("team")}

    with env.app.app_context():
        db.create_all()
    with served(env.app) as url, env.app.app_context():
        yield Teams(env, url, Visit, tmp_path)


def _logged_and_stored(teams: Teams) -> list[tuple[str, str, str]]:
    """Each logged insert or update of a visit: its key, the tag it was
    logged with, and the tag of the row as stored now."""
    db = teams.env.db
    operations = db.metadata.tables["reflectsync_operations"]
    visit = teams.Visit.__table__
    with db.engine.connect() as connection:
        stored = {
            f"[{row.id}]": tag("team", row.team)
            for row in connection.execute(sa.select(visit))
        }
        logged = connection.execute(
            sa.select(operations.c.row_key, operations.c.scope_after)
            .where(operations.c.table_name == "visit", operations.c.command != "d")
            .order_by(operations.c.id)
        ).all()
    latest = {key: after for key, after in logged}
    return [(key, latest[key], stored[key]) for key in sorted(latest)]


def test_inserts_and_updates_are_logged_with_the_stored_rows_tags(
    teams: Teams,
) -> None:
    db, Visit = teams.env.db, teams.Visit
    db.session.add_all(
        [
            Visit(id=1, team=3, place="as given"),
            # Values the column converts: the object holds a string, the
            # database an integer.
            Visit(id=2, team="3", place="converted"),  # type: ignore[arg-type]
            Visit(id=3, team=None, place="no team"),
            Visit(id=4, team=4, place="moved later"),
        ]
    )
    db.session.commit()
    db.session.get(Visit, 4).team = "3"  # type: ignore[assignment]
    db.session.get(Visit, 3).team = 4
    db.session.commit()
    found = _logged_and_stored(teams)
    assert [key for key, _, _ in found] == ["[1]", "[2]", "[3]", "[4]"]
    for key, logged, stored in found:
        assert logged == stored, key
    assert found[1][2] == tag("team", 3)


def test_a_node_pulls_every_row_of_its_team_however_it_was_written(
    teams: Teams,
) -> None:
    db, Visit = teams.env.db, teams.Visit
    db.session.add_all(
        [
            Visit(id=1, team=3, place="a"),
            Visit(id=2, team="3", place="b"),  # type: ignore[arg-type]
            Visit(id=3, team=5, place="c"),
        ]
    )
    db.session.commit()
    db.session.get(Visit, 3).team = "3"  # type: ignore[assignment]
    db.session.commit()
    node = teams.node(3)
    try:
        node.pull()
        with node.engine.connect() as connection:
            rows = connection.execute(
                sa.select(Visit.__table__).order_by(Visit.__table__.c.id)
            ).all()
        assert [tuple(r) for r in rows] == [(1, 3, "a"), (2, 3, "b"), (3, 3, "c")]
    finally:
        node.close()
        node.engine.dispose()
