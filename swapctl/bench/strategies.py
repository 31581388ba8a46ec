"""`swapctl bench strategies`: every swap strategy under the same load, restart as reference.

For each rate and each strategy a fresh box is set up in a temp dir (the legacy slot
layout behind a public link, or the handoff service's socket), with N connected
clients on the public path: a `swapctl load` session (one publisher at the rate, a
dashboard and a strategy consumer: the independent checker) and N - 3 idle clients
held by a crowd process that reconnects on EOF and counts every EOF (an independent
disconnect count). A swap canary (its own publisher and consumers) measures the
client-side pause of each swap: the largest gap in its stream between a mark just
before the swap and a snapshot just after. Then `swaps` swaps run back to back, every
one on the one swap engine (`SwapRun`; `run_strategy` for the legacy strategies) with
the production journal (fsync'd, STATE/journal.jsonl in the box's temp dir):
  handoff   two handoff-capable releases, alternating (old kept warm)
  takeover  a legacy relay, then each candidate in turn, taken over by the next (the
            candidate holds the legacy listener, bound at the compiled path, and is
            recorded as the slot's legacy relay for the next takeover)
  bridge    forward (candidate, bridge, flip) and, at the first poll of the drain, the
            operator's rollback (flip back, candidate retired once only the bridge is
            on it): the clients stay on the relay they connected to, as they would
            until they leave on their own
  restart   the reference: each candidate replaces the last, clients reconnect
A strategy whose pieces are missing, or that fails to set up, is skipped and the
reason is printed. Every relay broadcasts to every client, so the rate is capped at
DELIVERY_BUDGET deliveries/s (rate x clients); the rate used is in each row.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapctl.bench.report import Goal, conditions, source_revision
from swapctl.errors import SwapctlError
from swapctl.handoff.controller import ControlServer
from swapctl.legacy import layout as lay
from swapctl.legacy.bridge_client import BridgeConfig, BridgeProcess
from swapctl.legacy.run import LegacySwap, ReleaseSpec, run_strategy
from swapctl.probes.config import LoadConfig
from swapctl.probes.crowd import Crowd
from swapctl.probes.latency import percentiles
from swapctl.probes.load import LoadSession, run_load
from swapctl.probes.report import LoadReport
from swapctl.probes.traffic import MessageFactory
from swapctl.process import stop_group
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.canary_child import LOSS_GRACE_S
from swapctl.swap.evidence import Evidence, figures
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner

STRATEGIES = ("handoff", "takeover", "bridge", "restart")
DELIVERY_BUDGET = 1_500_000  # deliveries/s the 2-core machine's relay is asked for
LOAD_CLIENTS = 3  # the checker's publisher, dashboard and strategy consumer
PER_SWAP_DETAILS = ("freeze_attempts", "frozen_idle", "publisher_streams_resynchronised",
                    "consumers_backed_up_at_freeze", "accepted_since_scan",
                    "closed_since_scan")  # and publisher_bytes_skipped (unmovable_bytes)
RELAY_ARGS = ("--log-level", "warning", "--max-backlog", "1048576")


@dataclass(frozen=True, slots=True)
class StrategiesBenchSettings:
    strategies: tuple[str, ...] = STRATEGIES
    rates: tuple[int, ...] = (10_000, 100_000)
    clients: int = 100
    swaps: int = 20
    canary_rate: float = 1000.0


def used_rate(rate: int, clients: int) -> int:
    return min(rate, DELIVERY_BUDGET // (clients + 3))


def rate_note(settings: StrategiesBenchSettings) -> str:
    """Why a rate asked for is not the rate used, in the figures of this run."""
    fan_out = settings.clients + 3  # the canary's three clients too
    capped = [(r, used_rate(r, settings.clients)) for r in settings.rates
              if used_rate(r, settings.clients) < r]
    if not capped:
        return f"Every rate asked for was used ({fan_out} receivers per message)."
    parts = "; ".join(f"{r:,} msg/s asked -> {u:,} used" for r, u in capped)
    worst = max(r for r, _ in capped)
    return (f"Rate capped ({parts}): every relay broadcasts each message to every client, "
            f"so {worst:,} msg/s x {fan_out} receivers is {worst * fan_out:,} deliveries/s, "
            f"more than one relay delivers here (`swapctl bench relay`: ~9.5M msg/s, and "
            f"that to a single consumer in big reads; with {fan_out} receivers every "
            f"delivery is its own write, and the checkers read them all on the same "
            f"cores). The bench asks for at most {DELIVERY_BUDGET:,} deliveries/s "
            f"(rate x receivers) so the relay keeps up; rate_used is in each row.")


# ----- one configuration ----------------------------------------------------------------

@dataclass(slots=True)
class Swapped:
    """What one swap said about itself."""

    own_disconnects: int | None  # the report's top-level disconnects (None: unknown)
    outcome: str  # the report's decision
    report: dict[str, Any] | None = None  # takeover: its lost is checked per swap


@dataclass(slots=True)
class LossCheck:
    """One swap's lost messages: the report's lost figure (swap/evidence.py, from the
    swap's own evidence and the canary's counts over the swap, as `run_strategy` builds
    it with its own canary) against the canary's own count."""

    report_lost: int | None  # None: unknown (e.g. bytes of a partial frame died)
    checker_lost: int
    own_evidence: bool  # the takeover itself saw something that can cost a message

    @property
    def equal(self) -> bool:
        return self.report_lost == self.checker_lost

    @property
    def unexplained(self) -> bool:
        return self.checker_lost > 0 and not self.own_evidence


