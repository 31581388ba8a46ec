"""Strategy `bridge`: a path flip to a candidate, a bridge between the two relays, a drain.

How it works (any relay to any relay; nobody is disconnected while the clients leave on
their own). The phases are `BridgeActions` in legacy/actions.py, run by the one swap
engine (swap/executor.py); this module holds its settings, the bridge check and the
drain record:
1. starting, probing: the candidate starts in a free slot beside the old relay (a
   legacy build in its own mount namespace) and must pass a probe (a message through
   it byte for byte, echo).
2. bridging: a bridge client (`bridge_client`) connects to both relays and forwards
   every frame both ways; before any client can reach the candidate, a frame is sent
   through the bridge each way and must arrive exactly once on the far side
   (`check_bridge`).
3. flipping: only then is the public link flipped (atomic rename): new connections
   reach the candidate, existing ones stay on the old relay, untouched, and publishers
   on either relay reach consumers on both.
4. draining: the old relay's accepted connections are counted (/proc/PID/fd joined
   with the kernel's Unix socket table, minus the bridge and swapctl's own canary)
   every `drain_interval` and recorded over time (`Drain`). The drain ends when only
   the bridge is left, or at the drain deadline (the soak window): the clients still
   on the old relay are then cut when it is retired, and counted.
5. retiring: the bridge drains (whatever it holds has passed through both relays) and
   stops, then the old relay is stopped; verifying: who of the cut came back.
Rollback (the operator, while draining): the link is flipped back, the bridge keeps
running, and the candidate is drained and retired the same way.

Client-side pause: connected clients are never touched, so there is none to make; a
canary connected before the swap measures it (largest gap in its stream).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError
from swapctl.probes.ident import make_sequence, make_tag
from swapctl.protocol import encode_message

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
    """The bridge check failed: a frame did not cross the bridge intact."""


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    ready_timeout: float = 10.0
    probe_timeout: float = 2.0
    # the drain deadline, seconds: the swap's soak window (run_strategy, swapctld); a
    # rollback drains the candidate for at most min(this, 5 s)
    drain_deadline: float | None = 60.0
    drain_interval: float = 0.1  # seconds between connection counts
    # a client that connected just before the flip may still wait in the relay's accept
    # backlog, where no count sees it: "no client left" must hold this long after the flip
    accept_settle: float = 0.25
    stop_grace: float = 2.0  # SIGTERM, then SIGKILL after this
    bridge_drain: float = 2.0  # seconds the bridge may take to pass on what it holds
    domain_byte: int = 1
    echo: bool = True  # both relays echo (every real one does but sinks)


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
