"""Soak: many node processes against a multi-worker server, and an audit.

    pip install -e '.[soak]'
    python benchmarks/soak.py --nodes 8 --seconds 20 --workers 4 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_soak

What runs (each a real OS process):

* gunicorn with ``--workers`` sync workers serving :mod:`soak_app` (the
  extension on ``--database``, PostgreSQL or MariaDB);
* ``--nodes`` nodes, each a :class:`~flask_reflectsync.client.SyncClient` on
  its own SQLite file, looping for ``--seconds``: a few random inserts,
  updates and deletes of the shared rows, then ``synchronize()``, over a
  network that loses each request, or its answer after the server acted,
  with probability ``--loss``;
* the server app itself, writing through its ``db.session``: the same kinds
  of change, and new surveys under ``max(id) + 1``.

Every change carries a tag of its own (``n7-s123``, ``srv-s9``) and every
process journals what it wrote, deleted and resolved (JSON lines). At the
end the loss stops, every node synchronises until a round is quiet, and the
journals are checked against the server's rows and the extension's own log
(``reflectsync_versions``, ``reflectsync_operations``): see
``docs/soak.rst`` for each check. Prints the verdict as a table (and as JSON
with ``--json``); the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session

from flask_reflectsync import signals
from flask_reflectsync.client import Conflict, KindResolver, SyncClient, SyncResult
from flask_reflectsync.tracking import define_tables, number_versions

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak_app  # noqa: E402  (next to this script, also imported by gunicorn)

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_soak"
#: Survey codes are drawn from a small pool, so that two nodes pick the same
#: one now and then (a unique conflict).
CODE_POOL = 300
TABLES = [model.__table__ for model in soak_app.MODELS]
TEXT = {"soak_survey": "title", "soak_answer": "note"}
#: The conflicts whose resolution may bring a deleted row back.
RESTORING = ("update/delete", "delete/update", "dependency", "reversed-dependency")


# -- the network -------------------------------------------------------------------


class LossyNetwork(httpx.BaseTransport):
    """Loses a request before it is sent, or its answer after the server
    acted on it, with probability ``loss`` each; counts answers by route and
    status (also those it then loses)."""

    def __init__(self, loss: float, seed: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.loss = loss
        self.random = random.Random(seed)
        self.statuses: Counter[str] = Counter()
        self.lost = Counter[str]()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/", 1)[-1]
        if self.random.random() < self.loss:
            self.lost["request"] += 1
            raise httpx.ConnectError("request lost (soak)", request=request)
        answer = self.inner.handle_request(request)
        self.statuses[f"{route} {answer.status_code}"] += 1
        if self.random.random() < self.loss:
            answer.read()
            answer.close()
            self.lost["answer"] += 1
            raise httpx.ReadError("answer lost (soak)", request=request)
        return answer

    def close(self) -> None:
        self.inner.close()


# -- journals and random changes -----------------------------------------------------


class Journal:
    """One process's record of what it committed, as JSON lines."""

    def __init__(self, path: Path, who: str) -> None:
        self.who = who
        self.file = path.open("a", encoding="utf-8")

    def write(self, op: str, **fields: Any) -> None:
        line = {"t": round(time.time(), 3), "who": self.who, "op": op, **fields}
        self.file.write(json.dumps(line, default=str) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def row_tag(text: str) -> str:
    """The tag of the row (the part before ``~``) in a tagged text."""
    return text.split("~", 1)[0]


class Writer:
    """Random tagged changes to the shared rows through one tracked session.

    :param who: the tag prefix (``n7``, ``srv``).
    :param next_key: for the server app, new surveys take ``max(id) + 1``
        half the time, as an app on SQLite would.
    """

    WEIGHTS = {
        "add_survey": 2.0,
        "add_answer": 3.0,
        "edit_survey": 2.0,
        "edit_answer": 3.0,
        "drop_answer": 1.5,
        "drop_survey": 0.7,
    }

    def __init__(
        self, who: str, rng: random.Random, journal: Journal, next_key: bool = False
    ) -> None:
        self.who = who
        self.rng = rng
        self.journal = journal
        self.next_key = next_key
        self.sequence = 0
        self.failures: Counter[str] = Counter()

    def tag(self) -> str:
        self.sequence += 1
        return f"{self.who}-s{self.sequence}"

    def act(self, session: Session | scoped_session[Any]) -> None:
        """One random change, committed and journaled (a failure is counted
        by exception class and rolled back)."""
        names = list(self.WEIGHTS)
        action = self.rng.choices(names, weights=list(self.WEIGHTS.values()))[0]
        try:
            lines = getattr(self, action)(session)
            session.commit()
        except Exception as error:  # noqa: BLE001 - counted and reported
            session.rollback()
            name = type(error).__name__
            self.failures[f"{action}: {name}"] += 1
            self.journal.write(
                "failed", action=action, error=name, message=str(error)[:300]
            )
            return
        for op, fields in lines:
            self.journal.write(op, **{k: v() if callable(v) else v for k, v in fields})

    def _free_code(self, session: Session, tag: str) -> str:
        used = set(session.scalars(sa.select(soak_app.Survey.code)))
        free = [f"c{i}" for i in range(CODE_POOL) if f"c{i}" not in used]
        return self.rng.choice(free) if free else f"c-{tag}"

    def _pick(self, session: Session, model: Any) -> Any:
        keys = list(session.scalars(sa.select(model.id)))
        return session.get(model, self.rng.choice(keys)) if keys else None

    def add_survey(self, session: Session) -> list[Any]:
        tag = self.tag()
        key = None
        if self.next_key and self.rng.random() < 0.5:
            key = (session.scalar(sa.select(sa.func.max(soak_app.Survey.id))) or 0) + 1
        row = soak_app.Survey(id=key, code=self._free_code(session, tag), title=tag)
        session.add(row)
        return [("insert", _fields("soak_survey", row, tag, tag))]

    def add_answer(self, session: Session) -> list[Any]:
        parent = self._pick(session, soak_app.Survey)
        if parent is None:
            return self.add_survey(session)
        tag = self.tag()
        row = soak_app.Answer(
            survey_id=parent.id, value=self.rng.randrange(1000), note=tag
        )
        session.add(row)
        return [("insert", _fields("soak_answer", row, tag, tag))]

    def edit_survey(self, session: Session) -> list[Any]:
        row = self._pick(session, soak_app.Survey)
        if row is None:
            return []
        tag = self.tag()
        row.title = f"{row_tag(row.title)}~{tag}"
        if self.rng.random() < 0.3:
            row.code = self._free_code(session, tag)
        return [("update", _fields("soak_survey", row, row_tag(row.title), row.title))]

    def edit_answer(self, session: Session) -> list[Any]:
        row = self._pick(session, soak_app.Answer)
        if row is None:
            return []
        tag = self.tag()
        row.note = f"{row_tag(row.note)}~{tag}"
        row.value = self.rng.randrange(1000)
        if self.rng.random() < 0.2:
            parent = self._pick(session, soak_app.Survey)
            row.survey_id = parent.id
        return [("update", _fields("soak_answer", row, row_tag(row.note), row.note))]

    def drop_answer(self, session: Session) -> list[Any]:
        row = self._pick(session, soak_app.Answer)
        if row is None:
            return []
        session.delete(row)
        return [("delete", _fields("soak_answer", row, row_tag(row.note)))]

    def drop_survey(self, session: Session) -> list[Any]:
        row = self._pick(session, soak_app.Survey)
        if row is None:
            return []
        children = session.scalars(
            sa.select(soak_app.Answer).where(soak_app.Answer.survey_id == row.id)
        ).all()
        lines = []
        for child in children:
            session.delete(child)
            lines.append(("delete", _fields("soak_answer", child, row_tag(child.note))))
        session.flush()  # the children go first: the key is checked at once
        session.delete(row)
        lines.append(("delete", _fields("soak_survey", row, row_tag(row.title))))
        return lines


def _fields(table: str, row: Any, tag: str, value: str | None = None) -> list[Any]:
    """Journal fields; the key is read after the commit (a node assigns it at
    flush)."""
    key = row.id
    fields: list[Any] = [("table", table), ("tag", tag)]
    fields.append(("key", (lambda: row.id) if key is None else key))
    if value is not None:
        fields.append(("value", value))
    return fields


def _conflict_tags(conflict: Conflict) -> list[str]:
    column = TEXT.get(conflict.table)
    tags = set()
    for side in (conflict.local, conflict.server):
        if side and column and side.get(column):
            tags.add(row_tag(side[column]))
    return sorted(tags)


def _unique_resolver(who: str) -> Any:
    """Resolves a unique conflict on a survey's code by giving the local
    row a code of its own; every other kind goes to the default strategy."""
    counter = iter(range(10**9))

    def resolve(conflict: Conflict) -> Any:
        if conflict.table == "soak_survey":
            return {"code": f"u-{who}-{next(counter)}"}
        return None

    # Only unique conflicts: the server decides the direct ones itself.
    return KindResolver(resolve, {"unique"})


def open_node(
    base_url: str, path: Path, who: str, transport: httpx.BaseTransport | None
) -> SyncClient:
    engine = sa.create_engine(f"sqlite:///{path}")
    soak_app.db.metadata.create_all(engine, tables=TABLES)
    return SyncClient(
        base_url,
        engine,
        models=soak_app.MODELS,
        name=who,
        resolution=_unique_resolver(who),
        transport=transport,
        timeout=60,
    )


def journal_conflicts(client: SyncClient, journal: Journal) -> Any:
    """Journals every conflict ``client`` resolves; returns the receiver
    (keep it: signals hold receivers weakly)."""

    def receive(sender: Any, conflict: Conflict, **extra: Any) -> None:
        journal.write(
            "conflict",
            kind=conflict.kind,
            resolution=conflict.resolution,
            table=conflict.table,
            key=list(conflict.key),
            new_key=list(conflict.new_key) if conflict.new_key else None,
            tags=_conflict_tags(conflict),
        )

    signals.conflict_resolved.connect(receive, sender=client)
    return receive


# -- the processes -------------------------------------------------------------------


@dataclass
class Plan:
    """What every process of one soak needs to know (picklable)."""

    base_url: str
    database: str
    directory: str
    seconds: float
    loss: float
    seed: int
    tries: int
    pause: float


@dataclass
class NodeStats:
    """What one process counted while the load ran."""

    who: str
    calls: int = 0
    succeeded: int = 0
    attempts: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    changes: int = 0
    failures: Counter[str] = field(default_factory=Counter)


def run_node(plan: Plan, index: int, go: Any) -> None:
    """A node's life: register, wait for the start, loop, save its counts."""
    who = f"n{index}"
    directory = Path(plan.directory)
    rng = random.Random(plan.seed * 1000 + index)
    network = LossyNetwork(0.0, plan.seed * 1000 + index)
    client = open_node(plan.base_url, directory / f"{who}.db", who, network)
    journal = Journal(directory / f"{who}.jsonl", who)
    keep = journal_conflicts(client, journal)
    client.register()
    stats = NodeStats(who)
    writer = Writer(who, rng, journal)
    (directory / f"{who}.ready").touch()
    go.wait()
    network.loss = plan.loss
    deadline = time.monotonic() + plan.seconds
    while time.monotonic() < deadline:
        for _ in range(rng.randint(1, 3)):
            with client.Session() as session:
                writer.act(session)
        _synchronize(client, plan.tries, stats, journal)
        time.sleep(rng.uniform(0, plan.pause))
    stats.changes = writer.sequence
    stats.failures = writer.failures
    stats.statuses, stats.lost = network.statuses, network.lost
    _save(directory / f"{who}.stats.json", stats)
    del keep
    journal.close()
    client.close()


def _synchronize(
    client: SyncClient, tries: int, stats: NodeStats, journal: Journal
) -> SyncResult | None:
    stats.calls += 1
    try:
        result = client.synchronize(tries=tries)
    except Exception as error:  # noqa: BLE001 - anything raised is a failure
        name = type(error).__name__
        stats.errors[name] += 1
        journal.write("sync", ok=False, error=name, message=str(error)[:300])
        return None
    stats.succeeded += 1
    stats.attempts[result.attempts] += 1
    journal.write(
        "sync", ok=True, attempts=result.attempts, pushed=result.pushed.operations
    )
    return result


def _save(path: Path, stats: NodeStats) -> None:
    data = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(stats).items()}
    path.write_text(json.dumps(data))


