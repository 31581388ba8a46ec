"""The swap report: what happened, how long each phase took, and the canary's proof."""

from __future__ import annotations

from typing import Any

from swapctl.swap.canary import summarize
from swapctl.swap.executor import SwapRun
from swapctl.swap.machine import State


def build(run: SwapRun, canary_final: dict[str, Any] | None = None) -> dict[str, Any]:
    m, marks = run.machine, run.marks
    phases = [{"phase": state.value, "ms": round(seconds * 1000, 3)}
              for state, seconds in m.durations()]
    decision = {State.COMMITTED: "committed", State.ROLLED_BACK: "rolled_back",
                State.FAILED: "failed"}.get(m.state, m.state.value)
    report: dict[str, Any] = {
        "swap_id": run.swap_id,
        "socket": str(run.service.socket_path),
        "from": run.old.release.name,
        "to": run.release.name,
        "decision": decision,
        "reason": m.reason or ("soak window passed, all checks clean"
                               if decision == "committed" else ""),
        "phases": phases,
        "server_pause_ms": _round(run.server_pause_ms),
        "pause_stages_ms": run.pause_stages_ms,
        "client_pause_ms": _round(marks.canary_gap_ms),
        "connections": {"before": marks.connections_before, "moved": marks.moved,
                        "after": marks.connections_after},
        "handoff": marks.handoff,
        "probe_ms": round(marks.probe_ms, 3),
        "rollback": None,
        "journal": [{k: v for k, v in r.items() if k != "swap"} for r in run.journal.records
                    if r.get("swap") == run.swap_id],
    }
    if decision != "committed" and marks.rollback_started:
        report["rollback"] = {"kind": marks.rollback_kind, "ms": _round(marks.rollback_ms),
                              "traffic_flowing_ms": _round(marks.rollback_flowing_ms)}
    if canary_final is not None:
        totals = summarize(canary_final)
        report["canary"] = {**totals, "rate": canary_final.get("rate"),
                            "streams": canary_final["streams"]}
        report["disconnects"] = totals["disconnects"]
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_text(report: dict[str, Any]) -> str:
    lines = [
        f"swap {report['swap_id']}: {report['from']} -> {report['to']} on {report['socket']}",
        f"  decision: {report['decision'].upper()}" + (
            f" ({report['reason']})" if report["reason"] else ""),
        "  phases:   " + ", ".join(f"{p['phase']} {p['ms']:.1f} ms" for p in report["phases"]),
        f"  pause:    server {_ms(report['server_pause_ms'])}, "
        f"client (largest canary gap) {_ms(report['client_pause_ms'])}",
        f"  clients:  {report['connections']['before']} before, "
        f"{report['connections']['moved']} moved, {report['connections']['after']} after",
    ]
    canary = report.get("canary")
    if canary is not None:
        lines.append(
            f"  canary:   {canary['sent']} sent at {canary['rate']:.0f}/s; lost {canary['lost']}, "
            f"duplicated {canary['duplicated']}, reordered {canary['reordered']}, "
            f"corrupted {canary['corrupted']}, disconnects {canary['disconnects']}, "
            f"dead consumers {canary['dead']}")
    rollback = report.get("rollback")
    if rollback and rollback["kind"].startswith("not needed"):
        lines.append("  rollback: not needed: no client had moved; the old release kept serving")
    elif rollback:
        lines.append(f"  rollback: {rollback['kind']} in {_ms(rollback['ms'])} "
                     f"(traffic flowing again after {_ms(rollback['traffic_flowing_ms'])})")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def progress_line(record: dict[str, Any], started: float) -> str:
    """One journal transition as a line of live progress."""
    details = {k: v for k, v in record.items()
               if k not in ("swap", "at", "from", "event", "to", "reason", "command", "service",
                            "time", "old_token", "token", "soak")}
    extra = ", ".join(f"{k} {v}" for k, v in details.items())
    reason = f": {record['reason']}" if record.get("reason") else ""
    return (f"  +{(record['at'] - started) * 1000:8.1f} ms  {record['from']} -> {record['to']}"
            f" ({record['event']}{reason}{', ' + extra if extra else ''})")
