"""What one client received, cut the way a consumer cuts it: frames and gaps.

How it works: a client's byte stream is framed by `32 + payload_size` with the
protocol's streaming framer, with no domain or checksum check (a consumer keeps what
the relay gave it). Bytes that cannot start a message become a *gap*: garbage before
the next magic, an oversize header, or a partial message left at the end. The
comparison works on these tokens (frames as `bytes`, gaps as `Gap`), never on sockets.

Two streams that differ usually share a long prefix and suffix. `windows()` finds the
first differing byte at C speed, frames the shared prefix once (only counting it),
and cuts tokens only from there until both streams are back at a frame boundary the
same distance from their ends, where the rest is byte-identical and only counted.
Tokens are cut a framer run at a time: a run of same-size messages (the usual case)
is recognised with strided slices and cut by one list comprehension, so a window of
a million frames (a sink that received nothing) costs no per-frame Python loop.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from swapctl.protocol import (
    HEADER_SIZE,
    Framer,
    Frames,
    Oversize,
    Skipped,
    TruncatedMessage,
    split_frames,
)

GARBAGE = "garbage"
OVERSIZE = "oversize"
PARTIAL = "partial"
_CHUNK = 1 << 16
_SIZE = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Stream:
    """Everything one client received from one relay, and whether the relay hung up on it."""

    raw: bytes
    closed_by_relay: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """Bytes a consumer had to skip: not the start of a Protocol V2 message."""

    kind: str  # GARBAGE, OVERSIZE or PARTIAL
    data: bytes

    def key(self, strict: bool) -> tuple[str, int] | tuple[str, bytes]:
        """What the comparison sees: kind and length, or the bytes too in strict mode."""
        return (self.kind, self.data) if strict else (self.kind, len(self.data))


Token = bytes | Gap


@dataclass(slots=True)
class Framed:
    """The tokens of a stream's differing window, with offsets; totals for the stream."""

    tokens: list[Token]  # the window
    offsets: list[int]  # stream offset of each window token
    frames: int  # frames in the whole stream
    gap_bytes: int  # gap bytes in the window
    before: int = 0  # frames before the window
    _gaps: list[int] | None = None  # window positions of gaps, computed when first needed

    def frame_index(self, pos: int) -> int:
        """Frames before window token `pos` in the whole stream (the operator's "frame N")."""
        if self._gaps is None:
            self._gaps = [k for k, t in enumerate(self.tokens) if isinstance(t, Gap)]
        return self.before + pos - bisect_left(self._gaps, pos)


def _gap_kind(event: Skipped) -> str:
    if isinstance(event.error, TruncatedMessage):
        return PARTIAL
    if isinstance(event.error, Oversize):
        return OVERSIZE
    return GARBAGE


Run = tuple[Sequence[int], Sequence[Token]]  # (stream offsets, tokens): frames, or one gap


def iter_pieces(raw: bytes, start: int = 0) -> Iterator[tuple[int, bytes | Gap]]:
    """(offset, piece) from `start` (a frame boundary) to the end: a framer run of whole
    messages back to back, or one gap. Fed in 64 KiB pieces; adjacent skipped runs are
    joined, so the cut does not depend on the pieces."""
    framer = Framer()
    pending: tuple[int, Gap] | None = None
    for pos in range(start, len(raw), _CHUNK):
        for ev in framer.feed(raw[pos : pos + _CHUNK]):
            at = start + ev.offset
            if isinstance(ev, Skipped):
                data = raw[at : at + ev.length]
                if pending is not None and pending[0] + len(pending[1].data) == at:
                    pending = (pending[0], Gap(pending[1].kind, pending[1].data + data))
                else:
                    if pending is not None:
                        yield pending
                    pending = (at, Gap(_gap_kind(ev), data))
                continue
            if pending is not None:
                yield pending
                pending = None
            if isinstance(ev, Frames):
                yield at, ev.data
    if pending is not None:
        yield pending
    for ev in framer.feed_eof():
        if isinstance(ev, Skipped):
            at = start + ev.offset
            yield at, Gap(PARTIAL, raw[at : at + ev.length])


def iter_runs(raw: bytes, start: int = 0) -> Iterator[Run]:
    """The tokens from `start` to the end, a run of frames or one gap at a time."""
    for at, piece in iter_pieces(raw, start):
        yield ([at], [piece]) if isinstance(piece, Gap) else cut(piece, at)


def uniform_size(data: bytes) -> int:
    """The size of every message in `data` (whole messages back to back) if they all
    have the first one's, else 0: each declared size, read every `size` bytes with a
    strided slice, is checked at C speed."""
    size = HEADER_SIZE + int(_SIZE.unpack_from(data, 24)[0])
    count, rest = divmod(len(data), size)
    declared = _SIZE.pack(size - HEADER_SIZE)
    if rest or any(data[24 + i :: size] != declared[i : i + 1] * count for i in range(4)):
        return 0
    return size


def cut(data: bytes, at: int) -> Run:
    """A run of whole messages at stream offset `at` cut into its messages (a run of
    same-size ones without reading each header in Python)."""
    size = uniform_size(data)
    if size:
        return (range(at, at + len(data), size),
                [data[k : k + size] for k in range(0, len(data), size)])
    frames = list(split_frames(data))
    return list(accumulate(map(len, frames[:-1]), initial=at)), frames


