"""The private stack `swapctl bench daemon` measures, and how it is always taken down.

How it works: `private_stack()` writes the embedded configuration (swapctl.demo.configs:
three services on the reference relay, or on the Rust example relay) under a fresh root in
/tmp (short AF_UNIX paths) and yields a `BenchStack`; nothing is started yet. However the
block is left (return, error, Ctrl-C, or SIGTERM, which is turned into `Interrupted` in
the main thread while the block runs), teardown runs with further signals ignored:
`stack.up` (a daemon the bench killed is started again, so that it can stop what it owns),
`stack.down`, then anything still running from the root (its unique path in a process's
command line or environment: supervisord, swapctld, relays, canaries, load clients; never
by name) is sent SIGTERM, then SIGKILL. The pids that had to be ended that way are
recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from swapctl.bench.procs import Interrupted
from swapctl.config.load import Config, load_config
from swapctl.daemon import stack
from swapctl.daemon.api import ApiClient
from swapctl.demo import configs
from swapctl.process import end_processes, processes_under, signals_ignored, sigterm_raises

API_TIMEOUT = 60.0  # seconds per answer line (a swap streams progress lines)


@dataclass
class BenchStack:
    root: Path
    config: Config
    client: ApiClient
    killed_at_teardown: list[int] = field(default_factory=list)
    keep_to: Path | None = None  # teardown copies the state (journal, logs) here first

    def daemon_pid(self) -> int:
        return int(self.client.call("ping")["pid"])

    def owns(self, pid: int) -> bool:
        """The process is this stack's (its command line names the root): safe to kill."""
        with contextlib.suppress(psutil.Error):
            return any(str(self.root) in part for part in psutil.Process(pid).cmdline())
        return False

    def status(self, service: str | None = None) -> dict[str, Any]:
        args = {"service": service} if service else {}
        return self.client.call("status", **args)


@contextlib.contextmanager
def private_stack(service_soak: str = "2s",
                  rust_relay: Path | None = None) -> Iterator[BenchStack]:
    """The stack on the reference relay, or on the Rust example relay `rust_relay`."""
    root = Path(tempfile.mkdtemp(prefix="swbdd-", dir="/tmp"))
    config = load_config(configs.write(root, soak=service_soak, rust_relay=rust_relay))
    bench = BenchStack(root, config, stack.client_for(config, API_TIMEOUT))
    try:
        with sigterm_raises(lambda: Interrupted(
                "stopped by SIGTERM; the bench's stack was taken down")):
            yield bench
    finally:
        with signals_ignored():
            teardown(bench)


def teardown(bench: BenchStack) -> None:
    with contextlib.suppress(Exception):
        stack.up(bench.config, timeout=30)
    with contextlib.suppress(Exception):
        stack.down(bench.config, timeout=60)
    deadline = time.monotonic() + 5.0
    left = processes_under(bench.root)
    while left and time.monotonic() < deadline:  # supervisord's last children exiting
        time.sleep(0.1)
        left = processes_under(bench.root)
    bench.killed_at_teardown = [p.pid for p in left]
    end_processes(left)
    if bench.keep_to is not None:
        keep(bench.root, bench.keep_to)
    shutil.rmtree(bench.root, ignore_errors=True)


def keep(root: Path, into: Path) -> None:
    """Copy what the stack wrote under `root` (configs, journal, the logs of swapctld,
    supervisord and every relay) into `into`, sockets left out."""
    def sockets(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(folder, n)).st_mode)]

    with contextlib.suppress(shutil.Error, OSError):
        shutil.copytree(root, into, ignore=sockets, symlinks=True, dirs_exist_ok=True)
