"""Continuous comparison for shadow mode: the candidate's output against the live relay's.

How it works: every token (frame or gap) the live relay delivered and that was mirrored
into the candidate is *expected*, in order, with the time it was mirrored. Each token
the candidate delivers is matched against the oldest expected one; if it is found
further on, everything before it was skipped by the candidate (missing); if it is not
expected at all it is extra (or framing). An expected token not delivered within the
lag bound is missing. Memory is bounded: at most `window` tokens wait; older ones are
dropped unjudged and counted as suppressed. Times come from the caller (a clock is
injected), so this stays pure and testable.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from swapctl.diff.align import Category, Difference, Item, tlvs_ok
from swapctl.diff.compare import ClientResult, Comparison, Mode, Suppressed
from swapctl.diff.tokens import Gap, Token

CLIENT = "consumer"


@dataclass(slots=True)
class _Expected:
    serial: int
    key: object
    item: Item
    since: float


@dataclass(slots=True)
class _Side:
    frames: int = 0
    offset: int = 0

    def item(self, tok: Token) -> Item:
        data = tok.data if isinstance(tok, Gap) else tok
        gap = tok.kind if isinstance(tok, Gap) else None
        item = Item(self.frames, self.offset, data, gap)
        self.offset += len(data)
        if gap is None:
            self.frames += 1
        return item


@dataclass(slots=True)
class LiveMatcher:
    window: int = 100_000
    max_listed: int = 100
    matched: int = 0
    counts: Counter[Category] = field(default_factory=Counter)
    differences: list[Difference] = field(default_factory=list)
    overflow: int = 0  # expected tokens dropped unjudged because the window was full
    _expected: deque[_Expected] = field(default_factory=deque)
    _index: dict[object, deque[int]] = field(default_factory=dict)
    _serial: int = 0
    _live: _Side = field(default_factory=_Side)
    _cand: _Side = field(default_factory=_Side)

    @property
    def pending(self) -> int:
        return len(self._expected)

    @property
    def live_frames(self) -> int:
        return self._live.frames

    @property
    def candidate_frames(self) -> int:
        return self._cand.frames

    def expect(self, tokens: list[Token], now: float) -> None:
        """Tokens the live relay delivered and that were mirrored into the candidate."""
        for tok in tokens:
            if len(self._expected) >= self.window:
                self._pop()
                self.overflow += 1
            key = _key(tok)
            self._serial += 1
            self._expected.append(_Expected(self._serial, key, self._live.item(tok), now))
            self._index.setdefault(key, deque()).append(self._serial)

    def skip_live(self, tokens: list[Token]) -> None:
        """Live tokens not mirrored (dropped by a full queue): advance positions only."""
        for tok in tokens:
            self._live.item(tok)

    def observe(self, tokens: list[Token]) -> None:
        """Tokens the candidate delivered."""
        for tok in tokens:
            item = self._cand.item(tok)
            key = _key(tok)
            serials = self._index.get(key)
            if not serials:
                self._note(_unexpected(tok), None, item, "delivered by the candidate, not by "
                           "the live relay (or not within the window)")
                continue
            target = serials[0]
            while self._expected and self._expected[0].serial < target:
                head = self._pop()
                self._note(_skipped(head), head.item, None, "the live relay delivered it; "
                           "the candidate skipped it")
            self._pop()
            self.matched += 1

    def expire(self, before: float) -> None:
        """Expected tokens mirrored before `before` and still not delivered are missing."""
        while self._expected and self._expected[0].since < before:
            head = self._pop()
            self._note(_skipped(head), head.item, None,
                       "the live relay delivered it; the candidate did not, within the lag bound")

    def finish(self) -> None:
        self.expire(float("inf"))

    def _pop(self) -> _Expected:
        head = self._expected.popleft()
        serials = self._index[head.key]
        serials.popleft()
        if not serials:
            del self._index[head.key]
        return head

    def _note(self, cat: Category, live: Item | None, cand: Item | None, detail: str) -> None:
        self.counts[cat] += 1
        if len(self.differences) < self.max_listed:
            position = live.frame if live is not None else cand.frame if cand else 0
            self.differences.append(Difference(CLIENT, cat, live, cand, detail, position))

    def comparison(self, dropped_frames: int) -> Comparison:
        """The result so far, shaped like a side-by-side comparison (old = live)."""
        suppressed = []
        if dropped_frames:
            suppressed.append(Suppressed(
                "live frames not mirrored (the candidate's queue was full)", dropped_frames,
                "the queue is bounded so that the live side is never slowed", CLIENT))
        if self.overflow:
            suppressed.append(Suppressed(
                "expected frames dropped unjudged (matching window full)", self.overflow,
                f"at most {self.window} frames wait to be matched", CLIENT))
        counts = tuple((c, self.counts[c]) for c in Category if self.counts[c])
        result = ClientResult(CLIENT, self._live.frames, self._cand.frames, counts,
                              tuple(self.differences))
        return Comparison(Mode.FRAMES, (result,), tuple(suppressed), self.matched)


def _key(tok: Token) -> object:
    return tok.key(False) if isinstance(tok, Gap) else tok


def _unexpected(tok: Token) -> Category:
    return Category.FRAMING if isinstance(tok, Gap) or not tlvs_ok(tok) else Category.EXTRA


def _skipped(head: _Expected) -> Category:
    if head.item.gap is not None or not tlvs_ok(head.item.data):
        return Category.FRAMING
    return Category.MISSING
