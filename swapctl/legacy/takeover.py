"""Strategy `takeover`, its mechanics: a legacy relay frozen, its sockets copied out.

The strategy itself (the candidate started and probed, freeze, adopt, retire, verify,
roll back) is `TakeoverActions` in legacy/actions.py, run by the one swap engine
(swap/executor.py); this module holds what those phases do to the legacy relay:
1. `freeze`: while the legacy relay still runs, find its listener and accepted
   connections (/proc/PID/fd joined with the Unix socket table) and take duplicates
   with pidfd_getfd (`sockets.Copies`): a duplicate is the same open file, so taking
   it early changes nothing for the relay or its clients, and the slow part is out of
   the pause. Then stop it with SIGSTOP and wait until every thread is stopped. It is
   idle only if every thread was asleep (state S) at a look just before the SIGSTOP,
   every thread is parked in a waiting system call, and none of them was woken with
   work it had not started (legacy/wakeups.py: a futex word changed, an eventfd written
   since the look) or ran between the look and the stop (its context switches). The
   system call alone cannot tell a tokio worker woken to write a frame that another
   thread put in the broadcast channel from a parked one: frozen
   there, the frame dies with the relay and every consumer misses it (about one
   takeover in ten of the tokio example relay under load did). If it was not idle (a
   thread may have been half way through a read or a write), let it run again briefly
   and retry, a bounded number of times (a busy try costs only the stop and the
   threads' /proc files). Once it is idle,
   re-read only its descriptor links: copies of sockets closed since are dropped,
   sockets accepted since are duplicated and checked one by one. If a client's kernel
   buffer is backed up (the relay may hold bytes for it), retry too, and likewise if
   a client's unread bytes start mid-frame: the relay holds the head of that frame
   (a publisher's write was cut by a full buffer, the relay read the head and went
   back to sleep, the tail came after). Let run, it reads the tail and forwards the
   whole frame; frozen, the head would die with it. Each stage is timed
   (`Frozen.stages_ms`).
2. The candidate adopts the copies (non-blocking: `_make_nonblocking`, remembered so
   that a rollback can put the shared file flags back with `_restore_flags`) with
   empty `pending_in`/`unsent_out`: nothing of the legacy relay's memory can be read
   from outside.
3. `end_relay`: SIGKILL the legacy relay while it is still stopped: it never reads or
   writes again. Its copies close with it; the clients stay connected through the
   candidate's. Before that point a rollback kills the candidate first and the legacy
   relay gets SIGCONT (`signal_relay`): it carries on with every socket and byte.

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
import time
from dataclasses import dataclass, field
from pathlib import Path

from swapctl.errors import SwapctlError
from swapctl.legacy import sockets, wakeups
from swapctl.protocol import MAGIC_BYTES

CANNOT_GUARANTEE = (
    "bytes the legacy relay had read but not yet forwarded, and bytes it owed a consumer "
    "(a frame half written), die with it: they cannot be read from outside. The candidate "
    "resynchronises each publisher stream at a frame boundary (skipped bytes are counted); "
    "a consumer cut mid-frame sees one truncated frame. Only the canary/load checker counts "
    "the messages this cost.")
BACKED_UP = 0.5  # a client whose kernel send queue is over this share of SO_SNDBUF
SLEEP_WAIT_S = 0.005  # before each SIGSTOP, wait this long at most for the relay to sleep
SLEEP_POLL_S = 0.00005


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
    copies: sockets.Copies
    listener: int = -1
    conns: list[int] = field(default_factory=list)
    flags: dict[int, int] = field(default_factory=dict)  # fd -> original file status flags
    inq: int = 0
    outq: int = 0
    backed_up: int = 0
    mid_frame: int = 0  # clients whose unread bytes start mid-frame (head in the relay)
    syscalls: dict[int, int | None] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)  # where the freeze went
    accepted_since_scan: int = 0
    closed_since_scan: int = 0
    busy: dict[str, int] = field(default_factory=dict)  # why earlier tries were refused
    threads_idle: bool = False  # every thread parked, none woken with work (queues aside)

    def __post_init__(self) -> None:
        self.listener = self.copies.listener_fd
        self.conns = self.copies.connection_fds()

    @property
    def fds(self) -> list[int]:
        return [self.listener, *self.conns]

    def close(self) -> None:
        self.copies.close()
        self.conns = []


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
        states = [s for s in (sockets.proc_state(pid, int(tid))
                              for tid in os.listdir(f"/proc/{pid}/task")) if s != "gone"]
        if states and all(s in ("T", "t") for s in states):
            return
        if time.monotonic() > deadline:
            raise TakeoverError(f"pid {pid} did not stop within {timeout} s (states {states})")
        time.sleep(0.0001)


def wait_sleeping(pid: int, timeout: float) -> bool:
    """Until every thread of `pid` is asleep (state S: most likely parked in epoll_wait),
    polling its stat files without disturbing it; False if that did not happen in time."""
    deadline = time.monotonic() + timeout
    stats = [f"/proc/{pid}/task/{tid}/stat" for tid in os.listdir(f"/proc/{pid}/task")]
    while True:
        try:
            if all(_state(path) == "S" for path in stats):
                return True
        except OSError:
            return False  # a thread ended: let the caller look again
        if time.monotonic() > deadline:
            return False
        time.sleep(SLEEP_POLL_S)


def all_asleep(pid: int) -> bool:
    """One look: every thread of `pid` is asleep (state S) now."""
    try:
        return all(_state(f"/proc/{pid}/task/{tid}/stat") == "S"
                   for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False


def _state(stat_path: str) -> str:
    with open(stat_path, "rb") as f:
        return f.read().rsplit(b")", 1)[1].split(None, 1)[0].decode()


def freeze(pid: int, path: str, settings: TakeoverSettings) -> Frozen:
    """Duplicate the relay's sockets while it runs, then stop it, preferably while idle,
    and bring the copies in step (see the module doc)."""
    started = time.perf_counter_ns()
    copies = sockets.Copies(pid, path)  # the slow part (scan, table, dups): not frozen
    scan_ms = _ms(time.perf_counter_ns() - started)
    busy: dict[str, int] = {}
    try:
        for attempt in range(1, settings.freeze_attempts + 1):
            last = attempt == settings.freeze_attempts
            # the second half of the tries takes a backed-up client as it is: a
            # publisher that never reads its echo (the real ones) is backed up for good
            backed_up_too = attempt <= settings.freeze_attempts // 2
            frozen = _stop_once(pid, copies, settings.stop_timeout, attempt, last,
                                backed_up_too=backed_up_too)
            if isinstance(frozen, Frozen):
                frozen.stages_ms = {"scan_and_dup_before_freeze": scan_ms, **frozen.stages_ms}
                frozen.busy = busy
                return frozen
            busy[frozen] = busy.get(frozen, 0) + 1
            signal_relay(pid, signal.SIGCONT)
            time.sleep(settings.freeze_retry_s)
    except BaseException:
        copies.close()
        raise
    raise AssertionError("unreachable")


def _outside(number: int | None, verdict: str | None) -> str:
    """A thread found outside a waiting call, for the busy reason: its system call, and
    for a receive, the socket and why it is not a link to another process."""
    return f"{number} on {verdict}" if verdict else str(number)


def _stop_once(pid: int, copies: sockets.Copies, stop_timeout: float, attempt: int,
               last: bool, *, backed_up_too: bool = True) -> Frozen | str:
    """One SIGSTOP: the relay frozen with our copies in step, or why not (still
    stopped: the caller resumes it) if it was busy and this was not the `last` try. A
    busy try is refused as early as possible: threads first, then the copies' queues: a
    client whose unread bytes start mid-frame, or (`backed_up_too`) one backed up."""
    wait_sleeping(pid, SLEEP_WAIT_S)  # stop it while it sleeps: then it is likely idle
    wakers = wakeups.eventfds(copies.seen)
    counts = wakeups.eventfd_counts(pid, wakers)
    switches = wakeups.switch_counts(pid)
    asleep = all_asleep(pid)  # looked at after the counts: a wake-up since shows in them
    stopped_ns = time.monotonic_ns()
    signal_relay(pid, signal.SIGSTOP)
    try:
        marks = [time.perf_counter_ns()]
        wait_stopped(pid, stop_timeout)
        marks.append(time.perf_counter_ns())
        texts = wakeups.thread_syscall_texts(pid)
        syscalls = {tid: sockets.parse_syscall(text) for tid, text in texts.items()}
        verdicts = {tid: copies.receive_verdict(texts[tid])
                    for tid, n in syscalls.items() if not sockets.waiting(n)}
        outside = sorted({_outside(syscalls[tid], v) for tid, v in verdicts.items() if v != ""})
        woken = bool(asleep and not outside and wakeups.pending(pid, texts, counts, switches))
        idle = asleep and not outside and not woken  # parked, not woken with work to do
        if not idle and not last:
            if not asleep:
                return "awake before the stop"
            if outside:
                return f"a thread stopped outside a waiting call ({', '.join(outside)})"
            return "woken with work not started"
        queues = _queues(copies.conns)
        if any((backed_up_too and q[2]) or q[3] for q in queues.values()) and not last:
            return "a client backed up or mid-frame"
        marks.append(time.perf_counter_ns())
        change = copies.refresh()
        marks.append(time.perf_counter_ns())
        queues = {fd: queues.get(fd) or _queues({fd: held})[fd]
                  for fd, held in copies.conns.items()}  # the ones accepted since
        marks.append(time.perf_counter_ns())
    except BaseException:
        signal_relay(pid, signal.SIGCONT)
        raise
    frozen = Frozen(stopped_ns, attempt, False, copies, syscalls=syscalls,
                    inq=sum(q[0] for q in queues.values()),
                    outq=sum(q[1] for q in queues.values()),
                    backed_up=sum(1 for q in queues.values() if q[2]),
                    mid_frame=sum(1 for q in queues.values() if q[3]),
                    accepted_since_scan=change.added, closed_since_scan=change.removed,
                    threads_idle=idle)
    frozen.quiescent = idle and frozen.backed_up == 0 and frozen.mid_frame == 0
    if (frozen.mid_frame or (backed_up_too and frozen.backed_up)) and not last:
        return "a client backed up or mid-frame (accepted since the scan)"
    names = ("stop", "idle_check", "refresh", "measure_new")
    frozen.stages_ms = {n: _ms(b - a) for n, a, b in zip(names, marks, marks[1:], strict=False)}
    return frozen


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def _queues(conns: dict[int, sockets.Held]) -> dict[int, tuple[int, int, bool, bool]]:
    """Per connection: kernel bytes to read, bytes its peer has not read, whether that
    is over BACKED_UP of the send buffer (the relay may hold more for it), and whether
    the bytes to read start mid-frame (the relay holds the frame's head)."""
    out: dict[int, tuple[int, int, bool, bool]] = {}
    for fd, held in conns.items():
        inq, outq = sockets.queued(held.fd)
        torn = inq > 0 and starts_mid_frame(sockets.peek(held.fd, len(MAGIC_BYTES)))
        out[fd] = (inq, outq, outq > BACKED_UP * held.sndbuf, torn)
    return out


def starts_mid_frame(head: bytes) -> bool:
    """Whether unread bytes starting with `head` cannot be the start of a frame: a
    relay that forwards whole frames and has read everything before them holds the
    rest of the frame they belong to. (A frame's payload that happens to begin with
    the magic passes for a start: the candidate's resync still counts it.)"""
    return bool(head) and not MAGIC_BYTES.startswith(head[: len(MAGIC_BYTES)])


def _make_nonblocking(frozen: Frozen) -> None:
    """The candidate needs non-blocking sockets; the flag lives on the open file, which
    the legacy relay shares, so remember each one to restore it on a rollback."""
    for fd in frozen.fds:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_NONBLOCK:
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
    return sockets.proc_state(pid) in ("Z", "gone")
