"""Finding a running relay's listener and accepted connections, and duplicating them.

How it works: `/proc/PID/fd/N` links read `socket:[INODE]`; the kernel's Unix socket
table (`/proc/PID/net/unix`, the table of the process's network namespace) gives each
inode's flags, state and bound path. The listener is the stream socket with
`__SO_ACCEPTCON` bound at the compiled-in path; every accepted connection is a
connected stream socket that carries the same path (Linux shows an accepted Unix
socket with its listener's address), which tells client connections apart from the
relay's own socketpairs and any other socket it holds. Duplicates are taken with
`pidfd_open` + `pidfd_getfd` (Linux 5.6+, needs ptrace rights over the process: root,
or the same user with ptrace_scope 0): the copy refers to the very same socket, so a
client connected to it notices nothing.

`/proc/PID/task/TID/syscall` says where each thread of a stopped process was: a
number in the list of waiting system calls means it was blocked waiting for events
(nothing half done in its own memory), `-1` means it was running its own code.
The parsing functions here are pure (text in, values out); the I/O ones are thin.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import platform
import re
import struct
import termios
from dataclasses import dataclass
from pathlib import Path

from swapctl.errors import SwapctlError

SO_ACCEPTCON = 0x00010000
SOCK_STREAM_TYPE = 0x0001
SS_CONNECTED = 0x03
SYS_PIDFD_GETFD = {"x86_64": 438, "aarch64": 438}
# system calls a thread is parked in when it has nothing half done (x86_64 numbers)
WAITING_SYSCALLS_X86_64 = frozenset({
    7,  # poll
    23,  # select
    35,  # nanosleep
    202,  # futex (a parked worker thread)
    230,  # clock_nanosleep
    232,  # epoll_wait
    270,  # pselect6
    271,  # ppoll
    281,  # epoll_pwait
    426,  # io_uring_enter
    441,  # epoll_pwait2
})
_FD_LINK = re.compile(r"^socket:\[(\d+)\]$")


class SocketsError(SwapctlError):
    """The relay's sockets could not be found or duplicated."""


@dataclass(frozen=True, slots=True)
class UnixEntry:
    inode: int
    flags: int
    type: int
    state: int
    path: str  # "" when unbound; "@name" for abstract names

    @property
    def listening(self) -> bool:
        return bool(self.flags & SO_ACCEPTCON)


@dataclass(frozen=True, slots=True)
class RelaySockets:
    """Descriptor numbers *in the relay's process* of its listener and clients."""

    listener: int
    connections: tuple[int, ...]
    path: str


# ----- pure parsing ------------------------------------------------------------------

def parse_unix_table(text: str) -> dict[int, UnixEntry]:
    """`/proc/net/unix` -> entries by inode (the header line is skipped)."""
    out: dict[int, UnixEntry] = {}
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 7:
            continue
        path = parts[7] if len(parts) == 8 else ""
        entry = UnixEntry(inode=int(parts[6]), flags=int(parts[3], 16), type=int(parts[4], 16),
                          state=int(parts[5], 16), path=path)
        out[entry.inode] = entry
    return out


def parse_fd_link(link: str) -> int | None:
    """`socket:[123]` -> 123; anything else (files, pipes) -> None."""
    match = _FD_LINK.match(link)
    return int(match.group(1)) if match else None


def classify(fd_inodes: dict[int, int], table: dict[int, UnixEntry],
             path: str | None) -> RelaySockets:
    """Pick the listener (at `path`, or the only stream listener if `path` is None) and
    the connections it accepted, from a process's fd -> inode map and the Unix table."""
    def stream(fd: int) -> UnixEntry | None:
        entry = table.get(fd_inodes[fd])
        return entry if entry is not None and entry.type == SOCK_STREAM_TYPE else None

    listeners = [fd for fd in sorted(fd_inodes)
                 if (e := stream(fd)) is not None and e.listening
                 and (path is None or e.path == path)]
    if not listeners:
        where = f"at {path}" if path else "of any kind"
        raise SocketsError(f"no listening Unix stream socket {where} in the process")
    inodes = {fd_inodes[fd] for fd in listeners}
    if len(inodes) > 1:
        raise SocketsError(f"{len(inodes)} listening sockets match; name the path to take")
    listener = listeners[0]
    bound = table[fd_inodes[listener]].path
    conns = tuple(fd for fd in sorted(fd_inodes)
                  if (e := stream(fd)) is not None and not e.listening
                  and e.state == SS_CONNECTED and e.path == bound and bound)
    return RelaySockets(listener, conns, bound)


