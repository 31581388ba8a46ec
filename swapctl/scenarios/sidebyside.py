"""Old and new relay side by side: start both isolated, drive scenarios, compare, minimize.

How it works: both relays start once (relays.py) in a private work directory and serve
every scenario of the run; each scenario gets fresh client connections on both and is
driven in lockstep (driver.py); the two sets of streams go to the pure diff engine. A
relay that died during a scenario is noted and restarted before the next one. The
minimizer re-runs the scenario with fewer writes (diff/minimize.py) while the first
difference's category still shows, then saves what is left as a capture.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from swapctl.capture.format import Record, scenario_records
from swapctl.capture.pcapng import write_capture
from swapctl.diff import Category, Mode, compare
from swapctl.diff.minimize import Minimized, minimize
from swapctl.diff.report import DiffReport, RunInfo
from swapctl.scenarios.driver import Driver, Timing
from swapctl.scenarios.model import Scenario
from swapctl.scenarios.relays import RelayProcess, RelaySpec

SIDES = ("old", "new")


@dataclass(frozen=True, slots=True)
class Setup:
    old: RelaySpec
    new: RelaySpec
    mode: Mode = Mode.FRAMES
    timing: Timing = field(default_factory=Timing)
    keep: bool = False  # keep the work directory (relay logs, sockets) afterwards
    start_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MinimizeResult:
    scenario: Scenario
    report: DiffReport
    search: Minimized[int]
    writes_before: int


class SideBySide:
    """Both relays under test for the life of the `with` block."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.workdir = Path(tempfile.mkdtemp(prefix="swapctl-diff-"))
        self.relays = [RelayProcess(setup.old, self.workdir, "old"),
                       RelayProcess(setup.new, self.workdir, "new")]
        self.recording: list[Record] | None = None

    def __enter__(self) -> SideBySide:
        try:
            for relay in self.relays:  # both start at once, then both must answer
                relay.spawn()
            for relay in self.relays:
                relay.wait_ready(self.setup.start_timeout)
        except BaseException:
            self.close(keep=self.setup.keep)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(keep=self.setup.keep)

    def close(self, keep: bool = False) -> None:
        for relay in self.relays:
            relay.stop()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, scenario: Scenario, record: bool = False) -> DiffReport:
        """Drive `scenario` into both relays and compare; `record` keeps every record."""
        notes = self._restart_dead()
        self.recording = [] if record else None
        start = time.monotonic()
        driver = Driver([r.socket for r in self.relays], self.setup.timing,
                        self._observe if record else None)
        results = driver.run(scenario)
        seconds = time.monotonic() - start
        notes += driver.shared
        for side, result in zip(SIDES, results, strict=True):
            notes += [f"{side}: {n}" for n in result.notes]
        for relay in self.relays:
            if relay.exit_code is not None:
                notes.append(f"{relay.name} relay exited with code {relay.exit_code} during "
                             f"the scenario; its log ends with: {relay.log_tail(3)}")
        comparison = compare(results[0].streams, results[1].streams, self.setup.mode)
        info = RunInfo(scenario.name, scenario.seed, self.setup.old.label,
                       self.setup.new.label, scenario.domain_byte, seconds, tuple(notes))
        return DiffReport(info, comparison)

    def _restart_dead(self) -> list[str]:
        notes = []
        for relay in self.relays:
            if relay.exit_code is not None:
                notes.append(f"{relay.name} relay had exited (code {relay.exit_code}); "
                             "restarted for this scenario")
                relay.stop()
                relay.start(self.setup.start_timeout)
        return notes

    def _observe(self, side: int, record: Record) -> None:
        assert self.recording is not None
        self.recording.append(replace(record, view=SIDES[side]))

    def save(self, path: Path, scenario: Scenario, report: DiffReport | None = None) -> int:
        """Write `scenario` (and what each side received in the last recorded run) to a
        pcapng capture that `diff --replay` and `replay` read."""
        records = scenario_records(scenario)
        if self.recording:
            records += self.recording
        meta: dict[str, Any] = {"kind": "scenario", "scenario": scenario.name,
                                "seed": scenario.seed, "domain_byte": scenario.domain_byte,
                                "old": self.setup.old.label, "new": self.setup.new.label}
        if report is not None:
            meta["equivalent"] = report.equivalent
            first = report.comparison.first
            if first is not None:
                meta["first_difference"] = first.category.value
        return write_capture(path, records, meta)

    def minimize(self, scenario: Scenario, report: DiffReport, max_trials: int = 100
                 ) -> MinimizeResult:
        """The fewest writes that still show the first difference's category."""
        first = report.comparison.first
        if first is None:
            raise ValueError("minimize() needs a report with a difference")
        target = first.category
        writes = sum(1 for _ in scenario.writes())

        def fails(keep: Sequence[int]) -> bool:
            return _shows(self.run(scenario.with_writes(set(keep))), target)

        search = minimize(list(range(writes)), fails, max_trials=max_trials)
        smaller = scenario.with_writes(set(search.units))
        final = self.run(smaller, record=True)
        return MinimizeResult(smaller, final, search, writes)


def _shows(report: DiffReport, category: Category) -> bool:
    return any(category is c for client in report.comparison.clients for c, _ in client.counts)
