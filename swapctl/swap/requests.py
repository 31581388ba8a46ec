"""Operator requests to a running swap (rollback, commit) over a datagram socket.

The inbox lives in the swap's private state directory. Before binding, it removes only
what is provably its own leftover: a socket owned by us that nobody answers on (a swap
that was killed). A regular file, a symbolic link, another user's socket or the live
inbox of a swap still running is refused, never unlinked. On close it removes its
socket only if the path still holds that very socket.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

from swapctl.errors import SwapctlError, UsageError
from swapctl.fsutil import ensure_private_dir

REQUESTS = ("rollback", "commit")


def state_dir_for(public: Path) -> Path:
    """Where a standalone swap on `public` keeps its control and request sockets."""
    return public.parent / f".{public.name}.swapctl"


class RequestInbox:
    """The running swap's end: non-blocking, polled during soak."""

    def __init__(self, path: Path) -> None:
        self.path = path
        ensure_private_dir(path.parent)
        remove_stale_socket(path, "request inbox")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(str(path))
            os.chmod(path, 0o600)
            st = os.lstat(path)
        except OSError as exc:
            self.sock.close()
            raise UsageError(f"cannot create the request inbox {path}: {exc.strerror}; is "
                             "another swap starting on the same socket?") from None
        self._identity = (st.st_dev, st.st_ino)
        self.sock.setblocking(False)

    def poll(self) -> str | None:
        try:
            data = self.sock.recv(64)
        except BlockingIOError:
            return None
        text = data.decode(errors="replace").strip()
        return text if text in REQUESTS else None

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:  # still ours, not a successor's
                self.path.unlink()


def remove_stale_socket(path: Path, what: str) -> None:
    """Make room at `path`: nothing there, or our own socket nobody answers on (removed).
    Anything else raises UsageError saying what sits there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{what} {path} is a symbolic link: swapctl does not replace it; "
                         "remove it if it is not needed")
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{what} {path} exists and is not a socket: swapctl does not remove "
                         "it; move it away or pick another --state-dir")
    if st.st_uid != os.geteuid():
        raise UsageError(f"{what} {path} is a socket of uid {st.st_uid}: swapctl removes only "
                         "its own leftovers; remove it as that user")
    if _answers(path):
        raise UsageError(f"{what} {path} is in use: another swap is running on this socket; "
                         "wait for it to end, or steer it with `swapctl rollback|commit "
                         "--socket ...`")
    path.unlink()


def _answers(path: Path) -> bool:
    """True if a process is bound to the socket at `path` (connect is refused otherwise)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return False
        except OSError as exc:  # e.g. EPROTOTYPE: a live socket of another type
            return exc.errno != errno.ENOENT
    return True


def send_request(path: Path, request: str) -> None:
    if request not in REQUESTS:
        raise SwapctlError(f"unknown request {request!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(request.encode(), str(path))
        except OSError as exc:
            raise SwapctlError(
                f"no swap in progress at {path} ({exc.strerror}): a {request} can only be "
                "requested while a swap is verifying or soaking"
            ) from None
