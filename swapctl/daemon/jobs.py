"""A swap as swapctld runs it: its identity, its phase, and the records waiters follow.

Every swap, whatever its strategy, is driven by a `SwapRun` (the one engine); its
journal records reach `add`, and its report reaches `finish`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from swapctl.swap.canary import Canary
from swapctl.swap.executor import SwapRun


@dataclass
class SwapJob:
    swap_id: str
    kind: str  # "swap", "rollback" (swap back to the previous release) or "recovery"
    strategy: str  # handoff, takeover, bridge, restart
    from_release: str
    to_release: str
    run: SwapRun | None = None
    canary: Canary | None = None
    started: float = field(default_factory=time.time)
    phase_now: str = "starting"  # legacy strategies say where they are
    records: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    request: str | None = None  # "rollback", "abort" or "commit" from an operator
    cond: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def of_run(cls, run: SwapRun, kind: str) -> SwapJob:
        return cls(run.swap_id, kind, run.strategy, run.old.release.name, run.release.name,
                   run, run.canary)

    @property
    def phase(self) -> str:
        return self.run.machine.state.value if self.run is not None else self.phase_now

    @property
    def running(self) -> bool:
        return self.report is None

    def add(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def finish(self, report: dict[str, Any]) -> None:
        with self.cond:
            self.report = report
            self.cond.notify_all()

    def follow(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each record as it is journaled, then {"report": report}."""
        seen = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.cond:
                while seen == len(self.records) and self.report is None:
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        return
                    self.cond.wait(0.5 if wait is None else min(wait, 0.5))
                new, seen = self.records[seen:], len(self.records)
                report = self.report
            yield from new
            if report is not None and seen == len(self.records):
                yield {"report": report}
                return


class GoneHandle:
    """The process handle of a release that is no longer running (recovery found it
    gone): never alive, nothing to stop."""

    pid = 0
    create_time = 0.0

    def alive(self) -> bool:
        return False

    def describe_exit(self) -> str:
        return "not running when swapctld restarted"

    def stop(self, timeout: float = 5.0) -> int | None:
        return None

    def kill(self) -> None:
        return None
