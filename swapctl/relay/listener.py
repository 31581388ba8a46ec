"""Creating a relay's listening Unix socket without stealing a live one.

The real relays delete whatever is at their path and bind: a second relay silently
steals the path from the first. The reference relay refuses when the path is live
(something accepts connections there) and only replaces a stale socket file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from swapctl.errors import SwapctlError, UsageError

LISTEN_BACKLOG = 4096
MAX_UNIX_PATH = 107


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
