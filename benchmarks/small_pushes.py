"""Many small pushes: node processes pushing 10-row batches to gunicorn.

    pip install -e '.[soak]'
    python benchmarks/small_pushes.py --workers 4 --nodes 10 30 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_bench

A web app's nodes mostly push a few rows at a time, so a push's fixed cost
(signature and nonce, the stored-answer lookup, the conflict scan, the
counter, commits) decides the server's throughput. This serves the soak's
app (:mod:`soak_app`) with gunicorn, started by :func:`soak.gunicorn`, and
runs, one after the other:

* **one node**: a single node process sends ``--pushes`` pushes in a row;
  the server time of each is gunicorn's request time (``%(L)s`` in the
  access log), and the median is the figure (target: <= 5 ms for 10 rows);
* **N nodes** for each count of ``--nodes``: N processes push for
  ``--seconds`` at once, as fast as they are answered; the figure is
  operations applied per second (target: >= 3,000 with 30 nodes on 4
  workers), with pushes per second and the median server time.

Each push inserts ``--rows`` new surveys with keys of the node's own and
carries the version of its previous answer as ``last_version`` (a node that
pulls its own pushes), so the conflict scan reads what the other nodes
pushed meanwhile. Pushes are signed requests sent with httpx, as
:class:`~flask_reflectsync.client.SyncClient` sends them, without a node
database: the node side is not what is measured. As a baseline in the same
run, the same client loop fetches ``GET /sync/openapi.json`` (Flask and
gunicorn alone, no database) and prints the ratio of a push's client time to
it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from flask_reflectsync.wire.messages import PROTOCOL_VERSION
from flask_reflectsync.wire.signing import sign_request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import gunicorn, reset_database  # noqa: E402  (next to this script)

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_bench"
#: Each node inserts keys from its own range of this many.
KEY_RANGE = 10_000_000
COLUMNS = ["id", "code", "title"]


def survey_push(
    first: int, rows: int, last_version: int, push_id: str | None = None
) -> bytes:
    """The body of a push inserting ``rows`` new surveys with keys from
    ``first`` on (every push benchmark sends these)."""
    keys = range(first, first + rows)
    message = {
        "protocol": PROTOCOL_VERSION,
        "push_id": push_id or uuid.uuid4().hex,
        "last_version": last_version,
        "operations": [
            {"table": "soak_survey", "key": [k], "command": "i"} for k in keys
        ],
        "payloads": {
            "soak_survey": {
                "columns": COLUMNS,
                "rows": [[k, f"b{k}", f"bench {k}"] for k in keys],
            }
        },
    }
    return json.dumps(message, separators=(",", ":")).encode()


def push_loop(
    base: str, index: int, rows: int, pushes: int, seconds: float, go: Any, out: Any
) -> None:
    """One node: register, wait for ``go``, then push ``rows``-row batches
    until ``pushes`` are done or ``seconds`` have passed; reports
    ``(pushes, operations, client seconds of each push, CPU seconds of the
    pushes, error)`` on ``out`` (``error`` is ``None``, or why the node
    stopped)."""
    try:
        out.put((*_pushes(base, index, rows, pushes, seconds, go), None))
    except Exception as error:  # reported, not hung on
        out.put((0, 0, [], 0.0, repr(error)))


def _pushes(
    base: str, index: int, rows: int, pushes: int, seconds: float, go: Any
) -> tuple[int, int, list[float], float]:
    with httpx.Client(timeout=120) as client:
        node = client.post(
            base + "/register", json={"protocol": PROTOCOL_VERSION}
        ).json()["node"]
        path = httpx.URL(base).path + "/push"
        next_key = 1 + (index + 1) * KEY_RANGE
        last_version = 0
        latencies: list[float] = []
        done = operations = 0
        go.wait()
        cpu = time.process_time()
        end = time.monotonic() + seconds
        while done < pushes and time.monotonic() < end:
            body = survey_push(next_key, rows, last_version)
            next_key += rows
            headers = sign_request(node["id"], node["secret"], "POST", path, "", body)
            headers["Content-Type"] = "application/json"
            start = time.perf_counter()
            answer = client.post(base + "/push", content=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            answer.raise_for_status()
            last_version = answer.json()["version"]
            done += 1
            operations += answer.json()["operations"]
        cpu = time.process_time() - cpu
    return done, operations, latencies, cpu


def baseline_loop(base: str, requests: int) -> float:
    """Median client time of ``GET /openapi.json``: Flask and gunicorn, no
    database."""
    with httpx.Client(timeout=120) as client:
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.get(base + "/openapi.json").raise_for_status()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def server_times(access_log: Path, since: int) -> list[float]:
    """Request seconds of the successful pushes logged after line ``since``."""
    found = []
    for line in access_log.read_text().splitlines()[since:]:
        method, route, status, seconds = line.split()
        if method == "POST" and route.endswith("/push") and status == "200":
            found.append(float(seconds))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes ``pids`` have used (Linux's
    ``/proc``; 0 for a process that is gone). CPU time, unlike wall time,
    hardly moves when other work shares the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def worker_pids(access_log: Path) -> list[int]:
    """The gunicorn processes writing ``access_log`` (its path is unique to
    the run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"gunicorn" in b" ".join(command) and str(access_log).encode() in command:
            found.append(int(entry.name))
    return found


def database_pids(url: str) -> list[int]:
    """PostgreSQL's backends serving ``url``'s database (none elsewhere)."""
    engine = sa.create_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return []
        with engine.connect() as connection:
            return [
                int(pid)
                for (pid,) in connection.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = "
                        "current_database() AND pid <> pg_backend_pid()"
                    )
                )
            ]
    finally:
        engine.dispose()


