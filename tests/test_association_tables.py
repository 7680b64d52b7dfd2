"""Association tables over real HTTP (docs/tracking.rst, "Association
tables"): the link rows a ``secondary=`` relationship writes are logged,
pushed, pulled and merged like the rows of any table with a composite key,
and a node's collection sees them after a pull."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from flask_reflectsync import errors, track
from flask_reflectsync.client import SyncClient
from flask_reflectsync.tracking import untrack

from .conftest import AppFactory
from .http_server import SECRET_KEY, served


@dataclass
class Social:
    """A served app with users following users, and its nodes."""

    env: Any
    url: str
    User: Any
    followers: sa.Table
    directory: Path
    clients: list[SyncClient]

    @property
    def db(self) -> Any:
        return self.env.db

    def node(self, name: str) -> SyncClient:
        engine = sa.create_engine(f"sqlite:///{self.directory / name}.db")
        tables = [self.User.__table__, self.followers]
        self.db.metadata.create_all(engine, tables=tables)
        client = SyncClient(
            self.url + "/sync", engine, name=name, models=[self.User, self.followers]
        )
        client.register()
        self.clients.append(client)
        return client

    def server_links(self) -> list[tuple[int, int]]:
        return links_of(self.db.engine, self.followers)

    def operations(self) -> list[tuple[str, str, str]]:
        """The server's logged operations of the followers table."""
        ops = self.db.metadata.tables["reflectsync_operations"]
        with self.db.engine.connect() as connection:
            return [
                tuple(row)
                for row in connection.execute(
                    sa.select(ops.c.table_name, ops.c.row_key, ops.c.command)
                    .where(ops.c.table_name == "followers")
                    .order_by(ops.c.id)
                )
            ]


def links_of(engine: sa.Engine, table: sa.Table) -> list[tuple[int, int]]:
    with engine.connect() as connection:
        return sorted(
            (row[0], row[1]) for row in connection.execute(sa.select(table))
        )


def define_social(db: Any) -> tuple[Any, sa.Table]:
    followers = track(
        db.Table(
            "followers",
            sa.Column(
                "follower_id", sa.ForeignKey("person.id"), primary_key=True
            ),
            sa.Column(
                "followed_id", sa.ForeignKey("person.id"), primary_key=True
            ),
        )
    )

    @track
    class User(db.Model):  # type: ignore[name-defined]
        __tablename__ = "person"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        following: Mapped[list[User]] = relationship(
            secondary=followers,
            primaryjoin=lambda: User.id == followers.c.follower_id,
            secondaryjoin=lambda: User.id == followers.c.followed_id,
            backref="followed_by",
        )

    return User, followers


@pytest.fixture
def social(make_app: AppFactory, tmp_path: Path) -> Iterator[Social]:
    env = make_app(SECRET_KEY=SECRET_KEY, REFLECTSYNC_OPEN_REGISTRATION=True)
    User, followers = define_social(env.db)
    with env.app.app_context():
        env.db.create_all()
    try:
        with served(env.app) as url, env.app.app_context():
            found = Social(env, url, User, followers, tmp_path, [])
            try:
                yield found
            finally:
                for client in found.clients:
                    client.close()
                    client.engine.dispose()
                env.db.session.remove()
    finally:
        untrack(followers)


def _seed(social: Social) -> None:
    U = social.User
    social.db.session.add_all(
        [U(id=1, name="ann"), U(id=2, name="bob"), U(id=3, name="cy")]
    )
    social.db.session.commit()


def _node_following(client: SyncClient, social: Social, user_id: int) -> list[int]:
    with client.Session() as session:
        user = session.get(social.User, user_id)
        assert user is not None
        return sorted(u.id for u in user.following)


# -- capture -------------------------------------------------------------------


def test_append_and_remove_are_logged_once(social: Social) -> None:
    _seed(social)
    session = social.db.session
    ann, bob, cy = (session.get(social.User, n) for n in (1, 2, 3))
    ann.following.append(bob)
    ann.following.append(cy)
    session.commit()
    assert social.server_links() == [(1, 2), (1, 3)]
    assert sorted(social.operations()) == [
        ("followers", "[1,2]", "i"),
        ("followers", "[1,3]", "i"),
    ]
    ann.following.remove(bob)
    session.commit()
    cy.following.append(ann)  # through the other side's backref too
    session.commit()
    assert social.server_links() == [(1, 3), (3, 1)]
    assert social.operations()[2:] == [
        ("followers", "[1,2]", "d"),
        ("followers", "[3,1]", "i"),
    ]