def iter_tokens(raw: bytes, start: int = 0) -> Iterator[tuple[int, Token]]:
    """(offset, token) from `start` (a frame boundary) to the end; see `iter_runs`."""
    for offsets, tokens in iter_runs(raw, start):
        yield from zip(offsets, tokens, strict=True)


class Cutter:
    """Incremental cutting for live streams: each feed returns pieces of whole frames (a
    run, as one bytes object) or gaps, each with its tokens. A message split across
    feeds comes out whole once complete."""

    def __init__(self) -> None:
        self.framer = Framer()
        self._buf = b""  # the stream from offset _base on: what the framer may still cite
        self._base = 0

    def feed(self, data: bytes) -> list[tuple[bytes, list[Token]]]:
        self._buf += data
        out: list[tuple[bytes, list[Token]]] = []
        for ev in self.framer.feed(data):
            if isinstance(ev, Frames):
                out.append((ev.data, list(split_frames(ev.data))))
            elif isinstance(ev, Skipped):
                start = ev.offset - self._base
                gap = self._buf[start : start + ev.length]
                out.append((gap, [Gap(_gap_kind(ev), gap)]))
        consumed = self.framer.bytes_in - self.framer.buffered
        self._buf = self._buf[consumed - self._base :]
        self._base = consumed
        return out


def frame_stream(raw: bytes) -> Framed:
    """The whole stream as tokens."""
    window = _Window(raw, iter_runs(raw), 0)
    window.take_until(len(raw))
    return window.framed(0)


def count_frames(raw: bytes) -> int:
    """The number of whole frames in `raw` (the fast path when two streams are identical)."""
    framer = Framer()
    framer.feed(raw)
    return framer.frames


def first_difference(a: bytes, b: bytes) -> int:
    """The first offset where `a` and `b` differ (the shorter length if one is a prefix)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # invariant: a[:lo] == b[:lo]
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    lo, hi = 0, limit
    la, lb = len(a), len(b)
    while lo < hi:  # invariant: the last lo bytes are equal
        mid = (lo + hi + 1) // 2
        if a[la - mid : la - lo] == b[lb - mid : lb - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def prefix(raw: bytes, end: int) -> tuple[int, int]:
    """(boundary, frames before it): the last token end at or before `end` that a framer
    fed the whole stream would also produce (a trailing skip could still grow)."""
    framer = Framer()
    boundary = frames = 0
    for ev in framer.feed(raw[:end]):
        if isinstance(ev, Frames):
            boundary, frames = ev.offset + len(ev.data), frames + ev.count
    return boundary, frames


def windows(a: bytes, b: bytes) -> tuple[Framed, Framed]:
    """Tokens of the window where `a` and `b` differ; see the module docstring."""
    start, before = prefix(a, first_difference(a, b))
    suffix = _common_suffix(a, b, min(len(a), len(b)) - start)
    wa = _Window(a, iter_runs(a, start), before)
    wb = _Window(b, iter_runs(b, start), before)
    wa.take_until(len(a) - suffix)
    wb.take_until(len(b) - suffix)
    while True:  # both at a boundary the same distance from the end: the rest is equal
        da, db = len(a) - wa.next_at, len(b) - wb.next_at
        if da == db:
            break
        (wa if da > db else wb).take_one()
    rest = count_frames(a[wa.next_at :])
    return wa.framed(rest), wb.framed(rest)


class _Window:
    """Tokens taken from a stream's runs, a run at a time where a whole run is wanted."""

    def __init__(self, raw: bytes, runs: Iterator[Run], before: int) -> None:
        self.raw, self.runs, self.before = raw, runs, before
        self.tokens: list[Token] = []
        self.offsets: list[int] = []
        self.gaps: list[int] = []  # window positions of gaps
        self._next_run()

    def _next_run(self) -> None:
        self._offsets, self._tokens = next(self.runs, ((), []))
        self._i = 0  # the run's first token not yet taken

    @property
    def next_at(self) -> int:
        return self._offsets[self._i] if self._offsets else len(self.raw)

    def take_one(self) -> None:
        assert self._offsets, "nothing left to take"
        self._take(self._i + 1)

    def take_until(self, offset: int) -> None:
        """Take every token that starts before `offset`."""
        while self._offsets:
            end = bisect_left(self._offsets, offset, self._i)
            if end == self._i:
                return
            self._take(end)

    def _take(self, end: int) -> None:
        first = self._tokens[self._i]
        if isinstance(first, Gap):  # a gap is a run of its own
            self.gaps.append(len(self.tokens))
        self.tokens.extend(self._tokens[self._i : end])
        self.offsets.extend(self._offsets[self._i : end])
        self._i = end
        if end == len(self._offsets):
            self._next_run()

    def framed(self, rest: int) -> Framed:
        frames = self.before + len(self.tokens) - len(self.gaps) + rest
        gaps = [self.tokens[p] for p in self.gaps]
        gap_bytes = sum(len(g.data) for g in gaps if isinstance(g, Gap))
        return Framed(self.tokens, self.offsets, frames, gap_bytes, self.before, self.gaps)
