"""Conformance cases of the extensions (docs/handoff-protocol.md): `precopy` (section
10) and `adopt-resume` (section 11).

A relay that does not offer an extension passes its case with a note: swapctl gives it
the version-1 handoff, which the other cases check.
"""

from __future__ import annotations

import socket
import time

from swapctl.conformance.cases import (
    ADOPT_DEADLINE,
    RELEASE_DEADLINE,
    case,
    close_transfer,
    refused,
    still_serving,
)
from swapctl.conformance.rig import Rig, check
from swapctl.handoff.controller import forward_backlog, hand_over, pre_copy


@case("handoff", "Extension precopy: PRECOPY, clients opened and closed, then the freeze: "
                 "the delta names them, the partial frame completes, a slow client's owed "
                 "bytes arrive byte for byte through BACKLOG, every other client stays")
def precopy_delta(rig: Rig) -> str:
    old = rig.active("a")
    new = rig.ready("b")
    if not (old.link.precopy and new.link.precopy):
        return "extension not offered: swapctl uses the version-1 handoff"
    pub, slow, leaving = rig.peer(), rig.peer(), rig.peer()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rig.wait_connections(old, 3)
    msgs = [rig.msg(i) for i in range(1, 16_001)]
    pub.send(b"".join(msgs[:15_000]))
    pub.read(sum(len(m) for m in msgs[:15_000]), timeout=10)  # only `slow` lags
    def remaining() -> float:
        return RELEASE_DEADLINE

    base = pre_copy(old.link, new.link, remaining)
    leaving.close()
    joined = rig.peer()
    pub.send(msgs[15_000][:40])  # half a frame, read by the old relay before the freeze
    rig.wait_connections(old, 3)
    time.sleep(0.1)
    delta = hand_over(old.link, new.link, 0.0, remaining, lambda _: None,
                      precopy=int(base.meta["generation"]))
    new.link.resume(ADOPT_DEADLINE)
    backlogged = forward_backlog(old.link, new.link, ADOPT_DEADLINE)
    old.link.close_held(2.0)
    close_transfer(base)
    close_transfer(delta)
    check(len(delta.closed) == 1, f"delta closed ids {delta.closed} (expected the one that left)")
    check(sum(fd >= 0 for _, fd in delta.conns) == 1, "the client that joined after the "
          "pre-copy must travel with its fd in the delta")
    check(backlogged == 1, f"BACKLOG covered {backlogged} clients (expected the slow one)")
    pub.send(msgs[15_000][40:] + b"".join(msgs[15_001:]))
    slow.expect(b"".join(msgs), "the slow client's byte stream across the freeze", timeout=30)
    joined.expect(b"".join(msgs[15_000:]), "the client that joined between pre-copy and freeze")
    return f"{len(base.conns)} pre-copied, delta {len(delta.conns)} records"


@case("handoff", "Extension adopt-resume: an ADOPT that asks to resume starts the relay "
                 "reading at its end (resumed_ns in `adopted`, no RESUME); asking it of a "
                 "PREADOPT is refused")
def adopt_resume(rig: Rig) -> str:
    old = rig.active("a")
    new = rig.ready("b")
    if not new.link.adopt_resume:
        return "extension not offered: swapctl sends RESUME after ADOPT"
    refused(new, {"type": "preadopt", "resume": True, "part": 0, "parts": 1,
                  "table": "conn-v1", "connections": 0}, "a PREADOPT asking to resume")
    peers = [rig.peer() for _ in range(2)]
    rig.wait_connections(old, 2)
    first, second = rig.msg(1), rig.msg(2)
    peers[0].send(first)
    for peer in peers:
        peer.expect(first, "broadcast before the handoff")
    peers[1].send(second[:30])  # half a frame, read before the freeze
    time.sleep(0.1)
    before = time.monotonic_ns()
    transfer = hand_over(old.link, new.link, 10.0, lambda: RELEASE_DEADLINE, lambda _: None,
                         resume=True)
    after = time.monotonic_ns()
    old.link.close_held(2.0)
    close_transfer(transfer)
    resumed = transfer.meta.get("resumed_ns")
    check(isinstance(resumed, int) and before <= resumed <= after,
          f"adopted.resumed_ns {resumed} is not a CLOCK_MONOTONIC reading taken during the "
          f"ADOPT ({before}..{after})")
    peers[1].send(second[30:])
    for peer in peers:
        peer.expect(first + second, "the partial frame completed by the adopter, no RESUME sent")
    still_serving(rig)
    return f"adopt+resume {(after - before) / 1e6:.1f} ms"
