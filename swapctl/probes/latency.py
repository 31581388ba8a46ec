"""Latency histogram: O(1) per sample, mergeable, bounded relative error.

Log-linear buckets (as HdrHistogram): values below 128 ns get a bucket each; above,
every power of two is split into 64 buckets, so a bucket spans at most 1/64 of its
values (under 1.6 %). Percentiles are reported as the highest value of the bucket
holding that rank (never under the true value), capped by the exact maximum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SUB_BITS = 7
LINEAR = 1 << SUB_BITS  # values below this are exact
HALF = LINEAR >> 1
BUCKETS = 64 * HALF  # covers every non-negative 64-bit value


def bucket_of(value: int) -> int:
    """Bucket index of a value (negative values count as 0)."""
    if value < LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - SUB_BITS
    return (shift << 6) + (value >> shift)


def bucket_high(index: int) -> int:
    """The highest value that falls in bucket `index`."""
    if index < LINEAR:
        return index
    shift = (index >> 6) - 1
    mantissa = index - (shift << 6)
    return ((mantissa + 1) << shift) - 1


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Count, percentiles and exact extremes in nanoseconds; `buckets` allows merging."""

    count: int = 0
    p50: int = 0
    p99: int = 0
    p999: int = 0
    max: int = 0
    min: int = 0
    buckets: tuple[tuple[int, int], ...] = ()

    @classmethod
    def merge(cls, summaries: Iterable[LatencySummary]) -> LatencySummary:
        hist = LatencyHistogram()
        for s in summaries:
            hist.absorb(s)
        return hist.summary()

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "p50_ns": self.p50, "p99_ns": self.p99,
                "p999_ns": self.p999, "max_ns": self.max, "min_ns": self.min}


class LatencyHistogram:
    """Mutable accumulator; hot loops may bump `counts[bucket_of(v)]` and `note_extremes`."""

    __slots__ = ("counts", "max", "min")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.max = -1
        self.min = -1

    def add(self, value: int, times: int = 1) -> None:
        self.counts[bucket_of(value)] += times
        self.note_extremes(value, value)

    def note_extremes(self, low: int, high: int) -> None:
        low, high = max(low, 0), max(high, 0)
        self.max = max(self.max, high)
        if self.min < 0 or low < self.min:
            self.min = low

    def absorb(self, summary: LatencySummary) -> None:
        for index, count in summary.buckets:
            self.counts[index] += count
        if summary.count:
            self.note_extremes(summary.min, summary.max)

    def percentile(self, q: float, total: int | None = None) -> int:
        """Nearest-rank percentile, q in (0, 1]; 0 when empty."""
        total = sum(self.counts) if total is None else total
        if not total:
            return 0
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_high(index), self.max)
        return self.max

    def summary(self) -> LatencySummary:
        total = sum(self.counts)
        if not total:
            return LatencySummary()
        pct = [self.percentile(q, total) for q in (0.5, 0.99, 0.999)]
        buckets = tuple((i, c) for i, c in enumerate(self.counts) if c)
        return LatencySummary(total, pct[0], pct[1], pct[2], self.max, self.min, buckets)


def percentiles(samples: Sequence[int | float], points: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles, keyed `p50`, `p99`, `p99.9`; empty input gives {}."""
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)
    out: dict[str, float] = {}
    for p in points:
        rank = max(1, math.ceil(p / 100 * n))
        out[f"p{p:g}"] = ordered[rank - 1]
    return out
