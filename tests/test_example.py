"""The README's demo runs by itself, shows the merge and the reflected table,
and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_demo_runs_and_shows_what_merged() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "example_app.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "primary-key conflict on site [1]: both rows were kept" in out
    assert "update/update conflict on observation [1]" in out
    assert "update/delete conflict on observation [2]" in out
    assert "Both tablets hold exactly the same rows: True." in out
    assert "signal table_created: main.weather_log" in out
    assert "Done." in out
