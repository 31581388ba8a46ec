"""CPU used during a benchmark window: by each of our processes, and by everything else.

On a shared machine a figure is only as good as the quiet it was measured in, so
every run reports the CPU that other processes used during its window
(`background_percent`, in % of one core like `top`) and the time the hypervisor
stole (`steal_percent`). Our processes' CPU comes from psutil while they live, or
from the total they report themselves just before exiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psutil


def process_cpu(pid: int) -> float | None:
    """User + system seconds of a live process, None if it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def _machine() -> tuple[float, float]:
    """(busy, steal) seconds summed over every CPU since boot."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(busy), float(getattr(t, "steal", 0.0))


@dataclass(slots=True)
class CpuWindow:
    pids: dict[str, int]
    t0: float = field(default_factory=time.monotonic)
    start: dict[str, float] = field(default_factory=dict)
    machine0: tuple[float, float] = field(default_factory=_machine)

    def __post_init__(self) -> None:
        self.start = {name: process_cpu(pid) or 0.0 for name, pid in self.pids.items()}

    def close(self, reported: dict[str, float]) -> dict[str, Any]:
        """Seconds per process (`reported` totals for those that may have exited)."""
        wall = max(1e-9, time.monotonic() - self.t0)
        used: dict[str, float] = {}
        for name, pid in self.pids.items():
            now = reported.get(name)
            if now is None:
                now = process_cpu(pid)
            used[name] = max(0.0, (now or 0.0) - self.start[name])
        busy1, steal1 = _machine()
        others = max(0.0, busy1 - self.machine0[0] - sum(used.values()))
        return {"wall_s": wall, "seconds": used,
                "background_percent": round(others / wall * 100, 1),
                "steal_percent": round((steal1 - self.machine0[1]) / wall * 100, 1)}
