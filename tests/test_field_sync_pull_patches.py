"""Pulled updates travel as patches: the key and the columns changed since
the node's version, ``null`` in the others, and the node completes them
from what it knows (see :ref:`pull-patches`). Real HTTP, the test server's
database, SQLite nodes; the pages are read off the node's own transport.
"""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from flask_reflectsync.client import Conflict

from .nodes import Cluster
from .test_field_sync import _city, _seed, _server_set, _set


class Pages(httpx.HTTPTransport):
    """The node's HTTP transport, keeping every pull page it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/pull"):
            response.read()
            self.pages.append(response.json())
        return response

    def city(self) -> dict[str, Any]:
        """The city table's part of the last page that had one, by column:
        ``{column: [values]}`` plus ``"commands"`` and ``"changed"``."""
        for page in reversed(self.pages):
            part = page["changes"].get("city")
            if part is not None:
                found = dict(zip(part["columns"], part["values"], strict=True))
                marks = part.get("changed")
                named = [
                    None if m is None else sorted(part["columns"][p] for p in m)
                    for m in marks or ()
                ]
                return {**found, "commands": part["commands"], "changed": named}
        raise AssertionError("no page held the city table")


#: The server's city after its app set the population to 15.
LIMA_15 = {"id": 1, "name": "Lima", "population": 15, "country_id": 1}


def _keeping(seen: list[Conflict], answer: Any = "node") -> Any:
    def decide(conflict: Conflict) -> Any:
        seen.append(conflict)
        return answer

    return decide


def test_a_pulled_update_carries_only_its_changed_columns(net: Cluster) -> None:
    wire = Pages()
    a = net.node()
    b = net.node(transport=wire)
    _seed(net, a, b)
    _server_set(net, 1, population=20)
    b.pull()
    part = wire.city()
    assert part["commands"] == "u"
    assert part["changed"] == [["population"]]
    assert part["id"] == [1] and part["population"] == [20]
    assert part["name"] == [None] and part["country_id"] == [None]
    # The node completed the patch from its own row.
    assert net.node_rows(b)["city"] == [(1, "Lima", 20, 1)]
    a.pull()
    _city(net)  # converged: (1, "Lima", 20, 1) everywhere


def test_inserts_travel_whole(net: Cluster) -> None:
    wire = Pages()
    a = net.node()
    b = net.node(transport=wire)
    _seed(net, a, b)
    m = net.server.env.models
    with a.Session() as session:
        session.add(m.City(id=2, name="Cusco", population=5, country_id=1))
        session.commit()
    a.synchronize()
    b.pull()
    part = wire.city()
    assert part["commands"] == "i" and part["changed"] == []
    assert part["name"] == ["Cusco"] and part["country_id"] == [1]
    assert sorted(net.node_rows(b)["city"]) == [(1, "Lima", 10, 1), (2, "Cusco", 5, 1)]


def test_a_conflicts_server_row_holds_the_servers_values_not_the_nodes(
    net: Cluster,
) -> None:
    """The node renamed the city and changed its population; the server
    changed the population only. In the conflict on ``population``, the
    server's ``name`` is the one the server has (the node's base), not the
    node's unpushed rename, although the patch did not carry it."""
    seen: list[Conflict] = []
    a = net.node()
    b = net.node(resolution=_keeping(seen))
    _seed(net, a, b)
    _set(b, 1, name="Callao", population=12)
    _server_set(net, 1, population=15)
    b.synchronize()
    (conflict,) = seen
    assert conflict.columns == ("population",)
    assert conflict.server == LIMA_15
    assert conflict.local is not None and conflict.local["name"] == "Callao"
    net.settle()
    assert _city(net) == (1, "Callao", 12, 1)


def test_a_server_row_the_bulk_update_kept_no_base_for_is_fetched(
    net: Cluster,
) -> None:
    """A bulk ``update()`` keeps no base: the server's value of a column the
    node changed that way is not known locally, so the node asks for it."""
    seen: list[Conflict] = []
    a = net.node()
    b = net.node(resolution=_keeping(seen, "server"))
    _seed(net, a, b)
    city = b.schema.tables["city"].mapper.class_
    with b.Session() as session:
        statement = sa.update(city).where(city.id == 1)
        session.execute(statement.values(name="Callao", population=12))
        session.commit()
    _server_set(net, 1, population=15)
    b.synchronize()
    (conflict,) = seen
    assert conflict.server == LIMA_15
    net.settle()
    # "server" won population; the node's other column survives.
    assert _city(net) == (1, "Callao", 15, 1)


def test_a_row_deleted_locally_comes_back_whole_when_the_server_wins(
    net: Cluster,
) -> None:
    """The node deleted the row, the server updated one column: the node has
    nothing to complete the patch with, so it fetches the server's row."""
    seen: list[Conflict] = []
    a = net.node()
    b = net.node(resolution=_keeping(seen, "server"))
    _seed(net, a, b)
    city = b.schema.tables["city"].mapper.class_
    with b.Session() as session:
        session.delete(session.get(city, 1))
        session.commit()
    _server_set(net, 1, population=15)
    b.synchronize()
    (conflict,) = seen
    assert conflict.kind == "delete/update"
    assert conflict.server == LIMA_15
    net.settle()
    assert _city(net) == (1, "Lima", 15, 1)
