"""Filters of the swapctl role, run on the controller: one host's `swapctl ... -o json`
result made into a record (the fact swapctl_fleet_record), which the action
swapctl_fleet_summary gathers into the fleet summary.

A record says what happened on one host, in one word (`outcome`) and in swapctl's own
figures (the report it printed). Pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

# The outcomes after which a host is fine (the summary says what each outcome means).
OK = {"swapped", "already", "rolled_back_by_fleet", "passed"}


def _report(result: dict[str, Any]) -> dict[str, Any] | None:
    try:
        report = json.loads(result.get("stdout") or "")
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _seconds(report: dict[str, Any] | None) -> float | None:
    try:
        return round(float(report["ended"]) - float(report["started"]), 3)  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def _tail(text: str | None, lines: int = 5) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def swapctl_swap_record(result: dict[str, Any], host: str, release: str,
                        rollback_argv: list[str]) -> dict[str, Any]:
    """One host's record from its registered `swapctl swap ... -o json` result."""
    rc, report = result.get("rc"), _report(result)
    decision = (report or {}).get("decision")
    if result.get("skipped"):
        outcome = "already"
    elif rc == 0:
        outcome = "swapped"
    elif rc == 1 and decision == "rolled_back":
        outcome = "rolled_back"
    elif rc == 6:
        outcome = "rollback_failed"
    elif rc == 1:
        outcome = "failed"
    else:
        outcome = "error"
    return {"host": host, "outcome": outcome, "ok": outcome in OK, "rc": rc,
            "to": release, "from": (report or {}).get("from"),
            "serving": (report or {}).get("active", release if outcome == "already" else None),
            "decision": decision, "reason": (report or {}).get("reason"),
            "swap_id": (report or {}).get("swap_id"), "seconds": _seconds(report),
            "stderr": _tail(result.get("stderr")),
            "rollback_argv": rollback_argv, "report": report}


def swapctl_fleet_rollback(record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """RECORD after the fleet rolled its host back (`swapctl rollback ... -o json`)."""
    report = _report(result)
    ok = result.get("rc") == 0
    return {**record, "outcome": "rolled_back_by_fleet" if ok else "fleet_rollback_failed",
            "ok": ok, "serving": (report or {}).get("active"),
            "fleet_rollback": {"rc": result.get("rc"), "report": report,
                               "decision": (report or {}).get("decision"),
                               "stderr": _tail(result.get("stderr"))}}


def swapctl_drill_record(result: dict[str, Any], host: str) -> dict[str, Any]:
    """One host's record from its registered `swapctl drill ... -o json` result."""
    rc, report = result.get("rc"), _report(result)
    if rc == 0 and report and report.get("ok"):
        outcome = "passed"
    elif report is not None and rc == 1:
        outcome = "drill_failed"
    else:
        outcome = "error"
    keys = ("run_id", "state", "reason", "baseline", "candidate", "seconds", "failed_step",
            "failed_gate", "files")
    return {"host": host, "outcome": outcome, "ok": outcome in OK, "rc": rc,
            **{k: (report or {}).get(k) for k in keys},
            "stderr": _tail(result.get("stderr")), "report": report}


def swapctl_param_args(params: dict[str, Any]) -> list[str]:
    """{soak: 10s} -> ['--param', 'soak=10s'] for `swapctl drill`."""
    return [arg for k, v in (params or {}).items() for arg in ("--param", f"{k}={v}")]


def swapctl_records(hostvars: Any, hosts: list[str]) -> dict[str, Any]:
    """The record (fact swapctl_fleet_record) of each host of HOSTS that has one."""
    return {h: hostvars[h]["swapctl_fleet_record"] for h in hosts
            if "swapctl_fleet_record" in hostvars[h]}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {f.__name__: f for f in (swapctl_swap_record, swapctl_fleet_rollback,
                                        swapctl_drill_record, swapctl_records,
                                        swapctl_param_args)}
