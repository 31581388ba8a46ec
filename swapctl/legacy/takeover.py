"""Strategy `takeover`: a legacy relay's sockets moved to a handoff-capable candidate.

How it works:
1. Start the candidate in standby (it connects to our control socket) and probe it.
2. Freeze the legacy relay with SIGSTOP and wait until every thread is stopped. If a
   thread was not parked in a waiting system call (it may have been half way through a
   read or a write), or a client's kernel buffer was backed up (the relay may hold
   bytes for it), let it run again briefly and retry, a bounded number of times.
3. Find its listener and accepted connections (/proc/PID/fd joined with the Unix socket
   table), take duplicates with pidfd_getfd, and ADOPT them into the candidate as a
   transfer with empty `pending_in`/`unsent_out` (nothing of the legacy relay's memory
   can be read from outside), then RESUME it and confirm (stats answer, state active).
4. SIGKILL the legacy relay while it is still stopped: it never reads or writes again.
   Its copies close with it; the clients stay connected through the candidate's.
If anything fails before the candidate confirms, the candidate is killed first (so
it reads nothing more), the shared file flags are put back, and the legacy relay
gets SIGCONT: it carries on with every socket and byte it had.

What cannot move: bytes the legacy relay had read but not forwarded (a partial frame
in its memory) and bytes it owed a consumer (a frame it had half written). The
candidate resynchronises each publisher stream at the next frame boundary and counts
the bytes it skipped; a consumer cut mid-frame receives the head of a frame whose tail
died with the legacy relay, then whole frames (a framing consumer rescans for the
magic: one garbage run, the frames in it lost). Both are counted in the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.handoff.manifest import ConnState, Transfer
from swapctl.legacy import sockets
from swapctl.legacy.report import StrategyReport
from swapctl.swap.probe import ProbeSettings, probe
from swapctl.swap.service import Service, Slot
from swapctl.swap.spawner import Release

CANNOT_GUARANTEE = (
    "bytes the legacy relay had read but not yet forwarded, and bytes it owed a consumer "
    "(a frame half written), die with it: they cannot be read from outside. The candidate "
    "resynchronises each publisher stream at a frame boundary (skipped bytes are counted); "
    "a consumer cut mid-frame sees one truncated frame. Only the canary/load checker counts "
    "the messages this cost.")
BACKED_UP = 0.5  # a client whose kernel send queue is over this share of SO_SNDBUF


class TakeoverError(SwapctlError):
    """The takeover could not complete; the legacy relay was resumed untouched."""


@dataclass(frozen=True, slots=True)
class TakeoverSettings:
    ready_timeout: float = 10.0
    probe_timeout: float = 2.0
    adopt_timeout: float = 2.0  # adopt + resume + confirm
    freeze_attempts: int = 20  # tries to freeze the relay while it is idle
    freeze_retry_s: float = 0.002  # how long it runs between tries
    stop_timeout: float = 0.5  # for SIGSTOP to take effect
    settle_s: float = 0.3  # then read the candidate's resync counters
    domain_byte: int = 1
    echo: bool = True


@dataclass(slots=True)
class Frozen:
    """The legacy relay, stopped, and our duplicates of its sockets."""

    stopped_ns: int
    attempts: int
    quiescent: bool
    listener: int
    conns: list[int]
    flags: dict[int, int] = field(default_factory=dict)  # fd -> original file status flags
    inq: int = 0
    outq: int = 0
    backed_up: int = 0
    syscalls: dict[int, int | None] = field(default_factory=dict)

    @property
    def fds(self) -> list[int]:
        return [self.listener, *self.conns]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.conns = []


@dataclass(slots=True)
class TakeoverResult:
    report: StrategyReport
    candidate: Slot | None  # serving the clients when the takeover completed


def signal_relay(pid: int, sig: int) -> None:
    """Signal the relay's process group if it leads one (never our own), else the pid."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if pgid == pid and pgid != os.getpgid(0):
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