@dataclass(slots=True)
class SwapSample:
    pause_ms: float | None
    own_disconnects: int | None  # the report's count
    crowd_disconnects: int
    outcome: str
    loss: LossCheck | None = None
    server_pause_ms: float | None = None
    stages_ms: dict[str, float] | None = None
    details: dict[str, Any] | None = None  # the strategy's own per-swap figures


class Box:
    """A temp box: public path, N clients, canary; a strategy-specific `swap()`."""

    def __init__(self, root: Path, rate: int, clients: int, canary_rate: float) -> None:
        self.root = root
        self.public = root / "md.sock"
        self.rate, self.clients, self.canary_rate = rate, clients, canary_rate
        self.cleanups: list[Callable[[], None]] = []
        self.crowd: Crowd | None = None
        self.load: LoadSession | None = None
        self.canary: Canary | None = None

    def attach_clients(self) -> None:
        self.canary = Canary(self.public, self.canary_rate)
        self.canary.start()
        self.crowd = Crowd(self.public, max(0, self.clients - LOAD_CLIENTS),
                           reconnect=0.05)
        self.load = LoadSession(LoadConfig(
            self.public, publishers=1, consumers=2, strategy_consumers=1, rate=self.rate,
            duration=None, settle=1.0, dashboard_retry=0.05, reconnect_backoff=0.05))
        self.load.start()

    def measure(self, swap: Callable[[], Swapped]) -> SwapSample:
        assert self.canary is not None and self.crowd is not None
        before = self.crowd.stats()["disconnects"]
        baseline = self.canary.snapshot()
        self.canary.mark()
        done = swap()
        ended = time.monotonic()
        pause = self.canary.health().max_gap_ms
        crowd = self.crowd.stats()["disconnects"] - before
        sample = SwapSample(pause, done.own_disconnects, crowd, done.outcome)
        if done.report is not None:
            time.sleep(max(0.0, ended + LOSS_GRACE_S - time.monotonic()))
            sample.loss = check_loss(done.report, baseline, self.canary.snapshot())
            evidence = done.report["evidence"]
            stages = {**(evidence.get("freeze_stages_ms") or {}),
                      **(done.report.get("pause_stages_ms") or {})}
            sample.stages_ms = {k: float(v) for k, v in stages.items()}
            sample.server_pause_ms = done.report.get("server_pause_ms")
            sample.details = {**{k: evidence.get(k) for k in PER_SWAP_DETAILS},
                              "publisher_bytes_skipped": evidence.get("unmovable_bytes")}
        return sample

    def finish(self) -> tuple[LoadReport, dict[str, int], int]:
        assert self.canary is not None and self.crowd is not None and self.load is not None
        time.sleep(0.5)  # let reconnecting clients come back before the verdicts
        crowd = int(self.crowd.stats()["disconnects"])
        load = self.load.stop()
        canary = summarize(self.canary.stop())
        return load, canary, crowd

    def close(self) -> None:
        for closer in (self.load, self.canary, self.crowd):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


