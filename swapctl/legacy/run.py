"""Standalone swaps that involve a legacy relay, on the one engine: `run_strategy`.

    request = LegacySwap(layout=Layout(public, compiled, root),
                         to=ReleaseSpec("v2", ("python", "-m", "swapctl.relay"), legacy=False),
                         state_dir=root / "state")
    report = run_strategy("takeover", request)          # or "restart", "bridge", "auto"

The old relay is whatever serves the public link's slot (its pid is recorded in the
slot's state file by `layout.start_legacy`; pid + start time are checked). If no slot
serves and `request.from_` is given and the public path does not exist yet, the old
release is started in a slot first (a fresh box). A box whose public path is still
the relay's own socket (a relay swapctl did not start) is swapped by adopting that
relay (`request.adopt`, legacy/adopt.py: found by pid or by the listener's owner): a
takeover moves its clients, then the box is given the slot layout (`adopt.into_layout`).

The swap is a `SwapRun` with the strategy's actions (legacy/actions.py) and a
`LayoutPlace`: candidates start in the layout's free slot, the public link is flipped
with `layout.point`. The swap canary (its own publisher and consumers on the public
path) runs around it unless `canary_rate` is 0; a running `LoadSession` can be passed
and is stopped after the swap: its counts are an independent checker in the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from swapctl import process
from swapctl.errors import SwapctlError, UsageError
from swapctl.fsutil import ensure_private_dir
from swapctl.handoff.controller import ControlServer, RelayLink
from swapctl.legacy import adopt as adopting
from swapctl.legacy import layout as lay
from swapctl.legacy.actions import Relay, actions_for
from swapctl.legacy.bridge import BridgeSettings
from swapctl.legacy.restart import RestartSettings, start_candidate, stop_relay
from swapctl.legacy.takeover import TakeoverSettings
from swapctl.swap import choose
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary, CanaryError
from swapctl.swap.executor import Requests, SwapRun, SwapSettings
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service, Slot
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
    soak: float = 5.0  # the bridge's drain deadline
    pause_budget_ms: float = 250.0
    reconnect_window_s: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific settings
    journal: bool = True  # write STATE/journal.jsonl
    adopt: adopting.Adopted | None = None  # a relay swapctl did not start, serving public


def pick(from_legacy: bool, to_legacy: bool) -> tuple[str, str]:
    """The best strategy the two releases allow, and why (the one selector's)."""
    return choose.best(from_legacy, to_legacy)


def steerable_as_legacy(slot: str, state: dict[str, Any]) -> str | None:
    """Why a slot's handoff-capable relay is swapped like a legacy one here (None for a
    legacy relay): it outlived the standalone command that started it (a restart or bridge
    candidate, or a takeover's), so no standalone swap holds its control link; its sockets
    can still be taken over (freeze, pidfd_getfd) with no client cut."""
    if state.get("kind") != "handoff":
        return None
    return (f"slot {slot}'s relay (pid {state.get('pid')}) speaks the handoff protocol but its "
            "control link ended with the command that started it: its sockets are taken "
            "over like a legacy relay's, no client is disconnected")


def old_relay(layout: lay.Layout) -> tuple[str, dict[str, Any]] | None:
    """The slot serving the public link and its recorded state (pid, kind...)."""
    name = layout.current()
    if name is None:
        return None
    state = lay.read_state(layout, name)
    return None if state is None else (name, state)


class PidHandle:
    """A relay this command did not start, known by pid and start time."""

    def __init__(self, pid: int, started_s: float | None = None) -> None:
        self.pid = pid
        self.started_s = started_s or 0.0  # process.started; 0: the pid alone

    def alive(self) -> bool:
        if self.started_s:
            return process.is_same(self.pid, self.started_s)
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def describe_exit(self) -> str:
        return "exited" if not self.alive() else "running"

    def stop(self, timeout: float = 2.0) -> int | None:
        if self.alive():
            stop_relay(self.pid, timeout)
        return None

    def kill(self) -> None:
        self.stop(0.1)


class _NoLink:
    hello: dict[str, Any] = {}

    def close(self) -> None:
        return None


class LayoutPlace:
    """A standalone swap's relays: slots of a private layout behind the public link
    (`adopted`: the old relay serves the public path itself, outside the layout)."""

    def __init__(self, layout: lay.Layout, old: Relay, service: Service, *,
                 log_dir: Path, settings: RestartSettings, old_slot: str,
                 adopted: bool = False) -> None:
        self.layout, self.old, self.service = layout, old, service
        self.log_dir, self.settings, self.old_slot = log_dir, settings, old_slot
        self.adopted = adopted
        self.started: list[Any] = []

    def start(self, release: Release, timeout: float) -> Relay:
        settings = RestartSettings(min(timeout, self.settings.ready_timeout),
                                   self.settings.probe_timeout, self.settings.stop_grace,
                                   self.settings.domain_byte, self.settings.echo)
        legacy = not release.handoff  # (ReleaseSpec's Release carries no compiled path)
        started = start_candidate(self.layout, release, legacy=legacy,
                                  service=self.service, settings=settings,
                                  log_dir=self.log_dir)
        sock = self.layout.slot_socket(started.slot)
        bound = str(self.layout.compiled) if legacy else str(sock)
        return Relay(started.pid, sock, bound, started)

    def flip(self, target: Path) -> None:
        lay.point(self.layout, target)

    def stop(self, relay: Relay) -> None:
        if relay.handle is not None:
            relay.handle.stop()
        else:
            stop_relay(relay.pid, self.settings.stop_grace)

    def committed(self, run: SwapRun, new: Relay | None) -> None:
        """After a takeover the old slot's socket is served by the candidate (an adopted
        relay's: the box is given the slot layout now, `adopt.into_layout`)."""
        if new is not None or run.cand is None:
            return
        pid = run.cand.handle.pid
        state = {"pid": pid, "started_s": process.started(pid),
                 "command": list(run.release.command), "kind": "handoff",
                 "bound": self.old.bound}  # the listener's name: it moved with the socket
        if not self.adopted:
            lay.write_state(self.layout, self.old_slot, state)
            return
        try:
            run.details["layout"] = adopting.into_layout(self.layout, state)
        except (SwapctlError, OSError) as exc:  # the clients moved: only the link is missing
            run.details["layout_error"] = (
                f"{exc}; the candidate (pid {pid}) serves {self.layout.public} itself: the "
                "next swap adopts it again (--old-pid)")


def run_strategy(strategy: str, request: LegacySwap, *, load: LoadSession | None = None,
                 service: Service | None = None, journal_watchers: list[Any] | None = None,
                 requests: Requests | None = None) -> dict[str, Any]:
    """Run `strategy` (takeover, restart, bridge or auto); return the swap report.
    `requests` is polled by the phases that wait (a bridge's drain): "rollback"."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    name, state = _ensure_old(request)
    from_legacy = state.get("kind") == "legacy"
    orphan = steerable_as_legacy(name, state)  # no control link: a legacy relay to us
    chosen, why = choose.choose(from_legacy or orphan is not None, request.to.legacy, strategy)
    if orphan is not None and chosen == "takeover":
        why = orphan
    if chosen == "handoff":
        raise UsageError("both releases speak the handoff protocol: use `swapctl swap "
                         "--socket S --from CMD --to CMD`")
    if chosen == "takeover" and (request.to.legacy or not (from_legacy or orphan)):
        raise UsageError("takeover needs a legacy old relay and a handoff-capable new release "
                         "(--to-handoff); use bridge or restart")
    own_service = service is None
    if service is None:
        service = _service(request)
    actions = _actions(chosen, request, name, state, service)
    old_release = request.from_.release if request.from_ else Release(
        name, tuple(state.get("command", ())), handoff=not from_legacy)
    service.active = Slot(old_release, name, PidHandle(int(state["pid"]),
                                                       state.get("started_s")),
                          _no_link())
    canary = _start_canary(request)
    journal = Journal(request.state_dir / "journal.jsonl" if request.journal else None,
                      journal_watchers)
    try:
        run = SwapRun(service, request.to.release, _settings(request), canary=canary,
                      journal=journal, domain_byte=request.domain_byte, actions=actions,
                      requests=requests or (lambda: None))
        run.run()
        final = _stop_canary(canary, run)
        checkers = _stop_load(load, run)
        report = swap_report.build(run, final, checkers)
        report["chosen_because"] = why
        return report
    finally:
        journal.close()
        if canary is not None:
            canary.close()
        service.active = None
        if own_service and service.control is not None:
            service.control.close()


def _settings(request: LegacySwap) -> SwapSettings:
    timeout = request.ready_timeout
    drain = request.extra.get("drain_deadline")  # the bridge's drain deadline: soaking's
    soak = request.soak if drain is None else float(drain)
    deadlines = Deadlines(starting=timeout, probing=max(2.0, timeout / 2), soaking=soak,
                          freezing=5.0, committing=10.0)
    return SwapSettings(deadlines=deadlines, probe_echo=request.echo,
                        pause_budget_ms=request.pause_budget_ms,
                        reconnect_window_s=request.reconnect_window_s)


def _actions(strategy: str, request: LegacySwap, slot: str, state: dict[str, Any],
             service: Service) -> Any:
    layout = request.layout
    old_socket = layout.public.resolve() if layout.public.is_symlink() else layout.public
    kind_legacy = state.get("kind") == "legacy"
    bound = str(state.get("bound") or (layout.compiled if kind_legacy
                                       else layout.slot_socket(slot)))
    old = Relay(int(state["pid"]), old_socket, bound)
    settings = RestartSettings(request.ready_timeout, 2.0, 2.0, request.domain_byte,
                               request.echo)
    place = LayoutPlace(layout, old, service, log_dir=request.state_dir / "logs",
                        settings=settings, old_slot=slot, adopted=bool(state.get("adopted")))
    extra = dict(request.extra)
    takeover = TakeoverSettings(ready_timeout=request.ready_timeout,
                                domain_byte=request.domain_byte, echo=request.echo,
                                **{k: v for k, v in extra.items()
                                   if k in TakeoverSettings.__dataclass_fields__})
    extra.setdefault("drain_deadline", request.soak)
    bridge = BridgeSettings(ready_timeout=request.ready_timeout,
                            domain_byte=request.domain_byte, echo=request.echo,
                            **{k: v for k, v in extra.items()
                               if k in BridgeSettings.__dataclass_fields__})
    return actions_for(strategy, place, takeover=takeover, bridge=bridge)


def _no_link() -> RelayLink:
    link: Any = _NoLink()
    return link  # type: ignore[no-any-return]


def _ensure_old(request: LegacySwap) -> tuple[str, dict[str, Any]]:
    current = old_relay(request.layout)
    if request.adopt is not None:
        return _adopted(request, current)
    if current is not None:
        return current
    layout, old = request.layout, request.from_
    if old is None or not old.legacy or layout.public.exists() or layout.public.is_symlink():
        raise UsageError(
            f"no relay of a swapctl slot serves {layout.public}: adopt the relay serving it "
            "(`swapctl swap --socket PATH --to CMD [--old-pid PID]`, docs/legacy.md), or "
            "give --from for a fresh box")
    slot = lay.start_legacy(layout, layout.free_slot(), list(old.command),
                            request.state_dir / "logs", request.ready_timeout)
    lay.point(layout, slot.socket)
    found = old_relay(layout)
    assert found is not None
    return found


def _adopted(request: LegacySwap,
             current: tuple[str, dict[str, Any]] | None) -> tuple[str, dict[str, Any]]:
    """The old relay of an adoption: still the process found, still outside the layout."""
    adopted = request.adopt
    assert adopted is not None
    if current is not None:
        raise UsageError(f"{request.layout.public} is served by slot {current[0]} (pid "
                         f"{current[1].get('pid')}) now: nothing to adopt; drop --old-pid")
    if not adopting.alive(adopted):
        raise UsageError(f"the relay to adopt (pid {adopted.pid}) is gone")
    return "adopted", adopted.state()


def _service(request: LegacySwap) -> Service:
    ensure_private_dir(request.state_dir)
    service = Service(request.layout.public, request.state_dir,
                      SubprocessSpawner(request.state_dir / "logs"))
    service.control = ControlServer(request.state_dir / "control.sock")
    return service


def _start_canary(request: LegacySwap) -> Canary | None:
    if request.canary_rate <= 0:
        return None
    canary = Canary(request.layout.public, request.canary_rate,
                    domain_byte=request.domain_byte)
    canary.start()
    canary.mark()
    return canary


def _stop_canary(canary: Canary | None, run: SwapRun) -> dict[str, Any] | None:
    if canary is None or run.canary_final is not None:
        return run.canary_final
    try:
        run.marks.canary_gap_ms = max(run.marks.canary_gap_ms or 0.0,
                                      canary.health().max_gap_ms)
        return canary.stop()
    except CanaryError as exc:
        run.details["canary_error"] = str(exc)
        return None


def _stop_load(load: LoadSession | None, run: SwapRun) -> dict[str, dict[str, int]]:
    if load is None:
        return {}
    started = time.monotonic()
    result = load.stop()
    run.details["load_max_gap_ms"] = round(result.total.max_gap_ns / 1e6, 3)
    run.details["load_settle_s"] = round(time.monotonic() - started, 3)
    total = result.total
    dead = sum(1 for c in result.consumers if c.dead)
    return {"load": {"disconnects": result.disconnects, "lost": total.lost,
                     "duplicated": total.duplicated, "reordered": total.reordered,
                     "corrupted": total.corrupted + total.unexpected,
                     "dead_consumers": dead}}
