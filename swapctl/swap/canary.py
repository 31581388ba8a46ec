"""Canary traffic that rides through every swap, connected like any client.

`Canary` runs `swapctl.swap.canary_child` as a separate process (its own process
group) and asks it for snapshots: what each canary stream received, what is missing
more than half a second after it was sent, duplicates, reorders, corruption,
disconnects, a dead strategy consumer, and the largest inter-arrival gap since the
last `mark()` (the pause a client saw). `stop()` ends the traffic, lets the stream
settle and returns the exact per-stream audit.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.process import stop_group


class CanaryError(SwapctlError):
    """The canary process failed or stopped answering."""


@dataclass(frozen=True, slots=True)
class CanaryHealth:
    """What a snapshot says about the traffic: problems, or none."""

    problems: tuple[str, ...]
    max_gap_ms: float
    arrivals: int

    @property
    def ok(self) -> bool:
        return not self.problems


_JUDGED = ("missing", "behind", "duplicated", "reordered", "corrupted", "disconnects")


def judge(snapshot: dict[str, Any], baseline: dict[str, Any] | None = None) -> CanaryHealth:
    """Problems that appeared since `baseline` (an earlier snapshot), or ever."""
    before = {s["name"]: s for s in baseline["streams"]} if baseline else {}
    problems = []
    for s in snapshot["streams"]:
        base = before.get(s["name"], {})
        for key in _JUDGED:
            # missing/behind are already relative to the last mark / to now
            grown = s[key] - (0 if key in ("missing", "behind") else base.get(key, 0))
            if grown > 0:
                problems.append(f"canary {s['name']}: {grown} {key}")
        if s["dead"] and not base.get("dead"):
            problems.append(f"canary {s['name']}: consumer stopped for good (EOF)")
    gap = max((s["window_gap_ns"] for s in snapshot["streams"]), default=0) / 1e6
    arrivals = min((s["arrivals"] for s in snapshot["streams"]), default=0)
    return CanaryHealth(tuple(problems), gap, arrivals)


class Canary:
    def __init__(self, socket_path: Path, rate: float = 2000.0,
                 consumers: tuple[str, ...] = ("strategy", "dashboard"),
                 domain_byte: int = 1) -> None:
        self.socket_path = socket_path
        self.rate = rate
        self.consumers = consumers
        self.domain_byte = domain_byte
        self.proc: subprocess.Popen[str] | None = None
        self.final: dict[str, Any] | None = None
        # the latest snapshot, for readers in other threads (a swap's followers): the
        # pipe to the child is the swap's thread's alone
        self.last: dict[str, Any] | None = None

    def start(self, timeout: float = 10.0) -> None:
        args = [sys.executable, "-P", "-m", "swapctl.swap.canary_child",
                "--socket", str(self.socket_path), "--rate", str(self.rate),
                "--consumers", ",".join(self.consumers), "--domain-byte", str(self.domain_byte)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        hello = self._read(timeout)
        if not hello.get("ready"):
            raise CanaryError(f"canary did not start: {hello}")

    def _ask(self, command: str, timeout: float = 5.0) -> dict[str, Any]:
        if self.proc is None or self.proc.stdin is None:
            raise CanaryError("canary not running")
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise CanaryError(f"canary exited ({self.proc.poll()})") from None
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise CanaryError(f"canary did not answer within {timeout}s ({self.proc.poll()})")
        data: dict[str, Any] = json.loads(line)
        return data

    def snapshot(self) -> dict[str, Any]:
        self.last = self._ask("snapshot")
        return self.last

    def health(self, baseline: dict[str, Any] | None = None) -> CanaryHealth:
        return judge(self.snapshot(), baseline)

    def mark(self) -> int:
        """Start a new window for the largest-gap measurement; returns its time (ns)."""
        return int(self._ask("mark")["mark_ns"])

    def stop(self) -> dict[str, Any]:
        """End the traffic and return the settled, exact audit of every stream."""
        if self.final is None:
            self.final = self._ask("stop", timeout=15.0)
            self.close()
        return self.final

    def close(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, 5.0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc = None


def summarize(final: dict[str, Any]) -> dict[str, int]:
    """Totals over the canary streams of a final audit."""
    keys = ("lost", "duplicated", "reordered", "corrupted", "unexpected", "disconnects")
    totals = {key: sum(int(s[key]) for s in final["streams"]) for key in keys}
    totals["dead"] = sum(1 for s in final["streams"] if s["dead"])
    totals["sent"] = int(final["sent"])
    totals["received_min"] = min(int(s["received"]) for s in final["streams"])
    return totals
