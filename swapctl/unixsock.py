"""Unix stream sockets: listening without stealing a live path, and waiting for one.

The real relays delete whatever is at their path and bind: a second relay silently
steals the path from the first. The reference relay refuses when the path is live
(something accepts connections there) and only replaces a stale socket file.

A relay's only readiness signal is that its path accepts connections, so whoever
starts one (a benchmark, a test, a swap) waits with `connect` or `wait_connectable`:
one retry loop (tenacity) for every such wait, retrying refused or missing paths
(and a full backlog: each try has a timeout, so it fails at once with EAGAIN
instead of blocking) every `interval` until `timeout`, and asking `alive` first on
each try so that a server that died ends the wait at once with the caller's own error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from swapctl.errors import SwapctlError, UsageError

LISTEN_BACKLOG = 4096
MAX_UNIX_PATH = 107
_CRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED:
    the one that connected, or the one that listened when it was accepted)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid
ATTEMPT_TIMEOUT = 0.5  # any timeout makes a full backlog fail at once (EAGAIN), not block


class SocketInUse(SwapctlError):
    """Another process is serving the path."""


def is_live(path: Path) -> bool:
    """True if something accepts connections at `path` right now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def open_listener(path: Path, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """Bind and listen on `path`, replacing only a stale socket file; non-blocking."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise UsageError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
            f"{MAX_UNIX_PATH}: choose a shorter path"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise UsageError(
                f"{path} exists and is not a socket: move it away or pick another path"
            )
        if is_live(path):
            raise SocketInUse(
                f"{path} is served by another process (it accepts connections): "
                "stop that relay first, or use another --socket"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def adopt_listener(fd: int) -> socket.socket:
    """A listening socket inherited as file descriptor `fd` (e.g. from an fd store)."""
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise UsageError(f"fd {fd} is not a Unix stream socket")
    sock.setblocking(False)
    return sock


def connect(path: str | Path, timeout: float, *, alive: Callable[[], None] | None = None,
            interval: float = 0.01) -> socket.socket:
    """A blocking connection to `path`, retried every `interval` s while the path refuses,
    is missing or its backlog is full, until `timeout` (0: one try). `alive` runs before
    each try and raises if the server is gone. Past the timeout, the last OSError is
    raised."""
    for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval),
                            retry=retry_if_exception_type(OSError), reraise=True):
        with attempt:
            if alive is not None:
                alive()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(ATTEMPT_TIMEOUT)
            try:
                sock.connect(str(path))
            except OSError:
                sock.close()
                raise
            sock.settimeout(None)
            return sock
    raise AssertionError("unreachable: tenacity either returns or re-raises")


def wait_connectable(path: str | Path, timeout: float, *,
                     alive: Callable[[], None] | None = None,
                     interval: float = 0.01) -> float:
    """Wait until `path` accepts a connection (see `connect`); returns the seconds waited."""
    start = time.monotonic()
    connect(path, timeout, alive=alive, interval=interval).close()
    return time.monotonic() - start