def check_loss(report: dict[str, Any], baseline: dict[str, Any],
               after: dict[str, Any]) -> LossCheck:
    """The report's lost figure with the canary's counts over one swap (the box's canary
    watched it, not one of the swap's own: `swap/evidence.py` adds them the same way)
    against the canary's: `missing` counts messages sent since the mark (just before
    the swap), due LOSS_GRACE_S ago, never received; the rest are growth since
    `baseline`."""
    base = {s["name"]: s for s in baseline["streams"]}
    canary = {"lost": sum(int(s["missing"]) for s in after["streams"]),
              "dead": sum(1 for s in after["streams"]
                          if s["dead"] and not base.get(s["name"], {}).get("dead"))}
    for key in ("duplicated", "reordered", "corrupted", "disconnects"):
        canary[key] = sum(int(s[key]) - int(base.get(s["name"], {}).get(key, 0))
                          for s in after["streams"])
    e = report["evidence"]
    own = Evidence(**{k: e[k] for k in Evidence.__dataclass_fields__ if k in e})
    lost = figures(own, canary)["lost"].value
    seen = bool(e.get("publisher_streams_resynchronised") or e.get("unmovable_bytes") or
                e.get("consumers_backed_up_at_freeze") or not e.get("frozen_idle", True))
    return LossCheck(lost, canary["lost"], seen)


def _legacy_layout(box: Box) -> tuple[lay.Layout, lay.LegacySlot, tuple[str, ...]]:
    layout = lay.Layout(box.public, box.root / "c" / "md.sock", box.root / "r")
    argv = (sys.executable, "-P", "-m", "swapctl.relay", "--socket", str(layout.compiled),
            *RELAY_ARGS)
    _, old = lay.migrate(layout, list(argv), box.root / "logs")
    assert old is not None
    box.cleanups.append(lambda: _kill_slots(layout))
    return layout, old, argv


def _kill_slots(layout: Any) -> None:

    for name in "abcdefgh":
        state = lay.read_state(layout, name)
        if state is not None:
            with contextlib.suppress(OSError):
                os.killpg(int(state["pid"]), signal.SIGKILL)


def _service(box: Box) -> Any:
    spawner = SubprocessSpawner(box.root / "logs")
    service = Service(box.public, box.root / "state", spawner)
    service.control = ControlServer(box.root / "control.sock")
    box.cleanups.append(spawner.stop_all)
    box.cleanups.append(service.close)
    return service


HANDOFF_RELAY = (sys.executable, "-P", "-m", "swapctl.relay", *RELAY_ARGS)


SwapFn = Callable[[], Swapped]


def setup_handoff(box: Box) -> SwapFn:
    spawner = SubprocessSpawner(box.root / "logs")
    service = Service(box.public, box.root / "state", spawner)
    box.cleanups.append(spawner.stop_all)
    box.cleanups.append(service.close)
    releases = (Release("a", HANDOFF_RELAY), Release("b", HANDOFF_RELAY))
    service.open(releases[0])
    settings = SwapSettings(deadlines=Deadlines(soaking=0.0), verify_messages=1, keep_old=True)
    flip = [1]
    journal = Journal(box.root / "journal.jsonl")  # the production one, fsync'd
    box.cleanups.append(journal.close)

    def swap() -> Swapped:
        run = SwapRun(service, releases[flip[0]], settings, canary=box.canary,
                      journal=journal, actions=HandoffActions()).run()
        result = swap_report.build(run)
        if result["decision"] == "committed":
            flip[0] ^= 1
        moved = result["connections"]
        lost = None if moved["before"] is None or moved["after"] is None else max(
            0, moved["before"] - moved["after"])
        return Swapped(lost, str(result["decision"]))
    return swap


def _request(box: Box, layout: lay.Layout, to: ReleaseSpec, **extra: Any) -> LegacySwap:
    """A standalone legacy swap in the box: no canary of its own (the box's watches every
    swap), the production journal in the box's state dir."""
    state = box.root / "state"
    state.mkdir(exist_ok=True)
    return LegacySwap(layout, to, state, canary_rate=0, extra=extra, journal=True)


