"""What the server's database changes in a pushed row reaches the pushing
node (see :mod:`flask_reflectsync.server.push_echo`): a trigger on the
server's table, on each backend, and a server-side ``onupdate`` value.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flask_reflectsync.client import Conflict, SyncClient

from .nodes import Cluster

_TRIGGERS = {
    "postgresql": [
        "CREATE FUNCTION rs_test_upper_name() RETURNS trigger AS $$ "
        "BEGIN NEW.name := upper(NEW.name); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER rs_test_upper BEFORE INSERT OR UPDATE ON city "
        "FOR EACH ROW EXECUTE FUNCTION rs_test_upper_name()",
    ],
    "mysql": [
        "CREATE TRIGGER rs_test_upper_i BEFORE INSERT ON city "
        "FOR EACH ROW SET NEW.name = UPPER(NEW.name)",
        "CREATE TRIGGER rs_test_upper_u BEFORE UPDATE ON city "
        "FOR EACH ROW SET NEW.name = UPPER(NEW.name)",
    ],
    "sqlite": [
        "CREATE TRIGGER rs_test_upper_i AFTER INSERT ON city BEGIN "
        "UPDATE city SET name = upper(name) WHERE id = NEW.id; END",
        "CREATE TRIGGER rs_test_upper_u AFTER UPDATE OF name ON city BEGIN "
        "UPDATE city SET name = upper(name) WHERE id = NEW.id; END",
    ],
}
_DROP = {
    "postgresql": ["DROP FUNCTION IF EXISTS rs_test_upper_name() CASCADE"],
    "mysql": [
        "DROP TRIGGER IF EXISTS rs_test_upper_i",
        "DROP TRIGGER IF EXISTS rs_test_upper_u",
    ],
    "sqlite": [
        "DROP TRIGGER IF EXISTS rs_test_upper_i",
        "DROP TRIGGER IF EXISTS rs_test_upper_u",
    ],
}


@pytest.fixture
def upper_names(net: Cluster) -> Iterator[None]:
    """A trigger on the server's ``city`` table that upper-cases names."""
    engine = net.server.env.db.engine
    backend = engine.dialect.name
    with engine.begin() as connection:
        for statement in _TRIGGERS[backend]:
            connection.exec_driver_sql(statement)
    try:
        yield
    finally:
        with engine.begin() as connection:
            for statement in _DROP[backend]:
                connection.exec_driver_sql(statement)


def _names(node: SyncClient) -> list[tuple[int, str]]:
    with node.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, name FROM city ORDER BY id"))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_a_trigger_changing_pushed_rows_reaches_the_pushing_node(
    net: Cluster, upper_names: None, resolved: list[Conflict]
) -> None:
    m = net.server.env.models
    a, b = net.node(), net.node()
    with a.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="lima", population=10, country_id=1))
        session.commit()
    a.synchronize()
    assert _names(a) == [(1, "LIMA")]  # the insert's stored name
    with a.Session() as session:
        session.get(m.City, 1).name = "lima centro"
        session.commit()
    a.synchronize()
    assert _names(a) == [(1, "LIMA CENTRO")]
    net.settle()
    net.assert_converged()
    assert _names(b) == [(1, "LIMA CENTRO")]
    assert resolved == []


def test_an_unchanged_stored_row_logs_nothing_more(
    net: Cluster, upper_names: None
) -> None:
    """A pushed value the trigger leaves as it is adds no operation."""
    m = net.server.env.models
    a = net.node()
    with a.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.add(m.City(id=1, name="LIMA", population=10, country_id=1))
        session.commit()
    a.synchronize()
    with a.Session() as session:
        session.get(m.City, 1).population = 11
        session.commit()
    a.synchronize()
    operations = net.server.env.db.metadata.tables["reflectsync_operations"]
    with net.server.env.db.engine.connect() as connection:
        logged = connection.execute(
            sa.select(operations.c.command, operations.c.changed_columns)
            .where(operations.c.table_name == "city")
            .order_by(operations.c.id)
        ).all()
    assert [tuple(row) for row in logged] == [("i", None), ("u", '["population"]')]
