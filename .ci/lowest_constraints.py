"""Print a pip constraints file that pins every runtime and test dependency
to the floor pyproject.toml declares for it.

pip has no lowest-resolution mode, so CI derives the pins from pyproject
itself: the lowest-pins run then proves exactly the floors users are promised,
and a dependency added without a floor fails here instead of silently running
on its newest release. Transitive dependencies stay free (pip picks what the
pinned floors accept), which is what a user installing on an old stack gets.

Usage: python .ci/lowest_constraints.py [EXTRA ...] > constraints.txt
(default extras: test). With ``--pythons`` it prints instead the oldest and
the newest Python the package claims: the ``requires-python`` floor and the
highest ``Programming Language :: Python :: 3.N`` classifier.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import tomllib  # Python 3.11+: CI runs this with the system python3

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(?P<spec>[^;]*)"
)


def floor(requirement: str) -> str:
    """``name==floor`` for one requirement string, extras and markers dropped.

    :param requirement: a PEP 508 string such as ``"psycopg[binary]>=3.1"``.
    :raises SystemExit: when the requirement declares no ``>=`` floor.
    """
    match = REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"cannot read the requirement {requirement!r}")
    floors = [
        part.strip()[2:].strip()
        for part in match["spec"].split(",")
        if part.strip().startswith(">=")
    ]
    if len(floors) != 1:
        raise SystemExit(
            f"{requirement!r} needs exactly one '>=' floor for the lowest-pins run"
        )
    return f"{match['name']}=={floors[0]}"


def pythons(project: dict[str, Any]) -> str:
    """``"OLDEST NEWEST"``, e.g. ``"3.10 3.13"``."""
    oldest = re.fullmatch(r">=\s*(3\.\d+)", project["requires-python"].strip())
    if oldest is None:
        raise SystemExit("requires-python must read '>=3.N'")
    classifier = re.compile(r"Programming Language :: Python :: (3\.(\d+))")
    versions = [m for c in project["classifiers"] if (m := classifier.fullmatch(c))]
    if not versions:
        raise SystemExit("no 'Programming Language :: Python :: 3.N' classifier")
    newest = max(versions, key=lambda m: int(m[2]))[1]
    return f"{oldest[1]} {newest}"


def main(extras: list[str]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    if extras == ["--pythons"]:
        print(pythons(project))
        return
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    for requirement in requirements:
        print(floor(requirement))


if __name__ == "__main__":
    main(sys.argv[1:] or ["test"])
