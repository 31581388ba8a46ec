"""Telling a bridge's own echoes from real traffic. Pure: no sockets, clock injected.

How it works: every relay broadcasts with echo, so whatever the bridge writes to a
relay comes back to it, in the order it was written (a relay keeps each sender's
order), interleaved at frame boundaries with other clients' frames. `EchoFilter`
keeps the bytes the bridge wrote to one relay and has not yet seen back (`pending`,
whole frames, oldest first). A run of frames read from that relay is checked against
the head of `pending`: the whole run at once when it is exactly the next echo (the
common case, one C-level compare), otherwise frame by frame. A frame equal to the
head is the echo and is dropped; any other frame is real traffic and is forwarded.

Identical frames: when a client legitimately publishes a frame byte-identical to the
head of `pending` (e.g. two publishers' identification headers), the first copy to
arrive is taken as the echo and the later one (the echo itself) is forwarded in its
place. Counts and bytes stay exact (nothing lost, nothing duplicated); only the
position of that one identical frame can move, by at most the relay's echo round
trip. Nothing in the byte stream can tell the two copies apart.

A relay that loses some of the bridge's frames (a generic relay drops a chunk whose
start fails its check; a relay sheds a lagging reader's backlog) leaves an echo that
never comes. When the head has waited longer than `grace` and a frame does not match
it, the frame is looked for deeper in `pending`; if found, the frames before it are
counted `missing` and skipped. Anything still unechoed after `timeout` is dropped and
counted `missing` as well, so a missing echo cannot make the bridge bounce its own
frames back for long. A side configured with `echo=False` (a relay that does not echo,
or a sink) keeps nothing and forwards everything.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

_SIZE = struct.Struct("<I")
_SIZE_AT = 24
HEADER = 32


@dataclass(slots=True)
class EchoCounts:
    frames: int = 0  # echo frames recognised and dropped
    bytes: int = 0
    missing: int = 0  # frames the bridge wrote whose echo never came (skipped or expired)
    missing_bytes: int = 0
    resyncs: int = 0  # times a frame was found deeper than the head


def frame_ends(data: bytes | bytearray, start: int = 0, end: int | None = None) -> list[int]:
    """End offsets of the whole frames back to back in data[start:end] (Framer output)."""
    stop = len(data) if end is None else end
    out: list[int] = []
    pos = start
    unpack = _SIZE.unpack_from
    while pos + HEADER <= stop:
        pos += HEADER + unpack(data, pos + _SIZE_AT)[0]
        out.append(pos)
    return out


class EchoFilter:
    """Echo bookkeeping for one relay the bridge writes to; see the module docstring."""

    def __init__(self, *, echo: bool = True, grace: float = 0.5, timeout: float = 5.0,
                 max_pending: int = 64 << 20) -> None:
        self.echo = echo
        self.grace = grace
        self.timeout = timeout
        self.max_pending = max_pending
        self._pend = bytearray()
        self._head = 0  # first unechoed byte in _pend
        self._base = 0  # absolute offset of _pend[0]
        self._writes: deque[tuple[int, float]] = deque()  # (absolute end, time written)
        self.counts = EchoCounts()

    @property
    def pending(self) -> int:
        """Bytes written and not yet seen back."""
        return len(self._pend) - self._head

    def wrote(self, data: bytes, now: float) -> None:
        """The bridge queued `data` (whole frames) for this relay."""
        if not self.echo or not data:
            return
        self._pend += data
        self._writes.append((self._base + len(self._pend), now))
        if self.pending > self.max_pending:
            self._expire_to(self._base + len(self._pend) - self.max_pending)

    def filter(self, run: bytes, count: int, now: float) -> bytes:
        """Of a run of `count` whole frames read from this relay, the bytes that are not
        echo (the run itself when none is)."""
        if not self.echo or self._head == len(self._pend):
            return run
        if len(run) <= self.pending and self._pend.startswith(run, self._head):
            self._consume(len(run), count)  # the whole run is the next echo
            return b""
        return self._by_frame(run, now)

    def expire(self, now: float) -> None:
        """Give up on echoes older than `timeout` (counted missing)."""
        limit = now - self.timeout
        end = 0
        for end_abs, when in self._writes:
            if when > limit:
                break
            end = end_abs
        if end:
            self._expire_to(end)

    # ----- internals -------------------------------------------------------------

    def _by_frame(self, run: bytes, now: float) -> bytes:
        keep: list[memoryview] = []
        view = memoryview(run)
        pos = 0
        fwd_start = 0
        for end in frame_ends(run):
            if self._is_echo(view[pos:end], now):
                if fwd_start < pos:
                    keep.append(view[fwd_start:pos])
                fwd_start = end
            pos = end
        if fwd_start == 0:
            return run
        if fwd_start < len(run):
            keep.append(view[fwd_start:])
        return b"".join(keep)

    def _is_echo(self, frame: memoryview, now: float) -> bool:
        if self._head == len(self._pend):
            return False
        if self._pend.startswith(frame, self._head):
            self._consume(len(frame), 1)
            return True
        if not self._writes or now - self._writes[0][1] < self.grace:
            return False
        found = self._find(frame)
        if found < 0:
            return False
        self.counts.resyncs += 1
        self._expire_to(self._base + found)
        self._consume(len(frame), 1)
        return True

    def _find(self, frame: memoryview) -> int:
        """Offset in _pend of a pending frame equal to `frame`, at a frame boundary; -1."""
        start = self._head
        for end in frame_ends(self._pend, self._head):
            if end - start == len(frame) and self._pend.startswith(frame, start):
                return start
            start = end
        return -1

    def _consume(self, n: int, frames: int) -> None:
        self.counts.frames += frames
        self.counts.bytes += n
        self._advance(self._head + n)

    def _expire_to(self, end_abs: int) -> None:
        """Give up on everything before `end_abs`, rounded up to a frame boundary."""
        limit = min(end_abs - self._base, len(self._pend))
        if limit <= self._head:
            return
        frames, end = 0, self._head
        for end in frame_ends(self._pend, self._head):
            frames += 1
            if end >= limit:
                break
        self.counts.missing += frames
        self.counts.missing_bytes += end - self._head
        self._advance(end)

    def _advance(self, head: int) -> None:
        self._head = head
        absolute = self._base + head
        while self._writes and self._writes[0][0] <= absolute:
            self._writes.popleft()
        if self._head == len(self._pend):
            self._base += len(self._pend)
            self._pend.clear()
            self._head = 0
        elif self._head > 1 << 20 and self._head * 2 > len(self._pend):
            del self._pend[: self._head]
            self._base += self._head
            self._head = 0