def wait_stopped(pid: int, timeout: float) -> None:
    """Until every thread of `pid` is in the stopped state (SIGSTOP is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(s in ("T", "t") for s in states):
            return
        if time.monotonic() > deadline:
            raise TakeoverError(f"pid {pid} did not stop within {timeout} s (states {states})")
        time.sleep(0.0001)


def freeze(pid: int, path: str, settings: TakeoverSettings) -> Frozen:
    """Stop the relay, preferably while idle, and duplicate its sockets (see module doc)."""
    for attempt in range(1, settings.freeze_attempts + 1):
        stopped_ns = time.monotonic_ns()
        signal_relay(pid, signal.SIGSTOP)
        try:
            wait_stopped(pid, settings.stop_timeout)
            syscalls = sockets.thread_syscalls(pid)
            found = sockets.find(pid, path)
            listener, conns = sockets.duplicate(pid, found)
        except BaseException:
            signal_relay(pid, signal.SIGCONT)
            raise
        frozen = Frozen(stopped_ns, attempt, False, listener, conns, syscalls=syscalls)
        _measure(frozen)
        frozen.quiescent = (all(sockets.waiting(n) for n in syscalls.values())
                            and frozen.backed_up == 0)
        if frozen.quiescent or attempt == settings.freeze_attempts:
            return frozen
        frozen.close()
        signal_relay(pid, signal.SIGCONT)
        time.sleep(settings.freeze_retry_s)
    raise AssertionError("unreachable")


def _measure(frozen: Frozen) -> None:
    for fd in frozen.conns:
        inq, outq = sockets.queued(fd)
        frozen.inq += inq
        frozen.outq += outq
        with socket.socket(fileno=os.dup(fd)) as sock:
            if outq > BACKED_UP * sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF):
                frozen.backed_up += 1


def _make_nonblocking(frozen: Frozen) -> None:
    """The candidate needs non-blocking sockets; the flag lives on the open file, which
    the legacy relay shares, so remember each one to restore it on a rollback."""
    for fd in frozen.fds:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        frozen.flags[fd] = flags
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def _restore_flags(frozen: Frozen) -> None:
    for fd, flags in frozen.flags.items():
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def end_relay(pid: int, timeout: float = 2.0) -> None:
    """SIGKILL the (stopped) legacy relay and wait until it is gone."""
    signal_relay(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if _zombie(pid):
            return
        time.sleep(0.001)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Takeover:
    """One takeover of the legacy relay `pid` (socket bound at `path` as it sees it)."""

    def __init__(self, service: Service, pid: int, path: str, candidate: Release,
                 settings: TakeoverSettings | None = None) -> None:
        self.service = service
        self.pid = pid
        self.path = path
        self.release = candidate
        self.settings = settings or TakeoverSettings()
        self.report = StrategyReport("takeover", could_not_guarantee=CANNOT_GUARANTEE)
        self.cand: Slot | None = None
        self.frozen: Frozen | None = None
        self.baseline: dict[str, Any] = {}

    def run(self) -> TakeoverResult:
        report = self.report
        try:
            self._start_candidate()
            resumed_ns = self._move()
        except (SwapctlError, TimeoutError, OSError) as exc:
            report.outcome = "rolled_back" if self.frozen is not None else "failed"
            report.reason = str(exc)
            report.moved = 0
            self._roll_back()
            return TakeoverResult(report, None)
        assert self.frozen is not None and self.cand is not None
        end_relay(self.pid)
        self.frozen.close()  # the candidate holds its own copies
        report.pause_ms = (resumed_ns - self.frozen.stopped_ns) / 1e6
        self._account()
        return TakeoverResult(report, self.cand)

    def _start_candidate(self) -> None:
        s = self.settings
        self.cand = self.service.start_slot(self.release, time.monotonic() + s.ready_timeout)
        self.report.details["probe_ms"] = round(
            probe(self.cand.link, ProbeSettings(s.domain_byte, s.echo, s.probe_timeout)), 3)
        self.baseline = self.cand.link.stats(s.probe_timeout)  # counters include the probe

    def _move(self) -> int:
        """Freeze, duplicate, adopt, resume, confirm; returns the candidate's resumed_ns."""
        assert self.cand is not None
        s = self.settings
        self.frozen = frozen = freeze(self.pid, self.path, s)
        frozen_ns = time.monotonic_ns()
        _make_nonblocking(frozen)
        transfer = Transfer(frozen.listener,
                            [(ConnState(i + 1), fd) for i, fd in enumerate(frozen.conns)],
                            {"source": "takeover", "legacy_pid": self.pid})
        deadline = time.monotonic() + s.adopt_timeout
        self.cand.link.adopt(transfer, max(0.01, deadline - time.monotonic()))
        adopted_ns = time.monotonic_ns()
        resumed_ns = self.cand.link.resume(max(0.01, deadline - time.monotonic()))
        self.report.details["pause_stages_ms"] = {  # where the pause went
            "freeze_and_dup": round((frozen_ns - frozen.stopped_ns) / 1e6, 3),
            "adopt": round((adopted_ns - frozen_ns) / 1e6, 3),
            "resume": round((resumed_ns - adopted_ns) / 1e6, 3)}
        stats = self.cand.link.stats(max(0.01, deadline - time.monotonic()))
        if stats.get("state") != "active" or not self.cand.alive():
            raise TakeoverError(f"candidate did not confirm: state {stats.get('state')}")
        self.report.moved = len(frozen.conns)
        self.report.details["confirmed_connections"] = int(stats["connections_open"])
        return resumed_ns

    def _roll_back(self) -> None:
        if self.cand is not None:
            self.cand.stop(1.0)  # first: it must read nothing more
        if self.frozen is not None:
            _restore_flags(self.frozen)
            self.frozen.close()
            signal_relay(self.pid, signal.SIGCONT)

    def _account(self) -> None:
        """What could not be moved, as far as it can be known (see the module doc)."""
        assert self.frozen is not None and self.cand is not None
        f, report = self.frozen, self.report
        time.sleep(self.settings.settle_s)  # let every publisher's next frame arrive
        stats: dict[str, Any] = {}
        with contextlib.suppress(SwapctlError, TimeoutError, OSError):
            stats = self.cand.link.stats(2.0)
        def grown(key: str) -> int:
            return int(stats.get(key, 0)) - int(self.baseline.get(key, 0))
        skipped = grown("skipped_bytes")
        report.unmovable_bytes = skipped if stats else None
        report.disconnects = grown("disconnects") if stats else None  # upper bound
        report.details.update({
            "legacy_pid": self.pid, "candidate_pid": self.cand.handle.pid,
            "freeze_attempts": f.attempts, "frozen_idle": f.quiescent,
            "publisher_streams_resynchronised": grown("resyncs"),
            "publisher_bytes_skipped": skipped,
            "consumers_backed_up_at_freeze": f.backed_up,
            "kernel_bytes_moved_in": f.inq, "kernel_bytes_moved_out": f.outq,
        })
