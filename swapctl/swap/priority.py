"""The pause's CPUs: while the pause lasts, swapctl and the adopting relay run real-time.

Why: on a machine whose cores are busy with the service's clients, each step of the pause
(swapctl forwarding what the old relay describes, the candidate adopting it) waits its
turn for a CPU behind those clients, for milliseconds; measured (docs/bench.md), those
waits were the Python pause's tail. The caller decides whose threads (handoff_actions:
the adopter's, and of the releasing relay only its control thread, by name: raising the
whole releasing relay starved its clients, see there).

How: `boost()` gives every thread of the given processes (/proc/PID/task) that runs a
normal policy (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE) SCHED_FIFO at `priority`, and the
calling thread (the swap's) `priority + 1`: it only forwards, and busy relay workers at
the same level must not keep it waiting. `Boost.restore()` puts each thread back as it
was. A thread that is already real-time keeps its own setting (an operator who runs the
relays real-time is never lowered). SCHED_RESET_ON_FORK is set with it, so a thread a
relay starts meanwhile is born normal. A watchdog restores everything after `limit_s`,
whatever the caller is doing, so a relay that spins cannot hold the CPUs past it. Without
the privilege (CAP_SYS_NICE, or an RLIMIT_RTPRIO that allows the priority) nothing
changes, and the result says why.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

_NORMAL = frozenset({os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE})
MAX_PRIORITY = 98  # (the caller's thread runs at priority + 1, at most 99)
LIMIT_S = 0.5  # the longest a boost lasts, whatever happens
# a relay's handoff control thread, by name: raised on the releasing relay too (it only
# freezes; its clients' threads are left alone); the Rust crate names its thread so
CONTROL_THREAD = "swapctl-handoff"


@dataclass(slots=True)
class Boost:
    """What a `boost()` changed; `restore()` (idempotent) undoes it."""

    priority: int
    saved: list[tuple[int, int, Any]] = field(default_factory=list)  # tid, policy, param
    denied: str | None = None
    started: float = field(default_factory=time.monotonic)
    held_ms: float | None = None
    cut_by_watchdog: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _timer: threading.Timer | None = None

    def restore(self, by_watchdog: bool = False) -> None:
        with self._lock:
            if self.held_ms is not None:
                return
            self.held_ms = round((time.monotonic() - self.started) * 1000, 3)
            self.cut_by_watchdog = by_watchdog
            for tid, policy, param in reversed(self.saved):
                with contextlib.suppress(OSError):  # (a thread that ended meanwhile)
                    os.sched_setscheduler(tid, policy, param)
        if self._timer is not None and not by_watchdog:
            self._timer.cancel()

    def summary(self) -> dict[str, Any]:
        """For the swap's report."""
        return {"priority": self.priority, "threads": len(self.saved), "denied": self.denied,
                "held_ms": self.held_ms, "cut_by_watchdog": self.cut_by_watchdog}


def threads_of(pid: int) -> list[int]:
    """The thread ids of `pid` (none if it is gone)."""
    try:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return []


def thread_name(pid: int, tid: int) -> str:
    """A thread's name (its comm; "" if it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def boost(pids: list[int], priority: int, limit_s: float = LIMIT_S,
          named: tuple[list[int], str] = ([], "")) -> Boost:
    """Raise the threads of `pids` to SCHED_FIFO `priority` and this thread above them,
    for at most `limit_s` (see the module's text); of the processes in `named[0]`, only
    the threads named `named[1]`. `priority` 0 changes nothing."""
    result = Boost(priority)
    if priority <= 0:
        return result
    if priority > MAX_PRIORITY:
        raise ValueError(f"priority {priority}: at most {MAX_PRIORITY}")
    targets = [(threading.get_native_id(), priority + 1)]
    targets += [(tid, priority) for pid in pids for tid in threads_of(pid)]
    others, name = named
    targets += [(tid, priority) for pid in others for tid in threads_of(pid)
                if name and thread_name(pid, tid) == name]
    for tid, level in targets:
        try:
            policy = os.sched_getscheduler(tid)
            if (policy & ~os.SCHED_RESET_ON_FORK) not in _NORMAL:
                continue
            param = os.sched_getparam(tid)
            os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(level))
        except PermissionError as exc:
            result.denied = (f"not permitted ({exc.strerror}): swapctl needs CAP_SYS_NICE, "
                             "or an RLIMIT_RTPRIO of at least the priority")
            break
        except (ProcessLookupError, OSError):
            continue  # the thread ended meanwhile
        result.saved.append((tid, policy, param))
    if result.saved:
        timer = threading.Timer(limit_s, result.restore, kwargs={"by_watchdog": True})
        timer.daemon = True
        result._timer = timer
        timer.start()
    return result
