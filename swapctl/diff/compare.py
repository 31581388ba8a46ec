"""Comparing what each client received from the old and the new relay.

How it works: per client, the two byte streams are first compared whole (identical
bytes mean identical frames: only the frames are counted). When one stream is the
other's up to a frame boundary (a relay that delivered nothing, or stopped), the rest
of the longer one is judged a run at a time (onesided.py). Otherwise each stream is
cut into tokens (tokens.py), the common prefix and suffix are trimmed at C speed and
the middle is aligned with difflib; every unmatched token becomes a categorized
`Difference` (align.py). Modes:

- `frames` (default): identical frame sequences; a gap counts by kind and length.
- `strict`: also compares raw bytes, so garbage must match byte for byte.
- `per-publisher`: frames are grouped by their header's source byte and each group's
  order is compared on its own; interleaving across publishers is suppressed, and
  counted and listed as such.

Timing never enters: only bytes are compared, never when they arrived.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

from swapctl.diff.align import (
    Category,
    Difference,
    Entry,
    Found,
    Lane,
    align_lane,
    materialize,
)
from swapctl.diff.onesided import judge_rest
from swapctl.diff.tokens import Framed, Gap, Stream, count_frames, first_difference, windows
from swapctl.gcquiet import no_gc

__all__ = ["Category", "ClientResult", "Comparison", "Difference", "Mode", "Suppressed",
           "compare", "compare_client"]

DEFAULT_MAX_LISTED = 100
_SOURCE_BYTE = 6


class Mode(enum.Enum):
    FRAMES = "frames"
    STRICT = "strict"
    PER_PUBLISHER = "per-publisher"


@dataclass(frozen=True, slots=True)
class Suppressed:
    """Something deliberately not counted as a difference, with why."""

    what: str
    count: int
    why: str
    client: str = ""


@dataclass(frozen=True, slots=True)
class ClientResult:
    client: str
    old_frames: int
    new_frames: int
    counts: tuple[tuple[Category, int], ...]  # every difference, by category
    differences: tuple[Difference, ...]  # the first ones, in stream order
    first_byte_difference: int | None = None  # strict mode: first differing stream offset

    @property
    def equivalent(self) -> bool:
        return not self.counts

    @property
    def total(self) -> int:
        return sum(n for _, n in self.counts)


@dataclass(frozen=True, slots=True)
class Comparison:
    mode: Mode
    clients: tuple[ClientResult, ...]
    suppressed: tuple[Suppressed, ...]
    frames_compared: int

    @property
    def equivalent(self) -> bool:
        return all(c.equivalent for c in self.clients)

    @property
    def first(self) -> Difference | None:
        """The first difference of the first client that has one."""
        for client in self.clients:
            if client.differences:
                return client.differences[0]
        return None

    def totals(self) -> dict[Category, int]:
        out: Counter[Category] = Counter()
        for client in self.clients:
            for category, n in client.counts:
                out[category] += n
        return {c: out[c] for c in Category if out[c]}


def compare(
    old: Mapping[str, Stream],
    new: Mapping[str, Stream],
    mode: Mode = Mode.FRAMES,
    *,
    max_listed: int = DEFAULT_MAX_LISTED,
) -> Comparison:
    """Compare every client's streams; a client seen on one side only gets an empty stream."""
    names = list(old) + [n for n in new if n not in old]
    results: list[ClientResult] = []
    suppressed: list[Suppressed] = []
    compared = 0
    for name in names:
        result, quiet = compare_client(
            name, old.get(name, Stream(b"")), new.get(name, Stream(b"")), mode, max_listed
        )
        results.append(result)
        suppressed.extend(quiet)
        compared += max(result.old_frames, result.new_frames)
    return Comparison(mode, tuple(results), tuple(suppressed), compared)


def compare_client(
    name: str, old: Stream, new: Stream, mode: Mode = Mode.FRAMES,
    max_listed: int = DEFAULT_MAX_LISTED,
) -> tuple[ClientResult, list[Suppressed]]:
    if old.raw == new.raw and old.closed_by_relay == new.closed_by_relay:
        n = count_frames(old.raw)
        return ClientResult(name, n, n, (), ()), []
    with no_gc():  # millions of small objects: collections would cost more than the work
        return _compare_slow(name, old, new, mode, max_listed)


