"""What a swap proves, from all its evidence: the figures of its report and its exit code.

Three disjoint kinds of witnesses watch a swap:
  - the canary: swapctl's own publisher and consumers, with exact per-message audit;
  - the clients the strategy itself touched, seen from outside (`Evidence`): clients a
    restart or a drain deadline cut (counted in the kernel's socket table before the
    cut), how many of them connected again within the reconnect window, bytes a
    takeover could not carry over, consumers left mid-frame;
  - independent checkers the caller ran (a `swapctl load` session), whose clients are
    among the "other clients" above.
Each top-level figure (lost, duplicated, reordered, corrupted, disconnects,
dead_consumers) adds the canary's count to the other clients' count, never below what
an independent checker saw, and names its sources. A figure that could not be measured
is None with the reason ("unknown" beats 0). `exit_code` follows the README: 0 only for
a committed swap with every figure measured and 0. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FIGURES = ("lost", "duplicated", "reordered", "corrupted", "disconnects", "dead_consumers")
EXIT_OK, EXIT_FAILED, EXIT_ROLLBACK_FAILED = 0, 1, 6


@dataclass(slots=True)
class Evidence:
    """What the strategy saw of the clients that are not swapctl's own."""

    cut: int | None = 0  # other clients the swap disconnected (None: could not count)
    cut_by: str = ""  # what cut them
    reconnected: int | None = None  # of those, how many came back within the window
    reconnect_window_s: float = 0.0
    unmovable_bytes: int | None = 0  # bytes the strategy knows it could not carry over
    torn_consumers: int = 0  # consumers that may have been left mid-frame
    busy_at_cutover: str = ""  # why the old relay may have held messages it never sent
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "cut_by": self.cut_by, "reconnected": self.reconnected,
                "reconnect_window_s": self.reconnect_window_s,
                "unmovable_bytes": self.unmovable_bytes, "torn_consumers": self.torn_consumers,
                "busy_at_cutover": self.busy_at_cutover or None, "notes": list(self.notes)}


@dataclass(frozen=True, slots=True)
class Figure:
    value: int | None
    source: str
    unknown_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source,
                "unknown_because": self.unknown_because}


def figures(ev: Evidence, canary: Mapping[str, int] | None,
            checkers: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Figure]:
    """Every top-level figure from all the evidence (see the module doc)."""
    checkers = checkers or {}
    return {name: _figure(name, ev, canary, checkers) for name in FIGURES}


def _figure(name: str, ev: Evidence, canary: Mapping[str, int] | None,
            checkers: Mapping[str, Mapping[str, int]]) -> Figure:
    own, own_source, unknown = _others(name, ev, canary is not None)
    parts, total = [], 0
    if canary is not None:
        key = "dead" if name == "dead_consumers" else name
        total += int(canary.get(key, 0))
        parts.append(f"canary {int(canary.get(key, 0))}")
    seen = [int(c[name]) for c in checkers.values() if name in c]
    floor = sum(seen)
    if seen:
        parts.append("independent checkers " + "+".join(
            f"{n} {int(c[name])}" for n, c in checkers.items() if name in c))
    if own is None:
        why = unknown or "not measured"
        if floor:
            why += f"; at least {floor + total} seen by the checkers"
        return Figure(None, ", ".join([own_source, *parts]), why)
    parts.insert(0, f"{own_source} {own}")
    return Figure(total + max(own, floor), ", ".join(parts))


def _others(name: str, ev: Evidence, has_canary: bool) -> tuple[int | None, str, str | None]:
    """The figure for the clients that are not the canary's: (value, source, why unknown)."""
    cut = ev.cut
    if name == "disconnects":
        if cut is None:
            return None, "other clients", f"could not count the clients {ev.cut_by or 'cut'}"
        return cut, f"other clients cut ({ev.cut_by or 'none'})", None
    if name == "dead_consumers":
        if cut == 0:
            return 0, "other clients (none cut)", None
        if cut is None or ev.reconnected is None:
            return None, "other clients", "could not tell which cut clients came back"
        return max(0, cut - ev.reconnected), (
            f"other clients cut and not back within {ev.reconnect_window_s:g}s"), None
    if cut:
        return None, "other clients", (f"{cut} client(s) cut ({ev.cut_by}): what they would "
                                       "have received or sent since is not measured")
    if cut is None:
        return None, "other clients", "could not count the clients cut"
    if name == "lost" and ev.busy_at_cutover:
        return None, "other clients", ev.busy_at_cutover
    if name == "lost" and ev.unmovable_bytes:
        return None, "other clients", (f"{ev.unmovable_bytes} byte(s) of partial frames "
                                       "could not move with the connections")
    if name == "lost" and ev.unmovable_bytes is None:
        return None, "other clients", "bytes inside the old relay could not be measured"
    if name == "corrupted" and ev.torn_consumers:
        return None, "other clients", (f"{ev.torn_consumers} consumer(s) may have been left "
                                       "mid-frame by the old relay")
    if name == "corrupted" and ev.busy_at_cutover:
        return None, "other clients", ev.busy_at_cutover
    if not has_canary:
        return None, "other clients", ("no canary verdict for this swap (--canary-rate 0, "
                                       "or a canary shared by many swaps, as in bench "
                                       "handoff): nothing proves it")
    return 0, "other clients (every connection kept, every byte carried)", None


def proven(figs: Mapping[str, Figure]) -> bool:
    return all(f.value == 0 for f in figs.values())


def exit_code(decision: str, figs: Mapping[str, Figure]) -> int:
    """0: committed and every figure measured and 0; 6: the rollback failed; else 1."""
    if decision == "failed":
        return EXIT_ROLLBACK_FAILED
    return EXIT_OK if decision == "committed" and proven(figs) else EXIT_FAILED


def exit_code_of(report: Mapping[str, Any]) -> int:
    """The exit code of a report dict (the one `swapctl.swap.report.build` makes)."""
    figs = {name: Figure(**f) for name, f in (report.get("figures") or {}).items()}
    if not figs:  # a report without figures proves nothing
        return EXIT_ROLLBACK_FAILED if report.get("decision") == "failed" else EXIT_FAILED
    return exit_code(str(report.get("decision")), figs)
