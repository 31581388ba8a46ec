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

`Copies` keeps duplicates in step with a running relay, so that little is left to do
while it is frozen: `take` scans /proc and the Unix table and duplicates everything it
finds while the relay runs (a duplicate taken early is the same open file: whatever the
relay does with the socket later, ours sees it); `refresh`, with the relay stopped,
re-reads only the descriptor links, closes our copies of sockets the relay has closed
since, and duplicates and classifies the few it accepted since (by asking the socket
itself: type, SO_ACCEPTCONN, its name, a peer), without the Unix table.

`/proc/PID/task/TID/syscall` says where each thread of a stopped process was: a
number in the list of waiting system calls means it was blocked waiting for events
(nothing half done in its own memory), `-1` means it was running its own code.
The parsing functions here are pure (text in, values out); the I/O ones are thin.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import re
import socket
import struct
import termios
from dataclasses import dataclass
from pathlib import Path

from swapctl import sockdiag
from swapctl.errors import SwapctlError
from swapctl.legacy import wakeups
from swapctl.unixsock import peer_credentials

SO_ACCEPTCON = 0x00010000
SOCK_STREAM_TYPE = 0x0001
SS_CONNECTED = 0x03
SYS_PIDFD_GETFD = {"x86_64": 438, "aarch64": 438}
SYS_KCMP = {"x86_64": 312, "aarch64": 272}
KCMP_FILE = 0
# system calls a thread is parked in when it has nothing half done (x86_64 numbers)
WAITING_SYSCALLS_X86_64 = frozenset({
    7,  # poll
    23,  # select
    35,  # nanosleep
    202,  # futex (a parked worker thread)
    219,  # restart_syscall: a timed wait (futex, nanosleep, poll) resumed after a stop
    230,  # clock_nanosleep
    232,  # epoll_wait
    270,  # pselect6
    271,  # ppoll
    281,  # epoll_pwait
    426,  # io_uring_enter
    441,  # epoll_pwait2
})
# x86_64 receives: a thread asleep in one on a socket whose peer is outside the relay
# (its control link) is parked (see `Copies.parked_in_receive`)
RECEIVE_SYSCALLS_X86_64 = frozenset({
    0, 19, 45, 47, 299})  # read, readv, recvfrom, recvmsg, recvmmsg
_FD_LINK = re.compile(r"^socket:\[(\d+)\]$")


class SocketsError(SwapctlError):
    """The relay's sockets could not be found or duplicated."""


class FdGone(SocketsError):
    """The descriptor is not open in the process (any more)."""


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

def proc_state(pid: int, tid: int | None = None) -> str:
    """The state letter of a process (or one of its threads) from /proc: R, S, T, Z...;
    "gone" when it no longer exists."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return "gone"
    return text.rsplit(")", 1)[1].split()[0]  # (the name, in parentheses, may hold spaces)


def fd_links(pid: int) -> dict[int, str]:
    """The process's descriptors: fd -> what its /proc link reads (`socket:[123]`...)."""
    base = f"/proc/{pid}/fd/"
    try:
        names = os.listdir(base)
    except OSError as exc:
        raise SocketsError(f"cannot list the descriptors of pid {pid}: {exc}") from None
    out: dict[int, str] = {}
    for name in names:
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(base + name)
    return out


def fd_inodes(pid: int) -> dict[int, int]:
    """The process's socket descriptors: fd -> socket inode."""
    return {fd: inode for fd, link in fd_links(pid).items()
            if (inode := parse_fd_link(link)) is not None}


def _readlink(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


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


def peek(fd: int, size: int) -> bytes:
    """Up to `size` bytes at the head of the socket's receive queue, left in place
    (MSG_PEEK, never blocking); b"" if none. The descriptor stays ours."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return b""
    finally:
        sock.detach()


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
        self._no_kcmp = False
        self._nr = SYS_PIDFD_GETFD.get(platform.machine())
        if self._nr is None:
            raise SocketsError(f"pidfd_getfd: unknown syscall number on {platform.machine()}")

    def getfd(self, target: int) -> int:
        """A duplicate (close-on-exec) of descriptor `target` of the process."""
        fd = int(self._libc.syscall(self._nr, self.fd, target, 0))
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.EBADF:
                raise FdGone(f"pid {self.pid} has no fd {target}")
            raise SocketsError(f"pidfd_getfd(pid {self.pid}, fd {target}): {os.strerror(err)}"
                               " (needs root or ptrace rights over the relay)")
        return fd

    def same_file(self, target: int, ours: int) -> bool | None:
        """Whether the process's `target` and our `ours` are one open file (kcmp(2): a
        system call, no /proc path walk); None if the kernel cannot tell (no kcmp)."""
        nr = SYS_KCMP.get(platform.machine())
        if nr is None or self._no_kcmp:
            return None
        answer = int(self._libc.syscall(nr, self.pid, os.getpid(), KCMP_FILE, target, ours))
        if answer < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            self._no_kcmp = True
            return None
        return answer == 0  # -1 with EBADF: the process has no `target` any more

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


# ----- keeping duplicates in step with a running relay ------------------------------

@dataclass(frozen=True, slots=True)
class FdDiff:
    """What changed in the relay's descriptor table since our copies were taken."""

    gone: tuple[int, ...]  # relay fds we hold a copy of that now name another file or none
    new: tuple[int, ...]  # relay fds to look at: not held, not seen with this link before


