#!/usr/bin/env python3
"""An emulated legacy relay build: the reference relay with the handoff off, its socket
path compiled in (no argument or environment variable changes it), and at start-up it
creates the directory and deletes whatever is at the path before binding, like the
real Rust relays. Tests "compile" a build by copying this file with COMPILED_PATH and
RELAY_FLAGS replaced (tests/migration/legacy_support.py: `build_legacy`)."""

import contextlib
import os
import sys

COMPILED_PATH = "/tmp/swapctl-legacy-build/md.sock"
RELAY_FLAGS: list[str] = []

for name in ("SWAPCTL_HANDOFF", "SWAPCTL_TOKEN", "SWAPCTL_SOCKET", "SWAPCTL_RELEASE"):
    os.environ.pop(name, None)  # a legacy build knows nothing of swapctl
os.makedirs(os.path.dirname(COMPILED_PATH), exist_ok=True)
with contextlib.suppress(FileNotFoundError):
    os.unlink(COMPILED_PATH)
os.execv(sys.executable, [sys.executable, "-m", "swapctl.relay", "--socket", COMPILED_PATH,
                          "--log-level", "warning", *RELAY_FLAGS])
