"""Legacy releases inside swapctld: isolated slots, the public link, takeover and restart.

A legacy release (`legacy: true`, `compiled_socket:` in its service file) speaks no
handoff protocol and binds the path compiled into it. supervisord runs it in a blue or
green slot like any release, but through `swapctl.isolation`: inside its own mount
namespace the compiled-in directory is the slot's private folder
(STATE/supervisord/slots/SERVICE-SLOT/root-TOKEN, a fresh one per start: a listener taken
over from an earlier start may still be bound in the old one), so its socket is
.../root-TOKEN/NAME.sock seen from outside and two builds never steal each other's path. The
service's public path is then a symlink swapctld owns, flipped atomically
(`swapctl.legacy.layout.point`), never to a socket that does not accept.

Strategies here (docs/legacy.md has their guarantees):
  legacy -> handoff   takeover: freeze, duplicate every socket with pidfd_getfd, ADOPT
                      into the candidate, end the legacy relay; no client disconnected.
  any    -> legacy    bridge: candidate started and probed in the other slot, a bridge
                      client joins the two relays, the public link flips, the old relay
                      drains and is retired at its last client or at the drain deadline
                      (the soak window; those left are cut, counted). restart, asked for
                      explicitly: link flipped, old release stopped (its clients reconnect).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import psutil

from swapctl.handoff.controller import RelayLink
from swapctl.legacy import layout as lay
from swapctl.legacy import sockets
from swapctl.legacy.restart import probe_socket
from swapctl.legacy.takeover import Takeover, TakeoverSettings
from swapctl.supervise.spawner import SupervisorSpawner
from swapctl.swap.canary import summarize
from swapctl.swap.service import Service, Slot, SlotError
from swapctl.swap.spawner import Release

if TYPE_CHECKING:
    from swapctl.daemon.jobs import SwapJob
    from swapctl.daemon.runtime import ServiceRuntime

PHASES = {"takeover": ("starting", "probing", "freezing", "adopting", "committed"),
          "restart": ("starting", "probing", "flipping", "stopping", "committed"),
          "bridge": ("starting", "probing", "bridging", "flipping", "draining", "committed")}


class NoLink:
    """The control link of a relay that has none (legacy)."""

    hello: dict[str, Any] = {}

    def close(self) -> None:
        return None


def no_link() -> RelayLink:
    return cast(RelayLink, NoLink())


def slot_socket(spawner: SupervisorSpawner, slot: Slot) -> Path:
    """Where the legacy relay of `slot` binds, seen from outside its namespace."""
    assert slot.release.compiled is not None
    program = str(getattr(slot.handle, "program", ""))
    return spawner.private_dir(program, slot.token) / Path(slot.release.compiled).name


def public_layout(service: Service, release: Release, root: Path) -> lay.Layout:
    return lay.Layout(public=service.socket_path, compiled=Path(release.compiled or "/"),
                      root=root)


def start(rt: ServiceRuntime, release: Release) -> tuple[Slot, Path]:
    """Start a legacy release in a free slot; ready once its slot socket passes a probe
    (two clients, one message, echo when the service echoes). Never points the link."""
    service, spawner, timeout = rt.service, rt.spawner, rt.config.start_timeout
    assert service.control is not None
    _sweep(spawner, release)
    token = f"{release.name}-legacy-{uuid.uuid4().hex[:8]}"
    handle = spawner.spawn(release, token, service.control.path, service.socket_path)
    slot = Slot(release, token, handle, no_link())
    sock = slot_socket(spawner, slot)
    deadline = time.monotonic() + timeout
    try:
        while not lay.connectable(sock):
            if not handle.alive():
                raise SlotError(f"{release.name} exited before {sock} accepted "
                                f"({handle.describe_exit()})")
            if time.monotonic() >= deadline:
                raise SlotError(f"{release.name}: {sock} did not accept within {timeout:g}s")
            time.sleep(0.005)
        probe_socket(sock, rt.domain_byte, rt.config.probe.echo,
                     max(0.5, deadline - time.monotonic()))
    except Exception:
        handle.stop(1.0)
        raise
    return slot, sock


def _sweep(spawner: SupervisorSpawner, release: Release) -> None:
    """Remove the private folders of earlier starts whose socket nobody serves any more
    (one that a taken-over listener is still bound in accepts, and stays)."""
    assert release.compiled is not None
    name = Path(release.compiled).name
    for program in spawner.programs:
        for folder in spawner.private_dir(program, "x").parent.glob("root-*"):
            if not lay.connectable(folder / name):
                shutil.rmtree(folder, ignore_errors=True)


def point(service: Service, release: Release, target: Path, root: Path) -> None:
    lay.point(public_layout(service, release, root), target)


def healthy(slot: Slot, sock: Path) -> dict[str, Any]:
    if not slot.alive():
        return {"healthy": False, "problem": f"{slot.release.name} exited: "
                                              f"{slot.handle.describe_exit()}"}
    if sockets.proc_state(slot.handle.pid) == "T":
        return {"healthy": False, "problem": f"{slot.release.name} is stopped (SIGSTOP)"}
    if not lay.connectable(sock):
        return {"healthy": False, "problem": f"{sock} does not accept connections"}
    try:
        found = sockets.find(slot.handle.pid, str(slot.release.compiled))
        connections: int | None = len(found.connections)
    except Exception:  # noqa: BLE001 (health must not fail on a /proc race)
        connections = None
    return {"healthy": True, "connections": connections, "legacy": True}


def takeover(rt: ServiceRuntime, old: Slot, candidate: Release) -> Any:
    assert old.release.compiled is not None
    settings = TakeoverSettings(ready_timeout=rt.config.start_timeout,
                                domain_byte=rt.domain_byte, echo=rt.config.probe.echo)
    return Takeover(rt.service, old.handle.pid, old.release.compiled, candidate,
                    settings).run()


def is_stopped(pid: int) -> bool:
    return sockets.proc_state(pid) == "T"


def thaw_if_stopped(pid: int) -> bool:
    """A legacy relay left frozen by a takeover that never finished: let it run."""
    if sockets.proc_state(pid) != "T":
        return False
    with contextlib.suppress(ProcessLookupError, psutil.Error):
        psutil.Process(pid).send_signal(signal.SIGCONT)
    return True


# ----- swaps run by swapctld ----------------------------------------------------------

def job(rt: ServiceRuntime, release: Release, strategy: str, kind: str) -> SwapJob:
    from swapctl.config.convert import to_canary  # noqa: PLC0415 (pydantic)
    from swapctl.daemon.jobs import SwapJob  # noqa: PLC0415 (jobs imports nothing of ours)
    active = rt.service.active
    assert active is not None
    swap_id = f"swap-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return SwapJob(swap_id, kind, strategy, active.release.name, release.name,
                   canary=to_canary(rt.config))


def run(rt: ServiceRuntime, job: SwapJob, release: Release,
        soak: float | None = None) -> dict[str, Any]:
    """Run a takeover, bridge or restart for swapctld; returns its report (swap report
    shape). For a bridge, the soak window is the drain deadline."""
    svc = rt.service
    old = svc.active
    assert old is not None
    started = time.monotonic()
    step = _Stepper(rt, job)
    step.write("idle", "begin", "starting", release=release.name, command=list(release.command),
               old_release=old.release.name, old_token=old.token, strategy=job.strategy)
    connections_before = _connections(rt)
    if job.strategy == "takeover":
        result = takeover(rt, old, release)
        strategy_report = result.report
        if result.candidate is not None:
            svc.active, rt.legacy_socket = result.candidate, None
            fd = result.candidate.link.listener(5.0)
            from swapctl.unixsock import adopt_listener  # noqa: PLC0415
            svc.listener = adopt_listener(fd)
            rt.listener_store(fd)
            old.handle.stop(2.0)  # already ended by the takeover: supervisord reaps it
    elif job.strategy == "bridge":
        strategy_report = _bridge(rt, old, release, job, rt.settings(soak).deadlines.soaking)
    else:
        strategy_report = _restart(rt, old, release)
    decision = {"completed": "committed", "rolled_back": "rolled_back"}.get(
        strategy_report.outcome, "failed")
    step.write("starting", decision if decision != "failed" else "rollback_failed", decision,
               reason=strategy_report.reason, pause_ms=strategy_report.pause_ms)
    report = {
        "swap_id": job.swap_id, "socket": str(svc.socket_path), "from": old.release.name,
        "to": release.name, "decision": decision,
        "reason": strategy_report.reason or (f"{job.strategy} completed"
                                             if decision == "committed" else ""),
        "phases": [{"phase": job.strategy, "ms": round((time.monotonic() - started) * 1000, 3)}],
        "server_pause_ms": strategy_report.pause_ms, "pause_stages_ms":
            strategy_report.details.get("pause_stages_ms"),
        "client_pause_ms": None,
        "connections": {"before": connections_before, "moved": strategy_report.moved,
                        "after": _connections(rt)},
        "handoff": {}, "probe_ms": strategy_report.details.get("probe_ms", 0.0),
        "rollback": None, "journal": step.records,
        "strategy_report": strategy_report.to_dict(),
        "could_not_guarantee": strategy_report.could_not_guarantee,
    }
    return report


def _restart(rt: ServiceRuntime, old: Slot, release: Release) -> Any:
    """Candidate started and probed in the other slot, public link flipped to it, old
    release stopped: its clients are disconnected (counted) and reconnect."""
    from swapctl.legacy.report import StrategyReport  # noqa: PLC0415
    svc = rt.service
    report = StrategyReport("restart", could_not_guarantee=(
        "every client of the old release is disconnected; what it had not delivered is lost"))
    try:
        if release.legacy:
            slot, sock = start(rt, release)
        else:
            raise SlotError("restart to a handoff-capable release: use the handoff or "
                            "takeover strategy")
    except Exception as exc:  # noqa: BLE001 (any failure leaves the old release serving)
        report.outcome, report.reason = "rolled_back", f"candidate not ready: {exc}"
        return report
    flipped = time.monotonic_ns()
    point(svc, release, sock, rt.legacy_root)
    before = _connections(rt)
    old.stop(2.0)
    report.pause_ms = (time.monotonic_ns() - flipped) / 1e6
    report.disconnects = before
    report.moved = 0
    svc.active, rt.legacy_socket = slot, sock
    if svc.listener is not None:  # the old release's listener: nobody serves it any more
        svc.listener.close()
        svc.listener = None
    report.outcome = "completed"
    return report


def _bridge(rt: ServiceRuntime, old: Slot, release: Release, job: SwapJob,
            drain_deadline: float) -> Any:
    """Candidate started and probed in the other slot, a bridge between the two relays,
    the public link flipped; the old relay is drained (its clients leave on their own,
    reaching the candidate when they reconnect) and retired at the last client or at the
    drain deadline (those still there are disconnected, counted)."""
    from swapctl.legacy.bridge import (  # noqa: PLC0415 (legacy only)
        BridgeSettings,
        BridgeSwap,
        BridgeSwapError,
        RelayRef,
    )
    svc = rt.service
    started: dict[str, Any] = {}

    def starter() -> RelayRef:
        slot, sock = start(rt, release)
        started.update(slot=slot, sock=sock)
        return RelayRef(slot.handle.pid, sock, str(release.compiled))

    if old.release.legacy:
        old_bound = str(old.release.compiled)
    else:
        old_bound = str(svc.listener.getsockname()) if svc.listener else str(svc.socket_path)
    settings = BridgeSettings(ready_timeout=rt.config.start_timeout,
                              domain_byte=rt.domain_byte, echo=rt.config.probe.echo,
                              drain_deadline=drain_deadline)
    swap = BridgeSwap(public_layout(svc, release, rt.legacy_root), old.handle.pid, release,
                      legacy=True, settings=settings, old_bound=old_bound, canary=job.canary,
                      starter=starter, flip=lambda target: point(svc, release, target,
                                                                 rt.legacy_root))
    try:
        swap.cutover()
    except BridgeSwapError:
        return swap.report
    swap.retire_old()
    report = swap.finish()
    old.handle.stop(2.0)  # retired by the bridge: supervisord reaps it
    svc.active, rt.legacy_socket = started["slot"], started["sock"]
    if svc.listener is not None:  # the old release's listener: nobody serves it any more
        svc.listener.close()
        svc.listener = None
    return report


def _connections(rt: ServiceRuntime) -> int:
    value = rt.check().get("connections")
    return int(value) if isinstance(value, int) else 0


class _Stepper:
    """Journal records of a legacy swap, in the shape SwapRun writes them."""

    def __init__(self, rt: ServiceRuntime, job: SwapJob) -> None:
        self.rt, self.job = rt, job
        self.records: list[dict[str, Any]] = []

    def write(self, source: str, event: str, target: str, **details: Any) -> None:
        record = {"swap": self.job.swap_id, "at": round(time.monotonic(), 6), "from": source,
                  "event": event, "to": target, "reason": str(details.pop("reason", "") or ""),
                  **details}
        self.job.phase_now = target
        self.rt.journal.write(record)
        self.records.append(record)


def with_canary(report: dict[str, Any], audit: dict[str, Any] | None) -> dict[str, Any]:
    if audit is not None:
        totals = summarize(audit)
        report["canary"] = {**totals, "rate": audit.get("rate"), "streams": audit["streams"]}
        report["disconnects"] = totals["disconnects"]
    return report
