"""Values the server would refuse are refused by the node at flush: a
clear error naming table, key and column, and nothing written or queued."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from flask_reflectsync import errors

from .nodes import Cluster

INT_MAX = 2**31 - 1


@pytest.mark.parametrize(
    ("values", "column", "words"),
    [
        ({"name": "x" * 101}, "name", "holds at most 100 characters, got 101"),
        ({"name": "Li\x00ma"}, "name", "cannot hold NUL"),
        ({"population": INT_MAX + 1}, "population", "holds integers from"),
    ],
    ids=["too long", "NUL", "out of range"],
)
def test_a_value_the_server_cannot_store_is_refused_at_flush(
    net: Cluster, values: dict[str, object], column: str, words: str
) -> None:
    m = net.server.env.models
    node = net.node()
    with node.Session() as session:
        session.add(m.Country(id=1, name="Peru"))
        session.commit()
    with node.Session() as session:
        session.add(m.City(id=7, **{"name": "Lima", "population": 1, **values}))
        with pytest.raises(errors.InvalidValueError) as caught:
            session.commit()
    assert caught.value.table == "city" and caught.value.key == [7]
    assert caught.value.column == column
    assert words in caught.value.message
    assert "The server would refuse it" in caught.value.message
    with node.engine.connect() as connection:
        assert connection.execute(sa.select(m.City.__table__)).all() == []
    assert node.pending_operations() == 1  # Peru only


def test_an_update_is_checked_on_the_columns_it_changes(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node()
    with node.Session() as session:
        session.add(m.City(id=1, name="Lima", population=INT_MAX))
        session.commit()
    with node.Session() as session:
        session.get(m.City, 1).population = INT_MAX + 1
        with pytest.raises(errors.InvalidValueError, match="city \\[1\\]"):
            session.commit()
    with node.Session() as session:
        session.get(m.City, 1).name = "Lima II"  # the others are left alone
        session.commit()
    node.synchronize()
    assert net.server_rows()["city"] == [(1, "Lima II", INT_MAX, None)]


def test_the_check_can_be_left_to_the_server(net: Cluster) -> None:
    m = net.server.env.models
    node = net.node(check_values=False)
    with node.Session() as session:
        session.add(m.City(id=1, name="x" * 101, population=1))
        session.commit()  # SQLite stores it
    result = node.synchronize()
    [aside] = result.pushed.set_aside
    assert aside.table == "city" and "at most 100 characters" in aside.reason
