"""One service inside swapctld: its relays (in supervisord), its swaps, its health.

Every request that touches the relays' control links runs under `lock`: a link carries
one request at a time. A swap runs in its own thread and holds the lock for its whole
life; status then reports the swap's phase and the figures cached before it began.
Start-up after a crash is attach.py; legacy releases are legacy.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from swapctl.config.convert import service_domain_byte, to_canary, to_release, to_swap_settings
from swapctl.config.model import ServiceConfig
from swapctl.daemon import legacy, steer
from swapctl.daemon.jobs import SwapJob
from swapctl.daemon.paths import Paths, read_json, write_json
from swapctl.daemon.requests_model import Refusal
from swapctl.errors import SwapctlError, UsageError
from swapctl.logs import event
from swapctl.supervise.client import SupervisorClient
from swapctl.supervise.layout import Layout
from swapctl.supervise.spawner import SupervisorSpawner
from swapctl.swap import choose, machine
from swapctl.swap import report as swap_report
from swapctl.swap.canary import CanaryError
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal
from swapctl.swap.service import Service, Slot
from swapctl.swap.spawner import Release
from swapctl.unixsock import adopt_listener, open_listener

log = logging.getLogger("swapctl.daemon")
# Fault injection for recovery tests and drills: swapctld SIGKILLs itself the moment a
# swap's journal says it entered this state (the record is on disk first).
CRASH_AT = "SWAPCTL_DAEMON_CRASH_AT"
# ... and this one holds a swap in a state for a while ("committing:3": 3 s in committing),
# to ask for what that state must refuse (tests of late requests).
PAUSE_AT = "SWAPCTL_DAEMON_PAUSE_AT"
STRATEGIES = choose.CHOICES


class Busy(Refusal):
    """A swap is already running on this service (details: which, and where it is)."""

    code = "busy"


class Unhealthy(SwapctlError):
    """The service has no healthy active relay."""


@dataclasses.dataclass
class Lease:
    """A run (a drill, a playbook) holds the service; if it stops renewing, swapctld
    puts `restore_to` back: it aborts the holder's swap, then swaps back if needed."""

    holder: str
    restore_to: str
    ttl: float
    expires: float  # CLOCK_MONOTONIC


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
        self.health: dict[str, Any] = {"healthy": False, "checked": 0.0,
                                       "problem": "not started"}
        self.on_finished = on_finished
        self.journal = Journal(paths.journal, [self._journaled], fields={"service": name})
        self.listener_store: Callable[[int], None] = lambda fd: None
        self.crash_at = os.environ.get(CRASH_AT, "")
        self.legacy_socket: Path | None = None  # the active legacy relay's slot socket
        self.lease: Lease | None = None
        self.restore_pending: str | None = None  # an expired lease's release, to put back
        self.starting = threading.Lock()  # one swap starts at a time (never waits on a swap)
        self.steering: steer.Steering | None = None  # the operator's requests to self.job
        self.pause_at = os.environ.get(PAUSE_AT, "")

    @property
    def legacy_root(self) -> Path:
        return self.paths.state / "legacy" / self.name

    @property
    def domain_byte(self) -> int:
        return service_domain_byte(self.config)

    @property
    def start_timeout(self) -> float:
        return float(self.config.start_timeout)

    @property
    def probe_echo(self) -> bool:
        return bool(self.config.probe.echo)

    # ----- start-up --------------------------------------------------------------

    def last_good(self) -> str:
        """The release that served last (state file), else the configured active one."""
        saved = read_json(self.paths.service_state(self.name)) or {}
        release = saved.get("release")
        return release if isinstance(release, str) and release in self.config.releases \
            else self.config.active

    def remember(self, release: str) -> None:
        write_json(self.paths.service_state(self.name),
                   {"service": self.name, "release": release, "since": time.time()})

    def start_fresh(self, listener_fd: int | None) -> dict[str, Any]:
        release = self.release(self.last_good())
        svc = self.service
        if not release.legacy:
            if listener_fd is not None:  # systemd's fd store kept it across our restart
                svc.listener = adopt_listener(listener_fd)
            else:
                if svc.socket_path.is_symlink():  # a legacy layout's link: swapctl's own
                    svc.socket_path.unlink()
                svc.listener = open_listener(svc.socket_path)
            self.listener_store(svc.listener.fileno())
        slot = svc.active = self._serve(release)
        self.remember(release.name)
        self.journal_event("started", release=release.name, program=program_of(slot))
        self.refresh()
        return {"service": self.name, "action": "started", "release": release.name}

    # ----- swaps -----------------------------------------------------------------

    def release(self, name: str, configured: bool = True,
                command: tuple[str, ...] = ()) -> Release:
        """The named release from the configuration; a release no longer configured but
        still running (recovery) keeps the command it was started with."""
        if name in self.config.releases or configured:
            return to_release(self.config, name)
        return Release(name, tuple(command) or ("false",))

    def settings(self, soak: float | None) -> SwapSettings:
        settings = to_swap_settings(self.config)
        if soak is None:
            return settings
        return dataclasses.replace(
            settings, deadlines=dataclasses.replace(settings.deadlines, soaking=soak))

    def plan(self, to: str | None, soak: float | None, strategy: str = "auto") -> dict[str, Any]:
        """What `swap` would do, checked but not done (also the start of every swap).
        While a swap runs, there is nothing to plan: Busy names that swap."""
        self.refuse_if_busy()
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
        chosen, why = self.strategy(active.release, release, strategy)
        settings = self.settings(soak)
        d = settings.deadlines
        phases = machine.plan(chosen, d)
        return {
            "service": self.name, "socket": str(self.service.socket_path),
            "from": {"release": active.release.name, "command": list(active.release.command),
                     "program": program_of(active), "pid": active.handle.pid,
                     "legacy": active.release.legacy},
            "to": {"release": release.name, "command": list(release.command),
                   "handoff": release.handoff, "legacy": release.legacy},
            "strategy": chosen, "why": why, "phases": phases,
            "pause_budget_ms": settings.pause_budget_ms,
            "rollback_deadline_s": d.rolling_back,
            "canary_rate": self.config.canary.rate,
        }

    @staticmethod
    def strategy(old: Release, new: Release, asked: str) -> tuple[str, str]:
        """The strategy for old -> new (the one selector: swap/choose.py), and why."""
        for release in (old, new):
            if not release.handoff and not release.legacy:
                raise UsageError(f"{release.name} neither speaks the handoff protocol nor is "
                                 "declared legacy (with its compiled_socket): swapctld cannot "
                                 "run it; fix its entry under releases")
        return choose.choose(old.legacy, new.legacy, asked, old.name, new.name)

    def swap(self, to: str | None, soak: float | None, kind: str = "swap",
             strategy: str = "auto") -> SwapJob:
        with self._starting_swap():
            plan = self.plan(to, soak, strategy)
            release = to_release(self.config, plan["to"]["release"])
            settings = self.settings(soak)
            actions = HandoffActions() if plan["strategy"] == "handoff" else legacy.actions(
                self, plan["strategy"], release, settings.deadlines.soaking)
            run = SwapRun(self.service, release, settings,
                          canary=to_canary(self.config), journal=self.journal,
                          requests=self.requested, aborted=self.abort_requested,
                          domain_byte=self.domain_byte, actions=actions)
            job = SwapJob.of_run(run, kind)
            self.job = job
            self._run_in_thread(job, run.run)
            return job

    @contextlib.contextmanager
    def _starting_swap(self) -> Iterator[None]:
        """One swap starts at a time, and a running one makes it Busy at once: checked
        before the lock, which the running swap holds for its whole life."""
        with self.starting:
            self.refuse_if_busy()
            with self.lock:
                yield

    def refuse_if_busy(self) -> None:
        """Busy, naming the swap, its strategy and phase, if one is running."""
        job = self.job
        if job is None or not job.running:
            return
        phase = job.phase
        raise Busy(f"{self.name}: swap {job.swap_id} ({job.kind}, {job.strategy} "
                   f"{job.from_release} -> {job.to_release}) is running, now {phase}: wait "
                   f"for it (`swapctl status {self.name}`), or `swapctl abort {self.name}`",
                   swap={"swap_id": job.swap_id, "kind": job.kind, "strategy": job.strategy,
                         "phase": phase, "from": job.from_release, "to": job.to_release,
                         "started": job.started})

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
        """An operator's rollback / abort / commit for the swap that is running: answered
        once the swap takes it, or refused (too late, not in this phase): steer.py."""
        job, steering = self.job, self.steering
        if job is None or not job.running or steering is None \
                or steering.swap_id != job.swap_id:
            raise UsageError(f"{self.name}: no swap is running")
        if job.run is None:  # takeover, bridge, restart: nothing polls a request (yet)
            raise steer.NotNow(f"{self.name}: swap {job.swap_id} ({job.strategy}, "
                               f"{job.phase}) cannot be steered: it ends on its own within "
                               "its deadline", swap_id=job.swap_id, phase=job.phase,
                               strategy=job.strategy, request=request)
        try:
            answer = steering.ask(request)
        except Refusal as exc:
            self._journal_request(job.swap_id, request, "refused", str(exc))
            raise
        self._journal_request(job.swap_id, request,
                              "pending" if answer["pending"] else "honoured", answer["note"],
                              state=answer["state"])
        return answer

    def _journal_request(self, swap_id: str, request: str, answer: str, reason: str,
                         **details: Any) -> None:
        self.journal.write({"swap": swap_id, "at": round(time.monotonic(), 6),
                            "event": "request", "request": request, "answer": answer,
                            "reason": reason, **details}, sync=False)

    def requested(self) -> str | None:
        """The engine polls for a rollback, abort or commit it can honour now."""
        taken = self.steering.take("rollback", "abort", "commit") if self.steering else None
        job = self.job
        return taken or (None if job is None else job.request)

    def abort_requested(self) -> bool:
        """The engine polls for a rollback or abort between phases."""
        if self.steering is not None and self.steering.take(*steer.BACK):
            if self.job is not None:
                self.job.request = "abort"  # taken: the engine acts on it from now on
            return True
        job = self.job
        return job is not None and job.request == "abort"

    def _run_in_thread(self, job: SwapJob, body: Callable[[], SwapRun | dict[str, Any]]) -> None:
        self.job = job
        self.steering = steering = steer.Steering(self.name, job.swap_id, job.strategy,
                                                  lambda: job.phase)

        def main() -> None:
            with self.lock:
                try:
                    self._run_job(job, body)
                finally:
                    steering.ended()

        threading.Thread(target=main, name=f"swap-{self.name}", daemon=True).start()

    def run_recovered(self, job: SwapJob, body: Callable[[], SwapRun]) -> None:
        self._run_in_thread(job, body)

    def _run_job(self, job: SwapJob, body: Callable[[], SwapRun | dict[str, Any]]) -> None:
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
                    event(log, logging.WARNING, "daemon.canary_failed", service=self.name,
                          error=str(exc))
            result = body()
            if canary is not None:
                with contextlib.suppress(CanaryError):
                    audit = canary.stop()
            report = self._report(result, audit)
        except Exception as exc:  # a bug must not leave waiters hanging forever
            log.exception("swap %s crashed", job.swap_id)
            report = {"swap_id": job.swap_id, "decision": "failed",
                      "reason": f"internal error: {exc}", "from": job.from_release,
                      "to": job.to_release}
        finally:
            if canary is not None:
                canary.close()
        active = self.service.active
        report.update(service=self.name, kind=job.kind, strategy=job.strategy,
                      started=job.started, ended=time.time(),
                      active=active.release.name if active else None)
        write_json(self.paths.report(job.swap_id), report)
        if active is not None and report.get("decision") in ("committed", "rolled_back"):
            self.remember(active.release.name)
        self.refresh()
        job.finish(report)
        if self.on_finished is not None:
            self.on_finished(self.name, report)

    @staticmethod
    def _report(result: SwapRun | dict[str, Any], audit: dict[str, Any] | None
                ) -> dict[str, Any]:
        if isinstance(result, dict):
            return result
        report = swap_report.build(result, audit)
        if report.get("server_pause_ms") is None:  # measured before a daemon restart
            adopted = [r for r in report["journal"] if r.get("event") == "adopted"]
            if adopted:
                report["server_pause_ms"] = adopted[-1].get("server_pause_ms")
        return report

    def _journaled(self, record: dict[str, Any]) -> None:
        if self.crash_at and record.get("to") == self.crash_at:
            event(log, logging.WARNING, "daemon.crash_injected", state=self.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        job = self.job
        if job is not None and record.get("swap") == job.swap_id:
            job.add(record)
            if self.steering is not None and "to" in record:
                self.steering.moved()
            self._pause_if_asked(str(record.get("to", "")))

    def _pause_if_asked(self, state: str) -> None:
        name, _, seconds = self.pause_at.partition(":")
        if state and name == state:
            event(log, logging.WARNING, "daemon.pause_injected", state=state, seconds=seconds)
            time.sleep(float(seconds or 1))

    def journal_event(self, kind: str, **details: Any) -> None:
        self.journal.write({"event": kind, "at": round(time.monotonic(), 6), **details})

    # ----- leases ----------------------------------------------------------------

    def take_lease(self, holder: str, ttl: float, restore_to: str,
                   replaces: str = "") -> dict[str, Any]:
        """`replaces`: the holder of a run the caller knows is dead (its file lock was
        free): its lease passes to the caller at once."""
        now = time.monotonic()
        held = self.lease
        if held is not None and held.holder not in (holder, replaces) and held.expires > now:
            raise Busy(f"{self.name}: held by {held.holder} for {held.expires - now:.1f} s "
                       "more: wait for it to end")
        to_release(self.config, restore_to)  # (a release of this service, or UsageError)
        if not 0 < ttl <= 3600:
            raise UsageError(f"lease ttl {ttl!r}: give seconds in (0, 3600]")
        self.lease = Lease(holder, restore_to, ttl, now + ttl)
        self.restore_pending = None
        self.journal_event("lease_taken", holder=holder, ttl_s=ttl, restore_to=restore_to)
        return {"service": self.name, "holder": holder, "ttl_s": ttl, "restore_to": restore_to}

    def renew_lease(self, holder: str) -> dict[str, Any]:
        held = self.lease
        if held is None or held.holder != holder:
            raise UsageError(f"{self.name}: {holder} holds no lease (it expired, and "
                             f"{self.restore_pending or 'the release it named'} is being put "
                             "back)")
        held.expires = time.monotonic() + held.ttl
        return {"service": self.name, "holder": holder, "ttl_s": held.ttl}

    def release_lease(self, holder: str) -> dict[str, Any]:
        held = self.lease
        if held is not None and held.holder == holder:
            self.lease = None
            self.journal_event("lease_released", holder=holder)
        return {"service": self.name, "holder": holder, "released": True}

    def watch_lease(self) -> dict[str, Any] | None:
        """Each second: an expired lease aborts its holder's swap; once idle, the release
        it named is swapped back in (kind "restore")."""
        held = self.lease
        if held is not None and held.expires <= time.monotonic():
            self.lease, self.restore_pending = None, held.restore_to
            self.journal_event("lease_expired", holder=held.holder, restore_to=held.restore_to)
            if self.job is not None and self.job.running and self.job.run is not None:
                self.job.request = "abort"
            return {"service": self.name, "expired": held.holder}
        target = self.restore_pending
        if target is None or (self.job is not None and self.job.running):
            return None
        self.restore_pending = None
        active = self.service.active
        if active is not None and active.release.name == target:
            return {"service": self.name, "restored": target, "swap": None}
        try:
            job = self.swap(target, 0.0, kind="restore")
        except SwapctlError as exc:
            self.journal_event("restore_failed", release=target, error=str(exc))
            return {"service": self.name, "restore_failed": str(exc)}
        return {"service": self.name, "restored": target, "swap": job.swap_id}

    # ----- health ----------------------------------------------------------------

    def refresh(self) -> dict[str, Any]:
        """Ask the active relay for its counters (not while a swap holds the links)."""
        if not self.lock.acquire(blocking=False):
            return self.health
        try:
            self.health = self.check()
            return self.health
        finally:
            self.lock.release()

    def check(self) -> dict[str, Any]:
        now = time.time()
        active = self.service.active
        if active is None:
            return {"healthy": False, "checked": now, "problem": "no active relay"}
        if active.release.legacy and self.legacy_socket is not None:
            return {"checked": now, "release": active.release.name,
                    **legacy.healthy(active, self.legacy_socket)}
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

    def _serve(self, release: Release) -> Slot:
        """Start `release` serving the clients: on swapctld's listener, or (legacy) in a
        slot of its own behind the public link."""
        svc = self.service
        if release.legacy:
            slot, sock = legacy.start(self, release)
            legacy.point(svc, release, sock, self.legacy_root)
            self.legacy_socket = sock
            return slot
        assert svc.listener is not None
        return svc.start_serving(release, svc.listener.fileno(), self.config.start_timeout)

    def restart_if_dead(self) -> dict[str, Any] | None:
        """The active relay died outside a swap: start its release again on the listener
        swapctld holds (connects wait in its backlog meanwhile). A legacy relay binds its
        own socket: it is started again in a slot and the public link follows it."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            svc, active = self.service, self.service.active
            if active is None or active.alive():
                return None
            if svc.listener is None and not active.release.legacy:
                return None
            how = active.handle.describe_exit()
            event(log, logging.WARNING, "daemon.relay_died", service=self.name,
                  release=active.release.name, exit=how)
            active.link.close()
            svc.active = None
            try:
                slot = self._serve(active.release)
            except (SwapctlError, TimeoutError, OSError) as exc:
                self.journal_event("restart_failed", release=active.release.name,
                                   error=str(exc))
                return {"service": self.name, "restarted": False, "error": str(exc)}
            svc.active = slot
            self.journal_event("restarted", release=active.release.name, exit=how)
            self.health = self.check()
            return {"service": self.name, "restarted": True, "exit": how}
        finally:
            self.lock.release()

    def status(self) -> dict[str, Any]:
        active, warm, job = self.service.active, self.service.warm, self.job
        out: dict[str, Any] = {
            "service": self.name, "socket": str(self.service.socket_path),
            "configured_active": self.config.active,
            "active": None if active is None else slot_status(active),
            "warm": None if warm is None else slot_status(warm),
            "health": self.health,
            "swap": None,
            "lease": None if self.lease is None else {
                "holder": self.lease.holder, "restore_to": self.lease.restore_to,
                "expires_in_s": round(self.lease.expires - time.monotonic(), 3)},
        }
        if job is not None:
            out["swap"] = {"swap_id": job.swap_id, "kind": job.kind, "state": job.phase,
                           "strategy": job.strategy, "to": job.to_release,
                           "from": job.from_release, "running": job.running,
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


def program_of(slot: Slot) -> str:
    return str(getattr(slot.handle, "program", ""))


def slot_status(slot: Slot) -> dict[str, Any]:
    return {"release": slot.release.name, "program": program_of(slot), "pid": slot.handle.pid,
            "alive": slot.alive(), "token": slot.token, "legacy": slot.release.legacy}