def diff_fds(still_held: dict[int, bool], seen: dict[int, str],
             current: dict[int, str | None]) -> FdDiff:
    """`still_held`: for each relay fd we hold a copy of, whether it is still that file;
    `seen`: link text of the other fds as last looked at; `current`: the relay's fds now,
    with their link text (None where not read: the fds in `still_held`)."""
    gone = tuple(fd for fd in sorted(still_held) if not still_held[fd])
    new = tuple(fd for fd in sorted(current)
                if not still_held.get(fd) and (fd not in seen or seen[fd] != current[fd]))
    return FdDiff(gone, new)


def accepted_from(fd: int, bound: str) -> bool:
    """True if our descriptor `fd` is a connected Unix stream socket carrying `bound`
    (what the Unix table tells, asked of the socket itself: see `classify`)."""
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) or not bound:
            return False
        if sock.getsockname() != bound:
            return False
        sock.getpeername()  # OSError (ENOTCONN) unless connected
        return True
    except OSError:
        return False
    finally:
        sock.detach()


def _peer_pid(fd: int) -> int | None:
    """The pid SO_PEERCRED gives for the peer of our Unix socket `fd`; None if none."""
    sock = socket.socket(fileno=fd)
    try:
        return peer_credentials(sock)[0] or None
    except OSError:
        return None
    finally:
        sock.detach()


