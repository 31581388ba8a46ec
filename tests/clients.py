"""A plain blocking test client for relays: send bytes, receive whole frames."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from swapctl.protocol import Framer, Frames, encode_message, split_frames
from swapctl.protocol.tlv import Trade


def trade(seq: int, domain: int = 1, source: int = 2) -> bytes:
    """A 74-byte Trade message with a CRC and a recognisable sequence."""
    return encode_message(domain, source, [Trade(seq, seq * 100, 1, 0, 1, 1).to_tlv()],
                          sequence=seq, checksum=True)


class Client:
    def __init__(self, path: Path, timeout: float = 5.0, plain_only: bool = False) -> None:
        self.plain_only = plain_only  # ignore generated traffic (canary/load: bit 63 set)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.framer = Framer()
        self.frames: list[bytes] = []
        self.raw = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _pump(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise EOFError("relay closed the connection")
        self.raw += data
        for ev in self.framer.feed(data):
            if isinstance(ev, Frames):
                self.frames.extend(f for f in split_frames(ev.data)
                                   if not (self.plain_only and f[15] & 0x80))
        return True

    def recv_frames(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Wait until `count` frames in total have arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and time.monotonic() < deadline:
            self._pump(deadline)
        return list(self.frames)

    def recv_bytes(self, count: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.raw) < count and time.monotonic() < deadline:
            self._pump(deadline)
        return bytes(self.raw)

    def quiet(self, seconds: float = 0.2) -> bool:
        """True if nothing more arrives within `seconds` (to assert non-delivery)."""
        return not self._pump(time.monotonic() + seconds)

    def close(self) -> None:
        self.sock.close()
