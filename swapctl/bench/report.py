"""What every `swapctl bench` shares: run conditions, percentiles, goals and text rendering.

How it works: a benchmark returns a plain JSON-ready dict whose top-level keys are
sections (`conditions`, figures, `reference`, `goals`, ...). `-o json` prints that dict
as is; `render_text` walks it for people: a title line, each section as indented
`key: value` lines, and the goals as one `MET`/`NOT MET` line each. A new bench only
builds its dict (with `conditions()` and `Goal`s) and gets both renderings for free.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import swapctl
from swapctl.probes.latency import percentiles

Report = dict[str, Any]


def conditions(**extra: Any) -> dict[str, Any]:
    """The machine and interpreter a figure was measured on, plus the bench's own settings."""
    load1, load5, _ = os.getloadavg()
    base: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
    }
    base.update(extra)
    return base


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_revision(*paths: str) -> dict[str, Any]:
    """The checkout a figure was measured on, and whether `paths` had uncommitted changes."""
    root = Path(swapctl.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", *paths) != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit, "paths": list(paths), "uncommitted_changes": dirty}


def sample_stats(samples: Sequence[float]) -> dict[str, Any]:
    """n, p50, p99 (nearest rank), max and mean; {"n": 0} when nothing was measured."""
    if not samples:
        return {"n": 0}
    return {"n": len(samples), **percentiles(samples, (50, 99)), "max": max(samples),
            "mean": round(sum(samples) / len(samples), 3)}



def slope(points: Sequence[tuple[float, float]], min_points: int = 3) -> float | None:
    """Least-squares slope of (x, value) points, per unit of x; None under `min_points`
    points or when every x is the same."""
    if len(points) < max(min_points, 2):
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    return sum((x - mean_x) * (v - mean_v) for x, v in points) / var


@dataclass(frozen=True, slots=True)
class Goal:
    """A target a figure is held to, and whether this run met it."""

    name: str
    target: str  # e.g. ">= 1000000 msg/s"
    measured: float | None  # None: could not be measured in this run
    unit: str
    met: bool

    @classmethod
    def at_least(cls, name: str, measured: float | None, target: float, unit: str) -> Goal:
        met = measured is not None and measured >= target
        return cls(name, f">= {_number(target)} {unit}".strip(), measured, unit, met)

    @classmethod
    def at_most(cls, name: str, measured: float | None, target: float, unit: str) -> Goal:
        met = measured is not None and measured <= target
        return cls(name, f"<= {_number(target)} {unit}".strip(), measured, unit, met)

    @classmethod
    def below(cls, name: str, measured: float | None, target: float, unit: str) -> Goal:
        met = measured is not None and measured < target
        return cls(name, f"< {_number(target)} {unit}".strip(), measured, unit, met)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "measured": self.measured,
                "unit": self.unit, "met": self.met}


def render_text(title: str, report: Mapping[str, Any]) -> str:
    """The report for people: sections of indented `key: value` lines, goals last."""
    lines = [title]
    for section, body in report.items():
        if section == "goals":
            continue
        lines.append("")
        _render(section, body, 0, lines)
    goals = report.get("goals")
    if goals:
        lines += ["", "goals"]
        lines += [_goal_line(g) for g in goals]
    return "\n".join(lines)


def _render(key: str, value: Any, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    if isinstance(value, Mapping):
        lines.append(f"{pad}{key}")
        for k, v in value.items():
            _render(str(k), v, depth + 1, lines)
    elif isinstance(value, list) and value and isinstance(value[0], Mapping):
        lines.append(f"{pad}{key}")
        for item in value:
            lines.append(f"{pad}  - " + ", ".join(f"{k}={_number(v)}" for k, v in item.items()))
    elif isinstance(value, list):
        lines.append(f"{pad}{key}: " + ", ".join(_number(v) for v in value))
    else:
        lines.append(f"{pad}{key}: {_number(value)}")


def _goal_line(goal: Mapping[str, Any]) -> str:
    mark = "MET    " if goal["met"] else "NOT MET"
    measured = "not measured" if goal["measured"] is None else _number(goal["measured"])
    return f"  {mark}  {goal['name']}: {measured} {goal['unit']} (target {goal['target']})"


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "none"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)
