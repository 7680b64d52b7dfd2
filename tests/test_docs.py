"""Every signal and configuration key is declared and documented."""

from __future__ import annotations

from pathlib import Path

import blinker
import pytest

from flask_reflectsync import signals
from flask_reflectsync.extension import CONFIG_DEFAULTS

DOCS = Path(__file__).parent.parent / "docs"

# The signals DESIGN.md promises; later features send them.
PROMISED_SIGNALS = [
    "schema_created",
    "schema_dropped",
    "schema_renamed",
    "table_created",
    "table_dropped",
    "table_renamed",
    "table_altered",
    "node_registered",
    "push_accepted",
    "push_rejected",
    "pull_served",
    "conflict_resolved",
]


@pytest.mark.parametrize("name", PROMISED_SIGNALS)
def test_signal_is_declared_in_the_private_namespace(name: str) -> None:
    signal = getattr(signals, name)
    assert isinstance(signal, blinker.NamedSignal)
    assert signal.name == name.replace("_", "-")
    assert name in signals.__all__


def test_every_signal_is_documented() -> None:
    text = (DOCS / "signals.rst").read_text()
    source = Path(signals.__file__).read_text()
    for name in signals.__all__:
        assert f"``{name}``" in text, f"{name} missing from docs/signals.rst"
        # and it has a #: comment naming the sender in the module
        before = source.split(f"\n{name} = ")[0]
        assert "Sender:" in before.rsplit("\n\n", 1)[-1], f"{name} lacks a #: comment"


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "configuration.rst").read_text()
    for key in CONFIG_DEFAULTS:
        assert f"``{key}``" in text, f"{key} missing from docs/configuration.rst"