def setup_takeover(box: Box) -> SwapFn:
    layout, _, _ = _legacy_layout(box)
    service = _service(box)
    request = _request(box, layout, ReleaseSpec("h", HANDOFF_RELAY, legacy=False),
                       settle_s=0.1)

    def swap() -> Swapped:
        report = run_strategy("takeover", request, service=service)
        if report["decision"] == "committed":
            _serves_as_legacy(layout)
        return Swapped(report["disconnects"], str(report["decision"]), report)
    return swap


def _serves_as_legacy(layout: lay.Layout) -> None:
    """The candidate a takeover left serving holds the legacy relay's listener (bound at
    the compiled path): the next takeover takes it over the same way."""
    name = layout.current()
    state = None if name is None else lay.read_state(layout, name)
    if name is None or state is None:
        raise SwapctlError(f"after a takeover no slot serves {layout.public}")
    lay.write_state(layout, name, {**state, "kind": "legacy"})


def setup_bridge(box: Box) -> SwapFn:
    layout, old, argv = _legacy_layout(box)
    service = _service(box)
    request = _request(box, layout, ReleaseSpec("legacy", argv, legacy=True),
                       drain_interval=0.02)

    def rollback_once_flipped() -> str | None:  # polled during the drain
        return None if layout.current() == old.name else "rollback"

    def swap() -> Swapped:
        report = run_strategy("bridge", request, service=service,
                              requests=rollback_once_flipped)
        return Swapped(report["disconnects"], str(report["decision"]))
    return swap


def setup_restart(box: Box) -> SwapFn:
    layout, _, argv = _legacy_layout(box)
    service = _service(box)
    request = _request(box, layout, ReleaseSpec("legacy", argv, legacy=True))

    def swap() -> Swapped:
        report = run_strategy("restart", request, service=service)
        return Swapped(report["disconnects"], str(report["decision"]))
    return swap


# Whether the swaps run with the production journal (fsync'd, in the box's temp dir).
JOURNAL = dict.fromkeys(STRATEGIES, "on")

SETUPS: dict[str, tuple[str, Callable[[Box], SwapFn]]] = {
    "handoff": ("swapctl.swap.executor", setup_handoff),
    "takeover": ("swapctl.legacy.actions", setup_takeover),
    "bridge": ("swapctl.legacy.actions", setup_bridge),
    "restart": ("swapctl.legacy.actions", setup_restart),
}


def missing(strategy: str) -> str:
    """Why a strategy cannot run in this build ("" if it can)."""
    if strategy not in SETUPS:
        return f"unknown strategy {strategy!r}"
    module = SETUPS[strategy][0]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not available ({exc})"
    return ""


@contextlib.contextmanager
def _box(rate: int, clients: int, canary_rate: float) -> Iterator[Box]:
    with tempfile.TemporaryDirectory(prefix="swst-") as tmp:
        box = Box(Path(tmp), rate, clients, canary_rate)
        try:
            yield box
        finally:
            box.close()


def measure(strategy: str, rate: int, settings: StrategiesBenchSettings) -> dict[str, Any]:
    rate_used = used_rate(rate, settings.clients)
    row: dict[str, Any] = {"strategy": strategy, "rate_asked": rate, "rate_used": rate_used,
                           "clients": settings.clients, "swaps_asked": settings.swaps,
                           "journal": JOURNAL[strategy]}
    with _box(rate_used, settings.clients, settings.canary_rate) as box:
        try:
            swap = SETUPS[strategy][1](box)
            box.attach_clients()
        except (SwapctlError, OSError, TimeoutError) as exc:
            return {**row, "skipped": f"set-up failed: {exc}"}
        samples: list[SwapSample] = []
        errors: list[str] = []
        for _ in range(settings.swaps):
            try:
                samples.append(box.measure(swap))
            except (SwapctlError, OSError, TimeoutError) as exc:
                errors.append(str(exc))
                break
        load, canary, crowd = box.finish()
    return {**row, **_figures(samples, load, canary, crowd), "errors": errors}