def test_a_rollback_leaves_no_operation(social: Social) -> None:
    _seed(social)
    session = social.db.session
    ann, bob = session.get(social.User, 1), session.get(social.User, 2)
    ann.following.append(bob)
    session.flush()
    session.rollback()
    nested = session.begin_nested()
    ann = session.get(social.User, 1)
    ann.following.append(session.get(social.User, 3))
    session.flush()
    nested.rollback()
    session.commit()
    assert social.server_links() == []
    assert social.operations() == []
    # A failed flush leaves no stale record behind for the next one.
    ann = session.get(social.User, 1)
    ann.following.append(session.get(social.User, 2))
    session.commit()
    assert social.operations() == [("followers", "[1,2]", "i")]


def test_clearing_a_collection_and_deleting_a_parent_log_deletes(
    social: Social,
) -> None:
    _seed(social)
    session = social.db.session
    ann, bob, cy = (session.get(social.User, n) for n in (1, 2, 3))
    ann.following.extend([bob, cy])
    bob.following.append(cy)
    session.commit()
    ann.following.clear()
    session.commit()
    assert social.server_links() == [(2, 3)]
    session.delete(cy)  # the ORM deletes cy's link rows with it
    session.commit()
    assert social.server_links() == []
    assert sorted(op for op in social.operations() if op[2] == "d") == [
        ("followers", "[1,2]", "d"),
        ("followers", "[1,3]", "d"),
        ("followers", "[2,3]", "d"),
    ]


def test_core_statements_through_the_session_are_logged_once(
    social: Social,
) -> None:
    _seed(social)
    session = social.db.session
    followers = social.followers
    session.execute(
        sa.insert(followers),
        [{"follower_id": 1, "followed_id": 2}, {"follower_id": 2, "followed_id": 1}],
    )
    session.commit()
    session.execute(sa.delete(followers).where(followers.c.follower_id == 2))
    session.commit()
    assert social.server_links() == [(1, 2)]
    operations = social.operations()
    assert sorted(operations[:2]) == [
        ("followers", "[1,2]", "i"),
        ("followers", "[2,1]", "i"),
    ]
    assert operations[2:] == [("followers", "[2,1]", "d")]


# -- sync -------------------------------------------------------------------------


def test_links_made_on_the_server_reach_a_node(social: Social) -> None:
    _seed(social)
    node = social.node("n1")
    node.synchronize()
    session = social.db.session
    ann, bob, cy = (session.get(social.User, n) for n in (1, 2, 3))
    ann.following.extend([bob, cy])
    session.commit()
    node.synchronize()
    assert _node_following(node, social, 1) == [2, 3]
    ann.following.remove(bob)
    session.commit()
    node.synchronize()
    assert _node_following(node, social, 1) == [3]
    assert links_of(node.engine, social.followers) == [(1, 3)]


def test_links_made_on_a_node_reach_the_server_and_another_node(
    social: Social,
) -> None:
    _seed(social)
    one, two = social.node("n1"), social.node("n2")
    one.synchronize()
    two.synchronize()
    with one.Session() as session:
        ann = session.get(social.User, 1)
        bob = session.get(social.User, 2)
        ann.following.append(bob)
        bob.following.append(ann)
        session.commit()
    assert one.pending_operations() == 2
    one.synchronize()
    assert social.server_links() == [(1, 2), (2, 1)]
    two.synchronize()
    assert _node_following(two, social, 1) == [2]
    assert _node_following(two, social, 2) == [1]
    # A delete on the second node travels back.
    with two.Session() as session:
        bob = session.get(social.User, 2)
        bob.following.clear()
        session.commit()
    two.synchronize()
    one.synchronize()
    assert social.server_links() == [(1, 2)]
    assert links_of(one.engine, social.followers) == [(1, 2)]
    social.db.session.expire_all()
    assert [u.id for u in social.db.session.get(social.User, 2).followed_by] == [1]


