"""`swapctl record`: tap a live relay as an ordinary client and write what it forwards.

The tap connects like any consumer and never writes a byte (the live relay cannot
tell it from a dashboard). Every read becomes one `read` record with the time it
arrived; the capture has one view, `tap`, and replays as one publisher writing those
reads (see replay.py). Relays broadcast with echo, so the tap sees everything the
relay forwarded, in the one global order, but not who published it.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from swapctl.capture.format import Kind, Record, open_data
from swapctl.capture.pcapng import CaptureWriter
from swapctl.errors import SwapctlError
from swapctl.protocol import Framer
from swapctl.scenarios.model import Client, Role

TAP = Client("tap", Role.CONSUMER)
_RECV = 1 << 20


@dataclass(frozen=True, slots=True)
class RecordSummary:
    path: Path
    seconds: float
    reads: int
    bytes: int
    frames: int
    relay_closed: bool


def connect_tap(path: Path, timeout: float = 5.0) -> socket.socket:
    """A read-only client of the live relay at `path` (non-blocking once connected)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise SwapctlError(f"cannot connect to the relay at {path}: {exc}; is it running, "
                           "and is that its socket?") from None
    sock.setblocking(False)
    return sock


def record(path: Path, out: Path, duration: float, max_bytes: int | None = None,
           progress: Callable[[str], None] | None = None) -> RecordSummary:
    """Record what the relay at `path` forwards for `duration` seconds (or `max_bytes`)."""
    sock = connect_tap(path)
    framer = Framer()
    reads = total = 0
    closed = False
    start = time.monotonic()
    meta = {"kind": "tap", "socket": str(path), "duration_s": duration,
            "started_ns": time.time_ns()}
    with CaptureWriter(out, meta) as writer, selectors.DefaultSelector() as sel, sock:
        writer.write(Record("tap", Kind.OPEN, 1, open_data(TAP), time.time_ns()))
        sel.register(sock, selectors.EVENT_READ)
        next_note = start + 1.0
        while not closed and (max_bytes is None or total < max_bytes):
            left = start + duration - time.monotonic()
            if left <= 0:
                break
            data = read_some(sock) if sel.select(min(left, 0.2)) else None
            if data is not None:
                if not data:
                    closed = True
                    writer.write(Record("tap", Kind.EOF, 1, b"", time.time_ns()))
                    break
                writer.write(Record("tap", Kind.READ, 1, data, time.time_ns()))
                reads += 1
                total += len(data)
                framer.feed(data)
            if progress is not None and time.monotonic() >= next_note:
                next_note += 1.0
                progress(f"{time.monotonic() - start:.0f}s: {reads} reads, {total} bytes, "
                         f"{framer.frames} frames")
        if not closed:
            writer.write(Record("tap", Kind.CLOSE, 1, b"", time.time_ns()))
    return RecordSummary(out, time.monotonic() - start, reads, total, framer.frames, closed)


def read_some(sock: socket.socket) -> bytes | None:
    """What is there to read: None if nothing yet, b"" at end of stream (or an error)."""
    try:
        return sock.recv(_RECV)
    except BlockingIOError:
        return None
    except OSError:
        return b""
