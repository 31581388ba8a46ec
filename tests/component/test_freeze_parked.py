"""What a freeze try counts as parked, against real processes: a thread in a timed wait
that an earlier try stopped and resumed waits on in restart_syscall, which is still a
parked wait, and its futex word is still read (a woken waiter is still caught); a
thread blocked reading a socket to another process is parked, one reading a client or
its own socketpair is not."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swapctl.legacy import sockets, wakeups
from swapctl.legacy.takeover import wait_stopped
from tests.conftest import Processes

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the syscall numbers read are x86_64's")

WAITER = """
import os, sys, threading
event = threading.Event()
thread = threading.Thread(target=lambda: event.wait(600), daemon=True)
thread.start()
sys.stdout.write(f"{thread.native_id}\\n"); sys.stdout.flush()
sys.stdin.read()
"""


def _syscall(pid: int, tid: int) -> str:
    with open(f"/proc/{pid}/task/{tid}/syscall") as f:
        return f.read()


def _until(pid: int, tid: int, number: int) -> str:
    deadline = time.monotonic() + 5
    while True:
        text = _syscall(pid, tid)
        if wakeups.parse_syscall_args(text)[0] == number or time.monotonic() > deadline:
            return text
        time.sleep(0.01)


def test_a_timed_wait_resumed_after_a_stop_is_parked_and_its_word_still_read(
        procs: Processes) -> None:
    proc = procs.start([sys.executable, "-c", WAITER], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE)
    assert proc.stdout is not None
    tid = int(proc.stdout.readline())
    first = _until(proc.pid, tid, 202)
    assert wakeups.parse_syscall_args(first)[0] == 202, first  # a timed futex wait
    os.kill(proc.pid, signal.SIGSTOP)  # an earlier try: stopped, then let run
    wait_stopped(proc.pid, 5)
    os.kill(proc.pid, signal.SIGCONT)
    text = _until(proc.pid, tid, 219)
    number, args = wakeups.parse_syscall_args(text)
    assert number == 219, text  # restart_syscall, with the first call's arguments
    assert sockets.waiting(number)
    assert wakeups.futex_wait(number, args) == wakeups.futex_wait(
        *wakeups.parse_syscall_args(first))
    os.kill(proc.pid, signal.SIGSTOP)  # the next try
    try:
        wait_stopped(proc.pid, 5)
        texts = wakeups.thread_syscall_texts(proc.pid)
        assert wakeups.pending(proc.pid, texts, {}) == []  # parked, nothing to do
        wait = wakeups.futex_wait(number, args)
        assert wait is not None
        with open(f"/proc/{proc.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(wait[0])
            mem.write(struct.pack("=I", wait[1] + 1))  # what a waker does first
        found = wakeups.pending(proc.pid, texts, {})
        assert found == [f"thread {tid}: futex word {wait[1] + 1} != {wait[1]} (woken)"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)


RECEIVERS = """
import json, socket, sys, threading
path, control = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX); listener.bind(path); listener.listen()
tids, fds, keep = {}, {}, []
def receive(name, sock):
    tids[name] = threading.get_native_id()
    sock.recv(1)
def serve(**socks):
    for name, sock in socks.items():
        keep.append(sock)
        fds[name] = sock.fileno()
        threading.Thread(target=receive, args=(name, sock), daemon=True).start()
    while len(tids) < len(fds):
        pass
    sys.stdout.write(json.dumps({"tids": tids, "fds": fds}) + "\\n"); sys.stdout.flush()
