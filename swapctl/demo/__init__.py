"""`swapctl demo`: the whole story on an embedded default, in a private temp dir.

A reference relay serves a market-data socket; an independent `swapctl load` run
(publishers, a dashboard consumer and a strategy consumer that would die on EOF) and
the swap canary drive traffic through it. Then, under that load:
  1. hot swap v1 -> v2 (committed after its soak window);
  2. swap v2 -> v3-no-echo (a build that stopped echoing to the sender, a behaviour
     change): the pre-cutover probe catches it before any client moves;
  3. rollback drill: swap v2 -> v1, the operator rolls back during the soak.
Each swap's report is printed, then the load checker's exact verdict over the whole
run. Everything started is stopped; nothing is left running or on disk.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner

RELAY = (sys.executable, "-m", "swapctl.relay", "--log-level", "warning")
V1 = Release("v1", RELAY)
V2 = Release("v2", RELAY)
V3_NO_ECHO = Release("v3-no-echo", (*RELAY, "--no-echo"))


@dataclass
class DemoResult:
    swaps: list[dict[str, Any]] = field(default_factory=list)
    load: LoadReport | None = None
    canary: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        expected = ["committed", "rolled_back", "rolled_back"]
        decisions = [s["decision"] for s in self.swaps]
        clean = self.load is not None and self.load.ok
        return decisions == expected and clean

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "wall_s": round(self.wall_s, 1), "swaps": self.swaps,
                "load": self.load.to_dict() if self.load else None, "canary": self.canary}


def run_demo(rate: float = 20_000.0, soak: float = 2.0,
             say: Callable[[str], None] = print) -> DemoResult:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="swapctl-demo-"))
    public = root / "market_data.sock"
    spawner = SubprocessSpawner(root / "logs")
    service = Service(public, root / "state", spawner)
    canary = Canary(public, rate=2000.0)
    load: LoadSession | None = None
    result = DemoResult()
    try:
        say(f"starting relay v1 on {public}")
        service.open(V1)
        canary.start()
        load = LoadSession(LoadConfig(public, publishers=2, consumers=2, rate=rate,
                                      duration=None, consumer_mode=ConsumerMode.DASHBOARD,
                                      strategy_consumers=1))
        load.start()
        say(f"traffic: swapctl load at {rate:,.0f} msg/s (2 publishers, a dashboard and a "
            "strategy consumer) + the swap canary")
        time.sleep(1.0)
        journal = Journal(root / "state" / "journal.jsonl")
        settings = SwapSettings(deadlines=Deadlines(soaking=soak), error_counters=())

        def swap(to: Release, title: str, requests: Callable[[], str | None]) -> None:
            say(f"\n== {title}")
            run = SwapRun(service, to, settings, canary=canary, journal=journal,
                          requests=requests).run()
            report = swap_report.build(run)
            result.swaps.append(report)
            say(swap_report.render_text(report))

        swap(V2, "hot swap v1 -> v2", lambda: None)
        swap(V3_NO_ECHO, "swap v2 -> v3-no-echo (a build that no longer echoes)",
             lambda: None)
        swap(V1, "rollback drill: swap v2 -> v1, operator rolls back during the soak",
             _after(soak / 2))
        say("\n== the load checker's verdict over the whole run")
        result.load = load.stop()
        result.canary = summarize(canary.stop())
        say(_load_lines(result.load))
    finally:
        canary.close()
        if load is not None:
            load.close()
        service.close()
        spawner.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    result.wall_s = time.monotonic() - started
    return result


def _after(seconds: float) -> Callable[[], str | None]:
    start: list[float] = []

    def ask() -> str | None:
        if not start:
            start.append(time.monotonic())
        return "rollback" if time.monotonic() - start[0] >= seconds else None
    return ask


def _load_lines(report: LoadReport) -> str:
    data = report.to_dict()
    total = data.get("total", {})
    assert isinstance(total, dict)
    keys = ("expected", "received", "lost", "duplicated", "reordered", "corrupted",
            "unexpected")
    counts = ", ".join(f"{k} {total.get(k)}" for k in keys)
    verdict = "CLEAN" if report.ok else "PROBLEMS: " + "; ".join(report.problems())
    return (f"  {counts}; disconnects {report.disconnects}\n"
            f"  strategy consumer alive at the end: "
            f"{'yes' if not any('stopped for good' in p for p in report.problems()) else 'no'}\n"
            f"  verdict: {verdict}")
