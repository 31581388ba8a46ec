"""The kernel's cost of passing a file descriptor with SCM_RIGHTS, measured on this machine.

`bench handoff` holds each relay's per-connection cost against it, measured in the same
run: `count` connected Unix sockets are sent over a socketpair in messages of `batch`
fds (sendmsg), received (recvmsg: the kernel installs a new fd for each), and the
received copies closed outside the timed part. The figure is the median over `repeats`
of (send + receive time) / count, in microseconds per fd. A handoff passes each
connection's fd twice (old relay -> swapctl -> new relay).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import dataclass
from typing import Any

from swapctl.handoff.messages import MAX_FDS


@dataclass(frozen=True, slots=True)
class FdPassSettings:
    count: int = 1000  # fds passed per repeat
    batch: int = MAX_FDS  # fds per message (the kernel's SCM_MAX_FD)
    repeats: int = 7


def measure_scm_rights(settings: FdPassSettings = FdPassSettings()) -> dict[str, Any]:
    """Microseconds per fd passed (median and best of the repeats), with the settings."""
    pairs = [socket.socketpair() for _ in range(settings.count // 2 + settings.count % 2)]
    fds = [s.fileno() for pair in pairs for s in pair][:settings.count]
    send, recv = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        per_fd = [_one_pass(send, recv, fds, settings.batch) / len(fds)
                  for _ in range(settings.repeats)]
    finally:
        send.close()
        recv.close()
        for pair in pairs:
            for s in pair:
                s.close()
    return {"us_per_fd": round(statistics.median(per_fd), 3),
            "best_us_per_fd": round(min(per_fd), 3),
            "fds": len(fds), "fds_per_message": settings.batch, "repeats": settings.repeats,
            "method": "sendmsg + recvmsg over an AF_UNIX socketpair, connected sockets as the fds"}


def _one_pass(send: socket.socket, recv: socket.socket, fds: list[int], batch: int) -> float:
    """Send every fd and receive it back as a new fd; microseconds spent (closing excluded)."""
    received: list[int] = []
    started = time.perf_counter_ns()
    for i in range(0, len(fds), batch):
        chunk = fds[i:i + batch]
        socket.send_fds(send, [b"f"], chunk)
        _, got, _, _ = socket.recv_fds(recv, 1, len(chunk))
        received += got
    elapsed = time.perf_counter_ns() - started
    for fd in received:
        os.close(fd)
    if len(received) != len(fds):
        raise RuntimeError(f"SCM_RIGHTS: {len(received)} of {len(fds)} fds came back")
    return elapsed / 1000
