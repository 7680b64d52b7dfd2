"""How much a gunicorn worker's memory grows applying one large push.

    pip install -e '.[soak]'
    python benchmarks/push_memory.py --rows 10000 100000 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_bench

A node that was offline for a week pushes its whole queue in one atomic
push, so the server must apply it without its worker's memory growing with
the push (issue 19: 81 MB at 10,000 rows, 229 MB at 100,000). For each
count of ``--rows`` this starts the soak's app (:mod:`soak_app`) under
gunicorn with one sync worker, sends a small push to warm the worker
(connections, compiled statements), reads the worker's peak resident
memory (``VmHWM`` in ``/proc/<pid>/status``), sends one signed push of
that many new surveys, and reads the peak again: the figure is the growth.
The baseline of the same run is the smallest ``--rows`` count: the target
is that 100,000 rows grow the worker by no more than 10,000 rows do
(ratio <= 1.0). The request body's size is printed beside each figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from flask_reflectsync.wire.messages import PROTOCOL_VERSION
from flask_reflectsync.wire.signing import sign_request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_pushes import survey_push, worker_pids  # noqa: E402  (next to this script)
from soak import gunicorn, reset_database  # noqa: E402

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_bench"


def peak_kib(pid: int) -> int:
    """The process's peak resident memory so far, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmHWM for process {pid}")


def send(client: httpx.Client, base: str, node: dict, body: bytes) -> dict:
    path = httpx.URL(base).path + "/push"
    headers = sign_request(node["id"], node["secret"], "POST", path, "", body)
    headers["Content-Type"] = "application/json"
    answer = client.post(base + "/push", content=body, headers=headers)
    if answer.status_code != 200:
        raise SystemExit(f"push refused: {answer.status_code} {answer.text[:300]}")
    return answer.json()


def measure(database: str, rows: int) -> tuple[int, int, float, int]:
    """Peak growth (KiB), body bytes, seconds and operations of one push of
    ``rows`` rows, in a fresh one-worker gunicorn."""
    reset_database(database)
    directory = Path(tempfile.mkdtemp(prefix="reflectsync-memory-"))
    with gunicorn(database, 1, directory) as base, httpx.Client(timeout=600) as client:
        node = client.post(
            base + "/register", json={"protocol": PROTOCOL_VERSION}
        ).json()["node"]
        warm = send(client, base, node, survey_push(1, 100, 0))
        [worker] = [
            pid
            for pid in worker_pids(directory / "access.log")
            if _parent(pid) in worker_pids(directory / "access.log")
        ]
        before = peak_kib(worker)
        body = survey_push(1_000, rows, warm["version"])
        start = time.perf_counter()
        answer = send(client, base, node, body)
        seconds = time.perf_counter() - start
        return peak_kib(worker) - before, len(body), seconds, answer["operations"]


def _parent(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    results = [(rows, *measure(args.database, rows)) for rows in args.rows]
    baseline = results[0][1]
    print(f"database: {args.database}; gunicorn, 1 sync worker")
    print(f"{'rows':>8} {'body MB':>8} {'growth MB':>10} {'ratio':>6} {'seconds':>8}")
    for rows, growth, size, seconds, operations in results:
        assert operations == rows, (operations, rows)
        print(
            f"{rows:>8} {size / 1e6:>8.1f} {growth / 1024:>10.1f} "
            f"{growth / max(baseline, 1):>6.2f} {seconds:>8.2f}"
        )
    print(
        f"ratio: growth / growth at {args.rows[0]} rows "
        "(target: <= 1.0 at 100,000 rows against 10,000)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
