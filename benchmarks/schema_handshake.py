"""What the schema handshake costs a pull: the full description against the
digests (see the schema-changes page, "Digests").

    python benchmarks/schema_handshake.py [--url URL] [--tables 100] [--columns 10]

The server tracks ``--tables`` tables of an integer key and ``--columns``
more columns of mixed kinds (100 x 11 by default). A registered node pulls
with nothing new (``since`` = the server's version: an empty page, so the
figure is the handshake and the route's fixed cost), signed, through the
app's WSGI stack in this process (no sockets: the server's time alone), in
four forms alternated request by request:

* **baseline, same schema**: the full description in ``schema``, as every
  request carried it before digests;
* **digest, same schema**: ``schema_digest`` only;
* **baseline, one difference**: the full description, one table lacking one
  of the server's columns (the page is cut to the node's columns);
* **digest, one difference**: the form a node sends once the server told it
  its digests (``schema.describe``): the differing table's columns, the
  others' digests.

For each: the request body's bytes (as :class:`SyncClient` encodes it), the
median time of the whole request and of the handshake alone (validating the
message and :func:`~flask_reflectsync.server.schema_check.fit_page` on the
page), and the ratio to the baseline. Then the one-time cost of a differing
node's first request: the digest, the 409 ``schema.describe`` answer, and
the request again. On PostgreSQL, last, what column identities cost: a
process's first read and record of its columns' names, and the cached
lookup of every later request, against a pull with the digest.

Run with ``PYTHONPATH`` naming a checkout from before digests, it measures
that package's baselines alone (the same forms, its own code).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_reflectsync import ReflectSync, track
from flask_reflectsync.server.schema import TrackedSchema
from flask_reflectsync.server.schema_check import fit_page
from flask_reflectsync.wire.messages import PROTOCOL_VERSION, validate
from flask_reflectsync.wire.schema import describe
from flask_reflectsync.wire.signing import sign_request

try:
    from flask_reflectsync.server.column_names import (
        column_history,
        define_column_names,
        forget,
        record_columns,
    )
except ImportError:  # a package from before column identities
    IDENTITIES = False
else:
    IDENTITIES = True

try:
    from flask_reflectsync.wire.schema import digest_all, digest_table, digests
except ImportError:  # the package from before digests (PYTHONPATH=old checkout)
    DIGESTS = False
else:
    DIGESTS = True

#: The kinds of the extra columns, in turn.
KINDS: list[Any] = [
    sa.String(50),
    sa.Integer,
    sa.Numeric(12, 2),
    sa.DateTime,
    sa.Boolean,
    sa.Text,
    sa.Date,
    sa.Float,
    sa.String(200),
    sa.BigInteger,
]


def build(url: str, tables: int, columns: int) -> tuple[Flask, SQLAlchemy, list[Any]]:
    app = Flask("schema_handshake")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY="benchmark",
        REFLECTSYNC_OPEN_REGISTRATION=True,
    )
    db = SQLAlchemy(app)
    models = []  # kept: the mapper registry holds its classes weakly
    for n in range(tables):
        table = sa.Table(
            f"bench_table_{n:03d}",
            db.metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            *[
                sa.Column(f"field_{c:02d}", KINDS[c % len(KINDS)], nullable=True)
                for c in range(columns)
            ],
        )
        models.append(track(type(f"Bench{n:03d}", (db.Model,), {"__table__": table})))
    ReflectSync(app, db)
    return app, db, models


class Node:
    """A registered node sending signed requests through the test client."""

    def __init__(self, app: Flask) -> None:
        self.http = app.test_client()
        answer = self.http.post("/sync/register", json={"protocol": PROTOCOL_VERSION})
        node = answer.get_json()["node"]
        self.id, self.secret = node["id"], node["secret"]

    def post(self, route: str, body: bytes) -> tuple[int, Any, float]:
        path = "/sync" + route
        headers = sign_request(self.id, self.secret, "POST", path, "", body)
        headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        answer = self.http.post(path, data=body, headers=headers)
        took = time.perf_counter() - start
        return answer.status_code, answer.get_json(), took


def forms(schema: TrackedSchema) -> dict[str, dict[str, Any]]:
    """The four forms' schema fields (the baselines only, for the package
    from before digests)."""
    same = describe(schema.tables.values())
    first = next(iter(same))
    differing = {**same, first: dict(list(same[first].items())[:-1])}
    if not DIGESTS:
        return {
            "baseline, same schema": {"schema": same},
            "baseline, one difference": {"schema": differing},
        }
    theirs = digests(schema.tables.values())
    mixed = {
        table: digest
        if theirs.get(table) == (digest := digest_table(columns))
        else columns
        for table, columns in differing.items()
    }
    return {
        "baseline, same schema": {"schema": same},
        "digest, same schema": {"schema_digest": digest_all(theirs)},
        "baseline, one difference": {"schema": differing},
        "digest, one difference": {"schema": mixed},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="the server's database")
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--columns", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = args.url or f"sqlite:///{directory}/server.db"
        app, db, _models = build(url, args.tables, args.columns)
        with app.app_context():
            db.drop_all()
            db.create_all()
            run(app, args)
            db.drop_all()


def run(app: Flask, args: argparse.Namespace) -> None:
    schema = TrackedSchema.of(app.extensions["sqlalchemy"].metadata)
    node = Node(app)
    since = node.post(
        "/pull", json.dumps({"protocol": PROTOCOL_VERSION, "since": 0}).encode()
    )[1]["until"]
    bodies: dict[str, bytes] = {}
    for name, fields in forms(schema).items():
        message = {"protocol": PROTOCOL_VERSION, "since": since, **fields}
        bodies[name] = json.dumps(message).encode("utf-8")  # as SyncClient does
        status, answer, _ = node.post("/pull", bodies[name])
        assert status == 200, answer
    whole: dict[str, list[float]] = {name: [] for name in bodies}
    part: dict[str, list[float]] = {name: [] for name in bodies}
    page = {"changes": {}, "until": since, "cursor": None}
    gc.collect()
    for _ in range(args.rounds):
        for name, body in bodies.items():
            whole[name].append(node.post("/pull", body)[2])
            part[name].append(handshake(body, page, schema))
    print(
        f"{len(schema.tables)} tables x {args.columns + 1} columns, "
        f"{args.rounds} pulls of each form (medians)"
    )
    print(
        f"{'form':26} {'bytes':>7} {'request ms':>11} {'ratio':>6} "
        f"{'handshake ms':>13} {'ratio':>6}"
    )
    for name in bodies:
        base = "baseline, " + name.split(", ", 1)[1]
        size = len(bodies[name])
        request, alone = median(whole[name]), median(part[name])
        print(
            f"{name:26} {size:7d} {request * 1000:11.3f} "
            f"{request / median(whole[base]):5.2f}x {alone * 1000:13.4f} "
            f"{alone / median(part[base]):5.2f}x"
        )
    if DIGESTS:
        first_contact(node, since, schema)
    if IDENTITIES and app.extensions["sqlalchemy"].engine.dialect.name == "postgresql":
        identity_cost(app, schema, median(whole["digest, same schema"]), args.rounds)


def handshake(body: bytes, page: dict[str, Any], schema: TrackedSchema) -> float:
    """The server's handshake work for one pull: parse and validate the
    message, fit the page."""
    start = time.perf_counter()
    message = validate(json.loads(body), "PullRequest")
    fit_page(dict(page, changes={}), message, schema)
    return time.perf_counter() - start


def first_contact(node: Node, since: int, schema: TrackedSchema) -> None:
    """A differing node's first request: its digest, the server's
    schema.describe answer, and the request again with the differing table."""
    schema_forms = forms(schema)
    differing_digest = digest_all(
        {
            t: digest_table(c)
            for t, c in schema_forms["baseline, one difference"]["schema"].items()
        }
    )
    asked = {"protocol": PROTOCOL_VERSION, "since": since}
    first = json.dumps({**asked, "schema_digest": differing_digest}).encode()
    status, answer, took = node.post("/pull", first)
    assert status == 409 and answer["code"] == "schema.describe", answer
    answered = len(json.dumps(answer).encode())
    again = json.dumps({**asked, **schema_forms["digest, one difference"]}).encode()
    status, _, took_again = node.post("/pull", again)
    assert status == 200
    print(
        f"first request of a differing node: {len(first)} bytes, answered "
        f"409 schema.describe ({answered} bytes, {took * 1000:.3f} ms), then "
        f"{len(again)} bytes ({took_again * 1000:.3f} ms); once per client"
    )


def identity_cost(
    app: Flask, schema: TrackedSchema, pull: float, rounds: int
) -> None:
    """PostgreSQL's column identities (see the schema-changes page, "Renames:
    by column identity, or by shape"): a process's first read and record of
    its tracked columns' names, and the cached lookup every later pull,
    repair and schema check makes, against a pull with the digest."""
    engine = app.extensions["sqlalchemy"].engine
    table = define_column_names(sa.MetaData())
    firsts = []
    for _ in range(5):
        forget()
        with engine.begin() as connection:
            connection.execute(sa.delete(table))
        start = time.perf_counter()
        column_history(engine, schema)
        record_columns(engine, schema)
        firsts.append(time.perf_counter() - start)
    cached = []
    for _ in range(rounds):
        start = time.perf_counter()
        column_history(engine, schema)
        record_columns(engine, schema)
        cached.append(time.perf_counter() - start)
    with engine.connect() as connection:
        names = connection.execute(sa.select(sa.func.count()).select_from(table))
        count = names.scalar()
    first, later = median(firsts), median(cached)
    print(
        f"column identities (PostgreSQL, {count} names): first of a process "
        f"{first * 1000:.2f} ms ({first / pull:.2f}x a digest pull of "
        f"{pull * 1000:.2f} ms), then {later * 1000:.4f} ms a request "
        f"({later / pull:.4f}x)"
    )


def median(samples: list[float]) -> float:
    return statistics.median(samples)

if __name__ == "__main__":
    main()
