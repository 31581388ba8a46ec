"""The library entry point for swaps that involve a legacy relay: `run_strategy`.

    request = LegacySwap(layout=Layout(public, compiled, root),
                         to=ReleaseSpec("v2", ("python", "-m", "swapctl.relay"), legacy=False),
                         state_dir=root / "state")
    report = run_strategy("takeover", request)          # or "restart", "bridge", "auto"

The old relay is whatever serves the public link's slot (its pid is recorded in the
slot's state file by `layout.start_legacy`; pid + create time are checked). If no slot
serves and `request.from_` is given and the public path does not exist yet, the old
release is started in a slot first (a fresh box). A box whose public path is still
the relay's own socket must be migrated once first (`layout.migrate`, docs/legacy.md).

Checkers: the swap canary (its own publisher, a dashboard and a strategy consumer on
the public path) runs around the swap unless `canary_rate` is 0; a running
`LoadSession` can be passed and is stopped after the swap. Each checker's counts are
added to the report, which keeps the largest figure any source gave.

`bridge` lives in bridge.py (another module's owner); it is called as
`bridge.run_bridge(request, old_pid, service=service, canary=canary) -> StrategyReport`
(it may stop the canary itself before retiring the old relay).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from swapctl.errors import UsageError
from swapctl.handoff.controller import ControlServer
from swapctl.legacy import layout as lay
from swapctl.legacy.report import StrategyReport, figures_from_canary, figures_from_load
from swapctl.legacy.restart import RestartSettings, restart
from swapctl.legacy.takeover import Takeover, TakeoverSettings
from swapctl.swap.canary import Canary, CanaryError, summarize
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner

if TYPE_CHECKING:
    from swapctl.probes.load import LoadSession

STRATEGIES = ("takeover", "bridge", "restart", "auto")


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    name: str
    command: tuple[str, ...]
    legacy: bool  # True: compiled-in path, no handoff; False: speaks the handoff protocol

    @property
    def release(self) -> Release:
        return Release(self.name, self.command, handoff=not self.legacy)


@dataclass(frozen=True, slots=True)
class LegacySwap:
    layout: lay.Layout
    to: ReleaseSpec
    state_dir: Path  # control socket and logs
    from_: ReleaseSpec | None = None  # the running release (started only on a fresh box)
    canary_rate: float = 1000.0  # 0: no canary
    domain_byte: int = 1
    echo: bool = True
    ready_timeout: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific settings


def pick(from_legacy: bool, to_legacy: bool) -> tuple[str, str]:
    """The best strategy the two releases allow, and why."""
    if not from_legacy and not to_legacy:
        return "handoff", ("both releases speak the handoff protocol: use `swapctl swap` "
                           "(zero disconnects, zero loss)")
    if from_legacy and not to_legacy:
        return "takeover", ("the old release is legacy and the new one speaks the handoff "
                            "protocol: takeover moves every connection (0 disconnects; "
                            "bytes inside the frozen relay cannot move and are counted)")
    return "bridge", ("the new release cannot adopt connections: bridge keeps every client "
                      "connected and loses nothing while old clients drain (restart would "
                      "disconnect them all)")


def old_relay(layout: lay.Layout) -> tuple[str, dict[str, Any]] | None:
    """The slot serving the public link and its recorded state (pid, kind...)."""
    name = layout.current()
    if name is None:
        return None
    state = lay.read_state(layout, name)
    return None if state is None else (name, state)


def run_strategy(strategy: str, request: LegacySwap, *, load: LoadSession | None = None,
                 service: Service | None = None) -> StrategyReport:
    """Run `strategy` (takeover, restart, bridge or auto) and return its report."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    current = _ensure_old(request)
    name, state = current
    from_legacy = state.get("kind") == "legacy"
    why = ""
    if strategy == "auto":
        strategy, why = pick(from_legacy, request.to.legacy)
    _check_allowed(strategy, from_legacy, request.to.legacy)
    own_service = service is None
    if service is None:
        service = _service(request)
    report: StrategyReport | None = None
    canary = _start_canary(request)
    try:
        report = _dispatch(strategy, request, int(state["pid"]), service, canary)
        if why:
            report.details["chosen_because"] = why
        _record_new_state(request, name, report)
    finally:
        _finish_checkers(canary, load, report)
        if own_service and service.control is not None:
            service.control.close()
    if report.pause_ms is None and report.outcome == "completed":
        report.pause_ms = client_pause(report)  # restart: the clients' own reconnect time
    return report