def run_server_app(plan: Plan, go: Any) -> None:
    """The server app's own writer: tagged changes through ``db.session``."""
    directory = Path(plan.directory)
    app = soak_app.create_app(plan.database)
    journal = Journal(directory / "srv.jsonl", "srv")
    writer = Writer("srv", random.Random(plan.seed * 1000 + 999), journal, True)
    (directory / "srv.ready").touch()
    go.wait()
    deadline = time.monotonic() + plan.seconds
    with app.app_context():
        while time.monotonic() < deadline:
            writer.act(soak_app.db.session)
            time.sleep(writer.rng.uniform(0, plan.pause))
        soak_app.db.session.remove()
    stats = NodeStats("srv", changes=writer.sequence, failures=writer.failures)
    _save(directory / "srv.stats.json", stats)
    journal.close()


# -- the server ----------------------------------------------------------------------


def reset_database(url: str) -> None:
    """Drop and create the soak's tables and the extension's."""
    app = soak_app.create_app(url)
    with app.app_context():
        soak_app.db.drop_all()
        soak_app.db.create_all()
        soak_app.db.engine.dispose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def gunicorn(database: str, workers: int, directory: Path) -> Iterator[str]:
    """Serve :mod:`soak_app` with ``workers`` sync workers; yields the sync
    base URL. The whole process group is ended on the way out."""
    port = _free_port()
    command = [
        sys.executable, "-m", "gunicorn",
        "--workers", str(workers),
        "--bind", f"127.0.0.1:{port}",
        "--chdir", str(Path(__file__).resolve().parent),
        "--timeout", "120",
        "--access-logfile", str(directory / "access.log"),
        "--access-logformat", "%(m)s %(U)s %(s)s %(L)s",
        "--error-logfile", str(directory / "gunicorn.log"),
        "soak_app:create_app()",
    ]  # fmt: skip
    environment = {**os.environ, "SOAK_DATABASE_URL": database}
    process = subprocess.Popen(command, env=environment, start_new_session=True)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/sync/openapi.json", process)
        yield f"http://127.0.0.1:{port}/sync"
    finally:
        _end_group(process)


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("gunicorn did not answer within 60 s")


