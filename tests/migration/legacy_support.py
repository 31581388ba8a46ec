"""Helpers for the legacy strategy tests: building emulated legacy relays."""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "data" / "legacy_relay.py"
HANDOFF_RELAY = (sys.executable, "-m", "swapctl.relay", "--log-level", "warning")


def build_legacy(where: Path, compiled: Path, *flags: str, name: str = "legacy") -> list[str]:
    """'Compile' a legacy build: a copy of tests/data/legacy_relay.py with `compiled` and
    relay `flags` written into it. Returns its command line."""
    text = TEMPLATE.read_text()
    text = text.replace('COMPILED_PATH = "/tmp/swapctl-legacy-build/md.sock"',
                        f"COMPILED_PATH = {str(compiled)!r}")
    text = text.replace("RELAY_FLAGS: list[str] = []", f"RELAY_FLAGS: list[str] = {list(flags)!r}")
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.py"
    path.write_text(text)
    return [sys.executable, str(path)]
