"""docs/first-node.rst works as written: its files are written, its commands
run in order in an empty folder (a real server on 127.0.0.1, a real node),
and each prints the output the page shows.

The quick start's and the README's app snippets are run too: each must give
an app a node can register with.

Run against another installation (CI does, with a wheel installed in a fresh
virtualenv) by naming its interpreter in ``REFLECTSYNC_TEST_PYTHON``; the
commands then come from that interpreter's ``bin`` folder, and the checkout
is not on their path.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The page's server is on SQLite whatever database the suite is pointed at:
# run it once, on the SQLite run, not again on PostgreSQL and MariaDB.
pytestmark = pytest.mark.skipif(
    bool(os.environ.get("REFLECTSYNC_TEST_DATABASE_URL")),
    reason="runs on SQLite whatever the backend: once, on the SQLite run",
)

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
DOCUMENTED_PORT = "127.0.0.1:5000"
DIRECTIVE = re.compile(r"^\.\. code-block:: (\w+)\s*$")


@dataclass
class Block:
    """One ``code-block`` of a page: its language, options and text."""

    language: str
    options: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines).strip("\n") + "\n"


def code_blocks(source: str) -> list[Block]:
    """The top-level code blocks of an .rst page, in order, dedented."""
    blocks: list[Block] = []
    current: Block | None = None
    for line in source.splitlines():
        match = DIRECTIVE.match(line)
        if match:
            current = Block(match[1])
            blocks.append(current)
        elif current is not None:
            option = re.match(r"^   :(\w[\w-]*): ?(.*)$", line)
            if option and not current.lines:
                current.options[option[1]] = option[2]
            elif line.startswith("   ") or not line.strip():
                current.lines.append(line[3:])
            else:
                current = None
    return blocks


def markdown_blocks(source: str, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown page."""
    return re.findall(rf"^```{language}\n(.*?)^```$", source, re.M | re.S)


def interpreter() -> Path:
    return Path(os.environ.get("REFLECTSYNC_TEST_PYTHON", sys.executable))


def clean_environment() -> dict[str, str]:
    """This process's environment without what would steer the commands:
    the package's own settings and a path to the checkout."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REFLECTSYNC_", "FLASK_", "PYTHON"))
    }
    env["PATH"] = f"{interpreter().parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Shell:
    """Runs a page's console commands the way a person types them."""

    folder: Path
    env: dict[str, str]
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, command: str, expected: list[str]) -> None:
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            self.env[name] = shlex.split(value)[0] if value else ""
            return
        if command.endswith(" &"):
            self.start(shlex.split(command[:-2]))
            return
        done = subprocess.run(
            shlex.split(command),
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = done.stdout + done.stderr
        assert done.returncode == 0, f"$ {command}\n{said}"
        lines = [line.strip() for line in said.splitlines()]
        for line in expected:
            assert line.strip() in lines, f"$ {command} did not print {line!r}:\n{said}"

    def start(self, argv: list[str]) -> None:
        log = (self.folder / "server.log").open("wb")
        process = subprocess.Popen(
            argv, cwd=self.folder, env=self.env, stdout=log, stderr=log
        )
        log.close()
        self.background.append(process)
        port = int(self.env["FLASK_RUN_PORT"])
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (self.folder / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        for process in self.background:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def shell(folder: Path) -> Iterator[Shell]:
    port = free_port()
    env = clean_environment()
    env["FLASK_RUN_PORT"] = str(port)  # ``flask run`` listens there
    running = Shell(folder, env)
    try:
        yield running
    finally:
        running.stop()


def commands(block: Block) -> Iterator[tuple[str, list[str]]]:
    """``($ command, the output lines shown after it)`` of a console block."""
    command: str | None = None
    output: list[str] = []
    for line in block.lines:
        if line.startswith("$ "):
            if command is not None:
                yield command, output
            command, output = line[2:], []
        elif line.strip() and command is not None:
            output.append(line)
    if command is not None:
        yield command, output


def test_the_first_node_page_runs_as_written(tmp_path: Path) -> None:
    source = (DOCS / "first-node.rst").read_text()
    with shell(tmp_path) as running:
        port = running.env["FLASK_RUN_PORT"]
        source = source.replace(DOCUMENTED_PORT, f"127.0.0.1:{port}")
        blocks = code_blocks(source)
        ran = 0
        for block in blocks:
            if block.language == "python" and "caption" in block.options:
                (tmp_path / block.options["caption"]).write_text(block.text)
            elif block.language == "console":
                for command, expected in commands(block):
                    running.run(command, expected)
                    ran += 1
    assert ran >= 10, "the page lost its commands"
    assert {"models.py", "app.py", "node.py"} <= {p.name for p in tmp_path.iterdir()}
    # Where the page says the server's data is.
    assert (tmp_path / "instance" / "server.db").is_file()


REGISTERS = """
answer = app.test_client().post(
    "/sync/register",
    json={"protocol": 2, "name": "docs", "token": "let-me-in"},
)
assert answer.status_code == 200, answer.get_json()
print("registered")
"""


def run_snippet(folder: Path, code: str) -> None:
    (folder / "snippet.py").write_text(code + REGISTERS)
    env = clean_environment()
    env.update(SECRET_KEY="change-me", REGISTRATION_TOKEN="let-me-in")
    done = subprocess.run(
        [str(interpreter()), "snippet.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("registered")


def test_the_quick_start_snippets_run_and_a_node_can_register(
    tmp_path: Path,
) -> None:
    blocks = code_blocks((DOCS / "quickstart.rst").read_text())
    python = [block.text for block in blocks if block.language == "python"]
    assert len(python) >= 2
    run_snippet(tmp_path, "\n".join(python))


def test_the_readme_snippet_runs_and_a_node_can_register(tmp_path: Path) -> None:
    python = markdown_blocks((ROOT / "README.md").read_text(), "python")
    assert len(python) == 1
    run_snippet(tmp_path, python[0])
