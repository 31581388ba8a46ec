"""What `swapctl swap --dry-run` prints for a standalone swap, and nothing else happens.

The plan is built from the typed request alone plus reads (which slot serves a legacy
public link, and whether the state dir exists): no process is started, no file or
directory is written, no socket is bound or connected. The phases and their deadlines
come from the one description of every strategy, `swapctl.swap.machine.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swapctl.cli.swap_requests import NO_PROOF, Canary, HandoffRequest, LegacyRequest
from swapctl.errors import UsageError
from swapctl.legacy.run import old_relay
from swapctl.swap import machine
from swapctl.swap.machine import Deadlines


def plan(request: HandoffRequest | LegacyRequest) -> dict[str, Any]:
    """The plan of a standalone swap, as one JSON-ready dict."""
    if isinstance(request, LegacyRequest):
        return _legacy(request)
    return {
        **_head("standalone handoff", request.strategy, request.why),
        "socket": str(request.socket), "compiled": None,
        **_state(request.state_dir),
        "from": {"release": "from", "command": list(request.from_cmd), "legacy": False,
                 "serving": None, "started_by_swap": True},
        "to": {"release": "to", "command": list(request.to_cmd), "legacy": False},
        "phases": machine.plan("handoff", Deadlines(soaking=request.soak)),
        "soak_s": request.soak, "drain_deadline_s": None,
        "pause_budget_ms": request.pause_budget_ms, "rollback_after_s": request.rollback_after,
        "canary": _canary(request.canary),
    }


def _legacy(request: LegacyRequest) -> dict[str, Any]:
    deadlines = Deadlines() if request.drain_deadline is None else \
        Deadlines(soaking=request.drain_deadline)
    layout = request.layout
    return {
        **_head("standalone legacy", request.strategy, request.why),
        "socket": str(layout.public), "compiled": str(layout.compiled),
        **_state(request.state_dir),
        "from": _old(request),
        "to": {"release": "to", "command": list(request.to_cmd), "legacy": request.to_legacy},
        "phases": machine.plan(request.strategy, deadlines),
        "soak_s": None, "drain_deadline_s": request.drain_deadline,
        "pause_budget_ms": None, "rollback_after_s": None,
        "canary": _canary(request.canary),
    }


def _head(mode: str, strategy: str, why: str) -> dict[str, Any]:
    return {"dry_run": True, "mode": mode, "service": None, "strategy": strategy, "why": why}


def _state(state_dir: Path) -> dict[str, Any]:
    return {"state_dir": str(state_dir), "state_dir_exists": state_dir.exists()}


def _old(request: LegacyRequest) -> dict[str, Any]:
    """The relay the swap starts from: the one serving the public link's slot, a relay
    swapctl did not start (adopted: found when the request was built), or, on a fresh
    box, --from started in a free slot first (what `run_strategy` does)."""
    if request.adopt is not None:
        adopted = request.adopt
        return {"release": "from", "command": list(adopted.command), "legacy": True,
                "serving": None, "adopt": adopted.to_dict(), "started_by_swap": False,
                "after": f"{request.layout.public} becomes swapctl's link to a slot of "
                         f"{request.layout.root / 'slots'}, the candidate serving it"}
    current = old_relay(request.layout)
    if current is not None:
        slot, state = current
        return {"release": "from", "command": list(state.get("command") or []),
                "legacy": state.get("kind") == "legacy",
                "serving": {"slot": slot, "pid": state.get("pid")}, "started_by_swap": False}
    public = request.layout.public
    if request.from_cmd is None or not request.from_legacy or public.exists() \
            or public.is_symlink():
        raise UsageError(
            f"no relay of a swapctl slot serves {public}: migrate this box to the slot "
            "layout once first (docs/legacy.md), or give --from CMD --from-legacy for a "
            "fresh box")
    return {"release": "from", "command": list(request.from_cmd), "legacy": True,
            "serving": None, "started_by_swap": True}


def _from_line(old: dict[str, Any]) -> str:
    kind = "legacy" if old["legacy"] else "handoff-capable"
    if old.get("adopt"):
        a = old["adopt"]
        where = (f"pid {a['pid']}, not started by swapctl: adopted (found by "
                 f"{a['found_by']}), its listener {a['listener']}")
    elif old["serving"]:
        where = f"serving in slot {old['serving']['slot']}, pid {old['serving']['pid']}"
    else:
        where = "started first by this swap"
    return f"  from:      {' '.join(old['command']) or '?'} ({kind}; {where})"


def _canary(canary: Canary) -> dict[str, Any]:
    return {"rate": canary.rate, "domain": canary.domain.value,
            "profile": canary.profile.value, "domain_byte": canary.domain_byte,
            "proof": canary.proof, "warning": None if canary.proof else NO_PROOF}


def text(p: dict[str, Any]) -> str:
    """The plan for a terminal."""
    old, new = p["from"], p["to"]
    kind = {True: "legacy", False: "handoff-capable"}
    state = "exists" if p["state_dir_exists"] else "not created by a dry run"
    canary = p["canary"]
    lines = [
        f"plan (dry run: nothing started, nothing written): {p['mode']}",
        f"  strategy:  {p['strategy']} ({p['why']})",
        _from_line(old),
        f"  to:        {' '.join(new['command'])} ({kind[new['legacy']]})",
        f"  socket:    {p['socket']}"
        + (f" (compiled-in path {p['compiled']})" if p["compiled"] else ""),
        f"  state dir: {p['state_dir']} ({state})",
        "  phases:    " + ", ".join(f"{ph['phase']} <= {ph['deadline_s']:g}s"
                                    for ph in p["phases"]),
        "  rollback possible through: " + ", ".join(
            ph["phase"] for ph in p["phases"] if ph["can_roll_back"]),
    ]
    if old.get("after"):
        lines.append(f"  after:     {old['after']}")
    if p["soak_s"] is not None:
        lines.append(f"  soak {p['soak_s']:g}s; pause budget {p['pause_budget_ms']:g} ms"
                     + ("" if p["rollback_after_s"] is None else
                        f"; scripted rollback {p['rollback_after_s']:g}s into the soak"))
    if p["drain_deadline_s"] is not None:
        lines.append(f"  drain deadline {p['drain_deadline_s']:g}s (--soak): clients still on "
                     "the old relay then are disconnected, and counted")
    if canary["proof"]:
        lines.append(f"  canary {canary['rate']:g} msg/s, domain {canary['domain']} "
                     f"({canary['profile']}: byte {canary['domain_byte']})")
    else:
        lines.append(f"  warning: {canary['warning']}")
    return "\n".join(lines)
