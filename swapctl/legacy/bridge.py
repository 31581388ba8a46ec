"""Strategy `bridge`: a path flip to a candidate, a bridge between the two relays, a drain.

How it works (any relay to any relay; no client is disconnected, nothing is lost):
1. The candidate starts in a free slot beside the old relay (a legacy build in its own
   mount namespace) and must pass a probe (a message through it byte for byte, echo).
2. A bridge client (`bridge_client`) connects to both relays and forwards every frame
   both ways; before any client can reach the candidate, a frame is sent through the
   bridge each way and must arrive exactly once on the far side (`check_bridge`).
3. Only then is the public link flipped (atomic rename): new connections reach the
   candidate, existing ones stay on the old relay, untouched, and publishers on
   either relay reach consumers on both.
4. Drain: the old relay's accepted connections are counted (/proc/PID/fd joined with
   the kernel's Unix socket table, minus the bridge and swapctl's own canary) every
   `drain_interval` and reported over time. The old relay is retired when only the
   bridge is left, or at the operator's deadline: then the clients still on it are
   disconnected, and the report says how many. Retiring = the bridge drains (whatever
   it holds has passed through both relays) and stops, then the relay is stopped.
Rollback: the link is flipped back, the bridge keeps running, and the candidate is
retired the same way (at once if no client reached it).

Client-side pause: connected clients are never touched, so there is none to make; a
canary connected before the swap measures it (largest gap in its stream).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapctl.errors import SwapctlError
from swapctl.legacy import layout as lay
from swapctl.legacy import sockets
from swapctl.legacy.bridge_client import BridgeConfig, BridgeError, BridgeProcess
from swapctl.legacy.report import StrategyReport, figures_from_canary
from swapctl.legacy.restart import (
    RestartSettings,
    Started,
    probe_socket,
    start_candidate,
    stop_relay,
)
from swapctl.probes.ident import make_sequence, make_tag
from swapctl.protocol import encode_message
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release

if TYPE_CHECKING:
    from swapctl.legacy.run import LegacySwap

CANNOT_GUARANTEE = (
    "a global order between the two relays: each publisher's order holds across the "
    "bridge, but a consumer sees the other relay's traffic interleaved by arrival time; "
    "a frame byte-identical to one the bridge is forwarding the other way at that instant "
    "may arrive up to one echo round trip later (the copies cannot be told apart); the "
    "bridge adds one hop of latency; frames a relay drops itself (a generic relay's split "
    "reads, a lagging reader's shed backlog) are not recovered; clients still on the old "
    "relay at the operator's deadline are disconnected (counted).")
CHECK_TAG = make_tag(0x7BBB)  # the bridge check's messages: not a load run's, not a canary's


class BridgeSwapError(SwapctlError):
    """The bridge swap could not start; the old relay was left serving the public path."""


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    ready_timeout: float = 10.0
    probe_timeout: float = 2.0
    drain_deadline: float | None = 60.0  # seconds; None: wait for the last client
    drain_interval: float = 0.1  # seconds between connection counts
    # a client that connected just before the flip may still wait in the relay's accept
    # backlog, where no count sees it: "no client left" must hold this long after the flip
    accept_settle: float = 0.25
    stop_grace: float = 2.0  # SIGTERM, then SIGKILL after this
    bridge_drain: float = 2.0  # seconds the bridge may take to pass on what it holds
    domain_byte: int = 1
    echo: bool = True  # both relays echo (every real one does but sinks)


@dataclass(slots=True)
class RelayRef:
    """A relay the strategy watches: its pid, socket from outside, path it bound."""

    pid: int
    socket: Path
    bound: str  # the listener's path as the relay sees it (the compiled path)
    started: Started | None = None  # set when this strategy started it


@dataclass(slots=True)
class Drain:
    """Clients left on a relay being retired, over time."""

    relay: str
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since flip, n)
    disconnected: int = 0
    deadline_hit: bool = False
    retired_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"relay": self.relay, "disconnected": self.disconnected,
                "deadline_hit": self.deadline_hit, "retired_s": self.retired_s,
                "samples": [[round(t, 3), n] for t, n in self.samples]}


def clients_on(relay: RelayRef, own: int) -> int:
    """Accepted connections of `relay` that are not swapctl's (bridge, canary)."""
    return max(0, len(sockets.find(relay.pid, relay.bound).connections) - own)


def check_bridge(a: Path, b: Path, domain_byte: int, timeout: float) -> float:
    """One frame through the bridge each way: it must arrive once, intact, on the other
    relay (and no second copy must come back). Returns the round in ms."""
    start = time.monotonic()
    socks = []
    try:
        for path in (a, b, a, b):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(timeout)
            s.connect(str(path))
        pub_a, pub_b, sub_a, sub_b = socks
        n = int(time.time_ns() & 0xFFFFFF)
        to_b = encode_message(domain_byte, 2, b"", sequence=make_sequence(CHECK_TAG, 0, n),
                              timestamp=time.time_ns(), checksum=True)
        to_a = encode_message(domain_byte, 2, b"", sequence=make_sequence(CHECK_TAG, 1, n),
                              timestamp=time.time_ns(), checksum=True)
        _expect(pub_a, to_b, sub_b, start + timeout)
        _expect(pub_b, to_a, sub_a, start + timeout)
    finally:
        for s in socks:
            s.close()
    return (time.monotonic() - start) * 1000