def _ensure_old(request: LegacySwap) -> tuple[str, dict[str, Any]]:
    current = old_relay(request.layout)
    if current is not None:
        return current
    layout, old = request.layout, request.from_
    if old is None or not old.legacy or layout.public.exists() or layout.public.is_symlink():
        raise UsageError(
            f"no relay of a swapctl slot serves {layout.public}: migrate this box to the slot "
            "layout once first (docs/legacy.md), or give --from for a fresh box")
    slot = lay.start_legacy(layout, layout.free_slot(), list(old.command),
                            request.state_dir / "logs", request.ready_timeout)
    lay.point(layout, slot.socket)
    found = old_relay(layout)
    assert found is not None
    return found


def _check_allowed(strategy: str, from_legacy: bool, to_legacy: bool) -> None:
    if strategy == "handoff":
        raise UsageError("both releases speak the handoff protocol: use `swapctl swap`")
    if strategy == "takeover" and (to_legacy or not from_legacy):
        raise UsageError("takeover needs a legacy old relay and a handoff-capable new release "
                         "(--to-handoff); use bridge or restart")


def _service(request: LegacySwap) -> Service:
    request.state_dir.mkdir(parents=True, exist_ok=True)
    service = Service(request.layout.public, request.state_dir,
                      SubprocessSpawner(request.state_dir / "logs"))
    service.control = ControlServer(request.state_dir / "control.sock")
    return service


def _dispatch(strategy: str, request: LegacySwap, old_pid: int, service: Service,
              canary: Canary | None) -> StrategyReport:
    if strategy == "takeover":
        settings = TakeoverSettings(ready_timeout=request.ready_timeout,
                                    domain_byte=request.domain_byte, echo=request.echo,
                                    **request.extra)
        return Takeover(service, old_pid, str(request.layout.compiled), request.to.release,
                        settings).run().report
    if strategy == "restart":
        settings_r = RestartSettings(ready_timeout=request.ready_timeout,
                                     domain_byte=request.domain_byte, echo=request.echo)
        report, _ = restart(request.layout, old_pid, request.to.release,
                            legacy=request.to.legacy, service=service, settings=settings_r,
                            log_dir=request.state_dir / "logs")
        return report
    try:
        bridge = importlib.import_module("swapctl.legacy.bridge")
        run_bridge = bridge.run_bridge
    except (ImportError, AttributeError):
        raise UsageError("the bridge strategy is not available in this build") from None
    result: StrategyReport = run_bridge(request, old_pid, service=service, canary=canary)
    return result


def _record_new_state(request: LegacySwap, old_slot: str, report: StrategyReport) -> None:
    """After a takeover the old slot's socket is served by the candidate."""
    if report.strategy == "takeover" and report.outcome == "completed":
        pid = int(report.details["candidate_pid"])
        lay.write_state(request.layout, old_slot, {
            "pid": pid, "create_time": psutil.Process(pid).create_time(),
            "command": list(request.to.command), "kind": "handoff"})


def _start_canary(request: LegacySwap) -> Canary | None:
    if request.canary_rate <= 0:
        return None
    canary = Canary(request.layout.public, request.canary_rate,
                    domain_byte=request.domain_byte)
    canary.start()
    canary.mark()
    return canary


def _finish_checkers(canary: Canary | None, load: LoadSession | None,
                     report: StrategyReport | None) -> None:
    """Stop every checker; add its counts and client-side gap to the report."""
    if canary is not None:
        try:
            gap_ms = None if canary.final is not None else canary.health().max_gap_ms
            final = canary.stop()  # the final audit, also when a strategy stopped it
            if report is not None:
                report.add_checker("canary", figures_from_canary(summarize(final)))
                if gap_ms is not None:
                    report.details["canary_max_gap_ms"] = round(gap_ms, 3)
        except CanaryError as exc:
            if report is not None:
                report.details["canary_error"] = str(exc)
        finally:
            canary.close()
    if load is not None:
        started = time.monotonic()
        result = load.stop()
        if report is not None:
            report.add_checker("load", figures_from_load(result))
            report.details["load_max_gap_ms"] = round(result.total.max_gap_ns / 1e6, 3)
            report.details["load_settle_s"] = round(time.monotonic() - started, 3)


def client_pause(report: StrategyReport) -> float | None:
    """The largest client-side gap any checker saw (ms), for strategies that cut clients."""
    gaps = [report.details.get(k) for k in ("canary_max_gap_ms", "load_max_gap_ms")]
    values = [float(g) for g in gaps if g is not None]
    return max(values) if values else None
