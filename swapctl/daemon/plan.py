"""What a swap of a swapctld service would do, checked but not done.

How it works. Plain functions of the service's configuration (swapctld re-reads the file
before each swap), the slot that serves now and the swap's settings; no runtime, no
relay is touched. `plan` is what `swap --dry-run` prints and what every swap starts
from: the release that would serve, the strategy (the one selector, swap/choose.py) and
why, the phases with their deadlines (swap/machine.py). `settings` are the service's
swap settings with the soak window asked for; `previous_release` is the release
`rollback` goes back to (read from the reports of committed swaps). A swap that is
running is not their business: the runtime refuses a busy service before it plans.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from swapctl.config.convert import to_release, to_swap_settings
from swapctl.config.model import ServiceConfig
from swapctl.daemon.health import program_of
from swapctl.daemon.paths import read_json
from swapctl.errors import SwapctlError, UsageError
from swapctl.swap import choose, machine
from swapctl.swap.executor import SwapSettings
from swapctl.swap.service import Slot
from swapctl.swap.spawner import Release


class Unhealthy(SwapctlError):
    """The service has no healthy active relay."""


def settings(config: ServiceConfig, soak: float | None) -> SwapSettings:
    """The service's swap settings; `soak` (seconds), when given, is the soak window."""
    base = to_swap_settings(config)
    if soak is None:
        return base
    return dataclasses.replace(
        base, deadlines=dataclasses.replace(base.deadlines, soaking=soak))


def strategy(old: Release, new: Release, asked: str) -> tuple[str, str]:
    """The strategy for old -> new (the one selector: swap/choose.py), and why."""
    for release in (old, new):
        if not release.handoff and not release.legacy:
            raise UsageError(f"{release.name} neither speaks the handoff protocol nor is "
                             "declared legacy (with its compiled_socket): swapctld cannot "
                             "run it; fix its entry under releases")
    chosen, why = choose.choose(old.legacy, new.legacy, asked, old.name, new.name)
    if chosen in ("restart", "bridge") and not new.legacy:
        top = choose.best(old.legacy, new.legacy)[0]
        raise UsageError(f"--strategy {chosen}: swapctld starts the new release of a "
                         f"{chosen} in a legacy slot at its compiled_socket, and {new.name} "
                         f"is not legacy (it speaks the handoff protocol); use --strategy "
                         f"{top} (or auto): no client is cut")
    return chosen, why


def plan(service: str, socket: Path, config: ServiceConfig, active: Slot | None, *,
         to: str | None, soak: float | None, asked: str = "auto") -> dict[str, Any]:
    """What swapping `service` (public `socket`, `active` serving) to `to` would do:
    `to` defaults to the configured active release; `asked` is the strategy asked for."""
    if active is None:
        raise Unhealthy(f"{service}: no active relay; see `swapctl status {service}` "
                        f"and `swapctl logs {service}`")
    target = to or config.active
    if target == active.release.name:
        raise UsageError(
            f"{service}: {target} already serves; give --to RELEASE (one of "
            f"{', '.join(sorted(r for r in config.releases if r != target)) or 'none'})"
            + ("" if to else f", or set active: in {config.source}"))
    release = to_release(config, target)
    chosen, why = strategy(active.release, release, asked)
    chosen_settings = settings(config, soak)
    d = chosen_settings.deadlines
    return {
        "service": service, "socket": str(socket),
        "from": {"release": active.release.name, "command": list(active.release.command),
                 "program": program_of(active), "pid": active.handle.pid,
                 "legacy": active.release.legacy},
        "to": {"release": release.name, "command": list(release.command),
               "handoff": release.handoff, "legacy": release.legacy},
        "strategy": chosen, "why": why, "phases": machine.plan(chosen, d),
        "pause_budget_ms": chosen_settings.pause_budget_ms,
        "rollback_deadline_s": d.rolling_back,
        "canary_rate": config.canary.rate,
    }


def previous_release(service: str, config: ServiceConfig, current: str,
                     reports: Path) -> str:
    """The release the last committed swap to `current` replaced (what `rollback` goes
    back to), from the swap reports in `reports`."""
    paths = sorted(reports.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in paths:
        data = read_json(path) or {}
        if data.get("service") == service and data.get("decision") == "committed" \
                and data.get("to") == current:
            previous = data.get("from")
            if isinstance(previous, str) and previous in config.releases:
                return previous
    raise UsageError(f"{service}: no committed swap to {current or 'the active release'}"
                     " to roll back: give `swapctl swap "
                     f"{service} --to RELEASE` instead")