def _expect(pub: socket.socket, msg: bytes, sub: socket.socket, deadline: float) -> None:
    """Send `msg` (again, until the far relay has registered `sub`) until it shows up."""
    got = b""
    while msg not in got:
        if time.monotonic() > deadline:
            raise BridgeSwapError("bridge check: a frame did not cross the bridge intact")
        pub.sendall(msg)
        sub.settimeout(0.05)
        try:
            got += sub.recv(1 << 16)
        except TimeoutError:
            continue


class BridgeSwap:
    """One bridge swap; `cutover`, then `retire_old` (or `roll_back`), then `finish`."""

    def __init__(self, layout: lay.Layout, old_pid: int, release: Release, *, legacy: bool,
                 settings: BridgeSettings | None = None, old_bound: str | None = None,
                 service: Service | None = None, canary: Canary | None = None,
                 log_dir: Path | None = None, foreign_own: int = 0,
                 starter: Callable[[], RelayRef] | None = None,
                 flip: Callable[[Path], None] | None = None) -> None:
        """`starter` starts and readies the candidate some other way (swapctld: in a
        supervisord slot) and says where it is; `flip` points the public path (default:
        the layout's link)."""
        self.starter = starter
        self.flip = flip or (lambda target: lay.point(layout, target))
        self.layout, self.release, self.legacy = layout, release, legacy
        self.foreign_own = foreign_own  # connections of swapctl's on the old relay (a
        # checker the caller runs) not to wait for
        self.s = settings or BridgeSettings()
        self.service, self.canary, self.log_dir = service, canary, log_dir
        old_socket = layout.public.resolve() if layout.public.is_symlink() else layout.public
        self.old = RelayRef(old_pid, old_socket, old_bound or str(layout.compiled))
        self.new: RelayRef | None = None
        self.bridge: BridgeProcess | None = None
        self.report = StrategyReport("bridge", could_not_guarantee=CANNOT_GUARANTEE)
        self.flipped_at = 0.0
        self.drains: list[Drain] = []
        self.bridge_stats: dict[str, Any] = {}

    # ----- the swap --------------------------------------------------------------

    def cutover(self) -> None:
        """Candidate up and probed, bridge up and checked, then the link flipped.
        On failure everything started is stopped and the old relay serves as before."""
        s = self.s
        restart_settings = RestartSettings(s.ready_timeout, s.probe_timeout, s.stop_grace,
                                           s.domain_byte, s.echo)
        marked = self.canary.mark() if self.canary is not None else None
        t0 = time.monotonic()
        if self.starter is not None:
            self.new = self.starter()
            sock, slot_name = self.new.socket, ""
        else:
            started = start_candidate(self.layout, self.release, legacy=self.legacy,
                                      service=self.service, settings=restart_settings,
                                      log_dir=self.log_dir)
            sock, slot_name = self.layout.slot_socket(started.slot), started.slot
            bound = str(self.layout.compiled) if self.legacy else str(sock)
            self.new = RelayRef(started.pid, sock, bound, started)
        d = self.report.details
        try:
            d["candidate_ready_ms"] = round((time.monotonic() - t0) * 1000, 3)
            d["probe_ms"] = round(probe_socket(sock, s.domain_byte, s.echo,
                                               s.probe_timeout), 3)
            self.bridge = BridgeProcess(BridgeConfig(self.old.socket, sock, echo_a=s.echo,
                                                     echo_b=s.echo))
            d["bridge_pid"] = self.bridge.start()
            d["bridge_check_ms"] = round(check_bridge(self.old.socket, sock, s.domain_byte,
                                                      s.probe_timeout), 3)
            self.flip(sock)
        except (SwapctlError, OSError) as exc:
            self._abandon()
            self.report.outcome, self.report.reason = "failed", f"cutover: {exc}"
            raise BridgeSwapError(f"bridge swap not started: {exc}") from exc
        self.flipped_at = time.monotonic()
        d.update({"slot": slot_name, "candidate_pid": self.new.pid, "old_pid": self.old.pid,
                  "cutover_ms": round((self.flipped_at - t0) * 1000, 3)})
        if self.canary is not None and marked is not None:
            self.report.pause_ms = self.canary.health().max_gap_ms

    def retire_old(self, deadline: float | None = None) -> Drain:
        """Drain the old relay (see the module docstring) and stop it."""
        return self._retire(self.old, "old", deadline)

    def roll_back(self, deadline: float | None = None) -> Drain:
        """Flip the link back to the old relay, keep bridging, retire the candidate."""
        if self.new is None:
            raise BridgeSwapError("nothing to roll back: the cutover did not happen")
        self.flip(self.old.socket)
        self.flipped_at = time.monotonic()
        self.report.outcome, self.report.reason = "rolled_back", "rollback asked"
        return self._retire(self.new, "candidate", deadline)

    def finish(self) -> StrategyReport:
        """Stop what is still running of the bridge; the canary's verdict into the report."""
        self._stop_bridge()
        r = self.report
        r.disconnects = sum(d.disconnected for d in self.drains)
        r.moved = 0  # no connection moves: they stay where they are until they leave
        r.unmovable_bytes = 0 if self.drains and not r.disconnects else None
        r.details["drains"] = [d.to_dict() for d in self.drains]
        r.details["bridge"] = self.bridge_stats
        if self.canary is not None and self.canary.final is None:
            self._canary_verdict()
        return r

    # ----- internals -------------------------------------------------------------

    def _own(self, relay: RelayRef) -> int:
        """swapctl's own connections on `relay`: the bridge, and the canary if there."""
        own = 1 if self.bridge is not None else 0
        if relay is self.old:
            own += self.foreign_own
        if self.canary is not None and self.canary.final is None and relay is self.old:
            own += 1 + len(self.canary.consumers)
        return own

    def _retire(self, relay: RelayRef, name: str, deadline: float | None) -> Drain:
        limit = self.s.drain_deadline if deadline is None else deadline
        drain = Drain(name)
        self.drains.append(drain)
        start = time.monotonic()
        while True:
            left = clients_on(relay, self._own(relay))
            since_flip = time.monotonic() - self.flipped_at
            drain.samples.append((since_flip, left))
            if left == 0 and since_flip >= self.s.accept_settle:
                break
            if limit is not None and time.monotonic() - start >= limit:
                drain.deadline_hit = True
                drain.disconnected = left
                break
            time.sleep(self.s.drain_interval)
        if self.canary is not None and self.canary.final is None and relay is self.old:
            self._canary_verdict()  # it would see EOF otherwise: our own client, not theirs
        self._stop_bridge()
        stop_relay(relay.pid, self.s.stop_grace)
        if relay.started is not None:
            relay.started.stop()
        drain.retired_s = round(time.monotonic() - self.flipped_at, 3)
        return drain

    def _canary_verdict(self) -> None:
        assert self.canary is not None
        totals = summarize(self.canary.stop())
        self.report.add_checker("canary", figures_from_canary(totals))

    def _stop_bridge(self) -> None:
        if self.bridge is None:
            return
        try:
            self.bridge_stats = self.bridge.stop(self.s.bridge_drain)
        except BridgeError as exc:
            self.bridge_stats = {"error": str(exc)}
        self.bridge = None

    def _abandon(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        if self.new is not None and self.new.started is not None:
            self.new.started.stop()
        elif self.new is not None:  # started by the caller's `starter`
            stop_relay(self.new.pid, self.s.stop_grace)
        self.new = None


def bridge(layout: lay.Layout, old_pid: int, release: Release, *, legacy: bool,
           settings: BridgeSettings | None = None, service: Service | None = None,
           canary: Canary | None = None, log_dir: Path | None = None,
           old_bound: str | None = None) -> tuple[StrategyReport, Started | None]:
    """The whole strategy: cutover, drain the old relay (up to the deadline), retire it.
    Returns the report and the candidate now serving (None if the cutover failed)."""
    swap = BridgeSwap(layout, old_pid, release, legacy=legacy, settings=settings,
                      service=service, canary=canary, log_dir=log_dir, old_bound=old_bound)
    try:
        swap.cutover()
    except BridgeSwapError:
        return swap.report, None
    swap.retire_old()
    report = swap.finish()
    assert swap.new is not None
    return report, swap.new.started


def run_bridge(request: LegacySwap, old_pid: int, *, service: Service | None = None,
               canary: Canary | None = None) -> StrategyReport:
    """The entry point `swapctl.legacy.run` calls. `request.extra` may hold any
    `BridgeSettings` field (e.g. drain_deadline). Given the caller's `canary` (on the old
    relay), the strategy measures the pause with it and stops it before retiring the old
    relay; without it, a canary the caller runs (`request.canary_rate` > 0) is assumed on
    the old relay and not waited for, and sees EOF when the old relay is retired."""
    settings = BridgeSettings(ready_timeout=request.ready_timeout,
                              domain_byte=request.domain_byte, echo=request.echo,
                              **request.extra)
    foreign = 0
    if canary is None and request.canary_rate > 0:
        foreign = 1 + len(Canary(request.layout.public).consumers)
    swap = BridgeSwap(request.layout, old_pid, request.to.release, legacy=request.to.legacy,
                      settings=settings, service=service, canary=canary,
                      log_dir=request.state_dir / "logs", foreign_own=foreign)
    try:
        swap.cutover()
    except BridgeSwapError:
        return swap.report
    swap.retire_old()
    return swap.finish()  # the candidate's slot state was written when it started
