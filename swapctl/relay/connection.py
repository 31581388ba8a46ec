"""One client connection of the reference relay: socket, framer, output backlog."""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass, field

from swapctl.protocol import Framer


@dataclass(slots=True, eq=False)
class Connection:
    sock: socket.socket
    id: int
    framer: Framer | None
    out: deque[tuple[bytes, int]] = field(default_factory=deque)  # (unit, frames)
    head_sent: int = 0  # bytes of out[0] already written
    backlog: int = 0  # bytes queued in out, head included
    lagging: bool = False  # being shed (drop-oldest, or a publisher under any policy)
    blocking: bool = False  # block policy: over the bound, the publishers wait for it
    closing: bool = False  # its write side failed or it was cut: read its last bytes, close
    closed: bool = False
    registered: bool = False  # in the relay's epoll set
    carried_in: bytes = b""  # a partial frame handed over, fed at resume
    hold: bool = False  # handoff: bytes owed to it are still on their way; write nothing
    bytes_in: int = 0
    frames_in: int = 0
    frames_out: int = 0
    lag_drops: int = 0
    partial: int = 0  # bytes of a partial frame its framer holds, as the relay counted them
    fd: int = -1  # the descriptor number, kept after close (it keys the relay's table)

    def __post_init__(self) -> None:
        self.fd = self.sock.fileno()

    def unsent(self) -> bytes:
        """Every byte still owed to this client, starting mid-unit if a write stopped there."""
        if not self.out:
            return b""
        head, _ = self.out[0]
        rest = [unit for unit, _ in list(self.out)[1:]]
        return b"".join([head[self.head_sent :], *rest])

    @property
    def publisher(self) -> bool:
        """It has sent something: the relay never waits for it nor cuts it for being slow."""
        return self.bytes_in > 0

    def summary(self) -> dict[str, object]:
        return {"id": self.id, "bytes_in": self.bytes_in, "frames_in": self.frames_in,
                "frames_out": self.frames_out, "backlog_bytes": self.backlog,
                "lagging": self.lagging, "lag_drops": self.lag_drops,
                "publisher": self.publisher, "blocking": self.blocking,
                "partial_bytes": self.partial}