def _figures(samples: list[SwapSample], load: LoadReport, canary: dict[str, int],
             crowd: int) -> dict[str, Any]:
    t = load.total
    pauses = [s.pause_ms for s in samples if s.pause_ms is not None]
    own = [s.own_disconnects for s in samples]
    own_total = None if any(o is None for o in own) else sum(o for o in own if o is not None)
    checker_disc = crowd + load.disconnects + canary["disconnects"]
    deliveries = t.expected  # messages x consumers that should have arrived
    return {
        "swaps": len(samples),
        "outcomes": sorted({s.outcome for s in samples}),
        "pause_ms": _stats(pauses),
        "disconnects": {"report": own_total, "checker": checker_disc, "crowd": crowd,
                        "load_clients": load.disconnects,
                        "canary": canary["disconnects"]},
        "lost": t.lost + canary["lost"], "duplicated": t.duplicated + canary["duplicated"],
        "reordered": t.reordered + canary["reordered"],
        "corrupted": t.corrupted + canary["corrupted"],
        "lost_pct": round(100 * t.lost / deliveries, 6) if deliveries else None,
        "checker": {"sent": load.sent, "deliveries_expected": deliveries,
                    "received": t.received, "lost": t.lost, "duplicated": t.duplicated,
                    "reordered": t.reordered, "corrupted": t.corrupted,
                    "dead_strategy_consumers": sum(1 for c in load.consumers if c.dead),
                    "rate_achieved": round(load.rate_achieved, 1)},
        "canary": canary,
        **_takeover_figures(samples),
    }


def _takeover_figures(samples: list[SwapSample]) -> dict[str, Any]:
    """Per-swap lost check and where the pause went (strategies that give a report)."""
    checks = [s.loss for s in samples if s.loss is not None]
    if not checks:
        return {}
    staged = [s.stages_ms for s in samples if s.stages_ms]
    names = list(dict.fromkeys(k for st in staged for k in st))  # in the order of the stages
    return {
        "lost_equals_checker": {
            "verdict": all(c.equal for c in checks), "swaps_checked": len(checks),
            "swaps_equal": sum(1 for c in checks if c.equal),
            "swaps_unknown": sum(1 for c in checks if c.report_lost is None),
            "report_lost": [c.report_lost for c in checks],
            "checker_lost": [c.checker_lost for c in checks],
            "unexplained_by_takeover": sum(1 for c in checks if c.unexplained),
            "checker": "the swap canary, per swap (missing since its mark just before the "
                       f"swap, {LOSS_GRACE_S} s after); the load checker counts only at the "
                       "end, in `checker`"},
        "stages_ms": {n: _stats([st[n] for st in staged if n in st]) for n in names},
        "per_swap": [{"pause_ms": None if s.pause_ms is None else round(s.pause_ms, 3),
                      "server_pause_ms": s.server_pause_ms,
                      "lost": None if s.loss is None else s.loss.checker_lost,
                      **(s.details or {})} for s in samples],
    }


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    points = {k: round(v, 3) for k, v in percentiles(samples, (50, 99)).items()}
    return {"n": len(samples), **points, "max": round(max(samples), 3)}  # rounded alike


