"""Adopting a relay swapctl did not start: the first swap of a box that runs today's relays.

How it works. A relay started outside swapctl (by hand, by supervisord, by a unit) serves
its compiled-in path P itself, unisolated. To take it over swapctl must know which
process holds the listener that a connect to P reaches:
1. The file at P names one listening socket: the kernel's sock_diag (netlink, UNIX_DIAG
   with UDIAG_SHOW_VFS) gives, for every listening Unix socket of this network namespace,
   the device and inode of the file it is bound to; the one equal to `stat(P)` is the
   listener that serves P (a relay whose path was stolen by a second start still holds a
   listener with the same name, but bound to a deleted file: it does not match). Where
   sock_diag is missing, the names in /proc/net/unix are compared instead (and two
   listeners with P's name are refused as ambiguous).
2. The processes holding it: every /proc/PID/fd link reading `socket:[INODE]`. Exactly
   one must hold it; none or several is refused (name the one with --old-pid).
3. `--old-pid` is checked against the same answer: it must be the (or a) holder.
The takeover then moves the relay's clients to a handoff-capable candidate (the
candidate holds the listener bound at P from then on), and `into_layout` gives the box
swapctl's slot layout without a moment where P refuses a connect: a hard link to the
socket file beside P (same directory, so same file system), a symlink in the slot
pointing at it, and the public symlink renamed over P (legacy/layout.py `point`). The
slot's state file records the candidate, so the next swap starts from the slot.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from swapctl import process, sockdiag
from swapctl.errors import UsageError
from swapctl.legacy import layout as lay
from swapctl.legacy import sockets


class AdoptError(UsageError):
    """The relay to adopt could not be told apart (exit 2: the operator must say)."""


@dataclass(frozen=True, slots=True)
class Adopted:
    """A relay swapctl did not start, serving the public path itself."""

    pid: int
    started_s: float  # process.started
    command: tuple[str, ...]
    bound: str  # the listener's name in the Unix socket table (what it was bound as)
    found_by: str  # "--old-pid" | "the listener's owner"

    def state(self) -> dict[str, Any]:
        """Its record, shaped like a slot's state file (the swap's old relay)."""
        return {"pid": self.pid, "started_s": self.started_s,
                "command": list(self.command), "kind": "legacy", "bound": self.bound,
                "adopted": True}

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "command": list(self.command), "listener": self.bound,
                "found_by": self.found_by}


# ----- pure ------------------------------------------------------------------------

def kernel_dev(st_dev: int) -> int:
    """`stat`'s st_dev in the kernel's internal encoding (major << 20 | minor), the one
    sock_diag reports."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


# ----- who serves P --------------------------------------------------------------------

def listener_at(path: Path) -> tuple[int, str] | None:
    """The listening socket that a connect to `path` reaches: (socket inode, the name it
    was bound as); None when no listener is bound to that file."""
    try:
        st = path.stat()
    except OSError:
        return None
    table = sockets.parse_unix_table(Path("/proc/net/unix").read_text())
    try:
        found = [i for i, vfs in sockdiag.listener_files().items()
                 if vfs == (kernel_dev(st.st_dev), st.st_ino)]
    except OSError:  # no sock_diag here: match the bound names instead
        names = {str(path), str(path.absolute()), os.path.realpath(path)}
        found = [i for i, e in table.items() if e.listening and e.path in names]
        if len(found) > 1:
            raise AdoptError(f"{len(found)} listening sockets are named {path} (one is "
                             "stale) and this kernel cannot tell which one serves it: "
                             "give --old-pid") from None
    if not found:
        return None
    entry = table.get(found[0])
    return found[0], entry.path if entry is not None else str(path)


def holders(inode: int) -> list[int]:
    """Pids of the processes whose descriptor table holds socket `inode` (those we may
    look into: as root, all of them)."""
    link = f"socket:[{inode}]"
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{name}/fd/{fd}") == link:
                        out.append(int(name))
                        break
    return sorted(out)


def _describe(pid: int) -> str:
    try:
        return f"pid {pid} ({' '.join(psutil.Process(pid).cmdline())[:80]})"
    except psutil.Error:
        return f"pid {pid}"


def find(path: Path, old_pid: int | None) -> Adopted:
    """The relay serving `path` unisolated: `old_pid` checked, or the listener's only
    owner. Refuses (AdoptError, exit 2) with what it found and what to give instead."""
    serving = listener_at(path)
    if serving is None:
        if not (path.exists() or path.is_symlink()):
            raise AdoptError(f"no relay to adopt at {path}: nothing is there; give the path "
                             "the relay serves (or --from CMD --from-legacy for a fresh box)")
        raise AdoptError(f"no relay to adopt at {path}: no process listens on it (a stale "
                         "socket file?); start the relay, or remove the file and give "
                         "--from CMD --from-legacy for a fresh box")
    inode, bound = serving
    owners = holders(inode)
    if old_pid is not None:
        if old_pid not in owners:
            who = ", ".join(map(_describe, owners)) or "no process this user can see"
            raise AdoptError(f"--old-pid {old_pid} does not hold the listener at {path}: "
                             f"{who} does; give that pid (or drop --old-pid)")
        return _adopted(old_pid, bound, "--old-pid")
    if not owners:
        raise AdoptError(f"no process this user can see holds the listener at {path} "
                         f"(socket inode {inode}): run as root or as the relay's user, or "
                         "give --old-pid")
    if len(owners) > 1:
        raise AdoptError(f"{len(owners)} processes hold the listener at {path}: "
                         f"{', '.join(map(_describe, owners))}; give the relay's pid "
                         "with --old-pid")
    return _adopted(owners[0], bound, "the listener's owner")


def _adopted(pid: int, bound: str, found_by: str) -> Adopted:
    try:
        proc = psutil.Process(pid)
        return Adopted(pid, process.started(pid), tuple(proc.cmdline()), bound, found_by)
    except psutil.Error as exc:
        raise AdoptError(f"pid {pid} is gone ({exc})") from None


def alive(adopted: Adopted) -> bool:
    """The same process still runs (pid and start time)."""
    try:
        return process.started(adopted.pid) == adopted.started_s
    except psutil.Error:
        return False


# ----- after the takeover: the box in swapctl's layout ---------------------------------

def hidden_link(public: Path) -> Path:
    """Where the socket file of an adopted listener stays linked, beside the public path."""
    return public.with_name(f".{public.name}.swapctl-adopted")


def into_layout(layout: lay.Layout, state: dict[str, Any]) -> dict[str, Any]:
    """Give the box the slot layout once the candidate serves the adopted listener (bound
    at the public path): the socket file hard-linked beside it, a free slot's socket a
    symlink to that, the public link renamed over the socket file (no moment where a
    connect fails), and the slot's state file naming the candidate (`state`)."""
    public = layout.public
    keep = hidden_link(public)
    tmp = keep.with_name(keep.name + f".{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.link(public, tmp)  # the same socket file under a second name
    os.replace(tmp, keep)
    name = layout.free_slot()
    slot_sock = layout.slot_socket(name)
    slot_sock.parent.mkdir(parents=True, exist_ok=True)
    tmp = slot_sock.with_name(f".{slot_sock.name}.swapctl-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(keep, tmp)
    os.replace(tmp, slot_sock)
    lay.write_state(layout, name, state)
    lay.point(layout, slot_sock)
    return {"slot": name, "public": str(public), "target": str(slot_sock),
            "socket_file": str(keep)}
