"""One service inside swapctld: its relays (in supervisord), its swaps, its health.

Every request that touches the relays' control links runs under `lock`: a link carries
one request at a time. A swap runs in its own thread and holds the lock for its whole
life; status then reports the swap's phase and the figures cached before it began.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from swapctl.config.convert import service_domain_byte, to_canary, to_release, to_swap_settings
from swapctl.config.model import ServiceConfig
from swapctl.daemon import recovery
from swapctl.daemon.paths import Paths, read_json, write_json
from swapctl.errors import SwapctlError, UsageError
from swapctl.handoff.controller import RelayLink
from swapctl.handoff.manifest import Transfer
from swapctl.logs import event
from swapctl.relay.listener import adopt_listener, open_listener
from swapctl.supervise.client import SupervisorClient
from swapctl.supervise.layout import Layout
from swapctl.supervise.spawner import SupervisorHandle, SupervisorSpawner
from swapctl.swap import journal as journal_file
from swapctl.swap import report as swap_report
from swapctl.swap.canary import CanaryError
from swapctl.swap.executor import SwapRun, SwapSettings, Where
from swapctl.swap.journal import Journal
from swapctl.swap.machine import State
from swapctl.swap.service import Service, Slot
from swapctl.swap.spawner import Release

log = logging.getLogger("swapctl.daemon")
# Fault injection for recovery tests and drills: swapctld SIGKILLs itself the moment a
# swap's journal says it entered this state (the record is on disk first).
CRASH_AT = "SWAPCTL_DAEMON_CRASH_AT"
ATTACH_TIMEOUT = 8.0  # relays retry their control connection every 0.5 s


class Busy(UsageError):
    """A swap is already running on this service."""


class Unhealthy(SwapctlError):
    """The service has no healthy active relay."""


@dataclass
class SwapJob:
    """A swap the daemon runs (or recovers); waiters follow its journal records."""

    run: SwapRun
    kind: str  # "swap", "rollback" (swap back to the previous release) or "recovery"
    started: float = field(default_factory=time.time)
    records: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    request: str | None = None  # "rollback", "abort" or "commit" from an operator
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def swap_id(self) -> str:
        return self.run.swap_id

    def add(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def finish(self, report: dict[str, Any]) -> None:
        with self.cond:
            self.report = report
            self.cond.notify_all()

    def follow(self, timeout: float | None = None) -> Any:
        """Yield each record as it is journaled, then the report (a dict with "decision")."""
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


class ServiceRuntime:
    def __init__(self, name: str, config: ServiceConfig, paths: Paths, layout: Layout,
                 on_finished: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.name = name
        self.config = config
        self.paths = paths
        self.client = SupervisorClient(layout.socket)  # one per service: not thread-safe
        self.spawner = SupervisorSpawner(self.client, layout, name)
        self.service = Service(Path(config.socket), paths.state / "run" / name, self.spawner,
                               control_path=paths.handoff(name))
        self.lock = threading.RLock()
        self.job: SwapJob | None = None
        self.jobs: dict[str, SwapJob] = {}
        self.health: dict[str, Any] = {"healthy": False, "checked": 0.0,
                                       "problem": "not started"}
        self.on_finished = on_finished
        self.journal = Journal(paths.journal, [self._journaled], fields={"service": name})
        self.listener_store: Callable[[int], None] = lambda fd: None
        self.crash_at = os.environ.get(CRASH_AT, "")

    # ----- start-up --------------------------------------------------------------

    def last_good(self) -> str:
        """The release that served last (state file), else the configured active one."""
        saved = read_json(self.paths.service_state(self.name)) or {}
        release = saved.get("release")
        return release if isinstance(release, str) and release in self.config.releases \
            else self.config.active

    def _remember(self, release: str) -> None:
        write_json(self.paths.service_state(self.name),
                   {"service": self.name, "release": release, "since": time.time()})

    def start(self, listener_fd: int | None = None) -> dict[str, Any]:
        """Attach to the relays supervisord runs (a restart of swapctld), settle them and
        finish any swap the journal says was running; or start the last good release."""
        with self.lock:
            self.service.open_control()
            found = self.spawner.running()
            if not found:
                return self._start_fresh(listener_fd)
            return self._recover(found, listener_fd)

    def _start_fresh(self, listener_fd: int | None) -> dict[str, Any]:
        release = self.release(self.last_good())
        svc = self.service
        if listener_fd is not None:  # systemd's fd store kept it across our restart
            svc.listener = adopt_listener(listener_fd)
        else:
            svc.listener = open_listener(svc.socket_path)
        self.listener_store(svc.listener.fileno())
        deadline = time.monotonic() + self.config.start_timeout
        slot = svc.start_slot(release, deadline)
        slot.link.adopt(Transfer(svc.listener.fileno(), []), self.config.start_timeout)
        slot.link.resume(self.config.start_timeout)
        svc.active = slot
        self._remember(release.name)
        self._journal_event("started", release=release.name, program=_program(slot))
        self.refresh()
        return {"service": self.name, "action": "started", "release": release.name}

    def _recover(self, found: list[tuple[Any, SupervisorHandle]],
                 listener_fd: int | None) -> dict[str, Any]:
        svc = self.service
        slots: dict[str, Slot] = {}
        problems = []
        for spec, handle in found:
            try:
                release = self.release(spec.release, configured=False, command=spec.argv)
                slots[spec.env.get("SWAPCTL_TOKEN", "")] = svc.attach(
                    release, spec.env.get("SWAPCTL_TOKEN", ""), handle,
                    time.monotonic() + ATTACH_TIMEOUT)
            except (SwapctlError, OSError) as exc:
                problems.append(f"{handle.program} (pid {handle.pid}): {exc}")
        states = {token: str(slot.link.hello.get("state", "")) for token, slot in slots.items()}
        settled = recovery.settle(states)
        for token in settled.close:
            slots[token].link.close_held(5.0)
        for token in settled.resume:
            slots[token].link.resume(5.0)
        unfinished = self._unfinished()
        outcome: dict[str, Any] = {"service": self.name, "action": "attached",
                                   "relays": {t: states[t] for t in states},
                                   "closed": list(settled.close), "resumed": list(settled.resume),
                                   "problems": problems}
        if settled.serving is None:
            outcome["problem"] = settled.problem
            for slot in slots.values():
                slot.stop(2.0)
            self._journal_event("recovery_failed", problem=settled.problem)
            outcome.update(self._start_fresh(listener_fd))
            outcome["action"] = "restarted (clients lost their connections)"
            return outcome
        serving = slots[settled.serving]
        svc.active = serving
        if listener_fd is None:
            listener_fd = serving.link.listener(5.0)
        svc.listener = adopt_listener(listener_fd)
        self.listener_store(listener_fd)
        others = [s for t, s in slots.items() if t != settled.serving]
        if unfinished is None:
            for slot in others:  # a warm standby of a finished swap, or a stray
                svc.warm = slot if svc.warm is None else svc.warm
            self._remember(serving.release.name)
        else:
            outcome["swap"] = self._finish_unfinished(unfinished, slots, settled.serving)
        self.refresh()
        return outcome

    def _unfinished(self) -> dict[str, Any] | None:
        """The last swap of this service in the journal, if it has no terminal record."""
        if not self.paths.journal.exists():
            return None
        last: dict[str, Any] | None = None
        for record in journal_file.read(self.paths.journal):
            if record.get("service") != self.name or "swap" not in record:
                continue
            if record.get("event") == "begin":
                last = {"swap": record["swap"], "begin": record, "state": "starting",
                        "at": record["at"], "token": ""}
            elif last is not None and record["swap"] == last["swap"] and "to" in record:
                last["state"], last["at"] = record["to"], record["at"]
                if record.get("token"):
                    last["token"] = record["token"]
        if last is None or State(last["state"]).terminal:
            return None
        last["records"] = [r for r in journal_file.read(self.paths.journal)
                           if r.get("swap") == last["swap"]]
        return last

    def _finish_unfinished(self, unfinished: dict[str, Any], slots: dict[str, Slot],
                           serving: str) -> dict[str, Any]:
        begin = unfinished["begin"]
        old_token, cand_token = begin.get("old_token", ""), unfinished["token"]
        role = "old" if serving == old_token else "candidate" if serving == cand_token else None
        decision = recovery.decide(State(unfinished["state"]), role)
        svc = self.service
        old = slots.get(old_token) or self._gone_slot(begin.get("old_release", ""), old_token)
        cand = slots.get(cand_token)
        svc.active = old
        svc.warm = None
        target = self.release(str(begin.get("release", "")), configured=False,
                              command=tuple(begin.get("command", ())))
        run = SwapRun(svc, target, to_swap_settings(self.config),
                      canary=to_canary(self.config), journal=self.journal,
                      requests=self._request, domain_byte=service_domain_byte(self.config))
        if role == "candidate" and cand is not None:
            svc.active, svc.warm = cand, (old if old.alive() else None)
            where = Where.CANDIDATE
        else:
            where = Where.OLD
            run.marks.rollback_kind = "recovery: " + decision.why
        self.journal.records.extend(unfinished["records"])  # the report tells the whole swap
        run.swap_id = unfinished["swap"]
        job = SwapJob(run, "recovery")
        self.job, self.jobs[run.swap_id] = job, job
        self._run_in_thread(job, lambda: run.resume(
            unfinished["swap"], State(unfinished["state"]), float(unfinished["at"]), cand=cand,
            where=where, why=decision.why))
        return {"swap_id": unfinished["swap"], "phase": unfinished["state"],
                "decision": decision.next.value, "why": decision.why}

    def _gone_slot(self, release: str, token: str) -> Slot:
        # the old release's process is gone: its slot is only a name for a cold restart
        return Slot(self.release(release or self.config.active, configured=False), token,
                    GoneHandle(), cast(RelayLink, _NoLink()))

    # ----- swaps -----------------------------------------------------------------

    def release(self, name: str, configured: bool = True,
                command: tuple[str, ...] = ()) -> Release:
        """The named release from the configuration; a release no longer configured but
        still running (recovery) keeps the command it was started with."""
        if name in self.config.releases or configured:
            return to_release(self.config, name)
        return Release(name, tuple(command) or ("false",))

    def plan(self, to: str | None, soak: float | None) -> dict[str, Any]:
        """What `swap` would do, checked but not done (also the start of every swap)."""
        active = self.service.active
        if active is None:
            raise Unhealthy(f"{self.name}: no active relay; see `swapctl status {self.name}` "
                            f"and `swapctl logs {self.name}`")
        target = to or self.config.active
        if target == active.release.name:
            raise UsageError(
                f"{self.name}: {target} already serves; give --to RELEASE (one of "
                f"{', '.join(sorted(r for r in self.config.releases if r != target)) or 'none'})"
                + ("" if to else f", or set active: in {self.config.source}"))
        release = to_release(self.config, target)
        settings = to_swap_settings(self.config)
        if soak is not None:
            settings = _with_soak(settings, soak)
        if not release.handoff or not active.release.handoff:
            legacy = release.name if not release.handoff else active.release.name
            raise UsageError(
                f"{self.name}: {legacy} does not speak the handoff protocol; swapctld swaps "
                "handoff-capable releases only (legacy strategies: docs/legacy.md)")
        d = settings.deadlines
        return {
            "service": self.name, "socket": str(self.service.socket_path),
            "from": {"release": active.release.name, "command": list(active.release.command),
                     "program": _program(active), "pid": active.handle.pid},
            "to": {"release": release.name, "command": list(release.command),
                   "handoff": release.handoff},
            "strategy": "handoff",
            "why": "both releases speak the handoff protocol: no client is disconnected",
            "phases": [
                {"phase": "starting", "deadline_s": d.starting},
                {"phase": "probing", "deadline_s": d.probing},
                {"phase": "releasing", "deadline_s": d.releasing},
                {"phase": "adopting", "deadline_s": d.adopting},
                {"phase": "verifying", "deadline_s": d.verifying},
                {"phase": "soaking", "deadline_s": d.soaking},
                {"phase": "committing", "deadline_s": d.committing}],
            "pause_budget_ms": settings.pause_budget_ms,
            "rollback_deadline_s": d.rolling_back,
            "canary_rate": self.config.canary.rate,
        }

    def swap(self, to: str | None, soak: float | None, kind: str = "swap") -> SwapJob:
        with self.lock:
            if self.job is not None and self.job.report is None:
                raise Busy(f"{self.name}: swap {self.job.swap_id} is running "
                           f"({self.job.run.machine.state.value}); wait for it, or "
                           f"`swapctl abort {self.name}`")
            self.plan(to, soak)
            settings = to_swap_settings(self.config)
            if soak is not None:
                settings = _with_soak(settings, soak)
            release = to_release(self.config, to or self.config.active)
            run = SwapRun(self.service, release, settings, canary=to_canary(self.config),
                          journal=self.journal, requests=self._request,
                          domain_byte=service_domain_byte(self.config))
            job = SwapJob(run, kind)
            self.job, self.jobs[run.swap_id] = job, job
            self._run_in_thread(job, run.run)
            return job

    def previous_release(self) -> str:
        """The release the last committed swap replaced (what `rollback` goes back to)."""
        active = self.service.active
        current = active.release.name if active else ""
        reports = sorted(self.paths.reports.glob("*.json"), key=lambda p: p.stat().st_mtime,
                         reverse=True)
        for path in reports:
            data = read_json(path) or {}
            if data.get("service") == self.name and data.get("decision") == "committed" \
                    and data.get("to") == current:
                previous = data.get("from")
                if isinstance(previous, str) and previous in self.config.releases:
                    return previous
        raise UsageError(f"{self.name}: no committed swap to {current or 'the active release'}"
                         " to roll back: give `swapctl swap "
                         f"{self.name} --to RELEASE` instead")

    def ask(self, request: str) -> dict[str, Any]:
        """An operator's rollback / abort / commit for the swap that is running."""
        job = self.job
        if job is None or job.report is not None:
            raise UsageError(f"{self.name}: no swap is running")
        state = job.run.machine.state
        if request == "commit" and state not in (State.VERIFYING, State.SOAKING):
            raise UsageError(f"{self.name}: swap {job.swap_id} is {state.value}: commit is "
                             "possible once the candidate serves (verifying or soaking)")
        job.request = request
        return {"swap_id": job.swap_id, "state": state.value, "requested": request}

    def _request(self) -> str | None:
        job = self.job
        return None if job is None else job.request

    def _run_in_thread(self, job: SwapJob, body: Callable[[], SwapRun]) -> None:
        def main() -> None:
            with self.lock:
                self._run_job(job, body)

        threading.Thread(target=main, name=f"swap-{self.name}", daemon=True).start()

    def _run_job(self, job: SwapJob, body: Callable[[], SwapRun]) -> None:
        canary = job.run.canary
        audit = None
        try:
            if canary is not None:
                try:
                    canary.start()
                except CanaryError as exc:
                    job.run.canary = canary = None
                    event(log, logging.WARNING, "daemon.canary_failed", service=self.name,
                          error=str(exc))
            run = body()
            if canary is not None:
                with contextlib.suppress(CanaryError):
                    audit = canary.stop()
            report = swap_report.build(run, audit)
            if report.get("server_pause_ms") is None:  # measured before a daemon restart
                adopted = [r for r in report["journal"] if r.get("event") == "adopted"]
                if adopted:
                    report["server_pause_ms"] = adopted[-1].get("server_pause_ms")
        except Exception as exc:  # a bug must not leave waiters hanging forever
            log.exception("swap %s crashed", job.swap_id)
            report = {"swap_id": job.swap_id, "decision": "failed",
                      "reason": f"internal error: {exc}", "from": job.run.old.release.name,
                      "to": job.run.release.name}
        finally:
            if canary is not None:
                canary.close()
        active = self.service.active
        report.update(service=self.name, kind=job.kind, strategy="handoff",
                      started=job.started, ended=time.time(),
                      active=active.release.name if active else None)
        write_json(self.paths.report(job.swap_id), report)
        if active is not None and report.get("decision") in ("committed", "rolled_back"):
            self._remember(active.release.name)
        self.refresh()
        job.finish(report)
        if self.on_finished is not None:
            self.on_finished(self.name, report)

    def _journaled(self, record: dict[str, Any]) -> None:
        if self.crash_at and record.get("to") == self.crash_at:
            event(log, logging.WARNING, "daemon.crash_injected", state=self.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        job = self.job
        if job is not None and record.get("swap") == job.swap_id:
            job.add(record)

    def _journal_event(self, kind: str, **details: Any) -> None:
        self.journal.write({"event": kind, "at": round(time.monotonic(), 6), **details})

    # ----- health ----------------------------------------------------------------

    def refresh(self) -> dict[str, Any]:
        """Ask the active relay for its counters (not while a swap holds the links)."""
        if not self.lock.acquire(blocking=False):
            return self.health
        try:
            self.health = self._check()
            return self.health
        finally:
            self.lock.release()

    def _check(self) -> dict[str, Any]:
        now = time.time()
        active = self.service.active
        if active is None:
            return {"healthy": False, "checked": now, "problem": "no active relay"}
        if not active.alive():
            return {"healthy": False, "checked": now, "release": active.release.name,
                    "problem": f"{active.release.name} exited: {active.handle.describe_exit()}"}
        try:
            stats = active.link.stats(1.0)
        except (SwapctlError, TimeoutError, OSError) as exc:
            return {"healthy": False, "checked": now, "release": active.release.name,
                    "problem": f"{active.release.name} does not answer: {exc}"}
        return {"healthy": True, "checked": now, "release": active.release.name,
                "connections": int(stats.get("connections_open", 0)),
                "frames_in": int(stats.get("frames_in", 0)),
                "frames_out": int(stats.get("frames_out", 0))}

    def restart_if_dead(self) -> dict[str, Any] | None:
        """The active relay died outside a swap: start its release again on the listener
        swapctld holds (connects wait in its backlog meanwhile)."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            svc, active = self.service, self.service.active
            if active is None or active.alive() or svc.listener is None:
                return None
            how = active.handle.describe_exit()
            event(log, logging.WARNING, "daemon.relay_died", service=self.name,
                  release=active.release.name, exit=how)
            active.link.close()
            svc.active = None
            deadline = time.monotonic() + self.config.start_timeout
            try:
                slot = svc.start_slot(active.release, deadline)
                slot.link.adopt(Transfer(svc.listener.fileno(), []), self.config.start_timeout)
                slot.link.resume(self.config.start_timeout)
            except (SwapctlError, TimeoutError, OSError) as exc:
                self._journal_event("restart_failed", release=active.release.name,
                                    error=str(exc))
                return {"service": self.name, "restarted": False, "error": str(exc)}
            svc.active = slot
            self._journal_event("restarted", release=active.release.name, exit=how)
            self.health = self._check()
            return {"service": self.name, "restarted": True, "exit": how}
        finally:
            self.lock.release()

    def status(self) -> dict[str, Any]:
        active, warm, job = self.service.active, self.service.warm, self.job
        out: dict[str, Any] = {
            "service": self.name, "socket": str(self.service.socket_path),
            "configured_active": self.config.active,
            "active": None if active is None else _slot_status(active),
            "warm": None if warm is None else _slot_status(warm),
            "health": self.health,
            "swap": None,
        }
        if job is not None:
            m = job.run.machine
            out["swap"] = {"swap_id": job.swap_id, "kind": job.kind, "state": m.state.value,
                           "to": job.run.release.name, "from": job.run.old.release.name,
                           "running": job.report is None,
                           "decision": None if job.report is None else job.report["decision"],
                           "started": job.started}
        return out

    # ----- shutdown --------------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        if not self.lock.acquire(timeout=timeout):
            return False
        self.lock.release()
        return True

    def stop_relays(self) -> None:
        with self.lock:
            self.service.close()

    def detach(self) -> None:
        """swapctld stops (or restarts): the relays keep serving, untouched."""
        self.service.detach()
        self.journal.close()
        self.client.close()


class _NoLink:
    def close(self) -> None:
        return None


def _program(slot: Slot) -> str:
    return str(getattr(slot.handle, "program", ""))


def _slot_status(slot: Slot) -> dict[str, Any]:
    return {"release": slot.release.name, "program": _program(slot), "pid": slot.handle.pid,
            "alive": slot.alive(), "token": slot.token}


def _with_soak(settings: SwapSettings, soak: float) -> SwapSettings:
    return dataclasses.replace(settings,
                               deadlines=dataclasses.replace(settings.deadlines, soaking=soak))
