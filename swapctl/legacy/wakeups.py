"""Whether a stopped relay has work it was woken for but had not started yet.

How it works. After SIGSTOP, /proc/PID/task/TID/syscall shows the system call each
thread stopped in (its number and arguments), but not whether the call had already
returned: a worker thread that another thread woke with work (a frame put in a
broadcast channel, not yet written to any consumer) shows the same futex or epoll_wait
as one parked with nothing to do. Frozen there, the frame dies with the relay and every
consumer misses it (seen with the tokio example relay under load, about one takeover in
ten). Two traces tell them apart from outside, cheaply, while the relay is stopped:
- futex: a waiter sleeps only while the word at `uaddr` equals `val`; a waker changes
  the word before FUTEX_WAKE (std's thread parker and condvar, tokio's, glibc's
  mutexes). Word != val: woken (or a lock it waits for was released). The word is read
  from /proc/PID/mem, which needs the ptrace rights pidfd_getfd needs anyway.
- eventfd: a waker writes to an eventfd polled with epoll (mio's Waker, tokio's driver
  unpark). mio never reads it back (edge-triggered), so the count only grows: a count
  that grew between a look taken while every thread slept and the stop is a wake-up
  the stopped thread had not acted on.
- a poll that does not wait: a tokio worker with tasks still queued polls the I/O
  driver between them with epoll_wait(timeout 0); stopped there it shows the same
  system call as a parked worker (timeout -1), with frames in its queue. A zero
  timeout (an int argument, or a zero timespec/timeval read from /proc/PID/mem) means
  the thread was busy.
- context switches: a thread asleep at the look that woke, did something (read a
  frame, handed it on) and slept again before the stop shows none of the above
  afterwards. /proc/PID/task/TID/status counts its switches: stopping a sleeping
  thread costs exactly one, so a thread with more since the look (or one born or
  ended since) ran in between, and what it did may be half done. Busy: try again.
Bytes the relay has not read yet stay in the kernel and move with the sockets: an
epoll_wait that returned readable sockets is not work lost. The parsers are pure.
"""

from __future__ import annotations

import contextlib
import os
import platform
import struct
from collections.abc import Callable
from pathlib import Path

SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
# restart_syscall: a timed wait that a signal interrupted (an earlier freeze try's
# SIGSTOP/SIGCONT) goes on as this call; the argument registers are still the first
# call's, so a futex wait shows its word and value there as before.
SYS_RESTART = {"x86_64": 219, "aarch64": 128}
FUTEX_WAIT, FUTEX_WAIT_BITSET = 0, 9
FUTEX_FLAGS = 128 | 256  # FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME
# x86_64 polls: number -> (argument index of the timeout, whether it is a pointer to a
# timespec/timeval rather than milliseconds as an int)
POLL_TIMEOUTS_X86_64 = {7: (2, False), 23: (4, True), 232: (3, False), 270: (4, True),
                        271: (2, True), 281: (3, False), 441: (3, True)}


def parse_syscall_args(text: str) -> tuple[int | None, tuple[int, ...]]:
    """`/proc/PID/task/TID/syscall` -> (number, its six arguments); (-1, ()) in user
    space; (None, ()) while running."""
    words = text.split()
    if not words or words[0] == "running":
        return None, ()
    number = int(words[0])
    if number < 0 or len(words) < 7:
        return number, ()
    return number, tuple(int(w, 16) for w in words[1:7])


def futex_wait(number: int | None, args: tuple[int, ...],
               machine: str | None = None) -> tuple[int, int] | None:
    """(uaddr, val) if this is a futex wait, else None. A restart_syscall whose
    arguments read as a futex wait is taken for one: if it was another timed wait
    (nanosleep, poll) the word read is not its value and the try is refused, which is
    the safe side."""
    arch = machine or platform.machine()
    if number is None or number not in (SYS_FUTEX.get(arch), SYS_RESTART.get(arch)) \
            or len(args) < 3:
        return None
    if args[1] & ~FUTEX_FLAGS not in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        return None
    return args[0], args[2] & 0xFFFFFFFF


def poll_timeout(number: int | None, args: tuple[int, ...],
                 machine: str | None = None) -> tuple[int, bool] | None:
    """(timeout argument, is a pointer) if this is a poll/select/epoll wait on x86_64."""
    if (machine or platform.machine()) != "x86_64" or number not in POLL_TIMEOUTS_X86_64:
        return None
    index, pointer = POLL_TIMEOUTS_X86_64[number]
    return (args[index], pointer) if len(args) > index else None


