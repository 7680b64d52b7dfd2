"""The installed package's metadata says what a user and an index need: the
license, the authors, the Python versions, and every distribution the package
imports.

It reads the metadata of the installation under test: this environment's
(``pip install -e .`` writes it from pyproject.toml, so reinstall after
editing that), or the interpreter named by ``REFLECTSYNC_TEST_PYTHON`` (CI
names one with the built wheel installed in a fresh virtualenv).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "flask_reflectsync"
READ_METADATA = """
import importlib.metadata, json
found = importlib.metadata.metadata("flask-reflectsync")
print(json.dumps({key: found.get_all(key) for key in set(found.keys())}))
"""
# The distribution behind each module the package imports.
DISTRIBUTIONS = {
    "blinker": "blinker",
    "click": "click",
    "flask": "flask",
    "flask_sqlalchemy": "flask-sqlalchemy",
    "httpx": "httpx",
    "sqlalchemy": "sqlalchemy",
    "werkzeug": "werkzeug",
}


@pytest.fixture(scope="module")
def metadata() -> dict[str, list[str]]:
    python = os.environ.get("REFLECTSYNC_TEST_PYTHON", sys.executable)
    done = subprocess.run(
        [python, "-c", READ_METADATA],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, list[str]] = json.loads(done.stdout)
    return found


def test_the_license_is_declared_as_spdx_with_its_file(
    metadata: dict[str, list[str]],
) -> None:
    assert metadata.get("License-Expression") == ["MIT"], (
        "no License-Expression: reinstall after editing pyproject.toml?"
    )
    assert metadata.get("License-File") == ["LICENSE"]


def test_authors_and_python_versions_are_declared(
    metadata: dict[str, list[str]],
) -> None:
    assert metadata.get("Author") or metadata.get("Author-email")
    assert metadata["Requires-Python"] == [">=3.10"]
    classifiers = set(metadata["Classifier"])
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Framework :: Flask" in classifiers


def imported_modules() -> set[str]:
    """The top-level modules that flask_reflectsync's sources import."""
    found: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"flask_reflectsync"}


def test_every_imported_distribution_is_a_declared_dependency(
    metadata: dict[str, list[str]],
) -> None:
    declared = {
        re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        for requirement in metadata["Requires-Dist"]
        if "extra ==" not in requirement
    }
    imported = imported_modules()
    unknown = imported - set(DISTRIBUTIONS)
    assert not unknown, f"add {sorted(unknown)} to DISTRIBUTIONS and to pyproject"
    missing = {DISTRIBUTIONS[name] for name in imported} - declared
    assert not missing, f"imported but not in [project] dependencies: {missing}"
