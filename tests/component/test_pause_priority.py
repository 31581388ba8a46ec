"""swap/priority.py on real processes and threads: the pause's real-time boost raises every
thread of a relay and the caller above them, puts each back as it was, never lowers a
thread the operator made real-time, lets threads born meanwhile start normal, ends by its
watchdog if the caller never does, and without the privilege changes nothing and says so.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swapctl.swap.priority import CONTROL_THREAD, boost, thread_name, threads_of
from tests.conftest import Processes

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
FIFO, RESET = os.SCHED_FIFO, os.SCHED_RESET_ON_FORK

# a process with three threads; each line on stdin starts one more; says "ok" each time
CHILD = """
import signal, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
def idle():
    while True:
        time.sleep(1)
for _ in range(2):
    threading.Thread(target=idle, daemon=True).start()
print("ok", flush=True)
for line in sys.stdin:
    threading.Thread(target=idle, daemon=True).start()
    print("ok", flush=True)
"""


def policy(tid: int) -> tuple[int, int]:
    return os.sched_getscheduler(tid) & ~RESET, os.sched_getparam(tid).sched_priority


@pytest.fixture
def child(procs: Processes) -> subprocess.Popen[bytes]:
    proc = procs.start([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    deadline = time.monotonic() + 10
    while len(threads_of(proc.pid)) < 3:
        assert time.monotonic() < deadline, "the child's threads did not start"
        time.sleep(0.01)
    return proc


def test_every_thread_is_raised_and_put_back_as_it_was(child: subprocess.Popen[bytes]) -> None:
    tids = threads_of(child.pid)
    operator_rt = tids[-1]  # made real-time by the operator: never lowered, never touched
    os.sched_setscheduler(operator_rt, os.SCHED_RR, os.sched_param(30))
    me = threading.get_native_id()
    assert policy(me) == (os.SCHED_OTHER, 0)
    boosted = boost([child.pid], 10)
    try:
        assert boosted.denied is None
        assert {tid: policy(tid) for tid in tids} == {
            **{tid: (FIFO, 10) for tid in tids}, operator_rt: (os.SCHED_RR, 30)}
        assert policy(me) == (FIFO, 11), "the caller runs above the relays"
    finally:
        boosted.restore()
    assert {tid: policy(tid) for tid in tids} == {
        **{tid: (os.SCHED_OTHER, 0) for tid in tids}, operator_rt: (os.SCHED_RR, 30)}
    assert policy(me) == (os.SCHED_OTHER, 0)
    summary = boosted.summary()
    assert summary["threads"] == len(tids) and summary["cut_by_watchdog"] is False
    assert summary["held_ms"] is not None and summary["held_ms"] >= 0


NAMED_CHILD = f"""
import signal, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
def idle(name):
    if name:
        with open(f"/proc/self/task/{{threading.get_native_id()}}/comm", "w") as comm:
            comm.write(name)
    while True:
        time.sleep(1)
for name in ("{CONTROL_THREAD}", "worker"):
    threading.Thread(target=idle, args=(name,), daemon=True).start()
time.sleep(0.2)
print("ok", flush=True)
sys.stdin.read()
"""


def test_of_a_releasing_relay_only_its_named_control_thread_is_raised(
        procs: Processes) -> None:
    proc = procs.start([sys.executable, "-c", NAMED_CHILD], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
    names = {tid: thread_name(proc.pid, tid) for tid in threads_of(proc.pid)}
    control = [tid for tid, name in names.items() if name == CONTROL_THREAD]
    assert len(control) == 1 and len(names) == 3, names
    boosted = boost([], 10, named=([proc.pid], CONTROL_THREAD))
    try:
        assert {tid: policy(tid) for tid in names} == {
            tid: (FIFO, 10) if tid in control else (os.SCHED_OTHER, 0) for tid in names}
        assert boosted.summary()["threads"] == 2  # the caller and the control thread
    finally:
        boosted.restore()
    assert all(policy(tid) == (os.SCHED_OTHER, 0) for tid in names)


def test_a_thread_born_during_the_boost_is_born_normal(child: subprocess.Popen[bytes]) -> None:
    before = set(threads_of(child.pid))
    boosted = boost([child.pid], 10)
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(b"one more\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"ok\n"
        born = set(threads_of(child.pid)) - before
        assert len(born) == 1
        assert policy(born.pop()) == (os.SCHED_OTHER, 0)  # SCHED_RESET_ON_FORK
    finally:
        boosted.restore()


def test_the_watchdog_ends_a_boost_its_caller_never_ended(
        child: subprocess.Popen[bytes]) -> None:
    tids = threads_of(child.pid)
    boosted = boost([child.pid], 10, limit_s=0.2)
    assert all(policy(tid) == (FIFO, 10) for tid in tids)
    deadline = time.monotonic() + 5
    while boosted.held_ms is None:
        assert time.monotonic() < deadline, "the watchdog never restored"
        time.sleep(0.01)
    assert all(policy(tid) == (os.SCHED_OTHER, 0) for tid in tids)
    assert boosted.summary()["cut_by_watchdog"] is True
    boosted.restore()  # the caller's own restore afterwards changes nothing
    assert boosted.summary()["cut_by_watchdog"] is True


def test_priority_zero_and_gone_processes_change_nothing(
        child: subprocess.Popen[bytes]) -> None:
    off = boost([child.pid], 0)
    assert off.summary()["threads"] == 0
    assert all(policy(tid) == (os.SCHED_OTHER, 0) for tid in threads_of(child.pid))
    gone = boost([2**22 + 7], 10)  # (beyond pid_max's default: no such process)
    try:
        assert gone.denied is None and gone.summary()["threads"] == 1  # only the caller
    finally:
        gone.restore()
    with pytest.raises(ValueError, match="at most"):
        boost([child.pid], 99)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to drop CAP_SYS_NICE")
def test_without_the_privilege_nothing_changes_and_the_summary_says_why() -> None:
    script = ("import json, os; from swapctl.swap.priority import boost; "
              "b = boost([os.getpid()], 10); "
              "print(json.dumps([b.summary(), os.sched_getscheduler(0)]))")

    def no_rtprio() -> None:
        resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))

    # root without CAP_SYS_NICE (dropped from the bounding set before exec) and with an
    # RLIMIT_RTPRIO of 0: what swapctld is under a unit that does not grant it
    done = subprocess.run(["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice",
                           "--", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=30, preexec_fn=no_rtprio,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stderr
    summary, now = json.loads(done.stdout)
    assert summary["threads"] == 0 and "CAP_SYS_NICE" in summary["denied"]
    assert now == os.SCHED_OTHER
