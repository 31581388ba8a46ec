"""SIGTERM stops a bench that starts relays and clients, and everything it started:
exit 3 with its reason, no process left. SIGTERM's default action ended the bench at
once and left its relays, publishers, canary and crowd running, and a SwapctlError
raised from the handler was taken by the swap engine for a failed swap (the bench went
on). `bench relay`'s own scope is tested in test_bench.py; `bench drill`, whose stack is
not in its process tree, at the end."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from swapctl.process import end_processes, processes_under

pytestmark = pytest.mark.timeout(120)

RUNS = {
    "handoff": ["--relay", "python", "--clients", "10", "--swaps", "100000", "--no-load",
                "--rollbacks", "1"],
    "strategies": ["--strategies", "handoff", "--rates", "1000", "--clients", "10",
                   "--swaps", "100000"],
}


@pytest.mark.parametrize("command", sorted(RUNS))
def test_sigterm_stops_the_bench_and_every_process_it_started(command: str) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-c", "from swapctl.cli import main; main()", "bench", command,
         *RUNS[command]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while len(children) < 5 and time.monotonic() < deadline:  # relays and clients
            assert bench.poll() is None, "the bench ended before it started its processes"
            time.sleep(0.1)
            children = psutil.Process(bench.pid).children(recursive=True)
        assert len(children) >= 5, children
        time.sleep(1)  # (swapping by now)
        children = psutil.Process(bench.pid).children(recursive=True)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(60) == 3
        assert bench.stderr is not None
        assert b"stopped by SIGTERM" in bench.stderr.read()
        # (a multiprocessing helper ends once its pipe to the bench closes: give it time)
        _, alive = psutil.wait_procs(children, timeout=10)
        left = [c for c in alive if _running(c)]
        assert not left, [(c.pid, c.cmdline()) for c in left]
    finally:
        for child in children:  # (only what the bench left: by pid, never by name)
            with contextlib.suppress(psutil.Error):
                child.kill()
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("when", [2.0, 6.5])  # inside the first drill; about where the next starts
def test_sigterm_stops_the_drill_bench_and_its_stack(when: float) -> None:
    """The drill bench's stack (supervisord, swapctld, relays) is not in its process
    tree: it is found by the bench's private root. During a drill, the playbook runner
    takes SIGTERM (it cancels the drill and runs its cleanup); the bench then went on to
    the next drill. Now it stops there, and between drills SIGTERM unwinds it."""
    bench = subprocess.Popen(
        [sys.executable, "-c", "from swapctl.cli import main; main()", "bench", "drill",
         "--drills", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    root: Path | None = None
    try:
        assert bench.stderr is not None
        line = bench.stderr.readline().decode()  # "drill: stack up under ROOT; ..."
        assert "stack up under " in line, line
        root = Path(line.split("stack up under ")[1].split(";")[0])
        assert processes_under(root), "the stack is up"
        time.sleep(when)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(90) == 3
        rest = bench.stderr.read()
        assert b"stopped by SIGTERM" in rest, rest[-2000:]
        assert b"drill 3/1000" not in rest, "it stopped within a drill of the signal"
        left = [p for p in processes_under(root) if _running(p)]
        assert not left, [(p.pid, p.cmdline()) for p in left]
    finally:
        if root is not None:  # (by the bench's own root, never by name)
            end_processes(processes_under(root), grace=0.0)
        if bench.poll() is None:
            bench.kill()
            bench.wait()
