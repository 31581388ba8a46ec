"""The private stack `swapctl bench daemon` measures, and how it is always taken down.

How it works: `private_stack()` writes the embedded configuration (swapctl.demo.configs:
three services on the reference relay) under a fresh root in /tmp (short AF_UNIX paths)
and yields a `BenchStack`; nothing is started yet. However the block is left (return,
error, Ctrl-C, or SIGTERM, which is turned into `Interrupted` in the main thread while
the block runs), teardown runs with further signals ignored: `stack.up` (a daemon the
bench killed is started again, so that it can stop what it owns), `stack.down`, then
anything still running from the root (its unique path in a process's command line or
environment: supervisord, swapctld, relays, canaries, load clients; never by name) is
sent SIGTERM, then SIGKILL. The pids that had to be ended that way are recorded.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
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

API_TIMEOUT = 60.0  # seconds per answer line (a swap streams progress lines)


@dataclass
class BenchStack:
    root: Path
    config: Config
    client: ApiClient
    killed_at_teardown: list[int] = field(default_factory=list)

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


def leftovers(root: Path) -> list[psutil.Process]:
    """Processes started for this root, found by its path in their command line (supervisord,
    swapctld, launchers, canaries) or environment (relays)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(root) in part for part in proc.info["cmdline"] or ()) or any(
                    str(root) in value for value in proc.environ().values()):
                found.append(proc)
    return found


def end(procs: list[psutil.Process], grace: float = 3.0) -> None:
    """SIGTERM each, a grace period, SIGKILL what is left (each by its own pid)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, grace)


@contextlib.contextmanager
def private_stack(service_soak: str = "2s") -> Iterator[BenchStack]:
    root = Path(tempfile.mkdtemp(prefix="swbdd-", dir="/tmp"))
    config = load_config(configs.write(root, soak=service_soak))
    bench = BenchStack(root, config, stack.client_for(config, API_TIMEOUT))
    try:
        with _sigterm_interrupts():
            yield bench
    finally:
        with _signals_ignored():
            teardown(bench)


def teardown(bench: BenchStack) -> None:
    with contextlib.suppress(Exception):
        stack.up(bench.config, timeout=30)
    with contextlib.suppress(Exception):
        stack.down(bench.config, timeout=60)
    deadline = time.monotonic() + 5.0
    left = leftovers(bench.root)
    while left and time.monotonic() < deadline:  # supervisord's last children exiting
        time.sleep(0.1)
        left = leftovers(bench.root)
    bench.killed_at_teardown = [p.pid for p in left]
    end(left)
    shutil.rmtree(bench.root, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_sig: int, _frame: Any) -> None:
        raise Interrupted("stopped by SIGTERM; the bench's stack was taken down")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) must not cut the teardown short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
