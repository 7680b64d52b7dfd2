"""The server's own CPU time for one small push, in-process.

    python benchmarks/push_cpu.py --database postgresql+psycopg://... \\
        [--pushes 400] [--rows 10] [--profile 25] [--before /path/to/old/checkout]

The soak's app (:mod:`soak_app`) served by Flask's test client in this
process: a node registers, then sends ``--pushes`` signed pushes of
``--rows`` new rows each, one after the other, each carrying its previous
answer's version (as :mod:`small_pushes` does, without gunicorn and HTTP).
The figure is the median ``time.process_time()`` of a push's request: the
CPU this Python process spends on it (Flask, authentication, the message
check, decoding, SQLAlchemy, the driver), which other work on a shared
machine moves far less than wall time. The database server's own CPU is
not in it. The same-run baseline is ``GET /sync/openapi.json`` (Flask
alone), measured the same way.

``--profile N`` prints the top functions of a cProfile of N further pushes
(cumulative and own time). ``--before DIR`` measures, alternating in
``--rounds`` child processes each, the package in ``DIR`` (an older
checkout, put first on ``PYTHONPATH``) and this one, on the same database,
and prints each round's medians and the after/before ratio.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/reflectsync_bench"


def measure(database: str, pushes: int, rows: int, profile: int) -> dict[str, Any]:
    """Medians of ``pushes`` pushes in this process (see the module)."""
    from small_pushes import survey_push
    from soak import reset_database
    from soak_app import create_app

    from flask_reflectsync.wire.messages import PROTOCOL_VERSION
    from flask_reflectsync.wire.signing import sign_request

    reset_database(database)
    app = create_app(database)
    client = app.test_client()
    node = client.post("/sync/register", json={"protocol": PROTOCOL_VERSION}).json
    node = node["node"]
    state = {"key": 1, "last": 0, "n": 0}

    def one_push() -> float:
        first = state["key"]
        state["key"] += rows
        state["n"] += 1
        body = survey_push(first, rows, state["last"], f"p{state['n']}")
        headers = sign_request(
            node["id"], node["secret"], "POST", "/sync/push", "", body
        )
        headers["Content-Type"] = "application/json"
        start = time.process_time()
        answer = client.post("/sync/push", data=body, headers=headers)
        spent = time.process_time() - start
        if answer.status_code != 200:
            raise SystemExit(f"push refused: {answer.status_code} {answer.text}")
        state["last"] = answer.json["version"]
        return spent

    def one_get() -> float:
        start = time.process_time()
        answer = client.get("/sync/openapi.json")
        spent = time.process_time() - start
        assert answer.status_code == 200
        return spent

    for _ in range(20):  # warm: connections, caches, compiled statements
        one_push()
        one_get()
    push_times = []
    get_times = []
    for _ in range(pushes):
        push_times.append(one_push())
        get_times.append(one_get())
    result: dict[str, Any] = {
        "push_ms": statistics.median(push_times) * 1000,
        "get_ms": statistics.median(get_times) * 1000,
        "statements": _statements(app, one_push),
    }
    if profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(profile):
            one_push()
        profiler.disable()
        result["profile"] = profiler
    with app.app_context():
        from soak_app import db

        db.engine.dispose()
    return result


def _statements(app: Any, one_push: Any) -> int:
    """Statements one push sends (SQLAlchemy's ``before_cursor_execute``)."""
    import sqlalchemy as sa
    from soak_app import db

    count = [0]

    def counted(*_: Any) -> None:
        count[0] += 1

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", counted)
    try:
        one_push()
    finally:
        sa.event.remove(engine, "before_cursor_execute", counted)
    return count[0]


def _print_profile(profiler: cProfile.Profile, pushes: int, top: int = 30) -> None:
    stats = pstats.Stats(profiler)
    print(f"\ncProfile of {pushes} pushes (process time), by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)
    print("by own time:")
    stats.sort_stats("tottime").print_stats(top)


def _child(directory: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [directory, str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child",
        "--database", args.database, "--pushes", str(args.pushes),
        "--rows", str(args.rows),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--pushes", type=int, default=400)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument("--before", help="an older checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        found = measure(args.database, args.pushes, args.rows, 0)
        print(json.dumps(found))
        return 0
    if args.before:
        mine = str(HERE.parent)
        rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for label, directory in (("before", args.before), ("after", mine)):
                rounds[label].append(_child(directory, args))
        print(f"database: {args.database}; {args.pushes} pushes of {args.rows} rows")
        print(f"{'round':>5} {'before ms':>10} {'after ms':>9} {'ratio':>6} "
              f"{'stmts b/a':>10} {'GET b/a ms':>12}")  # fmt: skip
        ratios = []
        for i, (old, new) in enumerate(
            zip(rounds["before"], rounds["after"], strict=True), 1
        ):
            ratio = new["push_ms"] / old["push_ms"]
            ratios.append(ratio)
            print(
                f"{i:>5} {old['push_ms']:>10.2f} {new['push_ms']:>9.2f} "
                f"{ratio:>5.2f}x {old['statements']:>4}/{new['statements']:<5} "
                f"{old['get_ms']:>5.2f}/{new['get_ms']:<5.2f}"
            )
        print(f"median after/before: {statistics.median(ratios):.2f}x "
              "(CPU of this process per push, medians)")  # fmt: skip
        return 0
    found = measure(args.database, args.pushes, args.rows, args.profile)
    print(
        f"database: {args.database}; {args.pushes} pushes of {args.rows} rows\n"
        f"CPU a push (median, this process): {found['push_ms']:.2f} ms; "
        f"GET /openapi.json {found['get_ms']:.2f} ms "
        f"(push/baseline {found['push_ms'] / found['get_ms']:.1f}x); "
        f"{found['statements']} statements a push"
    )
    if args.profile:
        _print_profile(found["profile"], args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
