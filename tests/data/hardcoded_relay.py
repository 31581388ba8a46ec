#!/usr/bin/env python3
"""A relay like the real ones: no arguments, a socket path compiled in, and at start-up it
creates the directory and deletes whatever is at the path before binding (so a second
copy would silently steal the path from the first). Only isolation lets two run at once."""

import contextlib
import os
import sys

PATH = "/tmp/swapctl-test-hardcoded/md.sock"

os.makedirs(os.path.dirname(PATH), exist_ok=True)
with contextlib.suppress(FileNotFoundError):
    os.unlink(PATH)
os.execv(sys.executable, [sys.executable, "-m", "swapctl.relay", "--socket", PATH,
                          "--log-level", "warning"])