def _end_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- the end: settle and audit -------------------------------------------------------


@dataclass
class Settled:
    """How the final, loss-free synchronisation went."""

    rounds: int = 0
    quiet: bool = False
    stuck: dict[str, str] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)


def settle(plan: Plan, names: list[str], rounds: int) -> tuple[Settled, dict[str, Any]]:
    """Synchronise every node in turn until a round pushes and pulls nothing
    (at most ``rounds`` rounds); a node that still fails, or still has
    queued operations, is stuck. Returns also each node's rows."""
    directory = Path(plan.directory)
    settled = Settled()
    nodes = []
    for who in names:
        network = LossyNetwork(0.0, 0)
        client = open_node(plan.base_url, directory / f"{who}.db", who, network)
        journal = Journal(directory / f"{who}.jsonl", who)
        nodes.append(
            (who, client, journal, journal_conflicts(client, journal), network)
        )
    failed: dict[str, str] = {}
    for settled.rounds in range(1, rounds + 1):
        activity, failed = 0, {}
        for who, client, journal, _, _ in nodes:
            stats = NodeStats(who)
            result = _synchronize(client, 5, stats, journal)
            if result is None:
                failed[who] = next(iter(stats.errors))
            else:
                activity += result.pushed.operations
                activity += sum(pull.operations for pull in result.pulled)
        if not failed and activity == 0:
            settled.quiet = True
            break
    rows = {}
    for who, client, journal, _, network in nodes:
        pending = client.pending_operations()
        if who in failed or pending:
            settled.stuck[who] = failed.get(who, "") + f" ({pending} operations queued)"
        settled.statuses.update(network.statuses)
        rows[who] = table_rows(client.engine)
        journal.close()
        client.close()
        client.engine.dispose()
    return settled, rows