def _compare_slow(name: str, old: Stream, new: Stream, mode: Mode, max_listed: int
                  ) -> tuple[ClientResult, list[Suppressed]]:
    suppressed: list[Suppressed] = []
    found = judge_rest(name, old.raw, new.raw, mode is Mode.PER_PUBLISHER, max_listed)
    if found is None:
        found, suppressed = _aligned(name, old.raw, new.raw, mode, max_listed)
    counts, diffs = found.counts, found.differences
    if old.closed_by_relay != new.closed_by_relay:
        counts[Category.DISCONNECT] += 1
        diffs.append(_disconnect(name, found, old.closed_by_relay))
    first_byte = first_difference(old.raw, new.raw) if mode is Mode.STRICT else None
    result = ClientResult(
        name, found.old_frames, found.new_frames,
        tuple((c, counts[c]) for c in Category if counts[c]),
        tuple(diffs), first_byte,
    )
    return result, suppressed


def _aligned(name: str, old: bytes, new: bytes, mode: Mode, max_listed: int
             ) -> tuple[Found, list[Suppressed]]:
    """Cut both streams' differing windows into tokens and align them (align.py)."""
    a, b = windows(old, new)
    strict = mode is Mode.STRICT
    suppressed: list[Suppressed] = []
    lanes: Iterable[str] = repeat("")
    if mode is Mode.PER_PUBLISHER:
        found: list[tuple[Entry, str]] = []
        pairs: list[tuple[int, int]] = []
        for lane in _lanes(a, b):
            found += [(e, lane.name) for e in align_lane(a, b, lane, strict, pairs)]
        found.sort(key=lambda f: (f[0][1] if f[0][1] >= 0 else f[0][2], f[0][1] < 0))
        entries, lanes = [e for e, _ in found], [lane for _, lane in found]
        moved = _interleaving(pairs)
        if moved:
            suppressed.append(Suppressed(
                "frames interleaved differently across publishers", moved,
                "per-publisher mode compares each publisher's (source byte's) order only", name))
    else:
        whole = Lane("", range(len(a.tokens)), range(len(b.tokens)))
        entries = align_lane(a, b, whole, strict, None)
    categories = list(map(itemgetter(0), entries))  # counted in C: Enum hashes in Python
    counts = Counter({c: categories.count(c) for c in Category})
    diffs = [materialize(name, a, b, e, lane_name)
             for e, lane_name in zip(entries[:max_listed], lanes, strict=False)]
    return Found(a.frames, b.frames, len(a.tokens), len(b.tokens), counts, diffs), suppressed


def _lanes(a: Framed, b: Framed) -> list[Lane]:
    """One lane per publisher (source byte) plus one for gaps, in order of appearance."""
    old: dict[object, list[int]] = {}
    new: dict[object, list[int]] = {}
    for framed, lanes in ((a, old), (b, new)):
        for pos, tok in enumerate(framed.tokens):
            key: object = "gaps" if isinstance(tok, Gap) else tok[_SOURCE_BYTE]
            lanes.setdefault(key, []).append(pos)
    keys = list(old) + [k for k in new if k not in old]
    return [Lane(f"source {k}" if k != "gaps" else "gaps", old.get(k, []), new.get(k, []))
            for k in keys]


def _interleaving(pairs: list[tuple[int, int]]) -> int:
    """Matched frames that arrive, on the new side, before one that preceded them on the old."""
    moved, highest = 0, -1
    for _, new_pos in sorted(pairs):
        if new_pos < highest:
            moved += 1
        highest = max(highest, new_pos)
    return moved


def _disconnect(name: str, found: Found, old_closed: bool) -> Difference:
    side = "old" if old_closed else "new"
    frames = found.old_frames if old_closed else found.new_frames
    detail = (f"the {side} relay closed this client's connection after "
              f"{frames} frames; the other kept it open")
    return Difference(name, Category.DISCONNECT, None, None, detail,
                      position=found.old_window if old_closed else found.new_window)
