#!/usr/bin/env python3
"""An emulated legacy relay build: the reference relay with the handoff off, its socket
path compiled in (no argument or environment variable changes it), and at start-up it
creates the directory and deletes whatever is at the path before binding, like the
real Rust relays. Tests "compile" a build by copying this file with COMPILED_PATH and
RELAY_FLAGS replaced (tests/migration/legacy_support.py: `build_legacy`).

The flag --keep-closed (taken here, not passed on) emulates the real old market-data
relay, which keeps a closed client's socket in its fd table (protocol-v2.md section 3):
on EOF the relay forgets the client but a duplicate of its socket stays open for good."""

import contextlib
import os
import sys

COMPILED_PATH = "/tmp/swapctl-legacy-build/md.sock"
RELAY_FLAGS: list[str] = []
KEEP_CLOSED = "--keep-closed"

for name in ("SWAPCTL_HANDOFF", "SWAPCTL_TOKEN", "SWAPCTL_SOCKET", "SWAPCTL_RELEASE"):
    os.environ.pop(name, None)  # a legacy build knows nothing of swapctl
os.makedirs(os.path.dirname(COMPILED_PATH), exist_ok=True)
with contextlib.suppress(FileNotFoundError):
    os.unlink(COMPILED_PATH)
ARGS = ["--socket", COMPILED_PATH, "--log-level", "warning",
        *(f for f in RELAY_FLAGS if f != KEEP_CLOSED)]
if KEEP_CLOSED not in RELAY_FLAGS:
    os.execv(sys.executable, [sys.executable, "-m", "swapctl.relay", *ARGS])

from swapctl.relay.command import relay_command  # noqa: E402
from swapctl.relay.server import Relay  # noqa: E402

held: list[int] = []  # closed clients' sockets, never closed
drop = Relay._drop


def _drop_but_keep(self, conn, reason):  # type: ignore[no-untyped-def]
    if reason == "eof" and not conn.closed:
        held.append(os.dup(conn.fd))
    drop(self, conn, reason)


Relay._drop = _drop_but_keep  # type: ignore[method-assign]
relay_command(ARGS, prog_name="legacy relay")
