"""Streaming Protocol V2 framer: bytes in, events out, no I/O.

How it works: `feed(data)` appends to a small tail buffer (at most one incomplete
message, bounded by `max_message`) and scans forward one header at a time. Each
complete message that passes the checks joins the current *run*; a run is emitted as
one `Frames` event holding the valid messages back to back, so a relay can forward
them with one write and a consumer can split them with `split_frames`. Bytes that
cannot start a message (wrong magic, or a header that declares more than
`max_message`) are skipped up to the next magic and reported as `Skipped`; a message
that is well delimited but fails a check (wrong domain, checksum mismatch when
verifying) is reported whole as `Rejected`. `feed_eof()` reports a leftover partial
message as truncated. The result is the same whatever the split or coalescing of
the stream, which the property tests check down to one byte at a time.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from swapctl.protocol.errors import (
    BadMagic,
    ChecksumMismatch,
    MalformedFrame,
    Oversize,
    TruncatedMessage,
    WrongDomain,
)
from swapctl.protocol.header import HEADER_SIZE, MAGIC, MAGIC_BYTES, MAX_MESSAGE

_PEEK = struct.Struct("<IB19xII")  # magic, relay_domain, payload_size, checksum
_SIZE = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Frames:
    """One or more complete, valid messages back to back, starting at stream `offset`."""

    data: bytes
    count: int
    offset: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """Bytes that could not start a message, skipped while scanning for the magic."""

    offset: int
    length: int
    error: MalformedFrame


@dataclass(frozen=True, slots=True)
class Rejected:
    """A complete message dropped by a check (wrong domain, checksum mismatch)."""

    offset: int
    data: bytes
    error: MalformedFrame


Event = Frames | Skipped | Rejected


class Framer:
    """Frames a Protocol V2 byte stream; see the module docstring."""

    def __init__(
        self,
        *,
        max_message: int = MAX_MESSAGE,
        domain: int | None = None,
        verify_checksum: bool = False,
    ) -> None:
        if max_message < HEADER_SIZE:
            raise ValueError(f"max_message must be at least {HEADER_SIZE}")
        self.max_message = max_message
        self.domain = domain
        self.verify_checksum = verify_checksum
        self._tail = b""
        self._offset = 0  # stream offset of _tail[0]
        self.frames = 0
        self.bytes_in = 0
        self.skipped_bytes = 0
        self.resyncs = 0
        self.rejected = 0
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (at most max_message - 1)."""
        return len(self._tail)

    @property
    def pending(self) -> bytes:
        """The incomplete message held so far (a handoff carries it to the next relay)."""
        return self._tail

    @property
    def pending_at(self) -> int | None:
        """Where in the stream the incomplete message held starts (None: none held)."""
        return self._offset if self._tail else None

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes from the stream; returns the events they completed, in order."""
        if self.closed:
            raise RuntimeError("feed() after feed_eof()")
        self.bytes_in += len(data)
        buf = self._tail + data if self._tail else data
        events: list[Event] = []
        pos = self._scan(buf, events)
        self._tail = buf[pos:]
        self._offset += pos
        return events

    def feed_eof(self) -> list[Event]:
        """The stream ended: whatever is buffered is a truncated message."""
        self.closed = True
        if not self._tail:
            return []
        tail, self._tail = self._tail, b""
        err = self._truncation(tail)
        self.skipped_bytes += len(tail)
        event = Skipped(self._offset, len(tail), err)
        self._offset += len(tail)
        return [event]

    def _truncation(self, tail: bytes) -> MalformedFrame:
        if len(tail) >= HEADER_SIZE:
            (size,) = _SIZE.unpack_from(tail, 24)
            want = f"{HEADER_SIZE + size} bytes"
        else:
            want = f"at least {HEADER_SIZE} header bytes"
        return TruncatedMessage(self._offset, want, f"{len(tail)} bytes before end of stream")

    def _scan(self, buf: bytes, events: list[Event]) -> int:
        n = len(buf)
        pos = 0
        run_start = -1
        run_count = 0
        peek = _PEEK.unpack_from
        domain = self.domain
        limit = self.max_message
        verify = self.verify_checksum
        last_total = 0
        while n - pos >= HEADER_SIZE:
            magic, dom, size, crc = peek(buf, pos)
            total = HEADER_SIZE + size
            if magic == MAGIC and total <= limit:
                if n - pos < total:
                    break
                ok = dom == domain or domain is None
                if ok and crc and verify:
                    ok = _crc_matches(buf, pos, total, crc)
                if ok:
                    if run_start < 0:
                        run_start = pos
                    if total == last_total:
                        same = _uniform_run(buf, pos, total, n)
                        if same and verify:
                            same = _crc_ok_prefix(buf, pos, total, same)
                        if same:
                            run_count += same
                            pos += same * total
                            continue
                    last_total = total
                    run_count += 1
                    pos += total
                    continue
                self._close_run(buf, run_start, pos, run_count, events)
                run_start, run_count = -1, 0
                events.append(self._reject(buf, pos, total, dom, crc))
                pos += total
                continue
            self._close_run(buf, run_start, pos, run_count, events)
            run_start, run_count = -1, 0
            pos = self._skip(buf, pos, magic, total, events)
        self._close_run(buf, run_start, pos, run_count, events)
        if pos < n and not MAGIC_BYTES.startswith(buf[pos : pos + 4]):
            pos = self._skip(buf, pos, None, 0, events)
        return pos

    def _close_run(
        self, buf: bytes, start: int, end: int, count: int, events: list[Event]
    ) -> None:
        if count:
            self.frames += count
            events.append(Frames(buf[start:end], count, self._offset + start))

    def _reject(self, buf: bytes, pos: int, total: int, dom: int, crc: int) -> Rejected:
        self.rejected += 1
        at = self._offset + pos
        err: MalformedFrame
        if dom != self.domain and self.domain is not None:
            err = WrongDomain(at + 4, f"relay_domain {self.domain}", f"{dom}")
        else:
            actual = _crc(buf, pos, total)
            err = ChecksumMismatch(at + 28, f"0x{crc:08X} (stored)", f"0x{actual:08X} (computed)")
        return Rejected(at, buf[pos : pos + total], err)

    def _skip(
        self, buf: bytes, pos: int, magic: int | None, total: int, events: list[Event]
    ) -> int:
        """Skip from `pos` to the next place a message could start; returns the new pos."""
        n = len(buf)
        nxt = buf.find(MAGIC_BYTES, pos + 1)
        if nxt < 0:
            nxt = max(pos + 1, n - 3)
            while nxt < n and not MAGIC_BYTES.startswith(buf[nxt:n]):
                nxt += 1
        at = self._offset + pos
        err: MalformedFrame
        if magic == MAGIC:
            err = Oversize(at + 24, f"a message of at most {self.max_message} bytes", f"{total}")
        else:
            found = buf[pos : pos + 4].hex(" ")
            err = BadMagic(at, MAGIC_BYTES.hex(" "), found)
        length = nxt - pos
        self.skipped_bytes += length
        last = events[-1] if events else None
        if isinstance(last, Skipped) and last.offset + last.length == at:
            events[-1] = Skipped(last.offset, last.length + length, last.error)
        else:
            self.resyncs += 1
            events.append(Skipped(at, length, err))
        return nxt


_FAST_MIN = 8


def _uniform_run(buf: bytes, pos: int, total: int, n: int) -> int:
    """How many messages from `pos` on are `total` bytes long with the same magic, domain
    byte and declared size as the one at `pos` (which is valid): checked a whole run at a
    time with strided slices, i.e. at C speed. 0 if fewer than 8 are."""
    k = (n - pos) // total
    head = buf[pos : pos + HEADER_SIZE]
    while k >= _FAST_MIN:
        end = pos + k * total
        if all(buf[pos + i : end : total] == head[i : i + 1] * k for i in _UNIFORM_OFFSETS):
            return k
        k //= 2
    return 0


_UNIFORM_OFFSETS = (0, 1, 2, 3, 4, 24, 25, 26, 27)  # magic, domain byte, payload_size


def _crc_ok_prefix(buf: bytes, pos: int, total: int, count: int) -> int:
    """How many of `count` back-to-back messages of `total` bytes from `pos` have a
    checksum that is absent or right (a tight loop: the headers are already checked)."""
    crc32, stored_at = zlib.crc32, _SIZE.unpack_from
    end = pos + count * total
    for p in range(pos, end, total):
        stored = stored_at(buf, p + 28)[0]
        if stored and crc32(buf[p + HEADER_SIZE : p + total], crc32(buf[p : p + 28])) != stored:
            return (p - pos) // total
    return count


def _crc(buf: bytes, pos: int, total: int) -> int:
    crc32 = zlib.crc32
    return crc32(buf[pos + HEADER_SIZE : pos + total], crc32(buf[pos : pos + 28]))


def _crc_matches(buf: bytes, pos: int, total: int, crc: int) -> bool:
    return _crc(buf, pos, total) == crc


def split_frames(data: bytes) -> Iterator[bytes]:
    """The individual messages of a `Frames.data` run (which holds whole messages only)."""
    pos, n = 0, len(data)
    unpack = _SIZE.unpack_from
    while pos < n:
        end = pos + HEADER_SIZE + unpack(data, pos + 24)[0]
        yield data[pos:end]
        pos = end


def frame_offsets(data: bytes) -> list[int]:
    """Start offsets of each message in a `Frames.data` run, plus the end."""
    pos, n = 0, len(data)
    out = [0]
    unpack = _SIZE.unpack_from
    while pos < n:
        pos += HEADER_SIZE + unpack(data, pos + 24)[0]
        out.append(pos)
    return out
