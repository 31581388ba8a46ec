"""The README's demo runs as CI runs it, succeeds, and leaves no process or file behind;
interrupted mid-swap (Ctrl-C), it still leaves nothing behind.

Each run gets a private TMPDIR, so the demo's temp root is under a path unique to the
test: every process it starts (swapctld, supervisord, the relays, the load clients)
inherits that TMPDIR, so a scan of every process's command line and environment for
that path finds anything left over, and nothing else (never a match by name).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

DEMO_TIMEOUT = 120.0


@pytest.fixture
def tmpdir_env() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="swdt-"))
    try:
        yield path
    finally:
        left = _leftovers(path)
        for proc in left:  # only if a test failed: end them by pid, then fail loudly
            with _quiet():
                proc.kill()
        shutil.rmtree(path, ignore_errors=True)
        assert not left, f"processes left under {path}: {[p.pid for p in left]}"


def _start(tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CI": "true", "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "swapctl", "demo"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with _quiet():
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_runs_clean_and_leaves_nothing_behind(tmpdir_env: Path) -> None:
    started = time.monotonic()
    proc = _start(tmpdir_env)
    try:
        out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    finally:
        _stop_group(proc)
    wall = time.monotonic() - started
    assert "deadline: soaking took longer than" not in out, (
        "BUG swapctl/swap/executor.py SwapRun._soak: the soak window ran out while a canary "
        "check ran, then _check_errors -> _error_counts -> _timeout() raised 'deadline: "
        "soaking took longer than ...' and a clean swap was rolled back (the end of the "
        "soak is success: tick() should have fired soak_done)\n" + out)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    for expected in (
        "v1 -> v2 on ", "v2 -> v1 on ",  # the swap, then the rollback, both reported
        "rollback timing: ",
        "lost 0, duplicated 0, reordered 0, corrupted 0, unexpected 0; disconnects 0",
        "strategy consumer alive at the end: yes",
        "verdict: CLEAN",
        "stopped every relay and exited",
        "demo OK in ",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert out.count("decision: COMMITTED") == 2, out
    clean = "lost 0, duplicated 0, reordered 0, corrupted 0, disconnects 0, dead consumers 0"
    assert out.count(f"result:   {clean}") == 2, out  # the swap's and the rollback's verdict
    assert out.count("canary:   ") == 2 and out.count(clean) == 4, out
    root = _root(out)
    assert root.parent == tmpdir_env
    _assert_nothing_left(tmpdir_env, root)
    assert wall < 60, f"the demo took {wall:.1f} s"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_the_swap_leaves_nothing_behind(tmpdir_env: Path) -> None:
    proc = _start(tmpdir_env)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT
        while not any("idle -> starting" in line for line in seen):  # the swap has begun
            assert proc.poll() is None, "".join(seen)
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail("the swap never began:\n" + "".join(seen))
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        code = proc.wait(DEMO_TIMEOUT)
    finally:
        _stop_group(proc)
    reader.join(5)
    while not lines.empty():
        seen.append(lines.get())
    out = "".join(seen)
    assert code == 1, out
    assert "stopped every relay and exited" in out, out
    assert "demo OK" not in out
    assert "interrupted (Ctrl-C)" in out and "demo FAILED" in out, out
    _assert_nothing_left(tmpdir_env, _root(out))


def _root(out: str) -> Path:
    first = out.splitlines()[0]
    assert first.startswith("working in "), first
    return Path(first.split()[2])


def _assert_nothing_left(tmp: Path, root: Path) -> None:
    assert root.is_relative_to(tmp)
    assert not root.exists(), f"{root} was not removed"
    deadline = time.monotonic() + 5  # an exited process may wait a moment to be reaped
    while left := _leftovers(tmp):
        assert time.monotonic() < deadline, [_describe(p) for p in left]
        time.sleep(0.1)


def _leftovers(tmp: Path) -> list[psutil.Process]:
    """Live processes whose command line or environment names the test's private dir."""
    mark = str(tmp)
    found = []
    for proc in psutil.process_iter():
        with _quiet():
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(mark in arg for arg in proc.cmdline()) or \
                    any(mark in value for value in proc.environ().values()):
                found.append(proc)
    return found


def _describe(proc: psutil.Process) -> str:
    with _quiet():
        return f"{proc.pid}: {' '.join(proc.cmdline())}"
    return str(proc.pid)


def _quiet() -> contextlib.suppress:
    """Ignore a process that vanished or cannot be read while we look at it."""
    return contextlib.suppress(psutil.Error, ProcessLookupError)
