"""The conformance cases: each one drives a fresh rig and raises `CaseFailed` when the
relay under test breaks docs/handoff-protocol.md or the frame semantics (whole frames,
echo to the sender, broadcast in one order). A case returns a short detail (a measured
duration, a count) for the report.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from swapctl.conformance.rig import CaseFailed, Relay, Rig, check, message
from swapctl.handoff.manifest import Transfer
from swapctl.handoff.messages import HandoffError

RELEASE_DEADLINE = 2.0  # the protocol's deadlines (section 7)
ADOPT_DEADLINE = 2.0
PROBE_DEADLINE = 2.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    group: str
    summary: str
    run: Callable[[Rig], str]


CASES: list[Case] = []


def case(group: str, summary: str) -> Callable[[Callable[[Rig], str]], Callable[[Rig], str]]:
    def register(func: Callable[[Rig], str]) -> Callable[[Rig], str]:
        CASES.append(Case(func.__name__.replace("_", "-"), group, summary, func))
        return func
    return register


def refused(relay: Relay, request: dict[str, object], what: str,
             fds: list[int] | None = None) -> None:
    try:
        relay.link.request(request, 2.0, fds=fds)
    except HandoffError as exc:
        check("refused" in str(exc), f"{what}: expected an error reply, got: {exc}")
        return
    raise CaseFailed(f"{what}: the relay accepted it (the protocol says: answer with error)")


def still_serving(rig: Rig) -> None:
    peer = rig.peer()
    msg = rig.msg(900)
    peer.send(msg)
    peer.expect(msg, "the relay must keep serving after refusing a request")


def close_transfer(transfer: Transfer) -> None:
    for fd in transfer.fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def timed(func: Callable[[], object]) -> float:
    start = time.monotonic()
    func()
    return time.monotonic() - start


# ----- start-up -------------------------------------------------------------------------

@case("start-up", "HELLO within 10 s: versions [1], its own pid, token, release, "
                  "state standby, 0 connections")
def hello(rig: Rig) -> str:
    took = time.monotonic()
    relay = rig.start("a")
    took = time.monotonic() - took
    h = relay.link.hello
    check(1 in h.get("versions", []), f"hello.versions {h.get('versions')} lacks 1")
    check(h.get("pid") == relay.pid,
          f"hello.pid {h.get('pid')}, but the process started is {relay.pid} (exec the relay, "
          "do not wrap it in a shell)")
    check(h.get("token") == "a", f"hello.token {h.get('token')!r}, SWAPCTL_TOKEN was 'a'")
    check(h.get("release") == "conformance-a", f"hello.release {h.get('release')!r}, "
          "SWAPCTL_RELEASE was 'conformance-a'")
    check(h.get("state") == "standby", f"hello.state {h.get('state')!r}, expected 'standby'")
    check(h.get("connections") == 0, f"hello.connections {h.get('connections')!r}, expected 0")
    return f"HELLO after {took * 1000:.0f} ms"


@case("start-up", "READY within 10 s of WELCOME; STATS carries state and connections_open")
def ready(rig: Rig) -> str:
    relay = rig.start("a")
    took = timed(lambda: relay.link.wait_ready(10.0))
    stats = relay.link.stats(2.0)
    check(stats.get("state") == "standby", f"stats.state {stats.get('state')!r} in standby")
    check(stats.get("connections_open") == 0,
          f"stats.connections_open {stats.get('connections_open')!r} in standby")
    return f"READY after {took * 1000:.0f} ms"


@case("handoff", "ADOPT of the listener alone then RESUME: it serves; resumed_ns is a "
                 "CLOCK_MONOTONIC reading")
def adopt_listener(rig: Rig) -> str:
    relay = rig.ready("a")
    before = time.monotonic_ns()
    reply = relay.link.adopt(Transfer(rig.listener.fileno(), []), ADOPT_DEADLINE)
    check(reply.get("type") == "adopted" and reply.get("listener") is True
          and reply.get("connections") == 0, f"adopt reply {reply}")
    peer = rig.peer()
    msg = rig.msg(1)
    peer.send(msg)
    check(peer.quiet(0.3), "served a client before RESUME (an adopting relay reads nothing)")
    resumed = relay.link.resume(ADOPT_DEADLINE)
    after = time.monotonic_ns()
    check(before <= resumed <= after, f"resumed_ns {resumed} is not a CLOCK_MONOTONIC reading "
          f"taken during the request ({before}..{after})")
    peer.expect(msg, "echo through the adopted listener after RESUME")
    state = relay.link.stats(2.0).get("state")
    check(state == "active", f"stats.state {state!r} once serving, expected 'active'")
    return "ok"


# ----- frames ---------------------------------------------------------------------------

@case("frames", "Echo: a client receives its own frames")
def echo(rig: Rig) -> str:
    rig.active()
    peer = rig.peer()
    msgs = rig.msg(1) + rig.msg(2)
    peer.send(msgs)
    peer.expect(msgs, "echo to the sender")
    return "ok"


@case("frames", "Broadcast: every client receives every frame, all in one order")
def broadcast(rig: Rig) -> str:
    relay = rig.active()
    peers = [rig.peer() for _ in range(3)]
    rig.wait_connections(relay, 3)
    sent = [rig.msg(i) for i in range(1, 61)]
    for i, msg in enumerate(sent):
        peers[i % 2].send(msg)
    total = sum(map(len, sent))
    streams = [p.read(total) for p in peers]
    check(all(len(s) == total for s in streams),
          f"received {[len(s) for s in streams]} bytes, {total} sent")
    check(streams[0] == streams[1] == streams[2], "clients received the frames in different "
          "orders (one global order is required)")
    for sender in (0, 1):
        mine = [m for i, m in enumerate(sent) if i % 2 == sender]
        positions = [streams[0].find(m) for m in mine]
        check(all(p >= 0 for p in positions) and positions == sorted(positions),
              f"client {sender}'s frames are missing or out of order")
    return "60 frames x 3 clients"


@case("frames", "A frame written one byte at a time is forwarded whole, never in parts")
def split_frame(rig: Rig) -> str:
    relay = rig.active()
    writer, reader = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    msg = rig.msg(7)
    for i in range(len(msg) - 1):
        writer.send(msg[i : i + 1])
        time.sleep(0.001)
    check(reader.quiet(0.2), "bytes of an incomplete frame were forwarded")
    writer.send(msg[-1:])
    reader.expect(msg, "the frame once whole")
    writer.expect(msg, "echo of the frame once whole")
    return f"{len(msg)} writes"


@case("frames", "Frames coalesced in one write all arrive, in order")
def coalesced(rig: Rig) -> str:
    relay = rig.active()
    writer, reader = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    msgs = b"".join(rig.msg(i) for i in range(1, 201))
    writer.send(msgs)
    reader.expect(msgs, "200 frames from one write")
    return "200 frames"


@case("frames", "A frame larger than a read buffer (200 KB) arrives whole")
def large_frame(rig: Rig) -> str:
    relay = rig.active()
    writer, reader = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    msg = rig.msg(3, size=200_000)
    writer.send(msg)
    reader.expect(msg, "the large frame", timeout=10)
    return f"{len(msg)} bytes"


@case("frames", "Bytes that are not a frame are dropped; the stream stays framed")
def garbage(rig: Rig) -> str:
    relay = rig.active()
    writer, reader = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    first, second = rig.msg(1), rig.msg(2)
    writer.send(b"not a frame at all" + first + bytes(40) + second)
    reader.expect(first + second, "only the two frames")
    check(reader.quiet(0.2), "garbage was forwarded")
    return "ok"


@case("frames", "A frame of another relay domain is not forwarded")
def foreign_domain(rig: Rig) -> str:
    relay = rig.active()
    writer, reader = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    foreign = message(1, (rig.domain + 1) % 256)
    ours = rig.msg(2)
    writer.send(foreign + ours)
    reader.expect(ours, "only the frame of the relay's domain")
    check(reader.quiet(0.2), "the foreign frame was forwarded")
    return f"domain byte {rig.domain}"
