"""Live sync: how soon a server commit reaches a watching node, and what
idle watchers cost the server.

    python benchmarks/watch.py --database postgresql+psycopg://postgres@127.0.0.1/bench
    python benchmarks/watch.py --database ... --commits 200 --watchers 200

The server is :mod:`soak_app` under gunicorn (one ``gthread`` worker with
enough threads for every watcher), on the given database (dropped and
created afresh). Two measurements:

1. **Latency.** One node runs ``client.watch()``; the benchmark commits a
   row through the server app's own session (``--commits`` times, a random
   pause between), and times each from just before the commit until the
   row is in the node's SQLite file. Baseline, in the same run: a commit
   followed by an explicit ``synchronize()`` of a node that does not watch
   (what a node that polls pays at best, once it decides to poll). Prints
   median and p95 of both and their ratio.
2. **Idle watchers.** The server's CPU time (master and worker, from
   ``/proc``) and RSS over ``--idle`` seconds with no watcher, then the same
   with ``--watchers`` nodes watching (threads of this process, one SQLite
   file each) and nothing changing. Prints CPU as a share of one core, RSS,
   and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soak_app  # noqa: E402

from flask_reflectsync.client import SyncClient  # noqa: E402

HERE = Path(__file__).resolve().parent
TABLES = [model.__table__ for model in soak_app.MODELS]
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _reset(url: str) -> None:
    """The server's tables, empty (the extension's are defined on the
    metadata by ``init_app``)."""
    app = soak_app.create_app(url)
    with app.app_context():
        soak_app.db.drop_all()
        soak_app.db.create_all()
        soak_app.db.engine.dispose()


def _serve(url: str, port: int, threads: int) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "SOAK_DATABASE_URL": url,
        "SOAK_REGISTRATIONS_PER_MINUTE": "0",  # every watcher registers at once
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--worker-class", "gthread",
            "--workers", "1",
            "--threads", str(threads),
            "--bind", f"127.0.0.1:{port}",
            "--log-level", "warning",
            "soak_app:create_app()",
        ],
        cwd=HERE,
        env=environment,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/sync/openapi.json", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def _node(base: str, directory: Path, name: str) -> SyncClient:
    engine = sa.create_engine(f"sqlite:///{directory / name}.db")
    soak_app.db.metadata.create_all(engine, tables=TABLES)
    client = SyncClient(base, engine, soak_app.MODELS, name=name)
    client.register()
    return client


def _has(client: SyncClient, key: int) -> bool:
    with client.engine.connect() as connection:
        found = connection.execute(
            sa.select(soak_app.Survey.id).where(soak_app.Survey.id == key)
        ).first()
    return found is not None


def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered), p95


def latency(url: str, base: str, directory: Path, commits: int) -> None:
    app = soak_app.create_app(url)
    watcher = _node(base, directory, "watcher")
    poller = _node(base, directory, "poller")
    stop = threading.Event()
    thread = threading.Thread(target=watcher.watch, args=(stop,), daemon=True)
    thread.start()
    while watcher.status.last_synced_at is None:
        time.sleep(0.05)
    rng = random.Random(7)
    watched: list[float] = []
    polled: list[float] = []
    with app.app_context():
        session = soak_app.db.session
        for n in range(1, 2 * commits + 1):
            key = n
            row = soak_app.Survey(id=key, code=f"c{key}", title=f"t{key}")
            time.sleep(rng.uniform(0.05, 0.2))
            started = time.perf_counter()
            session.add(row)
            session.commit()
            if n % 2:
                while not _has(watcher, key):
                    time.sleep(0.002)
                watched.append(time.perf_counter() - started)
            else:
                poller.synchronize()
                polled.append(time.perf_counter() - started)
                while not _has(watcher, key):  # let the watcher settle too
                    time.sleep(0.002)
        session.remove()
    stop.set()
    thread.join(5)
    w50, w95 = _quantiles(watched)
    p50, p95 = _quantiles(polled)
    print(f"commit -> watching node, {len(watched)} commits: "
          f"median {w50 * 1000:.0f} ms, p95 {w95 * 1000:.0f} ms")
    print(f"commit -> explicit synchronize() (baseline): "
          f"median {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    print(f"ratio watch / explicit sync: median {w50 / p50:.2f}x, "
          f"p95 {w95 / p95:.2f}x")
    for client in (watcher, poller):
        client.close()
        client.engine.dispose()


def _processes(root: int) -> list[int]:
    found = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == root:
                found.append(int(entry.name))
    return found


def _cpu_and_rss(root: int) -> tuple[float, float]:
    """CPU seconds used so far and RSS in MiB, of the server's processes."""
    cpu = rss = 0.0
    for pid in _processes(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICK
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
    return cpu, rss


def _idle(server: subprocess.Popen[bytes], seconds: float) -> tuple[float, float]:
    before, _ = _cpu_and_rss(server.pid)
    time.sleep(seconds)
    after, rss = _cpu_and_rss(server.pid)
    return (after - before) / seconds, rss


def idle(
    server: subprocess.Popen[bytes],
    base: str,
    directory: Path,
    watchers: int,
    seconds: float,
) -> None:
    cpu0, rss0 = _idle(server, seconds)
    clients = [_node(base, directory, f"idle{n}") for n in range(watchers)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=c.watch, args=(stop,), daemon=True) for c in clients
    ]
    for thread in threads:
        thread.start()
    while not all(c.status.last_synced_at for c in clients):
        time.sleep(0.2)
    time.sleep(5)  # every watcher holds a feed request now
    cpu1, rss1 = _idle(server, seconds)
    stop.set()
    print(f"server idle, no watcher: CPU {cpu0 * 100:.1f}% of a core, "
          f"RSS {rss0:.0f} MiB")
    print(f"server idle, {watchers} watchers: CPU {cpu1 * 100:.1f}% of a core, "
          f"RSS {rss1:.0f} MiB (+{rss1 - rss0:.0f} MiB, "
          f"{(rss1 - rss0) * 1024 / watchers:.0f} KiB a watcher)")
    print(f"ratio {watchers} watchers / none: CPU +{(cpu1 - cpu0) * 100:.1f} "
          f"points of a core, RSS {rss1 / rss0:.2f}x")
    for client in clients:
        client.close()
        client.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--idle", type=float, default=30.0)
    options = parser.parse_args()
    _reset(options.database)
    port = _free_port()
    server = _serve(options.database, port, options.watchers + 32)
    base = f"http://127.0.0.1:{port}/sync"
    try:
        with tempfile.TemporaryDirectory(prefix="reflectsync-watch-") as folder:
            directory = Path(folder)
            if options.commits:
                latency(options.database, base, directory, options.commits)
            if options.watchers:
                idle(server, base, directory, options.watchers, options.idle)
    finally:
        server.send_signal(signal.SIGINT)  # quick: held requests are not waited for
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