def log_length(access_log: Path) -> int:
    return len(access_log.read_text().splitlines()) if access_log.exists() else 0


def run(
    base: str, first: int, nodes: int, rows: int, pushes: int, seconds: float
) -> tuple[int, int, float, list[float], float]:
    """``nodes`` processes at once, numbered from ``first`` (each number
    its own key range); returns pushes, operations, wall seconds, every
    push's client time and the node processes' CPU seconds.

    :raises SystemExit: if a node stopped on an error.
    """
    context = multiprocessing.get_context("spawn")
    go, out = context.Event(), context.Queue()
    processes = [
        context.Process(
            target=push_loop, args=(base, first + i, rows, pushes, seconds, go, out)
        )
        for i in range(nodes)
    ]
    for process in processes:
        process.start()
    time.sleep(1 + nodes * 0.15)  # registered and waiting (a spawn is ~0.1 s)
    started = time.monotonic()
    go.set()
    results = [out.get(timeout=seconds + 300) for _ in processes]
    elapsed = time.monotonic() - started
    for process in processes:
        process.join(30)
    errors = [r[4] for r in results if r[4] is not None]
    if errors:
        raise SystemExit(f"{len(errors)} node(s) stopped: {errors[0]}")
    total = sum(r[0] for r in results)
    ops = sum(r[1] for r in results)
    latencies = [t for r in results for t in r[2]]
    return total, ops, elapsed, latencies, sum(r[3] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--rows", type=int, default=10, help="rows per push")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument(
        "--pushes", type=int, default=300, help="pushes of the one-node run"
    )
    args = parser.parse_args(argv)

    reset_database(args.database)
    directory = Path(tempfile.mkdtemp(prefix="reflectsync-pushes-"))
    access = directory / "access.log"
    with gunicorn(args.database, args.workers, directory) as base:
        baseline = baseline_loop(base, args.pushes)
        run(base, 0, 1, args.rows, 20, 600)  # every worker connected
        since = log_length(access)
        workers, backends = worker_pids(access), database_pids(args.database)
        cpu_before = cpu_seconds(workers), cpu_seconds(backends)
        one_total, ops, _, latencies, node_cpu = run(
            base, 1, 1, args.rows, args.pushes, 600
        )
        cpu_after = cpu_seconds(workers), cpu_seconds(backends)
        time.sleep(1)  # gunicorn writes its access log after answering
        one_server = statistics.median(server_times(access, since))
        one_client = statistics.median(latencies)
        # Two spawned node processes registered in between: their
        # registrations cost the server CPU too, not counted apart (small).
        worker_cpu = (cpu_after[0] - cpu_before[0]) / one_total
        database_cpu = (cpu_after[1] - cpu_before[1]) / one_total
        node_cpu /= one_total
        many = []
        first = 2
        for count in args.nodes:
            since = log_length(access)
            total, ops, elapsed, latencies, _ = run(
                base, first, count, args.rows, 10**9, args.seconds
            )
            first += count
            time.sleep(1)
            served = server_times(access, since)
            many.append((count, total, ops, elapsed, served, latencies))

    print(f"database: {args.database}; gunicorn, {args.workers} sync workers")
    print(
        f"one node, {args.pushes} pushes of {args.rows} rows: server time "
        f"{one_server * 1000:.2f} ms a push (median; target <= 5 ms), client "
        f"{one_client * 1000:.2f} ms; baseline GET /openapi.json "
        f"{baseline * 1000:.2f} ms (push/baseline {one_client / baseline:.2f}x)"
    )
    print(
        f"CPU a push: gunicorn worker {worker_cpu * 1000:.2f} ms, PostgreSQL "
        f"backends {database_cpu * 1000:.2f} ms (0 on other databases), "
        f"the node process {node_cpu * 1000:.2f} ms"
    )
    # What the machine's cores allow at best, if every push cost only the
    # CPU above and nothing waited: the ceiling the throughput target
    # (3,000 ops/s) must fit under, node processes included.
    cores = os.cpu_count() or 1
    per_push = worker_cpu + database_cpu + node_cpu
    print(
        f"CPU ceiling on {cores} cores: {cores / per_push:.0f} pushes/s, "
        f"{cores / per_push * args.rows:.0f} ops/s (all three sides), "
        f"{cores / (worker_cpu + database_cpu) * args.rows:.0f} ops/s "
        "(the server's side alone)"
    )
    print(
        f"{'nodes':>5} {'pushes':>7} {'ops/s':>8} {'pushes/s':>9} "
        f"{'server ms':>10} {'client ms':>10}"
    )
    for count, total, ops, elapsed, served, latencies in many:
        print(
            f"{count:>5} {total:>7} {ops / elapsed:>8.0f} {total / elapsed:>9.1f} "
            f"{statistics.median(served) * 1000:>10.2f} "
            f"{statistics.median(latencies) * 1000:>10.2f}"
        )
    print("target: >= 3,000 ops/s with 30 nodes; medians of each run's pushes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