link = socket.socket(socket.AF_UNIX); link.connect(control)  # to another process
inner, other_end = socket.socketpair()  # between its own threads
sys.stdout.write("listening\\n"); sys.stdout.flush()
serve(link=link, inner=inner, client=listener.accept()[0])
sys.stdin.readline()  # then, after the scan: a link and a client opened since
again = socket.socket(socket.AF_UNIX); again.connect(control)
pending = socket.socket(socket.AF_UNIX); pending.connect(control)  # not accepted yet
serve(link_since=again, client_since=listener.accept()[0], link_pending=pending)
sys.stdin.read()
"""


def test_only_a_receive_from_another_process_counts_as_parked(procs: Processes,
                                                                sockdir: Path) -> None:
    """A thread blocked reading its control link is parked (what wakes it is not a
    client's message), also on a link opened since the scan (the crate's control
    thread reconnects); one blocked reading a client (accepted before or since), or
    its own socketpair (another of its threads may have just written a frame there),
    is not. A link the other process has not accepted yet (the kernel gives its peer as
    0, as for a closed one) is parked too: the crate's control thread reconnects while
    swapctl, busy freezing it, does not accept, and 16 of 20 tries were found busy so."""
    path, control = sockdir / "relay.sock", sockdir / "control.sock"
    with socket.socket(socket.AF_UNIX) as orchestrator, \
            socket.socket(socket.AF_UNIX) as client, socket.socket(socket.AF_UNIX) as late:
        orchestrator.bind(str(control))
        orchestrator.listen()
        proc = procs.start([sys.executable, "-c", RECEIVERS, str(path), str(control)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"listening\n"
        links = [orchestrator.accept()[0]]
        client.connect(str(path))
        seen = json.loads(proc.stdout.readline())
        for tid in seen["tids"].values():
            _until(proc.pid, tid, 45)  # recvfrom, blocked
        copies = sockets.Copies(proc.pid, str(path))
        try:
            parked = {name: copies.parked_in_receive(_syscall(proc.pid, tid))
                      for name, tid in seen["tids"].items()}
            assert parked == {"link": True, "inner": False, "client": False}, parked
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            links.append(orchestrator.accept()[0])  # `again`; `pending` waits in the queue
            late.connect(str(path))
            seen = json.loads(proc.stdout.readline())
            for tid in seen["tids"].values():
                _until(proc.pid, tid, 45)
            parked = {name: copies.parked_in_receive(_syscall(proc.pid, tid))
                      for name, tid in seen["tids"].items()}
            assert parked == {"link": True, "inner": False, "client": False,
                              "link_since": True, "client_since": False,
                              "link_pending": True}, parked
            # and why each one that is not, as a freeze's busy reason says it
            verdicts = {name: copies.receive_verdict(_syscall(proc.pid, tid))
                        for name, tid in seen["tids"].items()}
            assert verdicts["link_pending"] == verdicts["link"] == ""
            assert verdicts["client"] == f"fd {seen['fds']['client']}: a client's socket"
            assert verdicts["inner"] == \
                f"fd {seen['fds']['inner']}: a socket within the relay", verdicts
            assert verdicts["client_since"].endswith("a client's socket (accepted since the scan)")
            assert not copies.parked_in_receive(f"{PARKED_ELSEWHERE}\n")
        finally:
            copies.close()
            for link in links:
                link.close()


PARKED_ELSEWHERE = "202 0x55ed13f3ed50 0x89 0x1 0x0 0x0 0x0 0x7f0dffffffff 0x7ffc36e94ec8"


SLEEPER = """
import os, sys, threading
r, w = os.pipe()
def loop():
    while os.read(r, 1):
        pass
thread = threading.Thread(target=loop, daemon=True)
thread.start()
sys.stdout.write(f"{thread.native_id}\\n"); sys.stdout.flush()
for line in sys.stdin:
    os.write(w, b"x")  # wake the thread: it reads and sleeps again
"""


def test_a_thread_that_ran_between_the_look_and_the_stop_is_caught(procs: Processes) -> None:
    """Parked before and after, in the same read: only its context switches tell that
    it woke and did something in between (a frame read and handed on, say)."""
    proc = procs.start([sys.executable, "-c", SLEEPER], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    tid = int(proc.stdout.readline())
    _until(proc.pid, tid, 0)  # read, blocked
    for woken in (False, True):
        time.sleep(0.2)  # every thread back asleep
        before = wakeups.switch_counts(proc.pid)
        if woken:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 5
            while wakeups.switch_counts(proc.pid).get(tid) == before[tid] \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.05)  # (asleep again, in the same read)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_stopped(proc.pid, 5)
        found = wakeups.ran_since(before, wakeups.switch_counts(proc.pid))
        os.kill(proc.pid, signal.SIGCONT)
        if woken:
            assert any(f"thread {tid}:" in f for f in found), found
        else:
            assert found == [], found