def parse_syscall(text: str) -> int | None:
    """`/proc/PID/syscall` -> the syscall number the thread is in; -1 when it was in
    user space; None when it is running right now (no snapshot possible)."""
    word = text.split(None, 1)[0] if text.strip() else "running"
    return None if word == "running" else int(word)


def waiting(syscall: int | None, machine: str | None = None) -> bool:
    """True if a thread parked in `syscall` has nothing half done (x86_64 only: on other
    machines this cannot be told, and the answer is False)."""
    if (machine or platform.machine()) != "x86_64" or syscall is None:
        return False
    return syscall in WAITING_SYSCALLS_X86_64


# ----- reading /proc ------------------------------------------------------------------

def fd_inodes(pid: int) -> dict[int, int]:
    """The process's socket descriptors: fd -> socket inode."""
    out: dict[int, int] = {}
    base = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(base)
    except OSError as exc:
        raise SocketsError(f"cannot list the descriptors of pid {pid}: {exc}") from None
    for name in names:
        with contextlib.suppress(OSError):
            inode = parse_fd_link(os.readlink(base / name))
            if inode is not None:
                out[int(name)] = inode
    return out


def unix_table(pid: int) -> dict[int, UnixEntry]:
    return parse_unix_table(Path(f"/proc/{pid}/net/unix").read_text())


def find(pid: int, path: str | None) -> RelaySockets:
    """The listener bound at `path` (as the process sees it) and its accepted clients."""
    return classify(fd_inodes(pid), unix_table(pid), path)


def thread_syscalls(pid: int) -> dict[int, int | None]:
    """Each thread's current system call (see `parse_syscall`)."""
    out: dict[int, int | None] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[int(tid)] = parse_syscall(Path(f"/proc/{pid}/task/{tid}/syscall").read_text())
    return out


def queued(fd: int) -> tuple[int, int]:
    """(unread bytes waiting to be read from this socket, bytes written into it that its
    peer has not read yet), from SIOCINQ / SIOCOUTQ. For a Unix socket the second is the
    kernel's memory accounting (payload plus overhead), an upper bound on the bytes."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    inq = struct.unpack("i", buf)[0]
    fcntl.ioctl(fd, termios.TIOCOUTQ, buf)
    return inq, struct.unpack("i", buf)[0]


# ----- duplicating --------------------------------------------------------------------

class PidFd:
    """A pidfd on a process (refers to that process even if its pid is reused)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except OSError as exc:
            raise SocketsError(f"pidfd_open({pid}): {exc}") from None
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._nr = SYS_PIDFD_GETFD.get(platform.machine())
        if self._nr is None:
            raise SocketsError(f"pidfd_getfd: unknown syscall number on {platform.machine()}")

    def getfd(self, target: int) -> int:
        """A duplicate (close-on-exec) of descriptor `target` of the process."""
        fd = int(self._libc.syscall(self._nr, self.fd, target, 0))
        if fd < 0:
            err = ctypes.get_errno()
            raise SocketsError(f"pidfd_getfd(pid {self.pid}, fd {target}): {os.strerror(err)}"
                               " (needs root or ptrace rights over the relay)")
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PidFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duplicate(pid: int, found: RelaySockets) -> tuple[int, list[int]]:
    """Our own copies of the listener and every connection; all or nothing."""
    taken: list[int] = []
    try:
        with PidFd(pid) as pidfd:
            for fd in (found.listener, *found.connections):
                taken.append(pidfd.getfd(fd))
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise
    return taken[0], taken[1:]
