"""Shared fixtures: short private socket dirs and real processes cleaned up by group."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl import unixsock
from swapctl.process import signal_group, stop_group


def _restore_sigint() -> None:
    """Give SIGINT back its interactive disposition when pytest inherited it ignored.

    A non-interactive shell starts background jobs with SIGINT ignored, exec keeps it
    ignored, and Python then installs no handler: every process the tests start (the CLI,
    swapctld, relays, clients) would ignore the SIGINT a test sends as a terminal's Ctrl-C
    (`status --watch` never stops). A handled signal is reset to SIG_DFL by exec, so
    installing Python's default handler here gives each child the default disposition,
    as a terminal's foreground job has. swapctl itself keeps honouring an ignored SIGINT,
    as every Unix program does (`cmd &`, nohup): that is the operator's choice.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_restore_sigint()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A private directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="swt-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_connectable(path: Path, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until a Unix socket accepts connections (the relays' only readiness signal)."""
    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {path} was ready")

    try:
        unixsock.wait_connectable(path, timeout, alive=alive, interval=0.005)
    except OSError:
        raise TimeoutError(f"{path} did not accept connections within {timeout}s") from None


class Processes:
    """Starts real processes in their own process groups; kills every group at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def relay(
        self, sock: Path, *args: str, ready: bool = True, timeout: float = 10.0, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """`python -m swapctl.relay --socket SOCK ARGS...`, waited for until it accepts."""
        proc = self.start([sys.executable, "-m", "swapctl.relay", "--socket", str(sock), *args],
                          **kwargs)
        if ready:
            wait_connectable(sock, proc, timeout)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:  # all at once, then each within one shared deadline
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            stop_group(proc, max(0.01, deadline - time.monotonic()))


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.cleanup()
