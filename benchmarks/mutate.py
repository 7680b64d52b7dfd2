"""Mutation checks: break the correctness-critical code on purpose, one named
bug at a time, and see whether the tests notice.

    python benchmarks/mutate.py                  # every mutation
    python benchmarks/mutate.py --list           # names, files and tests only
    python benchmarks/mutate.py push-no-early-answer trim-ignores-lagging-node
    python benchmarks/mutate.py --timeout 120 --all-tests

Each mutation is a plain text rewrite: an *anchor* (a piece of source that
must occur exactly once in the package) and what replaces it. Code is found
by its text, not by file and line, so the list keeps working when modules
move; a mutation whose anchor is not found (or is found more than once) is
reported as "not applied", never as killed. Every mutant runs in a scratch
copy of the package and the tests (the checkout is never touched), on
SQLite, with the mutation's own fast subset of tests and a time limit.

A mutant is *killed* when its tests fail (or time out: a hang is a failure a
user would notice), and *survived* when they pass. The run first checks that
the chosen tests pass without any mutation, or the figures would mean
nothing. docs/mutation.rst has the results and how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "flask_reflectsync"


@dataclass(frozen=True)
class Mutation:
    """One plausible bug.

    :param name: a short id, used on the command line.
    :param bug: what the mutant does wrong, in words.
    :param anchor: source text that occurs exactly once in the package.
    :param replace: the text put in its place.
    :param alternatives: further ``(anchor, replace)`` pairs, tried in turn
        when the anchor is not found: the same bug in another version of
        the code (before and after a refactoring).
    :param tests: pytest arguments (files or node ids) that should kill it.
    :param backend: ``"sqlite"`` (the default), or ``"postgresql"`` /
        ``"mysql"`` for a bug only that backend shows: run on the database
        named by ``REFLECTSYNC_TEST_DATABASE_URL`` (or
        ``REFLECTSYNC_MUTATE_POSTGRESQL_URL`` / ``..._MYSQL_URL``), and not
        run without one.
    """

    name: str
    bug: str
    anchor: str
    replace: str
    tests: tuple[str, ...]
    alternatives: tuple[tuple[str, str], ...] = ()
    backend: str = "sqlite"


def _load(path: Path) -> list[Mutation]:
    records = json.loads(path.read_text(encoding="utf-8"))
    return [
        Mutation(
            name=r["name"],
            bug=r["bug"],
            anchor=r["anchor"],
            replace=r["replace"],
            alternatives=tuple(
                (a["anchor"], a["replace"]) for a in r.get("alternatives", ())
            ),
            tests=tuple(r["tests"]),
            backend=r.get("backend", "sqlite"),
        )
        for r in records
    ]


def _sources(package: Path) -> list[Path]:
    return sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


def locate(mutation: Mutation, package: Path) -> tuple[Path | None, str, str]:
    """The file holding the mutation's anchor (or one of its alternatives)
    and the rewrite to make there: ``(path, anchor, replace)``, or ``None``
    and the reason it cannot be applied."""
    reason = ""
    for anchor, replacement in (
        (mutation.anchor, mutation.replace),
        *mutation.alternatives,
    ):
        found = []
        for path in _sources(package):
            count = path.read_text(encoding="utf-8").count(anchor)
            if count:
                found.append((path, count))
        if len(found) == 1 and found[0][1] == 1:
            return found[0][0], anchor, replacement
        if found and not reason:
            places = ", ".join(
                f"{p.relative_to(package.parent)} x{n}" for p, n in found
            )
            reason = f"anchor is ambiguous ({places})"
    return None, reason or "anchor not found", ""


def _scratch_copy() -> Path:
    """The package, the tests and the pytest settings, in a scratch folder;
    pytest run there imports the copy (it puts the folder first on sys.path)."""
    scratch = Path(tempfile.mkdtemp(prefix="reflectsync-mutate-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / PACKAGE, scratch / PACKAGE, ignore=ignore)
    shutil.copytree(ROOT / "tests", scratch / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", scratch / "pyproject.toml")
    return scratch


def _server_url(scheme: str) -> str | None:
    """The database for mutations of one server backend (``None``: not
    run): ``REFLECTSYNC_TEST_DATABASE_URL`` if it is of that backend, else
    ``REFLECTSYNC_MUTATE_<BACKEND>_URL``."""
    named = os.environ.get("REFLECTSYNC_TEST_DATABASE_URL", "")
    if named.startswith(scheme):
        return named
    return os.environ.get(f"REFLECTSYNC_MUTATE_{scheme.upper()}_URL") or None


#: The PostgreSQL and MariaDB / MySQL databases for mutations that need one.
POSTGRESQL_URL = _server_url("postgresql")
MYSQL_URL = _server_url("mysql")
SERVER_URLS = {"postgresql": POSTGRESQL_URL, "mysql": MYSQL_URL}


def _pytest(
    scratch: Path, tests: tuple[str, ...], timeout: float, backend: str = "sqlite"
) -> tuple[str, float, str]:
    """Run ``tests`` in ``scratch``: "passed", "failed" or "timeout", the
    time taken, and the first failing test."""
    environment = dict(os.environ)
    environment.pop("REFLECTSYNC_TEST_DATABASE_URL", None)  # SQLite
    server = SERVER_URLS.get(backend)
    if server:
        environment["REFLECTSYNC_TEST_DATABASE_URL"] = server
    environment["PYTHONDONTWRITEBYTECODE"] = "1"  # a same-size rewrite in the
    # same second would otherwise be served from a stale .pyc
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-rf",
        "-o",
        "addopts=",
        *tests,
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=scratch,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "timeout", time.monotonic() - started, ""
    took = time.monotonic() - started
    if process.returncode == 0:
        return "passed", took, ""
    failed = [
        line.split()[1]
        for line in output.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]
    return "failed", took, failed[0] if failed else output.strip()[-200:]


def _check_imports_the_copy(scratch: Path) -> None:
    probe = (
        "import sys, pathlib; sys.path.insert(0, '.'); import flask_reflectsync as p; "
        "print(pathlib.Path(p.__file__).resolve())"
    )
    where = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=scratch,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(scratch.resolve())):
        raise SystemExit(f"the scratch copy is not what gets imported: {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument(
        "--mutations",
        type=Path,
        default=Path(__file__).with_name("mutations.json"),
        help="the list of mutations (JSON)",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="per mutant, s")
    parser.add_argument("--list", action="store_true", help="show, run nothing")
    parser.add_argument(
        "--all-tests",
        action="store_true",
        help="run the whole SQLite suite per mutant instead of its subset (slow)",
    )
    parser.add_argument(
        "--tests",
        nargs="+",
        help="run these pytest arguments for every mutant instead of its own",
    )
    args = parser.parse_args(argv)

    mutations = _load(args.mutations)
    names = [m.name for m in mutations]
    if len(set(names)) != len(names):
        raise SystemExit("mutation names must be unique")
    unknown = set(args.names) - set(names)
    if unknown:
        raise SystemExit(f"unknown mutations: {', '.join(sorted(unknown))}")
    chosen = [m for m in mutations if not args.names or m.name in args.names]
    if args.tests:
        chosen = [replace(m, tests=tuple(args.tests)) for m in chosen]

    if args.list:
        for m in chosen:
            path, reason, _ = locate(m, ROOT / PACKAGE)
            where = path.relative_to(ROOT) if path else f"NOT APPLIED: {reason}"
            print(f"{m.name:34} {where}\n    {m.bug}\n    tests: {' '.join(m.tests)}")
        return 0

    scratch = _scratch_copy()
    try:
        _check_imports_the_copy(scratch)
        everything: tuple[str, ...] = ("tests",)
        results = []
        runnable = []
        for m in chosen:
            if m.backend in SERVER_URLS and not SERVER_URLS[m.backend]:
                results.append((m, "not applied", f"needs {m.backend}", 0.0))
                print(f"{m.name:34} not run (needs a {m.backend} "
                      "REFLECTSYNC_TEST_DATABASE_URL or REFLECTSYNC_MUTATE_"
                      f"{m.backend.upper()}_URL)", flush=True)
            else:
                runnable.append(m)
        chosen = runnable
        for backend in sorted({m.backend for m in chosen}):
            subset = sorted(
                {t for m in chosen if m.backend == backend for t in m.tests}
            )
            baseline, took, first = _pytest(
                scratch,
                everything if args.all_tests else tuple(subset),
                args.timeout * 4,
                backend,
            )
            print(f"baseline on {backend} (no mutation): {baseline} in {took:.0f} s",
                  flush=True)
            if baseline != "passed":
                print(f"the chosen tests do not pass unmutated ({first}); "
                      "fix that first")
                return 2
        for m in chosen:
            path, anchor, rewrite = locate(m, scratch / PACKAGE)
            if path is None:
                reason = anchor
                results.append((m, "not applied", reason, 0.0))
                print(f"{m.name:34} not applied ({reason})", flush=True)
                continue
            original = path.read_text(encoding="utf-8")
            path.write_text(original.replace(anchor, rewrite), encoding="utf-8")
            try:
                outcome, took, first = _pytest(
                    scratch,
                    everything if args.all_tests else m.tests,
                    args.timeout,
                    m.backend,
                )
            finally:
                path.write_text(original, encoding="utf-8")
            verdict = {"passed": "SURVIVED", "failed": "killed"}.get(
                outcome, "killed (timeout)"
            )
            where = str(path.relative_to(scratch))
            results.append((m, verdict, where, took))
            print(f"{m.name:34} {verdict:16} {took:5.0f} s  {where}", flush=True)
            if first:
                print(f"{'':34} first failure: {first}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    killed = sum(r[1].startswith("killed") for r in results)
    survived = [r[0].name for r in results if r[1] == "SURVIVED"]
    skipped = [r[0].name for r in results if r[1] == "not applied"]
    print(
        f"\n{killed} killed, {len(survived)} survived, {len(skipped)} not applied"
        f" of {len(results)}"
    )
    for name in survived:
        print(f"  survived: {name}")
    for name in skipped:
        print(f"  not applied: {name}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