def test_the_same_link_made_on_two_nodes_converges_to_one(social: Social) -> None:
    _seed(social)
    one, two = social.node("n1"), social.node("n2")
    two.set_resolution(social.followers, "server-wins")  # strategies by table
    one.synchronize()
    two.synchronize()
    for client in (one, two):
        with client.Session() as session:
            ann = session.get(social.User, 1)
            ann.following.append(session.get(social.User, 3))
            session.commit()
    one.synchronize()
    two.synchronize()
    one.synchronize()
    assert social.server_links() == [(1, 3)]
    for client in (one, two):
        assert links_of(client.engine, social.followers) == [(1, 3)]
    # Both remove it: the second delete meets a missing row, and is dropped.
    for client in (one, two):
        with client.Session() as session:
            ann = session.get(social.User, 1)
            ann.following.clear()
            session.commit()
    one.synchronize()
    two.synchronize()
    one.synchronize()
    assert social.server_links() == []
    for client in (one, two):
        assert links_of(client.engine, social.followers) == []
        assert client.pending_operations() == 0


# -- registration ---------------------------------------------------------------


def test_a_table_without_a_primary_key_is_refused() -> None:
    metadata = sa.MetaData()
    loose = sa.Table(
        "loose", metadata, sa.Column("a", sa.Integer), sa.Column("b", sa.Integer)
    )
    with pytest.raises(errors.ConfigurationError, match="no primary key"):
        track(loose)


def test_a_table_tracked_as_a_class_and_as_a_table_is_refused() -> None:
    # Each of its writes would be logged twice: once for the object, once for
    # the statement on the plain table.
    class Base(sa.orm.DeclarativeBase):
        pass

    class Pair(Base):
        __tablename__ = "pair"
        a: Mapped[int] = mapped_column(primary_key=True)
        b: Mapped[int] = mapped_column(primary_key=True)

    class Other(Base):
        __tablename__ = "other_pair"
        a: Mapped[int] = mapped_column(primary_key=True)

    track(Pair)
    try:
        with pytest.raises(errors.ConfigurationError, match="tracked twice"):
            track(Pair.__table__)
    finally:
        untrack(Pair)
    track(Other.__table__)
    try:
        with pytest.raises(errors.ConfigurationError, match="tracked twice"):
            track(Other)
    finally:
        untrack(Other.__table__)


def test_an_untracked_association_table_is_warned_of(make_app: AppFactory) -> None:
    env = make_app()
    db = env.db
    links = db.Table(
        "club_members",
        sa.Column("club_id", sa.ForeignKey("club.id"), primary_key=True),
        sa.Column("member_id", sa.ForeignKey("country.id"), primary_key=True),
    )

    @track
    class Club(db.Model):  # type: ignore[name-defined]
        __tablename__ = "club"
        id: Mapped[int] = mapped_column(primary_key=True)
        members: Mapped[list[Any]] = relationship(env.models.Country, secondary=links)

    from flask import Flask

    from flask_reflectsync import ReflectSync

    app = Flask("warned")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ReflectSync().init_app(app, db)
    found = [w for w in caught if issubclass(w.category, errors.UntrackedLinkWarning)]
    assert len(found) == 1
    message = str(found[0].message)
    assert "Club" in message and "club_members" in message
    assert "City" not in message  # City's foreign key points at tracked Country


# -- scopes -----------------------------------------------------------------------


