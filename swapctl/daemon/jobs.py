"""A swap as swapctld runs it: its identity, its phase, the records waiters follow, its thread.

How it works. Every swap, whatever its strategy, is driven by a `SwapRun` (the one
engine) in a thread of its own (`run_in_thread`) that holds the service's lock for the
swap's whole life: the relays' control links carry one request at a time. The thread
starts the canary, runs the body (a new swap's `SwapRun.run`, or a recovered swap's
`resume`), builds the report (swap/report.py) and writes it to STATE/reports, refreshes
the service's health and only then hands the report to `finish`: whoever follows the
job sees the service as the swap left it. A crash inside is a "failed" report, never a
waiter left hanging. The swap's journal records reach `add` meanwhile. While the swap
soaks (or a bridge drains), its followers also get a `SoakProgress` each second: the
window left and the canary's counts, read from its latest snapshot (never from its pipe,
which is the swap's thread's alone).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from swapctl.daemon.paths import Paths, write_json
from swapctl.daemon.requests_model import Refusal
from swapctl.daemon.steer import Steering
from swapctl.logs import event
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary, CanaryError
from swapctl.swap.executor import SwapRun
from swapctl.swap.machine import State
from swapctl.swap.service import Service

log = logging.getLogger("swapctl.daemon")
Body = Callable[[], SwapRun | dict[str, Any]]  # runs the swap; a dict is a finished report


SOAK_TICK_S = 1.0  # a soaking swap's followers hear from it at least this often
WATCHED = ("soaking", "draining")  # the phases that wait out a window


@dataclass(frozen=True, slots=True)
class SoakProgress:
    """A soaking swap as its followers see it each second (`{"type": "soak", ...}` on
    the control API): the window left, and what the canary saw since it started, None
    without a canary. `lost`: messages sent since the cutover, more than 0.5 s ago, that
    the worst canary consumer has not received (the canary's loss; any rolls back)."""

    swap_id: str
    phase: str
    remaining_s: float
    window_s: float
    sent: int | None = None
    seen: int | None = None  # received by every canary consumer (the slowest one's count)
    lost: int | None = None

    def answer(self) -> dict[str, Any]:
        return {"type": "soak", **asdict(self)}


class Busy(Refusal):
    """A swap is already running on this service, or a run holds it (its lease)."""

    code = "busy"


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

    def ended_by(self, timeout: float) -> bool:
        """True once the job has filed its report. A swap whose machine has already
        reached its end (committed, rolled back, failed) is given `timeout` to file it
        (canary stopped, report written, health refreshed) instead of being called busy:
        a request right after a swap ended is not refused for a swap that is over."""
        if not self.running:
            return True
        try:
            over = State(self.phase).terminal
        except ValueError:
            over = False
        if over:
            with self.cond:
                self.cond.wait_for(lambda: self.report is not None, timeout)
        return not self.running

    def add(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def finish(self, report: dict[str, Any]) -> None:
        with self.cond:
            self.report = report
            self.cond.notify_all()

    def follow(self, timeout: float | None = None, tick: float = SOAK_TICK_S
               ) -> Iterator[dict[str, Any] | SoakProgress]:
        """Yield each record as it is journaled, then {"report": report}; while the swap
        soaks, a SoakProgress every `tick` seconds between them."""
        seen = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        next_tick = 0.0
        while True:
            progress = None
            with self.cond:
                while seen == len(self.records) and self.report is None:
                    now = time.monotonic()
                    if now >= next_tick:
                        next_tick = now + tick
                        progress = self.soak_progress()
                        if progress is not None:
                            break
                    wait = None if deadline is None else deadline - now
                    if wait is not None and wait <= 0:
                        return
                    self.cond.wait(min(next_tick - now, 0.5 if wait is None else wait))
                new, seen = self.records[seen:], len(self.records)
                report = self.report
            yield from new
            if new:  # the soak may have just begun: say so at once
                next_tick = 0.0
            if progress is not None:
                yield progress
            if report is not None and seen == len(self.records):
                yield {"report": report}
                return

    def soak_progress(self) -> SoakProgress | None:
        """Where the soak is, if the swap is soaking (or draining) now."""
        run = self.run
        if run is None or self.report is not None or run.machine.state.value not in WATCHED:
            return None
        machine = run.machine
        window = run.settings.deadlines.for_state(machine.state) or 0.0
        progress = SoakProgress(self.swap_id, machine.state.value,
                                round(min(machine.remaining(), window), 3), window)
        snapshot = self.canary.last if self.canary is not None else None
        if not snapshot or not snapshot.get("streams"):
            return progress
        streams = snapshot["streams"]
        return replace(
            progress, sent=int(snapshot["sent"]),
            seen=min(int(s["arrivals"]) for s in streams),
            lost=max(int(s["missing"]) for s in streams))


class Host(Protocol):
    """What of a service's runtime a swap's thread uses (daemon/runtime.py has it)."""

    @property
    def name(self) -> str: ...

    @property
    def service(self) -> Service: ...

    @property
    def paths(self) -> Paths: ...

    @property
    def lock(self) -> contextlib.AbstractContextManager[Any]: ...

    @property
    def on_finished(self) -> Callable[[str, dict[str, Any]], None] | None: ...

    def remember(self, release: str) -> None: ...

    def refresh(self) -> dict[str, Any]: ...


def run_in_thread(host: Host, job: SwapJob, body: Body, steering: Steering) -> None:
    """Run `job` in a thread of its own under the host's lock; `steering` (the operator's
    requests to it) ends with it."""
    def main() -> None:
        with host.lock:
            try:
                run_job(host, job, body)
            finally:
                steering.ended()

    threading.Thread(target=main, name=f"swap-{host.name}", daemon=True).start()


def run_job(host: Host, job: SwapJob, body: Body) -> None:
    """Run the swap and file its report: STATE/reports, the last good release, the
    health, then the job's waiters and the host's `on_finished`."""
    report = _outcome(host.name, job, body)
    active = host.service.active
    report.update(service=host.name, kind=job.kind, strategy=job.strategy,
                  started=job.started, ended=time.time(),
                  active=active.release.name if active else None)
    write_json(host.paths.report(job.swap_id), report)
    if active is not None and report.get("decision") in ("committed", "rolled_back"):
        host.remember(active.release.name)
    host.refresh()
    job.finish(report)
    if host.on_finished is not None:
        host.on_finished(host.name, report)


def _outcome(service: str, job: SwapJob, body: Body) -> dict[str, Any]:
    """The body run between the canary's start and stop, and its report; a crash is a
    failed report."""
    canary = job.canary
    audit = None
    try:
        if canary is not None:
            try:
                canary.start()
            except CanaryError as exc:
                job.canary = canary = None
                if job.run is not None:
                    job.run.canary = None
                event(log, logging.WARNING, "daemon.canary_failed", service=service,
                      error=str(exc))
        result = body()
        if canary is not None:
            with contextlib.suppress(CanaryError):
                audit = canary.stop()
        report = report_of(result, audit)
    except Exception as exc:  # a bug must not leave waiters hanging forever
        log.exception("swap %s crashed", job.swap_id)
        report = {"swap_id": job.swap_id, "decision": "failed",
                  "reason": f"internal error: {exc!r}", "from": job.from_release,
                  "to": job.to_release}
    finally:
        if canary is not None:
            canary.close()
    return report


def report_of(result: SwapRun | dict[str, Any], audit: dict[str, Any] | None
              ) -> dict[str, Any]:
    """The swap's report (swap/report.py), with the canary's `audit`."""
    if isinstance(result, dict):
        return result
    report = swap_report.build(result, audit)
    if report.get("server_pause_ms") is None:  # measured before a daemon restart
        adopted = [r for r in report["journal"] if r.get("event") == "adopted"]
        if adopted:
            report["server_pause_ms"] = adopted[-1].get("server_pause_ms")
    return report


class GoneHandle:
    """The process handle of a release that is no longer running (recovery found it
    gone): never alive, nothing to stop."""

    pid = 0
    started_s = 0.0

    def alive(self) -> bool:
        return False

    def describe_exit(self) -> str:
        return "not running when swapctld restarted"

    def stop(self, timeout: float = 5.0) -> int | None:
        return None

    def kill(self) -> None:
        return None