def run_strategies_bench(settings: StrategiesBenchSettings,
                         progress: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for strategy in settings.strategies:
        if why := missing(strategy):
            skipped[strategy] = why
    for rate in settings.rates:
        for strategy in settings.strategies:
            if strategy in skipped:
                continue
            progress(f"strategies: {strategy} at {rate:,} msg/s asked, "
                     f"{settings.clients} clients, {settings.swaps} swaps")
            rows.append(measure(strategy, rate, settings))
    for row in rows:
        if "skipped" in row:
            skipped[f"{row['strategy']}@{row['rate_asked']}"] = row["skipped"]
    sizes = MessageFactory(domain=1, source=250, publisher=0, run_tag=0x8001,
                           mix=LoadConfig(Path("x")).message_mix()).sizes()
    latency = None
    if "bridge" in settings.strategies and "bridge" not in skipped:
        progress("strategies: latency the bridge adds (publisher on A, consumers on A and B)")
        latency = bridge_latency(min(settings.rates))
    return {
        "benchmark": "strategies",
        "conditions": conditions(
            message_sizes_bytes={k.value: n for k, n in sizes.items()},
            mix=LoadConfig(Path("x")).mix, rates_asked=list(settings.rates),
            rates_used=[used_rate(r, settings.clients) for r in settings.rates],
            connected_clients=settings.clients, swaps_per_config=settings.swaps,
            canary_msgs_per_s=settings.canary_rate,
            delivery_budget_msgs_per_s=DELIVERY_BUDGET,
            relay_command=["python", "-m", "swapctl.relay", *RELAY_ARGS],
            note=rate_note(settings) + (
                " Every swap runs on the one swap engine with the production journal. "
                "Legacy relays are the reference relay with its socket path compiled in, "
                "run in a slot. Each bridge swap goes forward and is rolled back by the "
                "operator during its drain (clients stay connected to their relay)."),
            source=source_revision("swapctl")),
        "results": rows,
        "skipped": skipped,
        "bridge_latency": latency,
        "goals": [g.to_dict() for g in goals(rows)],
        "wall_s": round(time.monotonic() - started, 1),
    }


def bridge_latency(rate: int, seconds: float = 3.0) -> dict[str, Any]:
    """One-way latency (publisher's timestamp to consumer's read) of consumers on the
    publisher's relay (direct) and on the bridged relay: the difference is the bridge's."""
    with tempfile.TemporaryDirectory(prefix="swbl-") as tmp:
        a, b = Path(tmp) / "a.sock", Path(tmp) / "b.sock"
        relays = [subprocess.Popen([sys.executable, "-P", "-m", "swapctl.relay", "--socket", str(p),
                                    *RELAY_ARGS], start_new_session=True) for p in (a, b)]
        bridge: BridgeProcess | None = None
        try:
            for path in (a, b):
                lay.wait_connectable(path, None, 10.0)
            bridge = BridgeProcess(BridgeConfig(a, b))
            bridge.start()
            config = LoadConfig(a, publishers=1, consumers=2, consumer_sockets=(a, b),
                                rate=min(rate, 20_000), duration=seconds, settle=0.5)
            report = run_load(config)
            stats = bridge.stop()
        finally:
            if bridge is not None:
                bridge.close()
            for proc in relays:
                stop_group(proc, 2.0)
    direct, bridged = (c.audit.latency for c in report.consumers)
    ms = 1e6
    return {
        "rate": config.rate, "messages": report.sent, "lost": report.total.lost,
        "duplicated": report.total.duplicated, "reordered": report.total.reordered,
        "direct_ms": {"p50": direct.p50 / ms, "p99": direct.p99 / ms, "max": direct.max / ms},
        "bridged_ms": {"p50": bridged.p50 / ms, "p99": bridged.p99 / ms,
                       "max": bridged.max / ms},
        "added_ms": {"p50": round((bridged.p50 - direct.p50) / ms, 3),
                     "p99": round((bridged.p99 - direct.p99) / ms, 3)},
        "bridge_counters": {k: stats.get(k) for k in ("old", "new")},
    }


def goals(rows: list[dict[str, Any]]) -> list[Goal]:
    out: list[Goal] = []
    for r in rows:
        if "skipped" in r:
            continue
        tag = f"{r['strategy']} at {r['rate_used']:,} msg/s"
        disc = r["disconnects"]
        if r["strategy"] == "takeover":
            out.append(_exact(f"{tag}: disconnects", disc["checker"], 0, ""))
            check = r.get("lost_equals_checker", {})
            out.append(Goal(f"{tag}: report's lost = the checker's, every swap",
                            f"= {check.get('swaps_checked', 0)} swaps",
                            check.get("swaps_equal"), "swaps", bool(check.get("verdict"))))
            p99 = r["pause_ms"].get("p99")
            out.append(Goal(f"{tag}: client pause p99", "<= 10 ms", p99, "ms",
                            p99 is not None and p99 <= 10))
            pct = r["lost_pct"]
            out.append(Goal(f"{tag}: lost", "<= 0.001 %", pct, "%",
                            pct is not None and pct <= 0.001))
        if r["strategy"] == "bridge":
            out.append(_exact(f"{tag}: disconnects", disc["checker"], 0, ""))
            out.append(_exact(f"{tag}: lost", r["lost"], 0, "messages"))
        own = disc["report"]
        checker = disc["checker"] - (disc["canary"] if r["strategy"] == "bridge" else 0)
        out.append(Goal(f"{tag}: report's disconnects never lower than the checker's",
                        f">= {checker} (checker)", own, "",
                        own is not None and own >= checker))
    return out


def _exact(name: str, measured: int | None, target: int, unit: str) -> Goal:
    return Goal(name, f"= {target} {unit}".strip(), measured, unit, measured == target)