def table_rows(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            table.name: sorted(
                tuple(row) for row in connection.execute(sa.select(table))
            )
            for table in TABLES
        }


def read_journals(directory: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as file:
            lines += [json.loads(line) for line in file if line.strip()]
    return lines


def read_stats(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.stats.json"))]


def read_access_log(path: Path) -> Counter[str]:
    """``"POST push 409"``-style counts from gunicorn's access log."""
    counts: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                counts[f"{parts[0]} {parts[1].rsplit('/', 1)[-1]} {parts[2]}"] += 1
    return counts


@dataclass
class History:
    """The journals, by tag."""

    lines: list[dict[str, Any]]
    written: dict[str, set[str]] = field(default_factory=dict)
    inserted: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    in_conflict: set[str] = field(default_factory=set)
    author: dict[str, str] = field(default_factory=dict)
    deleters: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for line in self.lines:
            if line["op"] in ("insert", "update"):
                self.written.setdefault(line["tag"], set()).add(line["value"])
            if line["op"] == "insert":
                self.inserted[line["tag"]] = line["table"]
                self.author[line["tag"]] = line["who"]
            elif line["op"] == "delete":
                self.deleted.add(line["tag"])
                self.deleters.setdefault(line["tag"], set()).add(line["who"])
            elif line["op"] == "conflict" and line["kind"] in RESTORING:
                self.in_conflict.update(line["tags"])

    def about(self, tag: str, limit: int = 40) -> list[dict[str, Any]]:
        """The journal lines that name ``tag`` (a reproduction's raw material)."""
        found = [
            line
            for line in self.lines
            if line.get("tag") == tag or tag in line.get("tags", ())
        ]
        return sorted(found, key=lambda line: line["t"])[:limit]


def server_state(url: str) -> dict[str, Any]:
    """The server's rows and the extension's log, read with plain SQL."""
    engine = sa.create_engine(url)
    meta = soak_app.db.metadata
    versions = meta.tables["reflectsync_versions"]
    operations = meta.tables["reflectsync_operations"]
    nodes = meta.tables["reflectsync_nodes"]
    try:
        # As a pull would: versions the app committed since the last pull or
        # push get their numbers (PostgreSQL and MySQL number after commit);
        # any left unnumbered after this is a fault the "gaps" check reports.
        number_versions(engine, define_tables(meta))
        with engine.connect() as connection:
            names = dict(connection.execute(sa.select(nodes.c.id, nodes.c.name)).all())
            log = connection.execute(
                sa.select(
                    operations.c.table_name,
                    operations.c.row_key,
                    operations.c.command,
                    versions.c.number,
                    versions.c.node_id,
                ).join(versions, versions.c.id == operations.c.version_id)
            ).all()
            numbers = list(connection.execute(sa.select(versions.c.number)).scalars())
        return {
            "rows": table_rows(engine),
            "numbers": numbers,
            "log": [
                (t, k, c, n, names.get(node, "app") if node else "app")
                for t, k, c, n, node in log
            ],
        }
    finally:
        engine.dispose()


def _server_tags(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[Any]]:
    """Row tag -> ``[table, key, text]`` of every server row carrying it."""
    found: dict[str, list[Any]] = {}
    for table in TABLES:
        position = list(table.columns.keys()).index(TEXT[table.name])
        for row in rows[table.name]:
            found.setdefault(row_tag(row[position]), []).append(
                [table.name, row[0], row[position]]
            )
    return found


@dataclass
class Check:
    name: str
    value: Any
    ok: bool
    note: str


@dataclass
class Run:
    """Everything the verdict is made of."""

    args: argparse.Namespace
    stats: list[dict[str, Any]]
    crashed: dict[str, int | None]
    settled: Settled
    node_rows: dict[str, Any]
    server: dict[str, Any]
    history: History
    access: Counter[str]
    gunicorn_log: str
    seconds: float


def verdict(run: Run) -> dict[str, Any]:
    """The checks, the figures and examples to start a reproduction from."""
    tags = _server_tags(run.server["rows"])
    history = run.history
    stuck = {**run.settled.stuck}
    for who, code in run.crashed.items():
        stuck[who] = f"process ended with exit code {code}"
    lost_rows = sorted(
        t for t in history.inserted if t not in history.deleted and t not in tags
    )
    lost_deletes = sorted(
        t for t in history.deleted if t in tags and t not in history.in_conflict
    )
    duplicated = sorted(t for t, found in tags.items() if len(found) > 1)
    unwritten = sorted(
        t
        for t, found in tags.items()
        if any(text not in history.written.get(t, ()) for _, _, text in found)
    )
    numbers = [n for n in run.server["numbers"] if n is not None]
    in_flight = len(run.server["numbers"]) - len(numbers)
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    diverged = sorted(
        who for who, rows in run.node_rows.items() if rows != run.server["rows"]
    )
    nodes = [s for s in run.stats if s["who"] != "srv"]
    calls = sum(s["calls"] for s in nodes)
    succeeded = sum(s["succeeded"] for s in nodes)
    share = succeeded / calls if calls else 0.0
    unreachable = sum(s["errors"].get("ServerUnreachableError", 0) for s in nodes)
    # The same share among the calls that did not end on an injected loss:
    # what contention alone leaves of liveness.
    rest = calls - unreachable
    share_rest = succeeded / rest if rest else 0.0
    seen: Counter[str] = Counter()
    for s in nodes:
        seen.update(s["statuses"])
    seen.update(run.settled.statuses)
    server_5xx = sum(n for k, n in run.access.items() if k.split()[-1][0] == "5")
    client_5xx = sum(n for k, n in seen.items() if k.split()[-1][0] == "5")
    checks = [
        Check(
            "lost",
            len(lost_rows) + len(lost_deletes),
            not lost_rows and not lost_deletes,
            f"{len(lost_rows)} rows written, never deleted, missing on the server "
            f"({sum(history.author[t] in stuck for t in lost_rows)} of them by "
            "stuck nodes); "
            f"{len(lost_deletes)} deleted rows back on the server with no conflict "
            f"({sum(history.deleters[t] <= set(stuck) for t in lost_deletes)} "
            "deleted by stuck nodes only)",
        ),
        Check(
            "duplicated",
            sum(len(tags[t]) - 1 for t in duplicated),
            not duplicated,
            f"extra copies; {len(duplicated)} tags on more than one server row",
        ),
        Check(
            "values",
            len(unwritten),
            not unwritten,
            "server rows holding a text nobody wrote",
        ),
        Check(
            "stuck",
            len(stuck),
            not stuck,
            f"nodes failing or queued after {run.settled.rounds} final rounds "
            f"(quiet: {run.settled.quiet})",
        ),
        Check(
            "5xx",
            max(server_5xx, client_5xx),
            server_5xx == 0 and client_5xx == 0,
            f"{server_5xx} in gunicorn's access log, {client_5xx} seen by nodes; "
            f"{run.gunicorn_log.count('WORKER TIMEOUT')} worker timeouts",
        ),
        Check(
            "gaps",
            len(missing) + in_flight,
            not missing and not in_flight,
            f"version numbers missing from 1..{max(numbers, default=0)}: "
            f"{len(missing)}; versions left unnumbered: {in_flight}",
        ),
        Check(
            "converged",
            f"{len(run.node_rows) - len(diverged)}/{len(run.node_rows)}",
            not diverged,
            "nodes holding exactly the server's rows",
        ),
        Check(
            "sync success",
            f"{share:.1%}",
            share >= run.args.min_success,
            f"{succeeded} of {calls} synchronize() calls under load succeeded "
            f"within {run.args.tries} tries (threshold {run.args.min_success:.0%}); "
            f"{share_rest:.1%} of the {rest} calls not ended by a lost request",
        ),
    ]
    examples = _examples(run, tags, lost_rows, lost_deletes, duplicated, unwritten)
    examples["failed_changes"] = _failed_changes(history)
    examples["stuck"] = [
        {"node": who, "why": why, "journal": _last_syncs(history, who)}
        for who, why in sorted(stuck.items())[:5]
    ]
    examples["diverged"] = [_difference(run, who) for who in diverged[:3]]
    return {
        "checks": [vars(c) for c in checks],
        "failed": [c.name for c in checks if not c.ok],
        "figures": _figures(run, nodes, seen),
        "examples": examples,
    }


def _examples(
    run: Run, tags: dict[str, list[Any]], *lists: list[str]
) -> dict[str, Any]:
    names = ("lost", "lost_deletes", "duplicated", "values")
    return {
        name: [_story(run, tags, tag) for tag in found[:5]]
        for name, found in zip(names, lists, strict=True)
    }


def _story(run: Run, tags: dict[str, list[Any]], tag: str) -> dict[str, Any]:
    """A tag's server rows, its journal lines and the server's log of every
    key it was seen under."""
    journal = run.history.about(tag)
    keys = {(table, key) for table, key, _ in tags.get(tag, [])}
    for line in journal:
        table = line.get("table")
        for key in (line.get("key"), line.get("new_key")):
            if isinstance(key, list) and key:
                keys.add((table, key[0]))
            elif key is not None:
                keys.add((table, key))
    wanted = {(table, f"[{key}]") for table, key in keys}
    log = [
        {"table": t, "key": k, "command": c, "version": n, "by": by}
        for t, k, c, n, by in run.server["log"]
        if (t, k) in wanted
    ]
    log.sort(key=lambda entry: entry["version"] or 0)
    return {"tag": tag, "server_rows": tags.get(tag, []), "journal": journal,
            "server_log": log[:60]}  # fmt: skip


def _failed_changes(history: History) -> list[dict[str, Any]]:
    """The first journal line of each kind of failed local change."""
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for line in history.lines:
        if line["op"] == "failed":
            kind = ("srv" if line["who"] == "srv" else "node", line["error"])
            first.setdefault(kind, line)
    return list(first.values())


def _last_syncs(history: History, who: str) -> list[dict[str, Any]]:
    syncs = [
        line for line in history.lines if line["who"] == who and line["op"] == "sync"
    ]
    return syncs[-3:]


def _difference(run: Run, who: str) -> dict[str, Any]:
    node, server = run.node_rows[who], run.server["rows"]
    return {
        "node": who,
        **{
            table: {
                "only_on_node": sorted(set(node[table]) - set(server[table]))[:5],
                "only_on_server": sorted(set(server[table]) - set(node[table]))[:5],
            }
            for table in node
        },
    }


def _figures(
    run: Run, nodes: list[dict[str, Any]], seen: Counter[str]
) -> dict[str, Any]:
    def total(key: str) -> Counter[Any]:
        summed: Counter[Any] = Counter()
        for stats in nodes:
            summed.update(stats[key])
        return summed

    load: Counter[str] = total("statuses")
    pushes = sum(n for k, n in load.items() if k.startswith("push "))
    refused = load["push 409"]
    conflicts = [line for line in run.history.lines if line["op"] == "conflict"]
    server_app = next((s for s in run.stats if s["who"] == "srv"), {})
    return {
        "seconds": round(run.seconds, 1),
        "synchronize_errors": dict(total("errors")),
        "synchronize_attempts": dict(sorted(total("attempts").items())),
        "push_answers": pushes,
        "push_409": refused,
        "push_409_rate": round(refused / pushes, 4) if pushes else 0.0,
        "conflicts": dict(Counter(line["kind"] for line in conflicts)),
        "resolutions": dict(Counter(line["resolution"] for line in conflicts)),
        "rekeys": sum(1 for line in conflicts if line["resolution"] == "rekeyed"),
        "node_changes": sum(s["changes"] for s in nodes),
        "node_change_failures": dict(total("failures")),
        "server_app_changes": server_app.get("changes", 0),
        "server_app_failures": server_app.get("failures", {}),
        "lost_on_network": dict(total("lost")),
        "versions": len(run.server["numbers"]),
        "operations": dict(Counter(c for _, _, c, _, _ in run.server["log"])),
        "server_rows": {t: len(r) for t, r in run.server["rows"].items()},
        "access_log": dict(sorted(run.access.items())),
        "seen_by_nodes": dict(sorted(seen.items())),
    }


def print_verdict(result: dict[str, Any], args: argparse.Namespace) -> None:
    figures = result["figures"]
    print()
    print(f"{'check':<14} {'value':>9}  {'verdict':<7} note")
    print(f"{'-' * 14} {'-' * 9}  {'-' * 7} {'-' * 40}")
    for check in result["checks"]:
        mark = "ok" if check["ok"] else "FAIL"
        print(f"{check['name']:<14} {check['value']!s:>9}  {mark:<7} {check['note']}")
    sync = next(c for c in result["checks"] if c["name"] == "sync success")
    print()
    print(
        f"SYNC SUCCESS {sync['value']} -- target 99%: "
        f"{'met' if float(sync['value'][:-1]) >= 99 else 'NOT MET'}"
    )
    print(
        f"pushes refused with 409: {figures['push_409']} of "
        f"{figures['push_answers']} ({figures['push_409_rate']:.1%})"
    )
    print(f"synchronize() errors: {figures['synchronize_errors']}")
    print(f"conflicts: {figures['conflicts']}; re-keys: {figures['rekeys']}")
    print(
        f"changes: {figures['node_changes']} by nodes, "
        f"{figures['server_app_changes']} by the server app "
        f"(failed: {figures['node_change_failures']}, "
        f"{figures['server_app_failures']})"
    )
    print(
        f"server: {figures['versions']} versions, operations "
        f"{figures['operations']}, rows {figures['server_rows']}"
    )
    print(f"network losses: {figures['lost_on_network']}")
    print()
    print("FAILED: " + ", ".join(result["failed"]) if result["failed"] else "ALL OK")


def damage(url: str) -> None:
    """``--self-check``: break the server's data behind the extension's back
    (plain SQL, so nothing is logged), to see the checks bite: one answer
    vanishes (lost, converged), a survey is copied (duplicated) and an
    answer appears that nobody wrote (values), a version number is skipped
    (gaps)."""
    meta = soak_app.db.metadata
    survey, answer = meta.tables["soak_survey"], meta.tables["soak_answer"]
    versions = meta.tables["reflectsync_versions"]
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        top = connection.execute(sa.select(sa.func.max(survey.c.id))).scalar()
        first = connection.execute(sa.select(survey).order_by(survey.c.id)).first()
        if first is None or top is None:
            raise SystemExit("--self-check: the load left no survey to damage")
        connection.execute(
            sa.delete(answer).where(
                answer.c.id == sa.select(sa.func.min(answer.c.id)).scalar_subquery()
            )
        )
        connection.execute(
            sa.insert(survey).values(id=top + 1000, code="damaged", title=first.title)
        )
        connection.execute(
            sa.insert(answer).values(
                id=10**6, survey_id=first.id, value=0, note="nobody-wrote-this"
            )
        )
        number = connection.execute(sa.select(sa.func.max(versions.c.number))).scalar()
        connection.execute(
            sa.insert(versions).values(
                number=(number or 0) + 2, created_at=sa.func.now()
            )
        )
    engine.dispose()


# -- main ----------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8, help="node processes")
    parser.add_argument("--seconds", type=float, default=20, help="load duration")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="server URL")
    parser.add_argument(
        "--loss", type=float, default=0.1, help="chance to lose a request or answer"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the verdict here")
    parser.add_argument(
        "--min-success",
        type=float,
        default=0.0,
        help="fail when fewer synchronize() calls succeed (share, e.g. 0.99)",
    )
    parser.add_argument("--tries", type=int, default=3, help="synchronize(tries=)")
    parser.add_argument(
        "--pause", type=float, default=0.2, help="seconds a node idles, at most"
    )
    parser.add_argument("--settle-rounds", type=int, default=6)
    parser.add_argument(
        "--directory", type=Path, help="journals and logs (default: a new temp dir)"
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="damage the server's rows after the load: the verdict must FAIL",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    directory = args.directory or Path(tempfile.mkdtemp(prefix="reflectsync-soak-"))
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    print(f"soak: {args.nodes} nodes x {args.seconds:g} s, {args.workers} workers, "
          f"loss {args.loss}, seed {args.seed}, on {sa.make_url(args.database)!r}; "
          f"journals in {directory}", flush=True)  # fmt: skip
    reset_database(args.database)
    with gunicorn(args.database, args.workers, directory) as base_url:
        plan = Plan(base_url, args.database, str(directory), args.seconds,
                    args.loss, args.seed, args.tries, args.pause)  # fmt: skip
        names = [f"n{i}" for i in range(args.nodes)]
        started = time.monotonic()
        crashed = run_load(plan, args.nodes)
        seconds = time.monotonic() - started
        print(f"soak: load done in {seconds:.0f} s; settling", flush=True)
        if args.self_check:
            damage(args.database)
        settled, node_rows = settle(plan, names, args.settle_rounds)
    run = Run(
        args,
        read_stats(directory),
        crashed,
        settled,
        node_rows,
        server_state(args.database),
        History(read_journals(directory)),
        read_access_log(directory / "access.log"),
        (directory / "gunicorn.log").read_text(errors="replace"),
        seconds,
    )
    result = verdict(run)
    result["config"] = {k: str(v) for k, v in vars(args).items()}
    result["config"]["directory"] = str(directory)
    print_verdict(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 1 if result["failed"] else 0


def run_load(plan: Plan, count: int) -> dict[str, int | None]:
    """Start the nodes and the server app's writer, let them run, wait for
    them; returns the processes that did not end well, by name."""
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    processes = {
        f"n{i}": context.Process(target=run_node, args=(plan, i, go), name=f"n{i}")
        for i in range(count)
    }
    processes["srv"] = context.Process(target=run_server_app, args=(plan, go))
    try:
        for process in processes.values():
            process.start()
        # Everyone starts together once all have registered (or after 5 min).
        ready = Path(plan.directory)
        for _ in range(3000):
            if len(list(ready.glob("*.ready"))) >= len(processes):
                break
            if any(p.exitcode is not None for p in processes.values()):
                break
            time.sleep(0.1)
        go.set()
        for process in processes.values():
            process.join(timeout=plan.seconds + 600)
        return {
            name: process.exitcode
            for name, process in processes.items()
            if process.exitcode != 0
        }
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
                process.join(5)


if __name__ == "__main__":
    sys.exit(main())
