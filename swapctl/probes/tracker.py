"""Per-publisher arrival bookkeeping: exact lost / duplicated / reordered in O(1) in order.

How it works: `next` is one past the highest message number seen. Every number
below it is received, damaged (arrived with a bad checksum) or *missing*; missing
numbers are kept as sorted half-open intervals (`starts`, `ends`), so a jump over a
million lost messages costs one interval, and new intervals are always appended at
the top. An arrival of n:
  n == next            in order (the hot path: one comparison, one store)
  n >  next            in order; [next, n) becomes missing
  n <  next, missing   *reordered* (it arrived after a higher number)
  n <  next, damaged   received now (an intact copy after a damaged one)
  otherwise            *duplicated*
At the end, with `sent` known: lost = missing numbers up to `sent` plus the
never-reached tail (next .. sent); numbers above `sent` are unexpected.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

LOST_SAMPLES = 10


@dataclass(frozen=True, slots=True)
class PublisherAudit:
    """What one consumer saw of one publisher's messages."""

    publisher: int
    sent: int
    received: int  # distinct, intact, within 1..sent
    lost: int
    duplicated: int
    reordered: int
    damaged: int  # arrived only with a bad checksum (counted as corrupted, not lost)
    unexpected: int  # distinct numbers above `sent` (never sent)
    lost_samples: tuple[int, ...] = ()  # the first few lost message numbers

    def to_dict(self) -> dict[str, object]:
        return {"publisher": self.publisher, "sent": self.sent, "received": self.received,
                "lost": self.lost, "duplicated": self.duplicated, "reordered": self.reordered,
                "damaged": self.damaged, "unexpected": self.unexpected,
                "lost_samples": list(self.lost_samples)}


class PublisherTrack:
    __slots__ = ("damaged", "duplicated", "ends", "missing", "next", "reordered", "starts",
                 "syncs")

    def __init__(self) -> None:
        self.next = 1
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.missing = 0
        self.damaged: set[int] = set()
        self.duplicated = 0
        self.reordered = 0
        self.syncs = 0  # start-barrier messages (number 0): not judged

    @property
    def seen(self) -> bool:
        return self.next > 1 or self.duplicated > 0

    def arrive(self, n: int) -> bool:
        """Any intact arrival (the hot loop inlines the `n == next` case); returns True
        for a sync message (number 0, see `ident.SYNC`), which is not data."""
        if n == self.next:
            self.next = n + 1
        elif n > self.next:
            self._jump(n)
        elif n < 1:
            self.syncs += 1
            return True
        elif self._take_missing(n):
            self.reordered += 1
        elif n in self.damaged:
            self.damaged.discard(n)
        else:
            self.duplicated += 1
        return False

    def arrive_damaged(self, n: int) -> bool:
        """A bad-checksum frame claiming number n: attributed only where it is plausible
        (the next number, or a missing one), so a flipped sequence bit cannot open a hole.
        Returns whether it was attributed."""
        if n == self.next and n >= 1:
            self.next = n + 1
        elif not (1 <= n < self.next and self._take_missing(n)):
            return False
        self.damaged.add(n)
        return True

    def _jump(self, n: int) -> None:
        self.starts.append(self.next)
        self.ends.append(n)
        self.missing += n - self.next
        self.next = n + 1

    def _take_missing(self, n: int) -> bool:
        i = bisect_right(self.starts, n) - 1
        if i < 0 or n >= self.ends[i]:
            return False
        start, end = self.starts[i], self.ends[i]
        self.missing -= 1
        if end - start == 1:
            del self.starts[i], self.ends[i]
        elif n == start:
            self.starts[i] = n + 1
        elif n == end - 1:
            self.ends[i] = n
        else:
            self.ends[i] = n
            self.starts.insert(i + 1, n + 1)
            self.ends.insert(i + 1, end)
        return True

    def missing_upto(self, limit: int) -> int:
        """Missing numbers in 1..limit."""
        total = 0
        for start, end in zip(self.starts, self.ends, strict=True):
            if start > limit:
                break
            total += min(end, limit + 1) - start
        return total

    def complete(self, sent: int) -> bool:
        """Every number 1..sent has arrived (intact or damaged)."""
        return self.next > sent and (not self.starts or self.starts[0] > sent)

    def lost_samples(self, sent: int, limit: int = LOST_SAMPLES) -> tuple[int, ...]:
        out: list[int] = []
        for start, end in zip(self.starts, self.ends, strict=True):
            out.extend(range(start, min(end, sent + 1, start + limit - len(out))))
            if len(out) >= limit or start > sent:
                break
        out.extend(range(max(self.next, 1), min(sent + 1, self.next + limit - len(out))))
        return tuple(out[:limit])

    def result(self, publisher: int, sent: int) -> PublisherAudit:
        top = self.next - 1
        below = min(top, sent)
        missing = self.missing_upto(sent)
        damaged = sum(1 for n in self.damaged if n <= sent)
        unexpected = 0
        if top > sent:
            unexpected = (top - sent) - (self.missing - missing) - (len(self.damaged) - damaged)
        return PublisherAudit(
            publisher=publisher,
            sent=sent,
            received=below - missing - damaged,
            lost=missing + max(0, sent - top),
            duplicated=self.duplicated,
            reordered=self.reordered,
            damaged=damaged,
            unexpected=unexpected,
            lost_samples=self.lost_samples(sent),
        )
