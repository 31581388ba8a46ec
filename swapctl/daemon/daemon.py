"""swapctld: recovers, serves the control API, watches the relays, and stays out of the way.

Start-up, in order: load and check the configuration (a service whose file is broken is
set aside: not started, not attached, shown by `status` with its error, every request
for it refused with that error; the other services are served); reach supervisord
(start it in a session of its own when `supervisord.start: swapctl`, so that it
outlives us) and watch
it (supervise/keeper.py: its death is noticed at once, reported, and repaired: started
again by us, or waited for while systemd does; the relays that outlived it are adopted
and never stopped for it); for each
service attach to the relays supervisord runs and settle them (recovery.py), or start
the last good release on a fresh listener; open the control API; say READY=1. Then a
main loop pings the watchdog, refreshes health and metrics each second, and restarts a
relay that died outside a swap on the listener swapctld holds.

SIGTERM or SIGINT: stop answering, wait up to 10 s for a running swap to finish (a
swap interrupted here is finished by the next start, from the journal), let go of the
relays (they keep serving) and exit 0. `swapctl down` (op "down") also stops every
relay and the supervisord swapctl started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

from swapctl.config.errors import (
    BrokenService,
    ConfigError,
    Problem,
    UnknownService,
    did_you_mean,
)
from swapctl.config.load import Config, load_config
from swapctl.daemon import attach, health, sdnotify
from swapctl.daemon import requests_model as rq
from swapctl.daemon.api import ApiServer
from swapctl.daemon.jobs import SoakProgress
from swapctl.daemon.metrics import DaemonMetrics
from swapctl.daemon.paths import Paths, layout_of, read_json
from swapctl.daemon.plan import Unhealthy
from swapctl.daemon.runtime import ServiceRuntime
from swapctl.errors import SwapctlError, UsageError
from swapctl.logs import event, tail
from swapctl.supervise.client import SupervisorClient, SupervisorError
from swapctl.supervise.keeper import Keeper
from swapctl.supervise.layout import Layout
from swapctl.supervise.supervisord import Supervisord, stop_outliving
from swapctl.swap import journal as journal_file

log = logging.getLogger("swapctl.daemon")
TICK = 0.25
FDSTORE_PREFIX = "listener-"
RECONNECT_WAIT = 15.0  # a relay's start waits this long for supervisord to be back


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = Paths.of(config)
        self.layout: Layout = layout_of(config, self.paths)
        self.notifier = sdnotify.Notifier.from_env(unset_env=True)
        self.metrics = DaemonMetrics()
        self.stopping = threading.Event()
        self.down = threading.Event()
        self.runtimes: dict[str, ServiceRuntime] = {}
        self.started = time.time()
        self.recovery: list[dict[str, Any]] = []
        self.api: ApiServer | None = None
        self.keeper: Keeper | None = None
        self.broken = dict(config.broken)  # service files with problems, set aside

    # ----- life ------------------------------------------------------------------

    def run(self) -> int:
        self.paths.make()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        started = self._reach_supervisord()
        stored = sdnotify.listen_fds(unset_env=True)
        for name in sorted(self.config.services):
            runtime = ServiceRuntime(name, self.config.services[name], self.paths, self.layout,
                                     self._finished)
            runtime.listener_store = self._storer(name)
            runtime.spawner.reconnect_wait = RECONNECT_WAIT
            self.runtimes[name] = runtime
        self.keeper = Keeper(self.layout, restart=self._may_start_supervisord(),
                             on_event=self._supervisord_event, started=started)
        self.keeper.start()
        for runtime in self.runtimes.values():  # every relay may reconnect from now on
            runtime.service.open_control()
        for name, runtime in self.runtimes.items():
            fds = stored.get(FDSTORE_PREFIX + name, [])
            try:
                outcome = attach.start(runtime, fds[0] if fds else None)
            except (SwapctlError, OSError) as exc:
                outcome = {"service": name, "action": "failed", "problem": str(exc)}
            self.recovery.append(outcome)
            self.metrics.recovered(name, str(outcome.get("action", "")).split(" ")[0])
            event(log, logging.INFO, "daemon.service_up", **outcome)
        for name, problems in sorted(self.broken.items()):
            outcome = {"service": name, "action": "not_started (configuration error)",
                       "problem": "; ".join(map(str, problems))}
            self.recovery.append(outcome)
            self.metrics.recovered(name, "not_started")
            event(log, logging.ERROR, "daemon.service_broken", **outcome)
        mode = self.config.daemon.control.mode
        self.api = ApiServer(self.paths.control, self.handle, mode)
        self.api.start()
        self.metrics.daemon_info(version("swapctl"), self.started)
        address = self.metrics.serve(self.config.daemon.metrics.listen)
        event(log, logging.INFO, "daemon.ready", control=str(self.paths.control),
              metrics=f"{address[0]}:{address[1]}" if address else None, pid=os.getpid())
        if self.notifier is not None:
            broken = f", {len(self.broken)} with a broken file" if self.broken else ""
            self.notifier.ready(f"serving {len(self.runtimes)} services{broken}")
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _loop(self) -> None:
        interval = sdnotify.watchdog_interval(unset_env=True)
        ping = (interval / 2) if interval else None
        next_ping = next_check = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if ping is not None and now >= next_ping and self.notifier is not None:
                self.notifier.watchdog()
                next_ping = now + ping
            if now >= next_check:
                next_check = now + 1.0
                for name, runtime in self.runtimes.items():
                    leased = runtime.watch_lease()
                    if leased is not None:
                        event(log, logging.WARNING, "daemon.lease", **leased)
                    # (a relay cannot be started without supervisord: once it is back)
                    restarted = runtime.restart_if_dead() if self._supervisord_up() else None
                    if restarted is not None:
                        event(log, logging.WARNING, "daemon.relay_restart", **restarted)
                    self._observe(name, runtime.refresh())
            self.stopping.wait(TICK)

    def _observe(self, name: str, health: dict[str, Any]) -> None:
        active = self.runtimes[name].service.active
        if active is None:
            return
        program = str(getattr(active.handle, "program", ""))
        self.metrics.relay_seen(name, program.rsplit("-", 1)[-1], active.release.name,
                                bool(health.get("healthy")), health.get("connections"))

    def _shutdown(self) -> None:
        if self.keeper is not None:  # never start supervisord again from here on
            self.keeper.close()
        if self.notifier is not None:
            self.notifier.stopping("stopping")
        if self.api is not None:
            self.api.close()
        down = self.down.is_set()
        busy = []
        for name, runtime in self.runtimes.items():
            job = runtime.job
            if down and job is not None and job.report is None:
                job.request = "abort"
            if not runtime.wait_idle(60.0 if down else 10.0):
                busy.append(name)
        if busy:
            # never pull the links from under a running swap: leave as a crash would, and
            # the next start finishes the swap from the journal and the relays' states
            event(log, logging.WARNING, "daemon.exit_mid_swap", services=busy)
            logging.shutdown()
            os._exit(0)
        if down:
            for runtime in self.runtimes.values():
                runtime.stop_relays()
            self._stop_supervisord()
            stop_outliving(self.layout, time.monotonic() + 5.0)  # strays it never knew
        for runtime in self.runtimes.values():
            runtime.detach()
        self.metrics.close()
        event(log, logging.INFO, "daemon.stopped", down=down)

    def _storer(self, service: str) -> Any:
        def store(fd: int) -> None:
            if self.notifier is not None:
                self.notifier.fdstore(FDSTORE_PREFIX + service, [fd])
        return store

    def _finished(self, service: str, report: dict[str, Any]) -> None:
        decision = report.get("decision")
        if decision in ("committed", "rolled_back", "failed"):
            rollback = report.get("rollback") or {}
            self.metrics.swap_finished(
                service, decision, pause_ms=report.get("server_pause_ms"),
                rollback_ms=rollback.get("ms"),
                duration_s=float(report.get("ended", 0)) - float(report.get("started", 0)))
        self.metrics.swap_ended(service)

    # ----- supervisord -----------------------------------------------------------

    def _reach_supervisord(self) -> Supervisord | None:
        """supervisord answers once this returns: the one we started, else None."""
        sup = self.config.daemon.supervisord
        client = SupervisorClient(self.layout.socket, 2.0)
        try:
            try:
                client.pid()
                return None  # running (started by systemd, or by an earlier swapctld)
            except SupervisorError:
                pass
            if sup.start == "systemd":
                self._wait_supervisord(client, 30.0)
                return None
            if not self._may_start_supervisord():
                raise UsageError(
                    "supervisord.start is swapctl, but swapctld runs under systemd: a "
                    "supervisord it started would share its cgroup and die, with every relay, "
                    "at the next daemon restart; set supervisord.start: systemd in "
                    f"{self.config.directory / 'swapctld.yaml'}")
            started = Supervisord(self.layout)
            started.start()  # its own session: it outlives this process
            return started
        finally:
            client.close()

    def _may_start_supervisord(self) -> bool:
        return (self.config.daemon.supervisord.start == "swapctl"
                and not os.environ.get("INVOCATION_ID"))

    def _supervisord_up(self) -> bool:
        return self.keeper is None or self.keeper.up

    def _supervisord_event(self, kind: str, details: dict[str, Any]) -> None:
        """From the keeper's thread: supervisord died, came back, or did not start.
        Logged, and journaled for each service (in its running swap's record too)."""
        level = logging.INFO if kind in ("supervisord_restarted", "supervisord_back") \
            else logging.WARNING
        event(log, level, f"daemon.{kind}", **details)
        for runtime in list(self.runtimes.values()):
            spawner = runtime.spawner
            if kind == "supervisord_died":  # what runs now outlives it: adopted from now on
                relays = [_relay(h) for h in spawner.supervisord_died()]
            else:
                relays = [_relay(h) for h in spawner.handles if h.alive() and h.adopted]
            job = runtime.job
            swap = {"swap": job.swap_id} if job is not None and job.running else {}
            runtime.journal_event(kind, **details, relays=relays, **swap)

    def _wait_supervisord(self, client: SupervisorClient, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.pid()
                return
            except SupervisorError as exc:
                if time.monotonic() >= deadline:
                    raise SwapctlError(
                        f"supervisord does not answer on {self.layout.socket} ({exc}): start "
                        "it (systemctl start swapctl-supervisord)") from None
            time.sleep(0.2)

    def _stop_supervisord(self) -> None:
        if self.config.daemon.supervisord.start != "swapctl":
            return
        client = SupervisorClient(self.layout.socket, 5.0)
        try:
            pid = client.pid()
            client.shutdown()
        except SupervisorError:
            return
        finally:
            client.close()
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(15)

    # ----- the API ---------------------------------------------------------------

    def handle(self, raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every request, typed first (requests_model.py): a wrong one is answered with
        the op, the field and what is wrong, as is every refusal below."""
        try:
            request = rq.parse(raw)
            op: Callable[[Any], Iterator[dict[str, Any]]] = getattr(self, f"op_{request.op}")
            yield from op(request)
        except rq.Refusal as exc:
            yield exc.answer()
        except Unhealthy as exc:
            yield {"type": "error", "code": "unhealthy", "message": str(exc)}
        except UnknownService as exc:
            yield {"type": "error", "code": "unknown_service", "message": str(exc)}
        except (UsageError, ConfigError) as exc:
            yield {"type": "error", "code": "usage", "message": str(exc)}
        except SwapctlError as exc:
            yield {"type": "error", "code": "internal", "message": str(exc)}

    def runtime(self, name: str | None) -> ServiceRuntime:
        if name in self.broken:
            raise BrokenService(name, self.broken[name])
        if name not in self.runtimes:
            names = sorted({*self.runtimes, *self.broken})
            raise UnknownService(f"unknown service {name!r}{did_you_mean(str(name), names)}: "
                                 f"swapctld runs {', '.join(names)} "
                                 f"(one file each in {self.config.directory})")
        return self.runtimes[str(name)]

    def _service_status(self, name: str, keeper: dict[str, Any] | None) -> dict[str, Any]:
        if name in self.broken:
            return _broken_status(name, self.broken[name])
        return health.with_supervisord(self.runtime(name).status(), keeper)

    def op_ping(self, request: rq.Ping) -> Iterator[dict[str, Any]]:
        yield {"type": "result", "pid": os.getpid(), "version": version("swapctl")}

    def op_status(self, request: rq.Status) -> Iterator[dict[str, Any]]:
        names = [request.service] if request.service else sorted({*self.runtimes, *self.broken})
        keeper = self.keeper.status() if self.keeper is not None else None
        services = [self._service_status(n, keeper) for n in names]
        yield {"type": "result", "daemon": {
            "pid": os.getpid(), "version": version("swapctl"), "started": self.started,
            "config_dir": str(self.config.directory), "state_dir": str(self.paths.state),
            "control": str(self.paths.control), "supervisord": str(self.layout.socket),
            "supervisord_state": keeper,
            "metrics": self.metrics.address and ":".join(map(str, self.metrics.address)),
            "recovery": self.recovery}, "services": services}

    def op_swap(self, request: rq.Swap) -> Iterator[dict[str, Any]]:
        runtime = self.runtime(request.service)
        runtime.refuse_if_busy()  # before anything else: within a second, naming the swap
        self._reload(runtime)
        kind, to = "swap", request.to
        if request.rollback:  # `swapctl rollback SERVICE` with no swap running
            kind, to = "rollback", runtime.previous_release()
        if request.dry_run:
            plan = runtime.plan(to, request.soak, request.strategy)
            yield {"type": "result", "plan": {**plan, "kind": kind}}
            return
        job = runtime.swap(to, request.soak, kind, request.strategy)
        self.metrics.swap_started(runtime.name)
        yield {"type": "accepted", "swap_id": job.swap_id, "kind": kind,
               "plan": {"from": job.from_release, "to": job.to_release,
                        "strategy": job.strategy}}
        if not request.wait:
            yield {"type": "result", "swap_id": job.swap_id, "running": True}
            return
        yield from _follow(job)

    def op_follow(self, request: rq.Follow) -> Iterator[dict[str, Any]]:
        runtime = self.runtime(request.service)
        job = runtime.job
        if job is None:
            raise UsageError(f"{runtime.name}: no swap since swapctld started")
        yield {"type": "accepted", "swap_id": job.swap_id, "kind": job.kind}
        yield from _follow(job)

    def op_request(self, request: rq.Steer) -> Iterator[dict[str, Any]]:
        yield {"type": "result", **self.runtime(request.service).ask(request.request)}

    def op_lease(self, request: rq.Lease) -> Iterator[dict[str, Any]]:
        """{service, holder, ttl_s, restore_to}: hold the service; renew within ttl_s
        (op lease_renew) or swapctld restores `restore_to` (docs/daemon.md, Leases)."""
        runtime = self.runtime(request.service)
        yield {"type": "result", **runtime.take_lease(
            request.holder, request.ttl_s, request.restore_to, request.replaces or "")}

    def op_lease_renew(self, request: rq.LeaseRenew) -> Iterator[dict[str, Any]]:
        yield {"type": "result", **self.runtime(request.service).renew_lease(request.holder)}

    def op_lease_release(self, request: rq.LeaseRelease) -> Iterator[dict[str, Any]]:
        yield {"type": "result",
               **self.runtime(request.service).release_lease(request.holder)}

    def op_history(self, request: rq.History) -> Iterator[dict[str, Any]]:
        service = request.service
        if service:
            self.runtime(service)
        rows = []
        for path in self.paths.reports.glob("*.json"):
            data = read_json(path)
            if data is None or (service and data.get("service") != service):
                continue
            rollback = data.get("rollback") or {}
            canary = data.get("canary") or {}
            rows.append({k: data.get(k) for k in ("swap_id", "service", "kind", "strategy",
                                                   "from", "to",
                                                   "decision", "reason", "started", "ended",
                                                   "server_pause_ms", "client_pause_ms")}
                        | {"rollback_ms": rollback.get("ms"), "lost": canary.get("lost")})
        rows.sort(key=_started, reverse=True)
        yield {"type": "result", "swaps": rows[:request.limit]}

    def op_report(self, request: rq.Report) -> Iterator[dict[str, Any]]:
        swap_id = request.swap_id
        data = read_json(self.paths.report(swap_id))
        if data is None:
            records = [r for r in journal_file.stream(self.paths.journal)
                       if r.get("swap") == swap_id] if self.paths.journal.exists() else []
            if not records:
                raise UsageError(f"no swap {swap_id}: see `swapctl history`")
            data = {"swap_id": swap_id, "decision": "running", "journal": records}
        yield {"type": "result", "report": data}

    def op_logs(self, request: rq.Logs) -> Iterator[dict[str, Any]]:
        runtime = self.runtime(request.service)
        out = []
        for program in runtime.spawner.programs:
            path = self.layout.program_log(program)
            out.append({"program": program, "path": str(path),
                        "text": tail(path, request.lines)})
        yield {"type": "result", "logs": out}

    def op_down(self, request: rq.Down) -> Iterator[dict[str, Any]]:
        self.down.set()
        self.stopping.set()
        yield {"type": "result", "pid": os.getpid(), "stopping": True}

    def _reload(self, runtime: ServiceRuntime) -> None:
        """Re-read the service's file before each swap: releases and settings as edited
        (a broken file refuses the swap and names file, key and fix)."""
        fresh = load_config(self.config.directory, [runtime.name])
        runtime.config = fresh.service(runtime.name)


def _broken_status(name: str, problems: tuple[Problem, ...]) -> dict[str, Any]:
    """A service whose file is broken, as `status` shows it: unhealthy, with its error."""
    text = "; ".join(map(str, problems))
    return {"service": name, "socket": None, "configured_active": None, "active": None,
            "warm": None, "swap": None, "lease": None,
            "health": {"healthy": False, "checked": time.time(),
                       "problem": f"configuration error, not served by swapctld: {text}"},
            "config_error": {"problems": [p.to_dict() for p in problems],
                             "fix": "fix the file (`swapctl config check`), then restart "
                                    "swapctld (its relays keep serving)"}}


def _relay(handle: Any) -> dict[str, Any]:
    return {"program": handle.program, "pid": handle.pid, "release": handle.release}


def _follow(job: Any) -> Iterator[dict[str, Any]]:
    for item in job.follow():
        if isinstance(item, SoakProgress):  # each second of a soak: window left, canary
            yield item.answer()
        elif "report" in item:
            yield {"type": "result", "report": item["report"]}
        else:
            yield {"type": "progress", "record": item}


def _started(row: dict[str, Any]) -> float:
    try:
        return float(row.get("started") or 0)
    except (TypeError, ValueError):  # a report file edited by hand
        return 0.0


def main(config_dir: Path | None) -> int:
    config = load_config(config_dir)
    return Daemon(config).run()
