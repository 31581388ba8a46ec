"""The soak's plot: RSS and open fds of every process, and the swaps' pauses, over time.

matplotlib is optional (`pip install 'swapctl[plot]'`); the format follows the file's
suffix (.png, .svg, .pdf). `plot_available()` says beforehand whether it can be drawn.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

from swapctl.errors import UsageError

SUFFIXES = (".png", ".svg", ".pdf")


def check_plot_path(path: Path) -> None:
    """Refuse before a long run what could not be written at its end."""
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--plot {path}: give a file ending in {', '.join(SUFFIXES)}")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'swapctl[plot]' (or leave "
                         "--plot out; the JSON has every sample)")
    if not path.parent.is_dir():
        raise UsageError(f"--plot {path}: no such directory {path.parent}")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (optional, and slow to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (rss, fds, pauses) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for role, points in _series(report["samples"]).items():
        style = "-" if role in ("swapctld", "supervisord") else ":"
        minutes = [p[0] / 60 for p in points]
        line, = rss.plot(minutes, [p[1] for p in points], style, label=role)
        fds.plot(minutes, [p[2] for p in points], style, color=line.get_color())
        restarts = [p for before, p in itertools.pairwise(points)
                    if p[3] != before[3]]  # a new pid: restarted (a fault, or a swap)
        rss.plot([p[0] / 60 for p in restarts], [p[1] for p in restarts], "|",
                 color=line.get_color(), markersize=8)
    rss.set_ylabel("RSS (MB)")
    fds.set_ylabel("open fds")
    rss.legend(fontsize=7, ncol=2, title="| : a new pid (restarted, or a swap's new relay)",
               title_fontsize=7)
    series = report["pauses"]["series"]
    for key, marker in (("server_ms", "o"), ("client_ms", "x")):
        dots = [(p["t_s"] / 60, p[key]) for p in series if p[key] is not None]
        pauses.plot([t for t, _ in dots], [v for _, v in dots], marker, markersize=3,
                    linestyle="none", label=key.replace("_ms", " pause"))
    pauses.set_ylabel("pause (ms)")
    pauses.set_xlabel("minutes")
    pauses.legend(fontsize=8)
    fig.suptitle(_title(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _series(samples: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, int, int]]]:
    """Per role (swapctld, supervisord, relay:PROGRAM): (t_s, rss, fds, pid) over the run,
    one line across its restarts."""
    out: dict[str, list[tuple[float, float, int, int]]] = {}
    for s in samples:
        for p in s["processes"]:
            out.setdefault(p["role"], []).append((s["t_s"], p["rss_mb"], p["fds"], p["pid"]))
    return out


def _slope(info: dict[str, Any]) -> str:
    """The longest-lived pid's RSS slope; the role's across its pids if none lived long."""
    if info.get("rss_slope_mb_per_h") is not None:
        return f"{info['rss_slope_mb_per_h']:+g} MB/h"
    across = (info.get("all_pids") or {}).get("rss_slope_mb_per_h")
    return f"{across:+g} MB/h across {info['pids_seen']} pids" if across is not None else "n/a"


def _title(report: dict[str, Any]) -> str:
    procs = report["processes"]
    slopes = ", ".join(f"{role} RSS {_slope(info)}"
                       for role, info in procs.items() if role in ("swapctld", "supervisord"))
    load = report.get("load") or {}
    return (f"swapctl bench soak: {report['conditions']['minutes']:g} min, "
            f"{report['steps']['run']} steps, lost {load.get('lost')}, "
            f"disconnects {load.get('disconnects')}; {slopes}")
