"""The one swap report, for every strategy, standalone or through swapctld.

Built from the run alone: its machine history (phases), marks (pause, connections,
rollback), the strategy's evidence and the canary's final audit; independent checkers
(a `swapctl load` session) can be added. Top-level lost, duplicated, reordered,
corrupted, disconnects and dead_consumers come from `swap/evidence.py` (null: unknown,
with the reason under "figures"); `exit_code` is the CLI's exit code for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swapctl.swap import evidence as ev
from swapctl.swap.canary import summarize
from swapctl.swap.executor import SwapRun
from swapctl.swap.machine import State

exit_code = ev.exit_code_of


def build(run: SwapRun, canary_final: dict[str, Any] | None = None,
          checkers: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    m, marks = run.machine, run.marks
    final = run.canary_final if run.canary_final is not None else canary_final
    phases = [{"phase": state.value, "ms": round(seconds * 1000, 3)}
              for state, seconds in m.durations()]
    decision = {State.COMMITTED: "committed", State.ROLLED_BACK: "rolled_back",
                State.FAILED: "failed"}.get(m.state, m.state.value)
    totals = summarize(final) if final is not None else None
    figs = ev.figures(run.evidence, totals, checkers)
    report: dict[str, Any] = {
        "swap_id": run.swap_id,
        "service": None,
        "socket": str(run.service.socket_path),
        "strategy": run.strategy,
        "from": run.old.release.name,
        "to": run.release.name,
        "decision": decision,
        "reason": m.reason or (f"{run.strategy} done, all checks clean"
                               if decision == "committed" else ""),
        "phases": phases,
        "server_pause_ms": _round(run.server_pause_ms),
        "pause_stages_ms": run.pause_stages_ms,
        "client_pause_ms": _round(marks.canary_gap_ms),
        "connections": {"before": marks.connections_before, "moved": marks.moved,
                        "after": marks.connections_after},
        "handoff": marks.handoff,
        "probe_ms": round(marks.probe_ms, 3),
        **{name: f.value for name, f in figs.items()},
        "figures": {name: f.to_dict() for name, f in figs.items()},
        "proven": ev.proven(figs),
        "canary": None,
        "checkers": {k: dict(v) for k, v in (checkers or {}).items()},
        "evidence": {**run.evidence.to_dict(), **run.details},
        "rollback": None,
        "could_not_guarantee": run.actions.could_not_guarantee,
        "journal": [{k: v for k, v in r.items() if k != "swap"} for r in run.journal.records
                    if r.get("swap") == run.swap_id],
    }
    if decision != "committed" and marks.rollback_started:
        report["rollback"] = {"kind": marks.rollback_kind, "ms": _round(marks.rollback_ms),
                              "traffic_flowing_ms": _round(marks.rollback_flowing_ms)}
    if final is not None and totals is not None:
        report["canary"] = {**totals, "rate": final.get("rate"), "streams": final["streams"]}
    return report


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_any(report: dict[str, Any], service: str | None = None) -> str:
    """What an operator reads of any swap report: a full one in full, headed by its
    service; swapctld's own failure report (no phases: the swap never ran) in a line."""
    if "phases" not in report:
        why = f" ({report['reason']})" if report.get("reason") else ""
        return f"swap {report.get('swap_id')}: {report.get('decision')}{why}"
    service = service or report.get("service")
    return (f"[{service}] " if service else "") + render_text(report)


def render_text(report: dict[str, Any]) -> str:
    conns = report["connections"]
    lines = [
        f"swap {report['swap_id']}: {report['from']} -> {report['to']} on {report['socket']}"
        f" (strategy {report.get('strategy', 'handoff')})",
        f"  decision: {report['decision'].upper()}" + (
            f" ({report['reason']})" if report["reason"] else ""),
        "  phases:   " + ", ".join(f"{p['phase']} {p['ms']:.1f} ms" for p in report["phases"]),
        f"  pause:    server {_ms(report['server_pause_ms'])}, "
        f"client (largest canary gap) {_ms(report['client_pause_ms'])}",
        f"  clients:  {_n(conns['before'])} before, {conns['moved']} moved, "
        f"{_n(conns['after'])} after",
    ]
    figures = report.get("figures") or {}
    if figures:
        lines.append("  result:   " + ", ".join(
            f"{name.replace('_', ' ')} {_n(f['value'])}" for name, f in figures.items()))
        lines += [f"    {name.replace('_', ' ')}: unknown: {f['unknown_because']}"
                  for name, f in figures.items() if f["value"] is None]
        if not report.get("proven") and report["decision"] == "committed":
            lines.append("    committed, but not proven clean (see above)")
    canary = report.get("canary")
    if canary is not None:
        lines.append(
            f"  canary:   {canary['sent']} sent at {canary['rate']:.0f}/s; lost {canary['lost']}, "
            f"duplicated {canary['duplicated']}, reordered {canary['reordered']}, "
            f"corrupted {canary['corrupted']}, disconnects {canary['disconnects']}, "
            f"dead consumers {canary['dead']}")
    elif figures:
        lines.append("  canary:   none ran")
    rollback = report.get("rollback")
    if rollback and rollback["kind"].startswith("not needed"):
        lines.append("  rollback: not needed: no client had moved; the old release kept serving")
    elif rollback:
        lines.append(f"  rollback: {rollback['kind']} in {_ms(rollback['ms'])} "
                     f"(traffic flowing again after {_ms(rollback['traffic_flowing_ms'])})")
    guarantee = report.get("could_not_guarantee")
    if guarantee and report.get("strategy", "handoff") != "handoff":
        lines.append(f"  could not guarantee: {guarantee}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _n(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def progress_line(record: dict[str, Any], started: float) -> str:
    """One journal transition as a line of live progress."""
    details = {k: v for k, v in record.items()
               if k not in ("swap", "at", "from", "event", "to", "reason", "command", "service",
                            "time", "old_token", "token", "soak", "stopped_ns", "resumed_ns")}
    extra = ", ".join(f"{k} {v}" for k, v in details.items())
    reason = f": {record['reason']}" if record.get("reason") else ""
    return (f"  +{(record['at'] - started) * 1000:8.1f} ms  {record['from']} -> {record['to']}"
            f" ({record['event']}{reason}{', ' + extra if extra else ''})")
