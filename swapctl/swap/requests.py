"""Operator requests to a running swap (rollback, commit) over a datagram socket."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from swapctl.errors import SwapctlError

REQUESTS = ("rollback", "commit")


def state_dir_for(public: Path) -> Path:
    """Where a standalone swap on `public` keeps its control and request sockets."""
    return public.parent / f".{public.name}.swapctl"


class RequestInbox:
    """The running swap's end: non-blocking, polled during soak."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
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
            self.path.unlink()


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
