"""Running a playbook: steps in order, cleanup always, evidence on disk, a watchdog.

How it works:
1. Refuse a drill inside a refused window (swapctld.yaml drills.refuse) unless overridden.
2. Take the service's lease: an flock held for the whole run (two runs never touch one
   service at once) and a lease file naming the run, its pid and its baseline. A lease
   file still saying "running" belongs to a run that was killed (SIGKILL, OOM, reboot):
   its baseline is restored first and its journal closed as "killed" (recovery.py).
3. Read the baseline (the release serving now: the last known good) from swapctld and
   resolve the candidate; journal both with the sha256 of their command lines.
4. Run `steps` in order, each under its own deadline; the first failure (or timeout, or
   SIGINT/SIGTERM: the handlers only set an event the steps poll) skips the rest.
5. Run `cleanup`, always: each step with a fresh deadline of its own, signals noted but
   not obeyed (SIGKILL is the only way to stop a cleanup; the next run then recovers).
6. Close the journal and write the reports (reports.py); release the lease.

The watchdog is a thread that fires when a step overruns its deadline by
`watchdog_grace` (a stall the cooperative deadline could not end): it stops the run's
children, restores the baseline itself through its own API connection, closes the
journal as "watchdog" and exits the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from swapctl.config.load import Config
from swapctl.config.model import ReleaseConfig
from swapctl.daemon.api import ApiClient
from swapctl.daemon.stack import client_for
from swapctl.errors import SwapctlError, UsageError
from swapctl.playbook import recovery, reports, windows
from swapctl.playbook.context import (
    Cancelled,
    RunContext,
    RunJournal,
    StepFailed,
    command_sha256,
)
from swapctl.playbook.model import Playbook, PlaybookKind, _Step
from swapctl.playbook.restore import Restore, RestoreFailed
from swapctl.playbook.steps import run_step

log = logging.getLogger("swapctl.playbook")
HANG_AT = "SWAPCTL_PLAYBOOK_HANG_AT"  # fault injection: this step stalls (watchdog tests)
EXIT_WATCHDOG_OK, EXIT_WATCHDOG_FAILED = 1, 6


@dataclass
class RunOptions:
    service: str
    candidate: str | None = None
    override_window: bool = False
    progress: Callable[[str], None] = lambda _line: None
    now: Callable[[], float] = time.time  # wall clock (windows); injected by tests


@dataclass
class RunResult:
    state: str  # passed, failed, timed_out, interrupted, refused, watchdog
    reason: str
    journal: dict[str, Any]
    run_dir: Path | None
    restore_failed: bool = False
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "passed"


class Runner:
    def __init__(self, playbook: Playbook, config: Config, options: RunOptions,
                 client: ApiClient | None = None) -> None:
        if options.service not in config.services:
            config.service(options.service)  # raises, naming the services there are
        self.playbook = playbook
        self.config = config
        self.options = options
        self.client = client or client_for(config, 10.0)
        self.drill = playbook.kind is PlaybookKind.DRILL
        self.root = reports.runs_dir(config, self.drill)
        self.signals: list[str] = []

    # ----- the whole run -----------------------------------------------------------

    def run(self) -> RunResult:
        refusal = windows.refusal(self.config, self.options.now()) if self.drill else None
        if refusal is not None and not self.options.override_window:
            return self._refused(refusal)
        with recovery.Lease(self.config, self.options.service, self.client) as lease:
            ctx = self._start(lease)
            lease.hold(ctx.journal, ctx.baseline)
            result = self._run(ctx, refusal)
            lease.release(clean=not result.restore_failed)
        return result

    def _start(self, lease: recovery.Lease) -> RunContext:
        service, svc = self.options.service, self.config.services[self.options.service]
        run_id = reports.new_run_id(self.playbook.name, service)
        run_dir = self.root / run_id
        status = self.client.call("status", service=service)["services"][0]
        baseline = (status.get("active") or {}).get("release")
        swap = status.get("swap") or {}
        if not baseline:
            raise SwapctlError(f"{service}: no release serves: see `swapctl status {service}`")
        if swap.get("running"):
            raise UsageError(f"{service}: swap {swap['swap_id']} is running: wait for it, or "
                             f"`swapctl abort {service}`, then run again")
        candidate = pick_candidate(self.options.candidate or self.playbook.header.candidate,
                                   baseline, svc.releases, str(svc.source))
        run_dir.mkdir(parents=True, mode=0o700)  # (a refused run leaves no empty run)
        journal = RunJournal(run_dir / "journal.json", {
            "run_id": run_id, "playbook": self.playbook.name, "kind": self.playbook.kind.value,
            "source": self.playbook.source, "params": self.playbook.params,
            "service": service, "config_dir": str(self.config.directory),
            "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "releases": {role: _release(svc, name) for role, name in
                         (("baseline", baseline), ("candidate", candidate))},
            "recovered": lease.recovered, "plan": self.playbook.plan()})
        return RunContext(service, self.config, self.client, journal, run_dir, baseline,
                          candidate, progress=self.options.progress)

    def _run(self, ctx: RunContext, refusal: str | None) -> RunResult:
        if refusal is not None:
            ctx.decide("window_overridden", window=refusal)
        watchdog = Watchdog(self, ctx, self.playbook.header.watchdog_grace)
        previous = {sig: signal.signal(sig, self._on_signal(ctx))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        watchdog.start()
        try:
            state, reason = self._steps(ctx, watchdog)
            restore_failed = self._cleanup(ctx, watchdog, failed=state != "passed")
        finally:
            watchdog.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if restore_failed and state == "passed":
            state, reason = "failed", "cleanup failed: " + restore_failed
        return self._finish(ctx, state, reason, bool(restore_failed))

    def _on_signal(self, ctx: RunContext) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            self.signals.append(name)
            if not ctx.cancel.is_set():
                ctx.cancel_reason = name
                ctx.cancel.set()
        return handler

    def _steps(self, ctx: RunContext, watchdog: Watchdog) -> tuple[str, str]:
        total = len(self.playbook.steps)
        for index, step in enumerate(self.playbook.steps):
            outcome = self._one(ctx, watchdog, "steps", index=index, step=step, total=total)
            if outcome["result"] != "passed":
                for later in range(index + 1, total):
                    skipped = self.playbook.steps[later]
                    ctx.journal.data["steps"].append(_skipped("steps", later, skipped))
                ctx.journal.flush()
                return outcome["result"], f"{step.title}: {outcome['reason']}"
        return "passed", f"all {total} steps passed"

    def _cleanup(self, ctx: RunContext, watchdog: Watchdog, failed: bool) -> str:
        """Every cleanup step (filtered by `when`); the first restore problem, if any."""
        ctx.cancel = threading.Event()  # a signal now is noted, not obeyed
        problem = ""
        total = len(self.playbook.cleanup)
        for index, step in enumerate(self.playbook.cleanup):
            if (step.when == "failure" and not failed) or (step.when == "success" and failed):
                ctx.journal.data["steps"].append(_skipped("cleanup", index, step,
                                                          f"when: {step.when}"))
                continue
            outcome = self._one(ctx, watchdog, "cleanup", index=index, step=step, total=total)
            if outcome["result"] != "passed" and not problem:
                problem = f"{step.title}: {outcome['reason']}"
        ctx.stop_children()
        ctx.close_load()
        return problem

    def _one(self, ctx: RunContext, watchdog: Watchdog, section: str, *, index: int,
             step: _Step, total: int) -> dict[str, Any]:
        ctx.step_title = step.title
        ctx.deadline = time.monotonic() + step.deadline_s
        watchdog.arm(step.title, ctx.deadline)
        ctx.journal.event("step_started", section=section, index=index, step=step.title,
                          step_kind=step.kind, timeout_s=step.deadline_s)
        ctx.progress(f"[{section} {index + 1}/{total}] {step.title} ...")
        started = time.monotonic()
        entry: dict[str, Any] = {"section": section, "index": index, "name": step.title,
                                 "kind": step.kind, "timeout_s": step.deadline_s}
        try:
            if os.environ.get(HANG_AT) == step.title:
                time.sleep(3600)  # a stall no deadline can end: the watchdog's case
            entry["details"] = run_step(step, ctx)
            entry.update(result="passed", reason="")
        except StepFailed as exc:
            entry.update(result="failed", reason=exc.reason, details=exc.values)
        except Cancelled as exc:
            entry.update(result=exc.result, reason=str(exc))
        except (SwapctlError, OSError, TimeoutError) as exc:
            entry.update(result="failed", reason=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in one step must not skip cleanup
            log.exception("step %s crashed", step.title)
            entry.update(result="failed", reason=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            watchdog.disarm()
            if entry.get("result") in ("timed_out", "interrupted"):
                ctx.stop_children()
        entry["seconds"] = round(time.monotonic() - started, 6)
        check = (entry.get("details") or {}).get("check")
        if check is not None:
            ctx.journal.data["gates"].append({"step": step.title, **check,
                                              "ok": entry["result"] == "passed"})
        ctx.journal.data["steps"].append(entry)
        ctx.journal.event("step_ended", step=step.title, result=entry["result"],
                          seconds=entry["seconds"], reason=entry["reason"])
        why = f": {entry['reason']}" if entry["reason"] else ""
        ctx.progress(f"[{section} {index + 1}/{total}] {step.title}: {entry['result']}"
                     f" ({entry['seconds']:.2f}s){why}")
        return entry

    def _finish(self, ctx: RunContext, state: str, reason: str,
                restore_failed: bool) -> RunResult:
        ended = time.time()
        ctx.journal.update(state=state, ended=ended, signals=self.signals,
                           result={"ok": state == "passed", "state": state, "reason": reason,
                                   "restore_failed": restore_failed,
                                   "seconds": round(ended - ctx.journal.data["started"], 3)})
        files = reports.write_all(ctx.run_dir, ctx.journal.data, self.config, self.drill)
        return RunResult(state, reason, ctx.journal.data, ctx.run_dir, restore_failed, files)

    def _refused(self, refusal: str) -> RunResult:
        service = self.options.service
        run_id = reports.new_run_id(self.playbook.name, service)
        run_dir = self.root / run_id
        run_dir.mkdir(parents=True, mode=0o700)
        reason = f"refused: {refusal}; run again outside it, or with --override-window"
        journal = RunJournal(run_dir / "journal.json", {
            "run_id": run_id, "playbook": self.playbook.name, "kind": self.playbook.kind.value,
            "service": service, "started": self.options.now(), "pid": os.getpid()})
        journal.update(state="refused", ended=self.options.now(),
                       result={"ok": False, "state": "refused", "reason": reason,
                               "restore_failed": False, "seconds": 0.0})
        files = reports.write_all(run_dir, journal.data, self.config, self.drill)
        return RunResult("refused", reason, journal.data, run_dir, False, files)

    # ----- the watchdog's way out --------------------------------------------------

    def watchdog_fired(self, ctx: RunContext, title: str, over: float) -> None:
        """From the watchdog thread: the main thread is stuck. Restore, record, exit."""
        ctx.journal.event("watchdog_fired", step=title, over_deadline_s=round(over, 3))
        ctx.cancel.set()
        with contextlib.suppress(Exception):
            ctx.stop_children()
        if ctx.load is not None:
            with contextlib.suppress(Exception):
                ctx.load.close()
        client = client_for(self.config, 10.0)
        problem = ""
        try:
            actions = Restore(client, ctx.service, ctx.baseline, list(ctx.swaps),
                              _bounded_sleep(time.monotonic() + 90.0)).run()
            ctx.journal.event("watchdog_restored", actions=actions)
        except (SwapctlError, OSError, TimeoutError) as exc:
            problem = str(exc)
            ctx.journal.event("watchdog_restore_failed", error=problem)
        reason = (f"watchdog: {title} overran its timeout by {over:.1f}s; "
                  + (f"restore FAILED: {problem}" if problem else
                     f"{ctx.baseline} restored"))
        self._finish(ctx, "watchdog", reason, bool(problem))
        recovery.Lease.mark_done(self.config, ctx.service, clean=not problem)
        self.options.progress(f"swapctl: {reason}")
        os._exit(EXIT_WATCHDOG_FAILED if problem else EXIT_WATCHDOG_OK)


class Watchdog(threading.Thread):
    def __init__(self, runner: Runner, ctx: RunContext, grace: float) -> None:
        super().__init__(name="playbook-watchdog", daemon=True)
        self.runner, self.ctx, self.grace = runner, ctx, grace
        self.armed: tuple[str, float] | None = None
        self.stopped = threading.Event()

    def arm(self, title: str, deadline: float) -> None:
        self.armed = (title, deadline)

    def disarm(self) -> None:
        self.armed = None

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            armed = self.armed
            if armed is not None and time.monotonic() > armed[1] + self.grace:
                self.runner.watchdog_fired(self.ctx, armed[0], time.monotonic() - armed[1])
                return


def _bounded_sleep(deadline: float) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if time.monotonic() > deadline:
            raise RestoreFailed("restore did not finish in 90 s")
        time.sleep(seconds)
    return sleep


def pick_candidate(wanted: str, baseline: str, releases: Mapping[str, ReleaseConfig],
                   source: str) -> str:
    """The release @candidate names: `wanted` (--candidate, else the playbook's), or for
    `other` the first handoff-capable release that is not the baseline. A legacy release
    (or any without the handoff protocol) is never picked by default: a drill of it would
    drill the wrong thing (the restart or takeover path, not the handoff the fleet uses);
    with none to pick, UsageError says why and what to pass."""
    names = list(releases)
    if wanted == "other":
        others = [r for r in names if r != baseline]
        if not others:
            raise UsageError(f"{source}: releases: only {baseline} is configured: a run needs "
                             "a candidate; add a release")
        capable = [r for r in others if releases[r].handoff]
        if not capable:
            kinds = ", ".join(f"{r} ({'legacy' if releases[r].legacy else 'handoff: false'})"
                              for r in others)
            raise UsageError(
                f"{source}: releases: no handoff-capable release besides {baseline} (which "
                f"serves): {kinds}; a default candidate must speak the handoff protocol. "
                f"Pass --candidate NAME to run against one of them anyway, or add a release "
                f"with handoff: true")
        return capable[0]
    if wanted not in releases:
        raise UsageError(f"{source}: releases: no {wanted!r}: use one of {', '.join(names)}")
    if wanted == baseline:
        raise UsageError(f"{wanted} serves already: the candidate must be another release "
                         f"(one of {', '.join(r for r in names if r != baseline) or 'none'})")
    return wanted


def _release(svc: Any, name: str) -> dict[str, Any]:
    release = svc.releases[name]
    return {"name": name, "command": list(release.command),
            "command_sha256": command_sha256(release.command), "handoff": release.handoff}


def _skipped(section: str, index: int, step: _Step, reason: str = "an earlier step failed"
             ) -> dict[str, Any]:
    return {"section": section, "index": index, "name": step.title,
            "kind": step.kind, "result": "skipped", "reason": reason,
            "seconds": 0.0}
