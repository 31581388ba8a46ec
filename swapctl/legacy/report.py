"""One report shape for every swap strategy (takeover, bridge, restart, handoff).

A strategy fills what it measured itself (pause, connections moved, disconnects it
caused, bytes it could not move) and then each independent checker that watched the
swap (the swap canary, a `swapctl load` session) is added with `add_checker`: the
report keeps, figure by figure, the larger of the strategy's own count and the sum
over checkers (they watch disjoint clients), so it is never more optimistic than any.
`None` means "not measured", never zero.

    report = StrategyReport("takeover", could_not_guarantee="...")
    report.pause_ms = 1.8
    report.add_checker("load", figures_from_load(load_report))
    print(report.render_text()); json.dumps(report.to_dict())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swapctl.probes.report import LoadReport

FIGURES = ("disconnects", "lost", "duplicated", "reordered", "corrupted")


@dataclass(slots=True)
class StrategyReport:
    strategy: str  # takeover | bridge | restart | handoff
    outcome: str = "completed"  # completed | rolled_back | failed
    reason: str = ""  # why it rolled back or failed
    pause_ms: float | None = None  # clients not served (strategy's own measurement)
    disconnects: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    reordered: int | None = None
    corrupted: int | None = None
    moved: int = 0  # established connections moved to the candidate
    unmovable_bytes: int | None = None  # bytes the strategy knows it could not carry over
    could_not_guarantee: str = ""
    checkers: dict[str, dict[str, int]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # strategy-specific figures
    estimated: dict[str, int | None] | None = None  # the strategy's own, before checkers

    def add_checker(self, name: str, figures: dict[str, int]) -> None:
        """Record a checker's counts. Checkers watch disjoint clients (the canary its own,
        a load run its own), so each figure becomes the larger of the strategy's own
        count and the sum over checkers."""
        if self.estimated is None:
            self.estimated = {k: getattr(self, k) for k in FIGURES}
        self.checkers[name] = {k: int(figures[k]) for k in FIGURES if k in figures}
        for key in FIGURES:
            counts = [c[key] for c in self.checkers.values() if key in c]
            own = self.estimated.get(key)
            if counts or own is not None:
                setattr(self, key, max(own or 0, sum(counts)))

    @property
    def clean(self) -> bool:
        """Completed with every measured figure at zero (and all of them measured)."""
        values = [getattr(self, k) for k in FIGURES]
        return self.outcome == "completed" and all(v == 0 for v in values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "outcome": self.outcome, "reason": self.reason,
            "pause_ms": None if self.pause_ms is None else round(self.pause_ms, 3),
            **{k: getattr(self, k) for k in FIGURES},
            "moved": self.moved, "unmovable_bytes": self.unmovable_bytes,
            "could_not_guarantee": self.could_not_guarantee,
            "estimated": self.estimated, "checkers": self.checkers, "details": self.details,
        }

    def render_text(self) -> str:
        pause = "not measured" if self.pause_ms is None else f"{self.pause_ms:.3f} ms"
        lines = [f"strategy {self.strategy}: {self.outcome.upper()}"
                 + (f" ({self.reason})" if self.reason else ""),
                 f"  pause:        {pause}",
                 f"  moved:        {self.moved} connection(s)",
                 "  " + ", ".join(f"{k} {_n(getattr(self, k))}" for k in FIGURES),
                 f"  unmovable:    {_n(self.unmovable_bytes)} byte(s)"]
        for name, figures in self.checkers.items():
            lines.append(f"  checker {name}: " + ", ".join(f"{k} {v}" for k, v in
                                                          figures.items()))
        for key, value in self.details.items():
            lines.append(f"  {key}: {value}")
        lines.append(f"  could not guarantee: {self.could_not_guarantee or 'nothing noted'}")
        return "\n".join(lines)


def _n(value: int | None) -> str:
    return "not measured" if value is None else str(value)


def figures_from_load(report: LoadReport) -> dict[str, int]:
    """The `swapctl load` checker's counts (every consumer and audited echo)."""
    total = report.total
    return {"disconnects": report.disconnects, "lost": total.lost,
            "duplicated": total.duplicated, "reordered": total.reordered,
            "corrupted": total.corrupted + total.unexpected}


def figures_from_canary(totals: dict[str, int]) -> dict[str, int]:
    """The swap canary's counts (`swapctl.swap.canary.summarize` of its final audit)."""
    return {"disconnects": totals["disconnects"], "lost": totals["lost"],
            "duplicated": totals["duplicated"], "reordered": totals["reordered"],
            "corrupted": totals["corrupted"] + totals["unexpected"]}
