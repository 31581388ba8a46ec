"""One service inside swapctld: its relays (in supervisord), its swaps, its health.

How it works. `ServiceRuntime` holds what one service is now (the slots in `service`,
the swap `job` and its `steering`, the cached `health`, the lease) and answers the API
handlers (daemon.py) with the pieces that live next to it:
    plan.py    what a swap would do (config, active slot, settings)
    jobs.py    a swap job in its thread, its report
    lease.py   a run's lease on the service
    health.py  the active relay's health and the status dict
    steer.py   an operator's rollback / abort / commit of the running swap
    legacy.py  legacy releases' slots and strategies; attach.py the start after a crash
Every request that touches the relays' control links runs under `lock`: a link carries
one request at a time. A swap runs in its own thread and holds the lock for its whole
life; status then reports the swap's phase and the figures cached before it began.
Everything that happens to the service is journaled (`journal_event`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from swapctl.config.convert import service_domain_byte, to_canary, to_release
from swapctl.config.model import ServiceConfig
from swapctl.daemon import health, jobs, legacy, steer
from swapctl.daemon import plan as planner
from swapctl.daemon.jobs import Busy, SwapJob
from swapctl.daemon.lease import LeaseState
from swapctl.daemon.paths import Paths, read_json, write_json
from swapctl.daemon.requests_model import Refusal
from swapctl.errors import SwapctlError, UsageError
from swapctl.logs import event
from swapctl.supervise.client import SupervisorClient
from swapctl.supervise.layout import Layout
from swapctl.supervise.spawner import SupervisorSpawner
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
FILING_S = 10.0  # a swap that has ended gets this long to file its report before "busy"


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
        self.leases = LeaseState(name)
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
        adopted = legacy.start_adopted(self, release)  # `adopt: true`: it already runs
        if adopted is not None:
            return adopted
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
        self.journal_event("started", release=release.name, program=health.program_of(slot))
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
        return planner.settings(self.config, soak)

    def plan(self, to: str | None, soak: float | None, strategy: str = "auto") -> dict[str, Any]:
        """What `swap` would do, checked but not done (also the start of every swap).
        While a swap runs, there is nothing to plan: Busy names that swap."""
        self.refuse_if_busy()
        return planner.plan(self.name, self.service.socket_path, self.config,
                            self.service.active, to=to, soak=soak, asked=strategy)

    def swap(self, to: str | None, soak: float | None, kind: str = "swap",
             strategy: str = "auto") -> SwapJob:
        with self._starting_swap():
            planned = self.plan(to, soak, strategy)
            release = to_release(self.config, planned["to"]["release"])
            settings = self.settings(soak)
            actions = HandoffActions() if planned["strategy"] == "handoff" else legacy.actions(
                self, planned["strategy"], release, settings.deadlines.soaking)
            run = SwapRun(self.service, release, settings,
                          canary=to_canary(self.config), journal=self.journal,
                          requests=self.requested, aborted=self.abort_requested,
                          domain_byte=self.domain_byte, actions=actions)
            previous, job = self.job, SwapJob.of_run(run, kind)
            self.job = job  # first: the begin record reaches the job's followers too
            try:
                run.begin()  # journaled before the caller hears the swap's id
            except BaseException:
                self.job = previous
                raise
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
        if job is None or job.ended_by(FILING_S):
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
        return planner.previous_release(self.name, self.config,
                                        active.release.name if active else "",
                                        self.paths.reports)

    def _run_in_thread(self, job: SwapJob, body: jobs.Body) -> None:
        self.job = job
        self.steering = steer.Steering(self.name, job.swap_id, job.strategy,
                                       lambda: job.phase)
        jobs.run_in_thread(self, job, body, self.steering)

    def run_recovered(self, job: SwapJob, body: Callable[[], SwapRun]) -> None:
        self._run_in_thread(job, body)

    # ----- steering --------------------------------------------------------------

    def ask(self, request: str) -> dict[str, Any]:
        """An operator's rollback / abort / commit for the swap that is running: answered
        once the swap takes it, or refused (too late, not in this phase): steer.py."""
        job, steering = self.job, self.steering
        if job is None or not job.running or steering is None \
                or steering.swap_id != job.swap_id:
            raise UsageError(f"{self.name}: no swap is running")
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

    # ----- the journal -----------------------------------------------------------

    def _journaled(self, record: dict[str, Any]) -> None:
        if self.crash_at and self.crash_at in (record.get("to"), record.get("event")):
            event(log, logging.WARNING, "daemon.crash_injected", state=self.crash_at)
            os.kill(os.getpid(), signal.SIGKILL)
        job = self.job
        if job is not None and record.get("swap") == job.swap_id:
            job.add(record)
            if self.steering is not None and "to" in record:
                self.steering.moved()
            self._pause_if_asked(str(record.get("to", "")))

    def _pause_if_asked(self, state: str) -> None:
        """Fault injection: SWAPCTL_DAEMON_PAUSE_AT=STATE[:SECONDS[:FILE]] holds the swap
        as it enters STATE for SECONDS (1), or until FILE exists. PAUSE_AT=@SPEC_FILE
        reads that spec from SPEC_FILE at each state instead (none while it is missing),
        so that one daemon can be held at a different state for each test."""
        spec = self.pause_at
        if spec.startswith("@") and state:
            try:
                spec = Path(spec[1:]).read_text().strip()
            except OSError:
                return
        name, _, rest = spec.partition(":")
        if not state or name != state:
            return
        seconds, _, until = rest.partition(":")
        event(log, logging.WARNING, "daemon.pause_injected", state=state, seconds=seconds,
              until=until)
        deadline = time.monotonic() + float(seconds or 1)
        while time.monotonic() < deadline and not (until and os.path.exists(until)):
            time.sleep(0.02)

    def journal_event(self, kind: str, **details: Any) -> None:
        self.journal.write({"event": kind, "at": round(time.monotonic(), 6), **details})

    # ----- leases (lease.py) -----------------------------------------------------

    def take_lease(self, holder: str, ttl: float, restore_to: str,
                   replaces: str = "") -> dict[str, Any]:
        """`replaces`: the holder of a run the caller knows is dead (its file lock was
        free): its lease passes to the caller at once."""
        self.leases.take(holder, ttl, restore_to, self.config, replaces)
        self.journal_event("lease_taken", holder=holder, ttl_s=ttl, restore_to=restore_to)
        return {"service": self.name, "holder": holder, "ttl_s": ttl, "restore_to": restore_to}

    def renew_lease(self, holder: str) -> dict[str, Any]:
        held = self.leases.renew(holder)
        return {"service": self.name, "holder": holder, "ttl_s": held.ttl}

    def release_lease(self, holder: str) -> dict[str, Any]:
        if self.leases.release(holder):
            self.journal_event("lease_released", holder=holder)
        return {"service": self.name, "holder": holder, "released": True}

    def watch_lease(self) -> dict[str, Any] | None:
        """Each second: an expired lease aborts its holder's swap; once idle, the release
        it named is swapped back in (kind "restore")."""
        due = self.leases.watch(swap_running=self.job is not None and self.job.running)
        if due.expired is not None:
            held = due.expired
            self.journal_event("lease_expired", holder=held.holder, restore_to=held.restore_to)
            if self.job is not None and self.job.running and self.job.run is not None:
                self.job.request = "abort"
            return {"service": self.name, "expired": held.holder}
        target = due.restore
        if target is None:
            return None
        active = self.service.active
        if active is not None and active.release.name == target:
            return {"service": self.name, "restored": target, "swap": None}
        try:
            job = self.swap(target, 0.0, kind="restore")
        except SwapctlError as exc:
            self.journal_event("restore_failed", release=target, error=str(exc))
            return {"service": self.name, "restore_failed": str(exc)}
        return {"service": self.name, "restored": target, "swap": job.swap_id}

    # ----- health (health.py) ----------------------------------------------------

    def refresh(self) -> dict[str, Any]:
        """Ask the active relay for its counters (not while a swap holds the links)."""
        if not self.lock.acquire(blocking=False):
            return self.health
        try:
            self.health = health.check(self.service.active, self.legacy_socket)
            return self.health
        finally:
            self.lock.release()

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
            self.health = health.check(svc.active, self.legacy_socket)
            return {"service": self.name, "restarted": True, "exit": how}
        finally:
            self.lock.release()

    def status(self) -> dict[str, Any]:
        return health.status(self.name, self.service, configured_active=self.config.active,
                             health=self.health, job=self.job, lease=self.leases.status())

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
