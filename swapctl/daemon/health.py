"""The health of a swapctld service's active relay, and the status swapctld shows.

How it works. `check` asks the relay that serves, the one way it can answer: a handoff
relay over its control link (its counters, within a second), a legacy relay through its
process and its slot socket (legacy.healthy: alive, not frozen, accepting). A relay that
has exited or does not answer is unhealthy, with the problem in words. The runtime calls
it only while it holds the relay links (never during a swap) and caches the answer;
`status` puts that answer beside the slots, the swap and the lease. While supervisord
is down every service is unhealthy (`with_supervisord`): its relays serve, but none
could be started again if it died, nor swapped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from swapctl.daemon import legacy
from swapctl.daemon.jobs import SwapJob
from swapctl.errors import SwapctlError
from swapctl.swap.service import Service, Slot


def check(active: Slot | None, legacy_socket: Path | None) -> dict[str, Any]:
    """The health of `active`; `legacy_socket` is where a legacy active relay binds."""
    now = time.time()
    if active is None:
        return {"healthy": False, "checked": now, "problem": "no active relay"}
    if active.release.legacy and legacy_socket is not None:
        return {"checked": now, "release": active.release.name,
                **legacy.healthy(active, legacy_socket)}
    if not active.alive():
        return {"healthy": False, "checked": now, "release": active.release.name,
                "problem": f"{active.release.name} exited: {active.handle.describe_exit()}"}
    try:
        stats = active.link.stats(1.0)
    except (SwapctlError, TimeoutError, OSError) as exc:
        return {"healthy": False, "checked": now, "release": active.release.name,
                "problem": f"{active.release.name} does not answer: {exc}"}
    return {"healthy": True, "checked": now, "release": active.release.name,
            "connections": int(stats.get("connections_open", 0)),
            "frames_in": int(stats.get("frames_in", 0)),
            "frames_out": int(stats.get("frames_out", 0))}


def program_of(slot: Slot) -> str:
    """The supervisord program that runs `slot` ("" for a handle that has none)."""
    return str(getattr(slot.handle, "program", ""))


def slot_status(slot: Slot) -> dict[str, Any]:
    return {"release": slot.release.name, "program": program_of(slot), "pid": slot.handle.pid,
            "alive": slot.alive(), "token": slot.token, "legacy": slot.release.legacy}


def status(name: str, service: Service, *, configured_active: str, health: dict[str, Any],
           job: SwapJob | None, lease: dict[str, Any] | None) -> dict[str, Any]:
    """A service as `swapctl status` shows it: its slots, the last health check, the
    last swap since swapctld started and the lease held on it (lease.py's `status`)."""
    active, warm = service.active, service.warm
    return {
        "service": name, "socket": str(service.socket_path),
        "configured_active": configured_active,
        "active": None if active is None else slot_status(active),
        "warm": None if warm is None else slot_status(warm),
        "health": health,
        "swap": None if job is None else {
            "swap_id": job.swap_id, "kind": job.kind, "state": job.phase,
            "strategy": job.strategy, "to": job.to_release, "from": job.from_release,
            "running": job.running,
            "decision": None if job.report is None else job.report["decision"],
            "started": job.started},
        "lease": lease,
    }


def with_supervisord(service: dict[str, Any],
                     supervisord: dict[str, Any] | None) -> dict[str, Any]:
    """`service`'s status, unhealthy with supervisord's problem while it is down."""
    if supervisord is None or supervisord.get("up"):
        return service
    return {**service, "health": {**service["health"], "healthy": False,
                                  "problem": supervisord.get("problem")}}
