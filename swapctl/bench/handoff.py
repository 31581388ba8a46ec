"""`swapctl bench handoff`: the pause a hot swap costs, by number of clients and load.

For each client count (idle, then under background load) a service is opened with two
relays of the same release; swaps alternate between them, the previous release kept
warm (so each swap measures the handoff, not a process start). Each swap reports its
server-side pause (old relay stops reading -> new relay resumes) and client-side pause
(largest gap in the canary stream during the swap; its resolution is the canary's
send interval, reported). N idle clients are held by a separate crowd process that
reads and discards everything. Rollback is timed from the decision to canary traffic
arriving through the old release again, warm (old release in standby) and cold (old
release restarted).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swapctl.bench.report import Goal, conditions, percentiles, sample_stats, source_revision
from swapctl.probes.config import LoadConfig
from swapctl.probes.crowd import Crowd
from swapctl.probes.load import LoadSession
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner

RELAY = (sys.executable, "-m", "swapctl.relay", "--log-level", "warning",
         "--max-backlog", "1048576")
DELIVERY_BUDGET = 1_500_000  # deliveries/s (rate x clients) the bench asks of the relay


@dataclass(frozen=True, slots=True)
class HandoffBenchSettings:
    clients: tuple[int, ...] = (10, 100, 1000, 5000)
    swaps: int = 50
    load_rate: int = 100_000
    rollbacks: int = 10
    loaded: bool = True


def canary_rate(clients: int) -> float:
    """Canary messages/s: fine resolution with few clients, bounded fan-out with many."""
    return max(100.0, min(2000.0, 200_000 / clients))


class Bench:
    """One service with a canary, a crowd and optional load; swaps back and forth."""

    def __init__(self, root: Path, clients: int, load_rate: int) -> None:
        self.public = root / "md.sock"
        self.spawner = SubprocessSpawner(root / "logs")
        self.service = Service(self.public, root / "state", self.spawner)
        self.journal = Journal(root / "journal.jsonl")  # the production one, fsync'd
        self.releases = (Release("a", RELAY), Release("b", RELAY))
        self.service.open(self.releases[0])
        self.canary = Canary(self.public, canary_rate(clients))
        self.canary.start()
        self.crowd = Crowd(self.public, clients)
        self.load: LoadSession | None = None
        if load_rate:
            self.load = LoadSession(LoadConfig(self.public, rate=load_rate, duration=None,
                                               consumers=1, settle=1.0))
            self.load.start()
        self.settings = SwapSettings(deadlines=Deadlines(soaking=0.0), verify_messages=1,
                                     keep_old=True)
        self.flip = 1

    def swap(self, settings: SwapSettings | None = None, **kw: Any) -> dict[str, Any]:
        target = self.releases[self.flip]
        run = SwapRun(self.service, target, settings or self.settings, canary=self.canary,
                      journal=self.journal, **kw, actions=HandoffActions()).run()
        result = swap_report.build(run)
        if result["decision"] == "committed":
            self.flip ^= 1
        return result

    def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {"canary": summarize(self.canary.stop()),
                               "crowd": self.crowd.finish()}
        if self.load is not None:
            out["load"] = self.load.stop().to_dict()
        return out

    def close(self) -> None:
        self.canary.close()
        self.crowd.close()
        if self.load is not None:
            self.load.close()
        self.service.close()
        self.spawner.stop_all()
        self.journal.close()


def measure_swaps(clients: int, load_rate: int, swaps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swb-") as tmp:
        bench = Bench(Path(tmp), clients, load_rate)
        try:
            bench.swap()  # start the second relay; not measured
            results = [bench.swap() for _ in range(swaps)]
            final = bench.finish()
        finally:
            bench.close()
    committed = [r for r in results if r["decision"] == "committed"]
    server = [r["server_pause_ms"] for r in committed]
    client = [r["client_pause_ms"] for r in committed if r["client_pause_ms"] is not None]
    return {
        "clients": clients, "connections_moved": committed[-1]["connections"]["moved"]
        if committed else None,
        "load_msgs_per_s": load_rate, "canary_msgs_per_s": canary_rate(clients),
        "canary_interval_ms": round(1000 / canary_rate(clients), 3),
        "swaps": swaps, "committed": len(committed),
        "not_committed_reasons": sorted({r["reason"] for r in results
                                         if r["decision"] != "committed"}),
        "server_pause_ms": sample_stats(server), "client_pause_ms": sample_stats(client),
        "pause_stages_p50_ms": _stage_medians(committed),
        "canary": final["canary"], "crowd_disconnects": final["crowd"].get("disconnects"),
        "load": _load_summary(final.get("load")),
    }


def measure_rollbacks(clients: int, count: int, cold: bool) -> dict[str, Any]:
    """Swap, then roll back at once; cold kills the warm old release first."""
    with tempfile.TemporaryDirectory(prefix="swb-") as tmp:
        bench = Bench(Path(tmp), clients, 0)
        settings = replace(bench.settings, deadlines=Deadlines(soaking=30.0), keep_old=not cold)
        try:
            times, flowing, kinds = [], [], set()
            for _ in range(count):
                result = bench.swap(settings, requests=_rollback_now(bench, cold))
                if result["decision"] != "rolled_back":
                    continue
                times.append(result["rollback"]["ms"])
                kinds.add(result["rollback"]["kind"])
                if result["rollback"]["traffic_flowing_ms"] is not None:
                    flowing.append(result["rollback"]["traffic_flowing_ms"])
            final = bench.finish()
        finally:
            bench.close()
    return {"clients": clients, "rollbacks": len(times), "kind": sorted(kinds),
            "handoff_back_ms": sample_stats(times), "traffic_flowing_ms": sample_stats(flowing),
            "canary": final["canary"]}


def _rollback_now(bench: Bench, cold: bool) -> Any:
    def ask() -> str:
        warm = bench.service.warm
        if cold and warm is not None and warm.alive():
            warm.handle.kill()
        return "rollback"
    return ask


def _stage_medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median of each stage of the server-side pause (see SwapRun.pause_stages_ms)."""
    stages = [r["pause_stages_ms"] for r in results if r.get("pause_stages_ms")]
    if not stages:
        return {}
    return {name: percentiles([s[name] for s in stages], (50,))["p50"] for name in stages[0]}


