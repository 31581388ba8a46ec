"""What a running playbook shares between its steps: the journal, the measured values,
the releases, the clock, and cancellation.

Steps are cooperative: every wait goes through `RunContext.sleep`/`check`, which raise
`StepTimeout` once the step's deadline passed and `Interrupted` once a signal asked
the run to stop (the signal handler only sets `cancel`). Child processes a step starts
are registered (`own`) so that a timeout, a signal or the watchdog ends their groups.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.config.load import Config
from swapctl.config.model import ServiceConfig
from swapctl.daemon.api import ApiClient
from swapctl.errors import SwapctlError
from swapctl.playbook.model import BASELINE, CANDIDATE
from swapctl.probes.load import LoadSession
from swapctl.process import stop_group

POLL = 0.02  # seconds between status polls while a swap moves


class StepFailed(SwapctlError):
    """The step ran and its check failed; `reason` says why, `values` what was seen."""

    def __init__(self, reason: str, /, **values: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.values = values


class Cancelled(SwapctlError):
    """The step was stopped from outside (its timeout, a signal)."""

    result = "cancelled"


class StepTimeout(Cancelled):
    result = "timed_out"


class Interrupted(Cancelled):
    result = "interrupted"


def command_sha256(argv: list[str] | tuple[str, ...]) -> str:
    """sha256 of a command line: its arguments joined by NUL bytes, UTF-8."""
    return hashlib.sha256("\0".join(argv).encode()).hexdigest()


class RunJournal:
    """One JSON document per run, rewritten atomically at every event, so a run killed
    mid-way leaves its journal up to its last event."""

    def __init__(self, path: Path, head: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**head, "state": "running", "events": [], "steps": [],
                                     "values": {}, "gates": []}
        self.lock = threading.RLock()
        self.t0 = time.monotonic()
        self.flush()

    def event(self, kind: str, **details: Any) -> dict[str, Any]:
        with self.lock:
            record = {"t": round(time.monotonic() - self.t0, 6), "time": round(time.time(), 3),
                      "event": kind, **details}
            self.data["events"].append(record)
            self.flush()
            return record

    def update(self, **fields: Any) -> None:
        with self.lock:
            self.data.update(fields)
            self.flush()

    def flush(self) -> None:
        with self.lock:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w") as out:
                json.dump(self.data, out, indent=2, default=str)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(self.path)


@dataclass
class RunContext:
    service: str
    config: Config
    client: ApiClient
    journal: RunJournal
    run_dir: Path
    baseline: str = ""
    candidate: str = ""
    values: dict[str, float] = field(default_factory=dict)
    swaps: list[str] = field(default_factory=list)  # swap ids this run started
    load: LoadSession | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    deadline: float = float("inf")  # of the step running now (monotonic)
    step_title: str = ""
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    progress: Callable[[str], None] = lambda _line: None

    @property
    def service_config(self) -> ServiceConfig:
        return self.config.services[self.service]

    def resolve(self, ref: str) -> str:
        if ref == BASELINE:
            return self.baseline
        if ref == CANDIDATE:
            return self.candidate
        return ref

    # ----- cooperative time ------------------------------------------------------

    def check(self) -> None:
        if self.cancel.is_set():
            raise Interrupted(f"interrupted by {self.cancel_reason or 'a signal'}")
        if time.monotonic() >= self.deadline:
            raise StepTimeout(f"{self.step_title}: did not finish within its timeout")

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.cancel.wait(min(left, self.remaining(), 0.25))

    # ----- evidence --------------------------------------------------------------

    def measure(self, name: str, value: float, **why: Any) -> None:
        """Record a value gates can compare; `why` says how it was measured."""
        self.values[name] = value
        with self.journal.lock:
            self.journal.data["values"][name] = value
        self.journal.event("measured", step=self.step_title, name=name, value=value, how=why)

    def decide(self, decision: str, **why: Any) -> None:
        """Record a decision and the values behind it."""
        self.journal.event("decision", step=self.step_title, decision=decision, **why)

    # ----- children --------------------------------------------------------------

    def own(self, proc: subprocess.Popen[bytes]) -> None:
        self.children.append(proc)

    def stop_children(self) -> None:
        for proc in self.children:
            stop_group(proc, 3.0)
        self.children.clear()

    def close_load(self) -> None:
        if self.load is not None:
            self.load.close()
            self.load = None

    # ----- the daemon ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        services = self.client.call("status", service=self.service)["services"]
        return dict(services[0])
