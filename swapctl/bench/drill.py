"""`swapctl bench drill`: the standard rollback drill, timed, N times on a private stack.

A fresh stack (supervisord, swapctld, the reference relay as releases v1 and v2 of
market_data) is brought up under a temp dir; the standard drill playbook
(playbooks/rollback-drill.yaml, with its own parameters unless overridden) runs N times
back to back through the same runner `swapctl drill` uses, v1 <-> v2 alternating as
baseline and candidate only if a drill leaves the other serving (it should not: each
drill rolls back). Per drill: the whole drill's wall time and the rollback within it
(request -> swap ended with the baseline serving; and -> baseline active again; and
swapctld's own handoff time). p50/p99 are nearest-rank over the drills that measured
them; a drill that failed is counted and its reason listed, not hidden.

SIGTERM or SIGINT stops the bench: during a drill, the runner cancels its steps and runs
its cleanup (as for `swapctl drill`), then the bench stops instead of starting the next;
between drills, SIGTERM unwinds it (bench/procs.py). Either way the stack comes down and
`Interrupted` says which signal (exit 3).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import swapctl
from swapctl.bench.procs import Interrupted, sigterm_interrupts, stopped_by
from swapctl.bench.report import Goal, conditions, source_revision
from swapctl.config.load import load_config
from swapctl.daemon import stack
from swapctl.demo import configs
from swapctl.playbook.load import load_playbook
from swapctl.playbook.runner import Runner, RunOptions
from swapctl.probes.latency import percentiles
from swapctl.process import end_processes, processes_under

PLAYBOOK = Path(swapctl.__file__).resolve().parents[1] / "playbooks" / "rollback-drill.yaml"
SERVICE = "market_data"
POINTS = (50, 99)


@dataclass(frozen=True, slots=True)
class DrillBenchSettings:
    drills: int = 20
    params: dict[str, str] = field(default_factory=dict)
    playbook: Path = PLAYBOOK


def run_drill_bench(settings: DrillBenchSettings,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    playbook = load_playbook(settings.playbook, settings.params)
    rows: list[dict[str, Any]] = []
    with sigterm_interrupts(), tempfile.TemporaryDirectory(prefix="swbd-") as tmp:
        root = Path(tmp)
        config = load_config(configs.write(root, (SERVICE,), soak="30s"))
        try:
            stack.up(config, timeout=60)
            progress(f"drill: stack up under {root}; {settings.drills} drills of "
                     f"{settings.playbook.name}")
            for number in range(1, settings.drills + 1):
                runner = Runner(playbook, config, RunOptions(SERVICE))
                result = runner.run()
                if runner.signals:  # (the drill was cancelled and cleaned up: stop here)
                    raise Interrupted(stopped_by(runner.signals[0]))
                values = result.journal.get("values", {})
                row = {"state": result.state, "reason": result.reason,
                       "drill_seconds": (result.journal.get("result") or {}).get("seconds"),
                       **{k: values.get(k) for k in (
                           "rollback_seconds", "rollback_serving_seconds",
                           "rollback_engine_ms", "lost", "disconnects", "received")}}
                rows.append(row)
                progress(f"drill {number}/{settings.drills}: {row['state']} in "
                         f"{row['drill_seconds']}s, rollback {row['rollback_seconds']}s, "
                         f"lost {row['lost']}")
        finally:
            with contextlib.suppress(Exception):
                stack.down(config, timeout=60)
            _kill_leftovers(root)
    return _report(settings, playbook.params, rows)


def _report(settings: DrillBenchSettings, params: dict[str, str],
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    def figures(key: str) -> dict[str, Any]:
        samples = [float(r[key]) for r in rows if r.get(key) is not None]
        if not samples:
            return {"samples": 0}
        return {"samples": len(samples), **percentiles(samples, POINTS),
                "min": min(samples), "max": max(samples)}

    passed = [r for r in rows if r["state"] == "passed"]
    lost = sum(int(r["lost"] or 0) for r in rows)
    rollback = figures("rollback_seconds")
    return {
        "conditions": conditions(
            drills=settings.drills, playbook=str(settings.playbook), params=params,
            service=SERVICE, relay="reference relay (python -m swapctl.relay), v1 and v2",
            stack="supervisord + swapctld under a temp dir, supervisord.start: swapctl",
            measured=("drill: wall time of the whole run (steps and cleanup); rollback: "
                      "rollback request -> swap ended with the baseline serving, polled by "
                      "the runner every 10 ms; serving: -> baseline active; engine: "
                      "swapctld's own handoff time"),
            revision=source_revision("swapctl/playbook", "swapctl/daemon", "playbooks")),
        "drills": {"run": len(rows), "passed": len(passed), "lost_messages": lost,
                   "failures": [r["reason"] for r in rows if r["state"] != "passed"]},
        "drill_seconds": figures("drill_seconds"),
        "rollback_seconds": rollback,
        "rollback_serving_seconds": figures("rollback_serving_seconds"),
        "rollback_engine_ms": figures("rollback_engine_ms"),
        "goals": [Goal.below(*_tail("rollback", rollback), 30.0, "s").to_dict(),
                  Goal.below("messages lost", float(lost), 1.0, "").to_dict(),
                  Goal.at_least("drills passed", float(len(passed)), float(len(rows)),
                                "").to_dict()],
    }


def _tail(what: str, figures: dict[str, Any]) -> tuple[str, float | None]:
    """The goal's name and figure: p99 from 100 samples on, else the maximum (nearest
    rank: with fewer, p99 is the maximum, and is named so)."""
    if figures.get("samples", 0) >= 100:
        return f"{what} p99", figures.get("p99")
    return f"{what} max ({figures.get('samples', 0)} drills: p99 needs 100)", figures.get("max")


def _kill_leftovers(root: Path) -> None:
    """Anything still running from this bench's root (by its unique path, never by name)."""
    end_processes(processes_under(root), grace=0.0)