def zero_wait(timeout: tuple[int, bool], read: Callable[[int, int], bytes]) -> bool:
    """Whether a poll's timeout means "do not wait": 0 ms, or a pointer to a zero
    timespec/timeval (`read(address, 16)` reads the process's memory). -1 and NULL
    wait for ever."""
    value, pointer = timeout
    if not pointer:
        return value & 0xFFFFFFFF == 0
    if value == 0:
        return False
    seconds, fraction = struct.unpack("=qq", read(value, 16))  # (timeval: the same size)
    return bool(seconds == 0 and fraction == 0)


def parse_eventfd_count(fdinfo: str) -> int | None:
    """The `eventfd-count:` of an fdinfo text (hexadecimal), None if it has none."""
    for line in fdinfo.splitlines():
        if line.startswith("eventfd-count:"):
            return int(line.split(":", 1)[1].strip() or "0", 16)
    return None


def thread_syscall_texts(pid: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[int(tid)] = Path(f"/proc/{pid}/task/{tid}/syscall").read_text()
    return out


def eventfds(links: dict[int, str]) -> list[int]:
    """The eventfds among a process's descriptors (fd -> its /proc link), as read by the
    scan before the freeze: reading every link again while frozen would cost a relay
    with thousands of clients milliseconds of pause."""
    return sorted(fd for fd, link in links.items() if link == "anon_inode:[eventfd]")


def eventfd_counts(pid: int, fds: list[int]) -> dict[int, int]:
    """The counts of the process's eventfds `fds` (those still readable)."""
    out: dict[int, int] = {}
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            count = parse_eventfd_count(Path(f"/proc/{pid}/fdinfo/{fd}").read_text())
            if count is not None:
                out[fd] = count
    return out


def parse_switches(status: str) -> int | None:
    """A /proc status text's context switches, voluntary and not, None if it has none."""
    counts = [int(line.split(":", 1)[1]) for line in status.splitlines()
              if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))]
    return sum(counts) if len(counts) == 2 else None


def switch_counts(pid: int) -> dict[int, int]:
    """Each thread's context switches so far (threads whose status cannot be read are
    left out, and so count as born or ended when compared)."""
    out: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError):
            count = parse_switches(Path(f"/proc/{pid}/task/{tid}/status").read_text())
            if count is not None:
                out[int(tid)] = count
    return out


def ran_since(before: dict[int, int], stopped: dict[int, int]) -> list[str]:
    """Threads that ran between the look that read `before` and the stop that `stopped`
    was read after: the stop itself is one switch per thread (see the module doc)."""
    found = [f"thread {tid}: {n - before[tid] - 1} switch(es) between the look and the stop"
             for tid, n in sorted(stopped.items()) if tid in before and n - before[tid] != 1]
    found += [f"thread {tid}: born since the look" for tid in sorted(set(stopped) - set(before))]
    found += [f"thread {tid}: ended since the look" for tid in sorted(set(before) - set(stopped))]
    return found


def pending(pid: int, texts: dict[int, str], counts_before: dict[int, int],
            switches_before: dict[int, int] | None = None) -> list[str]:
    """What the stopped process `pid` was woken for and has not done: futex waiters
    whose word changed, eventfds whose count grew since `counts_before`, threads that
    ran since `switches_before` (see the module doc). `texts`: each thread's syscall
    file, read while stopped. Empty: nothing pending (a futex word or fdinfo that
    cannot be read is not counted)."""
    found = [] if switches_before is None else ran_since(switches_before, switch_counts(pid))
    try:
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        mem = -1
    def read(address: int, size: int) -> bytes:
        return os.pread(mem, size, address)

    try:
        for tid, text in sorted(texts.items()):
            number, args = parse_syscall_args(text)
            wait, timeout = futex_wait(number, args), poll_timeout(number, args)
            with contextlib.suppress(OSError, struct.error):
                if timeout is not None and (not timeout[1] or mem >= 0) \
                        and zero_wait(timeout, read):
                    found.append(f"thread {tid}: polled without waiting (work queued)")
                if wait is not None and mem >= 0:
                    word = struct.unpack("=I", read(wait[0], 4))[0]
                    if word != wait[1]:
                        found.append(f"thread {tid}: futex word {word} != {wait[1]} (woken)")
    finally:
        if mem >= 0:
            os.close(mem)
    for fd, count in eventfd_counts(pid, sorted(counts_before)).items():
        if count != counts_before[fd]:
            found.append(f"eventfd {fd}: woken {count - counts_before[fd]} time(s)")
    return found
