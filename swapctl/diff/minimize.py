"""Delta debugging (ddmin): the smallest part of a failing input that still fails.

How it works: first binary searches find the shortest failing prefix and then the
latest start that still fails (a difference usually comes from a few neighbouring
writes). Then the input is cut into n chunks; if one chunk alone still fails it becomes
the input, else if the input without one chunk still fails that becomes the input;
otherwise n doubles, down to single units. Each trial costs a real side-by-side run,
so a budget of trials bounds the search; the best failing input found so far is
always returned, with whether the search finished (then no single unit can go).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Minimized(Generic[T]):
    units: tuple[T, ...]
    trials: int
    complete: bool  # True: 1-minimal (removing any one unit makes it pass)


def minimize(
    units: Sequence[T], fails: Callable[[Sequence[T]], bool], *, max_trials: int = 100
) -> Minimized[T]:
    """Shrink `units` while `fails(subset)` stays true; `units` itself must fail."""
    current, trials = _shortest_window(list(units), fails, max_trials)
    n = 2
    while len(current) >= 2:
        chunks = _split(current, n)
        complements = [_without(chunks, k) for k in range(len(chunks))] if n > 2 else []
        reduced = False
        for candidate, is_chunk in [(c, True) for c in chunks] + [(c, False) for c in complements]:
            if trials >= max_trials:
                return Minimized(tuple(current), trials, False)
            trials += 1
            if fails(candidate):
                current = candidate
                n = 2 if is_chunk else max(n - 1, 2)
                reduced = True
                break
        if reduced:
            continue
        if n >= len(current):
            break
        n = min(2 * n, len(current))
    return Minimized(tuple(current), trials, True)


def _shortest_window(
    items: list[T], fails: Callable[[Sequence[T]], bool], max_trials: int
) -> tuple[list[T], int]:
    """Binary searches for the shortest failing prefix, then the latest failing start:
    a difference usually comes from a few neighbouring writes."""
    trials, budget = 0, max_trials // 2
    lo, hi = 0, len(items)  # items[:hi] fails
    while hi - lo > 1 and trials < budget:
        mid = (lo + hi) // 2
        trials += 1
        if fails(items[:mid]):
            hi = mid
        else:
            lo = mid
    start, end = 0, hi  # items[start:hi] fails
    while end - start > 1 and trials < budget:
        mid = (start + end) // 2
        trials += 1
        if fails(items[mid:hi]):
            start = mid
        else:
            end = mid
    return items[start:hi], trials


def _split(items: list[T], n: int) -> list[list[T]]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        if end > start:
            out.append(items[start:end])
        start = end
    return out


def _without(chunks: list[list[T]], k: int) -> list[T]:
    return [x for i, chunk in enumerate(chunks) if i != k for x in chunk]