def test_a_scoped_association_table_follows_its_parent(
    make_app: AppFactory, tmp_path: Path
) -> None:
    env = make_app(SECRET_KEY=SECRET_KEY, REFLECTSYNC_OPEN_REGISTRATION=False)
    db = env.db
    members = track(
        db.Table(
            "team_members",
            sa.Column("team_id", sa.ForeignKey("team.id"), primary_key=True),
            sa.Column("player_id", sa.ForeignKey("player.id"), primary_key=True),
        )
    )

    @track
    class Team(db.Model):  # type: ignore[name-defined]
        __tablename__ = "team"
        id: Mapped[int] = mapped_column(primary_key=True)
        region: Mapped[str] = mapped_column(sa.String(20))
        players: Mapped[list[Any]] = relationship("Player", secondary=members)

    @track
    class Player(db.Model):  # type: ignore[name-defined]
        __tablename__ = "player"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))

    sync = env.sync
    sync.scope(Team, Team.region, equals="region")
    sync.scope(Player, read_only=True)
    for model in vars(env.models).values():
        sync.scope(model, hidden=True)

    @sync.registration_check
    def principal(registration: dict[str, Any]) -> dict[str, Any]:
        return {"region": registration.get("info", {}).get("region")}

    clients: list[SyncClient] = []
    try:
        with env.app.app_context():
            db.create_all()
        with served(env.app) as url, env.app.app_context():
            north_team, south_team = (
                Team(id=1, region="north"),
                Team(id=2, region="south"),
            )
            ann = Player(id=7, name="ann")
            north_team.players.append(ann)
            south_team.players.append(ann)
            db.session.add_all([north_team, south_team])
            db.session.commit()

            def node(name: str, region: str) -> SyncClient:
                engine = sa.create_engine(f"sqlite:///{tmp_path / name}.db")
                tables = [Team.__table__, Player.__table__, members]
                db.metadata.create_all(engine, tables=tables)
                client = SyncClient(
                    url + "/sync", engine, name=name, models=[Team, Player, members]
                )
                clients.append(client)
                client.register(info={"region": region})
                return client

            # Without a rule the link table is every node's: the usual warning.
            with pytest.warns(errors.ScopeWarning, match="team_members"):
                node("first", "north").synchronize()
            sync.scope(members, follows=members.c.team_id)
            north = node("north", "north")
            north.synchronize()
            assert links_of(north.engine, members) == [(1, 7)]
            db.session.remove()
    finally:
        for client in clients:
            client.close()
            client.engine.dispose()
        untrack(members)


# -- tracking by name -------------------------------------------------------------


def test_a_table_created_by_another_program_is_tracked_by_name(
    make_app: AppFactory, tmp_path: Path
) -> None:
    env = make_app(SECRET_KEY=SECRET_KEY, REFLECTSYNC_OPEN_REGISTRATION=True)
    db = env.db
    with env.app.app_context(), db.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS legacy_items"))
        connection.execute(
            sa.text(
                "CREATE TABLE legacy_items (code VARCHAR(10) NOT NULL, "
                "lot INTEGER NOT NULL, label VARCHAR(50), PRIMARY KEY (code, lot))"
            )
        )
    clients: list[SyncClient] = []
    table: sa.Table | None = None
    try:
        with env.app.app_context():
            with pytest.raises(errors.ConfigurationError, match="no table"):
                env.sync.track_table("no_such_items")
            table = env.sync.track_table("legacy_items")
        assert [c.name for c in table.primary_key.columns] == ["code", "lot"]
        with served(env.app) as url, env.app.app_context():
            db.session.execute(
                sa.insert(table), [{"code": "A", "lot": 1, "label": "first"}]
            )
            db.session.commit()
            engine = sa.create_engine(f"sqlite:///{tmp_path / 'node'}.db")
            db.metadata.create_all(engine, tables=[table])
            client = SyncClient(url + "/sync", engine, name="n", models=[table])
            clients.append(client)
            client.register()
            client.synchronize()
            with engine.connect() as connection:
                rows = connection.execute(sa.select(table)).all()
            assert [tuple(r) for r in rows] == [("A", 1, "first")]
            with client.Session() as session:
                session.execute(
                    sa.update(table).where(table.c.code == "A").values(label="new")
                )
                session.commit()
            client.synchronize()
            with db.engine.connect() as connection:
                label = connection.execute(sa.select(table.c.label)).scalar()
            assert label == "new"
            db.session.remove()
    finally:
        for client in clients:
            client.close()
            client.engine.dispose()
        if table is not None:
            untrack(table)
            with env.app.app_context(), db.engine.begin() as connection:
                table.drop(connection)
            db.metadata.remove(table)


def test_a_repair_restores_the_links(social: Social) -> None:
    _seed(social)
    session = social.db.session
    ann, bob, cy = (session.get(social.User, n) for n in (1, 2, 3))
    ann.following.extend([bob, cy])
    session.commit()
    node = social.node("n1")
    node.synchronize()
    with node.engine.begin() as connection:  # lost behind the log's back
        connection.execute(sa.delete(social.followers))
    node.repair()
    assert links_of(node.engine, social.followers) == [(1, 2), (1, 3)]
    assert _node_following(node, social, 1) == [2, 3]
