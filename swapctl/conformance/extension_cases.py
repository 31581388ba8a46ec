"""Conformance cases of the extensions (docs/handoff-protocol.md): `precopy` (section
10), `adopt-resume` (section 11) and `defer-all` (section 13).

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
from swapctl.conformance.rig import Peer, Relay, Rig, check, whole_frames
from swapctl.handoff.controller import forward_backlog, hand_over, pre_copy
from swapctl.handoff.manifest import DEFERRED, HEAD_STARTED, Transfer


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


def _frozen_with_owed(rig: Rig, old: Relay, new: Relay, *, count: int = 15_000, size: int = 0
                      ) -> tuple[dict[str, Peer], list[bytes], Transfer, Transfer]:
    """A publisher, a client that keeps up and one that cannot (SO_RCVBUF 4 KiB), `count`
    messages in (each `size` bytes more than a trade), then PRECOPY and the freeze into
    `new`, resumed: the slow client is owed bytes. Returns the peers, count + 1 messages
    (the last not sent yet) and both transfers (the orchestrator's copies)."""
    peers = {"pub": rig.peer(), "fast": rig.peer(), "slow": rig.peer()}
    peers["slow"].sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rig.wait_connections(old, 3)
    msgs = [rig.msg(i, size=size) for i in range(1, count + 2)]
    sent = b"".join(msgs[:count])
    for m in msgs[:count]:  # (one write each: each its own unit on the relay)
        peers["pub"].send(m)
    for name in ("pub", "fast"):  # only `slow` lags
        peers[name].expect(sent, f"the {name} client's copy before the freeze", timeout=10)

    def remaining() -> float:
        return RELEASE_DEADLINE

    base = pre_copy(old.link, new.link, remaining)
    delta = hand_over(old.link, new.link, 0.0, remaining, lambda _: None,
                      precopy=int(base.meta["generation"]))
    new.link.resume(ADOPT_DEADLINE)
    return peers, msgs, base, delta


@case("handoff", "Extension defer-all: the freeze carries no tail; a client owed more than "
                 "a fan-out's end is a DEFERRED record, RELEASE is refused while it waits, "
                 "and every client gets its owed bytes first, byte for byte, through one "
                 "or two BACKLOGs (hold: staged, more)")
def defer_all(rig: Rig) -> str:
    old = rig.active("a")
    new = rig.ready("b")
    if not (old.link.defer_all and new.link.defer_all):
        return "extension not offered: the freeze describes what each client is owed"
    peers, msgs, base, delta = _frozen_with_owed(rig, old, new)
    try:
        check(not delta.meta.get("tail"), "a defer-all freeze carried a tail section")
        check(delta.meta.get("hold") in (None, "staged"),
              f"the delta's part 0 says hold {delta.meta.get('hold')!r} (null or \"staged\")")
        check(any(flags & DEFERRED for flags, _ in delta.owed.values()),
              "the slow client, owed more than a fan-out's end, has no DEFERRED record")
        peers["pub"].send(msgs[-1])  # read by the resumed relay
        refused(new, {"type": "release", "flush_ms": 10.0},
                "RELEASE while a client waits for its BACKLOG")
        backlogged = forward_backlog(old.link, new.link, ADOPT_DEADLINE)
    finally:
        old.link.close_held(2.0)
        close_transfer(base)
        close_transfer(delta)
    check(backlogged >= 1, f"BACKLOG covered {backlogged} clients (at least the slow one)")
    every = b"".join(msgs)
    for name in ("pub", "fast"):
        peers[name].expect(every, f"the {name} client, across the freeze")
    peers["slow"].expect(every, "the slow client's byte stream across the freeze", timeout=30)
    still_serving(rig)
    return (f"{len(base.conns)} pre-copied, delta {len(delta.conns)} records, hold "
            f"{delta.meta.get('hold')}, BACKLOG for {backlogged}")


@case("failures", "Extension defer-all, the orchestrator lost before the BACKLOG: the "
                  "adopter serves its clients again without the lost bytes; a client whose "
                  "stream stopped mid-frame is cut, and no client sees a torn frame")
def defer_all_lost(rig: Rig) -> str:
    old = rig.active("a")
    new = rig.ready("b")
    if not (old.link.defer_all and new.link.defer_all):
        return "extension not offered: the freeze describes what each client is owed"
    # frames of 400 KB, more than a socket's send buffer (about 208 KiB): the slow
    # client's stream stops mid-frame
    peers, msgs, base, delta = _frozen_with_owed(rig, old, new, count=4, size=400_000)
    close_transfer(base)
    close_transfer(delta)
    new.link.close()  # the orchestrator is gone: no OWED, no BACKLOG
    peers["pub"].send(msgs[-1])
    every = b"".join(msgs)
    for name in ("pub", "fast"):
        peers[name].expect(every, f"the {name} client, served on without the lost bytes")
    # the old relay lets go too (as once a swap ends): a cut client then sees its EOF
    old.link.close_held(2.0)
    slow = peers["slow"]
    deadline = time.monotonic() + 5
    while not slow.eof and time.monotonic() < deadline:
        slow.quiet(0.2)
    frames, crc, garbage = whole_frames(bytes(slow.raw))
    check((crc, garbage) == (0, 0), f"the slow client received {crc} frames with a bad "
          f"checksum and {garbage} garbage bytes: a torn frame")
    started = sum(1 for flags, _ in delta.owed.values() if flags & HEAD_STARTED)
    check(slow.eof or not started, "the slow client's stream stopped mid-frame and it was "
          "not cut (the delta flagged it HEAD_STARTED)")
    new.link = rig.control.accept("b", 5.0, pid=new.pid)  # (it says HELLO again)
    return (f"slow client {'cut' if slow.eof else 'served on'} after {frames} whole frames "
            f"({started} flagged mid-frame in the delta)")
