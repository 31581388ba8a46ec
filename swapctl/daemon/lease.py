"""A run's lease on a swapctld service: who holds it, until when, what to put back.

How it works. A run (a drill, a playbook) takes the lease naming the release to restore
and a ttl, and renews it within the ttl; a second holder is refused (Busy) while it runs,
unless the caller knows the holder is dead (`replaces`). `watch`, called each second by
swapctld's loop, finds a lease that was not renewed in time: it is dropped and its
release becomes due, to be swapped back in once no swap runs. This module only keeps the
state (in memory: a restarted swapctld holds no lease) on an injected monotonic clock;
the runtime journals each change, aborts the holder's swap and starts the restore swap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swapctl.config.convert import to_release
from swapctl.config.model import ServiceConfig
from swapctl.daemon.jobs import Busy
from swapctl.errors import UsageError

MAX_TTL = 3600.0  # seconds


@dataclass
class Lease:
    """A run (a drill, a playbook) holds the service; if it stops renewing, swapctld
    puts `restore_to` back: it aborts the holder's swap, then swaps back if needed."""

    holder: str
    restore_to: str
    ttl: float
    expires: float  # on the clock of its LeaseState (CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Due:
    """What `watch` found: a lease that just expired, or a release to restore now."""

    expired: Lease | None = None
    restore: str | None = None


class LeaseState:
    """The lease on one service, and the release an expired one left to put back."""

    def __init__(self, service: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.clock = clock
        self.held: Lease | None = None
        self.restore_pending: str | None = None

    def take(self, holder: str, ttl: float, restore_to: str, config: ServiceConfig,
             replaces: str = "") -> Lease:
        """`replaces`: the holder of a run the caller knows is dead (its file lock was
        free): its lease passes to the caller at once."""
        now = self.clock()
        held = self.held
        if held is not None and held.holder not in (holder, replaces) and held.expires > now:
            raise Busy(f"{self.service}: held by {held.holder} for {held.expires - now:.1f} s "
                       "more: wait for it to end")
        to_release(config, restore_to)  # (a release of this service, or UsageError)
        if not 0 < ttl <= MAX_TTL:
            raise UsageError(f"lease ttl {ttl!r}: give seconds in (0, {MAX_TTL:g}]")
        self.held = Lease(holder, restore_to, ttl, now + ttl)
        self.restore_pending = None
        return self.held

    def renew(self, holder: str) -> Lease:
        held = self.held
        if held is None or held.holder != holder:
            raise UsageError(f"{self.service}: {holder} holds no lease (it expired, and "
                             f"{self.restore_pending or 'the release it named'} is being put "
                             "back)")
        held.expires = self.clock() + held.ttl
        return held

    def release(self, holder: str) -> bool:
        """Ends `holder`'s lease; False if it held none (expired, or never taken)."""
        held = self.held
        if held is None or held.holder != holder:
            return False
        self.held = None
        return True

    def watch(self, swap_running: bool) -> Due:
        """An expired lease is dropped and its release becomes due; a due release is
        handed out (once) when no swap runs."""
        held = self.held
        if held is not None and held.expires <= self.clock():
            self.held, self.restore_pending = None, held.restore_to
            return Due(expired=held)
        target = self.restore_pending
        if target is None or swap_running:
            return Due()
        self.restore_pending = None
        return Due(restore=target)

    def status(self) -> dict[str, Any] | None:
        held = self.held
        if held is None:
            return None
        return {"holder": held.holder, "restore_to": held.restore_to,
                "expires_in_s": round(held.expires - self.clock(), 3)}
