"""Test clients for relays: a plain blocking one (send bytes, receive whole frames) and
a crowd that reads everything in a thread of its own."""

from __future__ import annotations

import selectors
import socket
import threading
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


class ReadingCrowd(threading.Thread):
    """`count` clients that read everything (a fan-out to all of them takes a while),
    each one's bytes kept in `data`; `cut` counts those that saw EOF."""

    def __init__(self, path: Path, count: int) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.data: dict[socket.socket, bytearray] = {}
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.data[sock] = bytearray()
        self.cut = 0

    @property
    def received(self) -> int:
        return sum(len(data) for data in self.data.values())

    def run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.cut += 1
                    self.selector.unregister(sock)
                self.data[sock] += chunk

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        for sock in self.data:
            sock.close()
        self.selector.close()