def sndbuf(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    finally:
        sock.detach()


@dataclass(slots=True)
class Held:
    """Our copy of one of the relay's sockets."""

    fd: int  # ours
    inode: int  # of the socket our copy refers to (fstat), checked against the relay's
    sndbuf: int = 0


@dataclass(frozen=True, slots=True)
class Refreshed:
    added: int
    removed: int


class Copies:
    """Duplicates of a relay's listener and accepted connections (module doc): `take`
    while it runs, `refresh` while it is stopped, then `listener_fd`/`connection_fds`."""

    def __init__(self, pid: int, path: str | None) -> None:
        self.pid = pid
        self.pidfd = PidFd(pid)
        self.listener_target = -1
        self.listener: Held | None = None
        self.conns: dict[int, Held] = {}  # by the relay's fd number
        self.seen: dict[int, str] = {}  # relay fd -> its link, for fds not ours to move
        # socket inodes, looked at when a thread blocks reading them (not fds: a
        # reconnecting control link reuses its fd number); see `parked_in_receive`
        self.outside: set[int] = set()  # sockets to another process
        self.inside: dict[int, str] = {}  # the others, each with why it is not outside
        self.own: set[int] = set()  # the socket inodes the relay held at the scan
        self.bound = ""
        try:
            self._take(path)
        except BaseException:
            self.close()
            raise

    def _take(self, path: str | None) -> None:
        links = fd_links(self.pid)
        inodes = {fd: i for fd, link in links.items() if (i := parse_fd_link(link)) is not None}
        found = classify(inodes, unix_table(self.pid), path)
        self.bound = found.path
        self.listener_target = found.listener
        self.listener = self._copy(found.listener, inodes[found.listener])
        if self.listener is None:
            raise SocketsError(f"pid {self.pid} closed its listener (fd {found.listener})")
        wanted = set(found.connections)
        for fd, link in links.items():
            held = self._copy(fd, inodes[fd]) if fd in wanted else None
            if held is not None:
                held.sndbuf = sndbuf(held.fd)
                self.conns[fd] = held
            elif fd != found.listener:
                self.seen[fd] = link  # refresh looks at it again only if this changes
        self.own = set(inodes.values())

    def _copy(self, target: int, inode: int | None) -> Held | None:
        """A copy of the relay's `target`, if it still names socket `inode`."""
        try:
            ours = self.pidfd.getfd(target)
        except FdGone:
            return None  # closed since the scan
        actual = os.fstat(ours).st_ino
        if inode is not None and actual != inode:
            os.close(ours)  # reused for another socket: `refresh` will look at it
            return None
        return Held(ours, actual)

    def _still_held(self, target: int, held: Held, links: dict[int, str | None]) -> bool:
        same = self.pidfd.same_file(target, held.fd)
        if same is None:  # no kcmp: compare the link's inode
            link = links.get(target) or _readlink(self.pid, target)
            links[target] = link
            return link is not None and parse_fd_link(link) == held.inode
        return same

    def refresh(self) -> Refreshed:
        """Bring the copies in step with the (stopped) relay's descriptors: a directory
        listing, kcmp for each copy, links read only for the other fds."""
        try:
            names = os.listdir(f"/proc/{self.pid}/fd")
        except OSError as exc:
            raise SocketsError(f"cannot list the descriptors of pid {self.pid}: {exc}") from None
        links: dict[int, str | None] = dict.fromkeys(map(int, names))
        assert self.listener is not None
        if not (self.listener_target in links
                and self._still_held(self.listener_target, self.listener, links)):
            raise SocketsError(f"pid {self.pid} no longer holds its listener "
                               f"(fd {self.listener_target})")
        still = {fd: fd in links and self._still_held(fd, h, links)
                 for fd, h in self.conns.items()}
        still[self.listener_target] = True
        for fd in links:
            if fd not in still or not still[fd]:
                links[fd] = _readlink(self.pid, fd)
        change = diff_fds(still, self.seen, links)
        for fd in change.gone:
            with contextlib.suppress(OSError):
                os.close(self.conns.pop(fd).fd)
        added = sum(self._look_at(fd, links[fd]) for fd in change.new)
        return Refreshed(added, len(change.gone))

    def _look_at(self, fd: int, link: str | None) -> bool:
        """A descriptor the relay opened since: ours to move if it is a connection its
        listener accepted (asked of the socket itself). True if taken."""
        inode = None if link is None else parse_fd_link(link)
        copy = None if inode is None else self._copy(fd, inode)
        if copy is not None and accepted_from(copy.fd, self.bound):
            copy.sndbuf = sndbuf(copy.fd)
            self.conns[fd] = copy
            return True
        if copy is not None:
            os.close(copy.fd)
        if link is not None:
            self.seen[fd] = link
        return False

    def parked_in_receive(self, syscall_text: str) -> bool:
        """Whether a thread stopped in this system call (its /proc syscall text) is
        blocked reading a socket that is neither a client's nor the relay's own
        socketpair (the control link of a relay built with the handoff crate): whatever
        it was woken with is not a client's message. x86_64 only."""
        return self.receive_verdict(syscall_text) == ""

    def receive_verdict(self, syscall_text: str) -> str | None:
        """"" when the thread is parked in a receive on a link to another process; else
        why not, for a freeze's busy reason ("fd 9: a client's socket"), or None when
        it is not in a receive at all."""
        number, args = wakeups.parse_syscall_args(syscall_text)
        if platform.machine() != "x86_64" or number not in RECEIVE_SYSCALLS_X86_64 or not args:
            return None
        fd = args[0]
        if fd in self.conns:
            return f"fd {fd}: a client's socket"
        if fd == self.listener_target:
            return f"fd {fd}: the listener"
        link = _readlink(self.pid, fd)
        inode = None if link is None else parse_fd_link(link)
        if inode is None:
            return f"fd {fd}: not a socket ({link})"
        if inode not in self.outside and inode not in self.inside:
            self._look_outside(fd, inode)
        return "" if inode in self.outside else f"fd {fd}: {self.inside[inode]}"

    def _look_outside(self, fd: int, inode: int) -> None:
        """Whether the relay's `fd` (socket `inode`) is a socket to another process,
        asked of the kernel for that one socket (the relay is stopped: one netlink
        query, and a copy asked whether its listener accepted it)."""
        peer: int | None = None
        why, creator = "", None
        try:
            peer = sockdiag.peer_of(inode)
            copy = self._copy(fd, inode)  # (a client accepted since the scan?)
            if copy is None:
                why = "closed or reused while looked at"
            else:
                if accepted_from(copy.fd, self.bound):
                    why = "a client's socket (accepted since the scan)"
                creator = _peer_pid(copy.fd)
                os.close(copy.fd)
        except OSError as exc:
            why = f"could not be looked at ({exc})"
        # A peer the kernel gives as 0 has no file: closed, or not yet accepted by the
        # listener it connected to (the crate's control thread reconnecting while the
        # orchestrator is busy freezing it). Either way what wakes the thread is not a
        # client's message, unless that peer was the relay itself.
        if not why:
            why = ("no peer known to the kernel" if peer is None else
                   "a socket within the relay" if peer in self.own else
                   "its peer, within the relay, has closed"
                   if peer == 0 and creator in (None, self.pid) else "")
        if why:
            self.inside[inode] = why
        else:
            self.outside.add(inode)

    @property
    def listener_fd(self) -> int:
        assert self.listener is not None
        return self.listener.fd

    def connection_fds(self) -> list[int]:
        return [self.conns[fd].fd for fd in sorted(self.conns)]

    def close(self) -> None:
        """Close every copy we hold (the relay's own descriptors are not touched)."""
        for held in [self.listener, *self.conns.values()]:
            if held is not None:
                with contextlib.suppress(OSError):
                    os.close(held.fd)
        self.listener = None
        self.conns = {}
        self.pidfd.close()
