"""When drills may run: refused windows (swapctld.yaml `drills.refuse`) and the timer's
schedule (`swapctl drill --schedule`).

A window opens at `start` on each of its `days` in its own time zone and closes at
`end` (the next day when `end` is not after `start`). The schedule is the drill
timer's OnCalendar, expanded by the real systemd (`systemd-analyze calendar`), so
what is shown is what systemd will do; RandomizedDelaySec may start each run later.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import swapctl
from swapctl.config.load import Config
from swapctl.config.model import DrillWindow
from swapctl.errors import SwapctlError, UsageError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TIMER = "swapctl-drill@.timer"
UNIT_DIRS = (Path("/etc/systemd/system"), Path("/usr/lib/systemd/system"),
             Path("/lib/systemd/system"))


def refusal(config: Config, now: float) -> str | None:
    """Why a drill is refused at `now` (Unix time), or None."""
    for window in config.daemon.drills.refuse:
        if inside(window, now):
            return describe(window, now)
    return None


def inside(window: DrillWindow, now: float) -> bool:
    zone = ZoneInfo(window.timezone)
    local = dt.datetime.fromtimestamp(now, zone)
    start, end = _minutes(window.start), _minutes(window.end)
    minute = local.hour * 60 + local.minute
    today, yesterday = DAYS[local.weekday()], DAYS[(local.weekday() - 1) % 7]
    if start < end:
        return today in window.days and start <= minute < end
    # wraps past midnight: opened today, or opened yesterday and not closed yet
    return (today in window.days and minute >= start) or \
        (yesterday in window.days and minute < end)


def describe(window: DrillWindow, now: float | None = None) -> str:
    what = window.reason or "a refused drill window"
    text = (f"{what} ({','.join(window.days)} {window.start}-{window.end} {window.timezone}, "
            "swapctld.yaml drills.refuse)")
    if now is not None:
        local = dt.datetime.fromtimestamp(now, ZoneInfo(window.timezone))
        text += f"; it is {local:%a %H:%M} there"
    return text


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


# ----- the timer ---------------------------------------------------------------------

def timer_files(service: str, timer: Path | None = None) -> list[Path]:
    """The drill timer and its drop-ins, as systemd would read them (later ones win)."""
    if timer is not None:
        return [timer]
    for directory in UNIT_DIRS:
        if (directory / TIMER).is_file():
            files = [directory / TIMER]
            for name in (f"swapctl-drill@{service}.timer.d", "swapctl-drill@.timer.d"):
                files += sorted((Path("/etc/systemd/system") / name).glob("*.conf"))
            return files
    shipped = Path(swapctl.__file__).resolve().parents[1] / "systemd" / TIMER
    if shipped.is_file():
        return [shipped]
    raise UsageError(f"no {TIMER} in {', '.join(map(str, UNIT_DIRS))}: install the units "
                     "(systemd/README.md) or give --timer PATH")


def timer_settings(files: list[Path]) -> dict[str, list[str]]:
    """[Timer] keys of the files; an empty assignment resets the list (as systemd does)."""
    keys: dict[str, list[str]] = {}
    for path in files:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            if section != "Timer":
                continue
            if value.strip():
                keys.setdefault(key.strip(), []).append(value.strip())
            else:
                keys[key.strip()] = []
    return keys


def next_runs(expressions: list[str], count: int) -> list[dt.datetime]:
    """The next `count` elapses of the OnCalendar expressions, from the real systemd."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise SwapctlError("systemd-analyze is missing (apt: systemd): it computes the "
                           "schedule as systemd will")
    found: set[dt.datetime] = set()
    for expr in expressions:
        done = subprocess.run([tool, "calendar", f"--iterations={count}", expr],
                              capture_output=True, text=True, timeout=30, check=False,
                              env={"TZ": "UTC", "PATH": "/usr/bin:/bin", "SYSTEMD_PAGER": "",
                                   "SYSTEMD_LOG_COLOR": "0"})
        if done.returncode != 0:
            raise UsageError(f"OnCalendar={expr}: systemd-analyze says: "
                             f"{(done.stderr or done.stdout).strip()}")
        found.update(_elapses(done.stdout))
    return sorted(found)[:count]


def _elapses(text: str) -> list[dt.datetime]:
    out = []
    for line in text.splitlines():
        label, _, value = line.strip().partition(": ")
        if label == "Next elapse" or label.startswith("Iter. #"):
            stamp = value.strip()
            if stamp.endswith(" UTC"):
                out.append(dt.datetime.strptime(stamp[:-4], "%a %Y-%m-%d %H:%M:%S")
                           .replace(tzinfo=dt.UTC))
    return out


def schedule(config: Config, service: str, count: int, timer: Path | None = None
             ) -> dict[str, Any]:
    files = timer_files(service, timer)
    keys = timer_settings(files)
    expressions = keys.get("OnCalendar", [])
    if not expressions:
        raise UsageError(f"{files[-1]}: [Timer] has no OnCalendar=: the drill never runs")
    runs = []
    for when in next_runs(expressions, count):
        refused = refusal(config, when.timestamp())
        runs.append({"at": when.isoformat(), "refused": refused})
    return {"service": service, "unit": f"swapctl-drill@{service}.timer",
            "files": [str(f) for f in files], "on_calendar": expressions,
            "randomized_delay": _last(keys, "RandomizedDelaySec"),
            "persistent": _last(keys, "Persistent"), "runs": runs}


def _last(keys: dict[str, list[str]], name: str) -> str | None:
    values = keys.get(name)
    return values[-1] if values else None
