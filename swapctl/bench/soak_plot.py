"""The soak's plot: RSS and open fds of every process, and the swaps' pauses, over time.

matplotlib is optional (`pip install 'swapctl[plot]'`); the format follows the file's
suffix (.png, .svg, .pdf). `plot_available()` says beforehand whether it can be drawn.
"""

from __future__ import annotations

import importlib.util
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
    for (role, pid), points in _series(report["samples"]).items():
        label = f"{role} {pid}"
        style = "-" if role in ("swapctld", "supervisord") else ":"
        rss.plot([p[0] / 60 for p in points], [p[1] for p in points], style, label=label)
        fds.plot([p[0] / 60 for p in points], [p[2] for p in points], style, label=label)
    rss.set_ylabel("RSS (MB)")
    fds.set_ylabel("open fds")
    rss.legend(fontsize=6, ncol=3)
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


def _series(samples: list[dict[str, Any]]) -> dict[tuple[str, int], list[tuple[float, float,
                                                                            int]]]:
    out: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for s in samples:
        for p in s["processes"]:
            out.setdefault((p["role"], p["pid"]), []).append((s["t_s"], p["rss_mb"], p["fds"]))
    return out


def _title(report: dict[str, Any]) -> str:
    procs = report["processes"]
    slopes = ", ".join(f"{role} RSS {info['rss_slope_mb_per_h']} MB/h"
                       for role, info in procs.items() if role in ("swapctld", "supervisord"))
    load = report.get("load") or {}
    return (f"swapctl bench soak: {report['conditions']['minutes']:g} min, "
            f"{report['steps']['run']} steps, lost {load.get('lost')}, "
            f"disconnects {load.get('disconnects')}; {slopes}")
