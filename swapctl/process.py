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
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil


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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def started(pid: int) -> float:
    """When process `pid` started, in seconds since boot: one value for its whole life,
    which with the pid tells it apart from a later process given the same pid (pids wrap
    at 32,768 here, within an hour of swaps).

    Not psutil's create_time(): that adds the boot time as /proc/stat gives it at the
    moment of the call, which moves by a whole second when the clock is slewed across
    one. Two reads of one process then differ, and in the 60-minute soak every relay
    looked dead at the same moment and swapctld started each one again beside itself.
    Raises psutil.NoSuchProcess when there is no such process, as psutil does."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(pid) from None
    # "pid (comm) state ppid ...": comm may hold spaces and ')'; starttime is field 22
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19]) / CLOCK_TICKS


def is_same(pid: int, when: float) -> bool:
    """`pid` still runs (not a zombie) and is the process that started at `when`."""
    try:
        return started(pid) == when and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_under(root: Path) -> list[psutil.Process]:
    """The processes started for a private root (a demo, a bench, a test stack): the
    root's unique path is in their command line (supervisord, swapctld, launchers) or in
    their environment (relays get it as SWAPCTL_SOCKET). Never by name."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(root) in part for part in proc.info["cmdline"] or ()) or any(
                    str(root) in value for value in proc.environ().values()):
                found.append(proc)
    return found


def end_processes(procs: list[psutil.Process], grace: float = 3.0) -> None:
    """SIGTERM each, wait up to `grace`, SIGKILL what is left: each by its own pid (and
    start time: psutil refuses a pid that now belongs to another process)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, grace)


@contextlib.contextmanager
def sigterm_raises(error: Callable[[], BaseException]) -> Iterator[None]:
    """SIGTERM raises `error()` in the main thread, so that `finally` blocks (teardown)
    run as they do for Ctrl-C. Elsewhere than the main thread: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_sig: int, _frame: Any) -> None:
        raise error()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) must not cut a teardown short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