def _load_summary(load: dict[str, Any] | None) -> dict[str, Any] | None:
    """The independent load checker's verdict over all the swaps of one configuration."""
    if load is None:
        return None
    total = load["total"]
    return {"ok": load["ok"], "problems": load["problems"], "sent": load["sent"],
            "rate_achieved": load["conditions"]["rate_achieved"],
            **{k: total[k] for k in ("received", "lost", "duplicated", "reordered",
                                     "corrupted", "unexpected")}}


def per_connection_us(rows: list[dict[str, Any]]) -> float | None:
    """Slope of median server pause against clients moved (least squares), in us."""
    points = [(r["connections_moved"], r["server_pause_ms"]["p50"]) for r in rows
              if r["connections_moved"] and r["server_pause_ms"].get("p50") is not None]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return round(sum((x - mx) * (y - my) for x, y in points) / var * 1000, 3) if var else None


def run_handoff_bench(settings: HandoffBenchSettings, progress: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    idle, loaded = [], []
    for clients in settings.clients:
        progress(f"handoff: {clients} clients idle, {settings.swaps} swaps")
        idle.append(measure_swaps(clients, 0, settings.swaps))
    if settings.loaded:
        for clients in settings.clients:
            rate = min(settings.load_rate, DELIVERY_BUDGET // (clients + 3))
            progress(f"handoff: {clients} clients, load {rate} msg/s, {settings.swaps} swaps")
            loaded.append(measure_swaps(clients, rate, settings.swaps))
    rb_clients = min(settings.clients, key=lambda c: abs(c - 100))
    progress(f"rollback: {settings.rollbacks} warm and {settings.rollbacks} cold")
    warm = measure_rollbacks(rb_clients, settings.rollbacks, cold=False)
    cold = measure_rollbacks(rb_clients, settings.rollbacks, cold=True)
    slope = per_connection_us(idle)
    goals = _goals(idle, loaded, warm, cold, slope)
    return {
        "benchmark": "handoff",
        "conditions": conditions(
            relay_command=list(RELAY), swaps_per_config=settings.swaps, journal="on",
            load_rate_asked=settings.load_rate, delivery_budget_msgs_per_s=DELIVERY_BUDGET,
            note=("every relay broadcasts to every client: background load is capped at "
                  f"{DELIVERY_BUDGET:,} deliveries/s (rate x clients) so the 2-core machine "
                  "keeps up; the rate used is in each row"),
            source=source_revision("swapctl")),
        "idle": idle, "under_load": loaded,
        "rollback": {"warm": warm, "cold": cold},
        "per_connection_cost_us": slope,
        "goals": [g.to_dict() for g in goals],
        "wall_s": round(time.monotonic() - started, 1),
    }


def _goals(idle: list[dict[str, Any]], loaded: list[dict[str, Any]], warm: dict[str, Any],
           cold: dict[str, Any], slope: float | None) -> list[Goal]:
    at_1000 = next((r for r in loaded if r["clients"] == 1000), None)
    p99 = at_1000["client_pause_ms"].get("p99") if at_1000 else None
    server99 = at_1000["server_pause_ms"].get("p99") if at_1000 else None
    del idle
    return [
        Goal("client pause p99 at 1,000 clients under load", "<= 5 ms", p99, "ms",
             p99 is not None and p99 <= 5),
        Goal("server pause p99 at 1,000 clients under load", "<= 5 ms", server99, "ms",
             server99 is not None and server99 <= 5),
        Goal("cost per extra connection", "<= 2 us", slope, "us",
             slope is not None and slope <= 2),
        Goal.below("warm rollback (decision -> traffic flowing)",
                   warm["traffic_flowing_ms"].get("p99"), 100, "ms"),
        Goal.below("cold rollback (decision -> traffic flowing)",
                   cold["traffic_flowing_ms"].get("p99"), 2000, "ms"),
    ]
