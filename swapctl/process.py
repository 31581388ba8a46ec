"""Stopping child processes by process group: the one way swapctl ends what it started.

Every child swapctl starts runs in its own session, so its process group holds it and
anything it started. `stop_group` sends SIGTERM to the group, waits, then SIGKILLs the
group whatever happened (so nothing the child left behind survives it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def signal_group(pid: int, sig: int) -> None:
    """Signal a process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """SIGTERM the child's group, wait up to `timeout`, SIGKILL the group, reap the child."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()
