"""The Rust example relay (sdk/rust) for tests: `./run test` builds it (scripts/ensure-tools);
a test run by hand builds it once here if the binary is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent / "sdk" / "rust"
BINARY = SDK / "target" / "release" / "swapctl-example-relay"


def cargo() -> str:
    return shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")


def example_relay() -> Path:
    """The example relay's binary; `cargo build --release --offline` once if missing."""
    if not BINARY.exists():
        subprocess.run([cargo(), "build", "--release", "--offline", "--quiet"], cwd=SDK,
                       check=True, timeout=1800, stdin=subprocess.DEVNULL)
    return BINARY
