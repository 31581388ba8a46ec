"""Conformance cases of the handoff itself (release, adopt, resume, close, probe) and of
its failures (refused requests, a lost orchestrator, deadlines). Two relays in a case
are two processes of the command under test: a relay hands over to itself, as in
`swapctl swap --from CMD --to CMD`.
"""

from __future__ import annotations

import math
import socket
import time

from swapctl.conformance.cases import (
    ADOPT_DEADLINE,
    PROBE_DEADLINE,
    RELEASE_DEADLINE,
    case,
    close_transfer,
    refused,
    still_serving,
)
from swapctl.conformance.rig import CaseFailed, Peer, Relay, Rig, check, message
from swapctl.handoff.manifest import Assembler, ConnState, Transfer
from swapctl.handoff.messages import MAX_FDS, HandoffError

META = ("stopped_reading_ns", "released_ns", "flushed_bytes", "unsent_bytes", "pending_bytes")


def _release(relay: Relay, flush_ms: float = 10.0) -> tuple[Transfer, list[int], float]:
    """RELEASE by hand: the transfer, the fds of each part, and the seconds it took."""
    start = time.monotonic()
    rid = relay.link._send({"type": "release", "flush_ms": flush_ms})
    assembler = Assembler("manifest")
    per_part: list[int] = []
    while not assembler.done:
        env = relay.link._reply(rid, RELEASE_DEADLINE)
        per_part.append(len(env.fds))
        assembler.feed(env)
    return assembler.transfer, per_part, time.monotonic() - start


def _with_partial(rig: Rig, relay: Relay) -> tuple[list[Peer], bytes]:
    """Three clients that have exchanged one frame; client 1 then sent half a frame."""
    peers = [rig.peer() for _ in range(3)]
    rig.wait_connections(relay, 3)
    first = rig.msg(1)
    peers[0].send(first)
    for peer in peers:
        peer.expect(first, "broadcast before the handoff")
    peers[1].send(rig.msg(2)[:50])
    time.sleep(0.1)
    return peers, first


@case("handoff", "RELEASE: manifest with the listener, conn-v1 records, the partial frame as "
                 "pending_in, its metadata; then nothing is read or accepted")
def release_manifest(rig: Rig) -> str:
    relay = rig.active("a")
    peers, _ = _with_partial(rig, relay)
    transfer, per_part, took = _release(relay)
    try:
        check(took < RELEASE_DEADLINE, f"RELEASE took {took:.2f} s (deadline {RELEASE_DEADLINE} s)")
        check(transfer.listener is not None, "manifest part 0 carries no listener")
        check(len(transfer.conns) == 3, f"manifest has {len(transfer.conns)} connections, 3 open")
        check(len({s.id for s, _ in transfer.conns}) == 3, "connection ids are not unique")
        pending = sorted((s.pending_in for s, _ in transfer.conns), key=len)
        check(pending == [b"", b"", rig.msg(2)[:50]],
              f"pending_in lengths {[len(p) for p in pending]}, expected [0, 0, 50] with the "
              "exact bytes of the partial frame")
        missing = [k for k in META if not isinstance(transfer.meta.get(k), int)]
        check(not missing, f"manifest part 0 lacks integer {missing}")
        check(transfer.meta["stopped_reading_ns"] <= transfer.meta["released_ns"],
              "stopped_reading_ns is after released_ns")
        check(transfer.meta["pending_bytes"] == 50, "pending_bytes is not 50")
        peers[0].send(rig.msg(3))
        check(peers[2].quiet(0.3), "the released relay still forwards")
        late = rig.peer()
        late.send(rig.msg(4))
        check(late.quiet(0.2), "the released relay still accepts and serves new clients")
        state = relay.link.stats(2.0).get("state")
        check(state not in ("active", "standby"), f"stats.state {state!r} while released")
    finally:
        close_transfer(transfer)
    return f"release {took * 1000:.1f} ms, {len(per_part)} part(s)"


@case("handoff", "RELEASE then RESUME (the candidate failed): the old relay serves on with "
                 "nothing lost, the partial frame completed, waiting clients accepted")
def release_then_resume(rig: Rig) -> str:
    relay = rig.active("a")
    peers, first = _with_partial(rig, relay)
    transfer, _, _ = _release(relay)
    close_transfer(transfer)
    second = rig.msg(2)
    peers[1].send(second[50:])
    late = rig.peer()
    relay.link.resume(ADOPT_DEADLINE)
    for peer in peers:
        peer.expect(first + second, "the frame completed across RELEASE and RESUME")
    third = rig.msg(3)
    late.send(third)
    for peer in peers:
        peer.expect(first + second + third, "frames after RESUME")
    got = late.read(len(second + third))
    check(got in (third, second + third), "a client that connected while released: expected "
          f"its own frame (after the completed one at most), got {len(got)} bytes")
    return "ok"


@case("handoff", "RELEASE to ADOPT in a second relay, RESUME, CLOSE: every client stays, the "
                 "partial frame is completed there, the old relay closes its copies")
def hand_over(rig: Rig) -> str:
    old = rig.active("a")
    peers, first = _with_partial(rig, old)
    new = rig.ready("b")
    fds_before = old.fd_count()
    transfer, _, took_release = _release(old)
    start = time.monotonic()
    reply = new.link.adopt(transfer, ADOPT_DEADLINE)
    new.link.resume(ADOPT_DEADLINE)
    took_adopt = time.monotonic() - start
    old.link.close_held(2.0)
    close_transfer(transfer)
    check(reply.get("connections") == 3 and reply.get("listener") is True, f"adopted {reply}")
    check(took_adopt < ADOPT_DEADLINE, f"ADOPT + RESUME took {took_adopt:.2f} s")
    second = rig.msg(2)
    peers[1].send(second[50:])
    for peer in peers:
        peer.expect(first + second, "the partial frame completed through the new relay")
    late = rig.peer()
    late.send(rig.msg(5))
    late.expect(rig.msg(5), "a new client reaches the new relay")
    stats = old.link.stats(2.0)
    check(stats.get("state") == "standby" and stats.get("connections_open") == 0,
          f"old relay after CLOSE: state {stats.get('state')!r}, connections_open "
          f"{stats.get('connections_open')} (expected standby, 0)")
    deadline = time.monotonic() + 2.0
    while old.fd_count() > fds_before - 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    check(old.fd_count() <= fds_before - 4, f"the old relay still holds {old.fd_count()} fds, "
          f"{fds_before} before: CLOSE must close its copies of the listener and 3 clients")
    return f"release {took_release * 1000:.1f} ms, adopt+resume {took_adopt * 1000:.1f} ms"


@case("handoff", "Bytes owed to a slow client travel as unsent_out and are written first: its "
                 "stream continues byte for byte")
def unsent_carried(rig: Rig) -> str:
    old = rig.active("a")
    pub, slow = rig.peer(), rig.peer()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rig.wait_connections(old, 2)
    msgs = [rig.msg(i) for i in range(1, 20_001)]
    sent = 0
    for start in range(0, 19_000, 1000):
        batch = b"".join(msgs[start : start + 1000])
        pub.send(batch)
        sent += len(batch)
        pub.read(sent, timeout=10)  # the publisher reads its echo: only `slow` lags
    check(len(pub.raw) == sent, "the publisher's echo did not arrive")
    new = rig.ready("b")
    transfer, _, _ = _release(old, flush_ms=0)
    owed = sum(len(state.unsent_out) for state, _ in transfer.conns)
    new.link.adopt(transfer, ADOPT_DEADLINE)
    new.link.resume(ADOPT_DEADLINE)
    old.link.close_held(2.0)
    close_transfer(transfer)
    check(owed > 0, "no unsent_out for a client that had read nothing of 1.4 MB")
    pub.send(b"".join(msgs[19_000:]))
    slow.expect(b"".join(msgs), "the slow client's byte stream across the handoff", timeout=30)
    return f"{owed} bytes carried"


@case("handoff", "More clients than one message carries: parts of at most 253 fds, all "
                 "adopted and resumed within the deadlines")
def many_connections(rig: Rig) -> str:
    old = rig.active("a")
    count = 300
    peers = [rig.peer() for _ in range(count)]
    rig.wait_connections(old, count, timeout=20)
    new = rig.ready("b")
    transfer, per_part, took = _release(old)
    start = time.monotonic()
    new.link.adopt(transfer, ADOPT_DEADLINE)
    new.link.resume(ADOPT_DEADLINE)
    took_adopt = time.monotonic() - start
    old.link.close_held(2.0)
    close_transfer(transfer)
    expected_parts = math.ceil((count + 1) / MAX_FDS)
    check(len(per_part) == expected_parts and max(per_part) <= MAX_FDS,
          f"manifest parts carried {per_part} fds: expected {expected_parts} parts of at most "
          f"{MAX_FDS}")
    check(len(transfer.conns) == count, f"{len(transfer.conns)} connections released of {count}")
    check(took < RELEASE_DEADLINE and took_adopt < ADOPT_DEADLINE,
          f"release {took:.2f} s, adopt+resume {took_adopt:.2f} s (deadlines 2 s)")
    msg = rig.msg(7)
    peers[-1].send(msg)
    for peer in peers:
        peer.expect(msg, "every client after the handoff")
    return f"{per_part} fds per part"


@case("handoff", "ADOPT with carried state: nothing read or written before RESUME; then "
                 "unsent_out first (from mid-frame), pending_in completed by the next bytes")
def adopt_carried_state(rig: Rig) -> str:
    relay = rig.ready("b")
    pairs = [socket.socketpair(), socket.socketpair()]
    owed_x = rig.msg(4)[30:]
    owed_y = rig.msg(4) + rig.msg(6)
    pending = rig.msg(5)[:40]
    conns = [(ConnState(11, pending, owed_x), pairs[0][1].fileno()),
             (ConnState(12, b"", owed_y), pairs[1][1].fileno())]
    relay.link.adopt(Transfer(rig.listener.fileno(), conns), ADOPT_DEADLINE)
    for _, theirs in pairs:
        theirs.close()
    x, y = Peer(pairs[0][0]), Peer(pairs[1][0])
    rig.peers += [x, y]
    x.send(rig.msg(5)[40:])
    check(x.quiet(0.3) and y.quiet(0.1), "the adopting relay wrote before RESUME")
    relay.link.resume(ADOPT_DEADLINE)
    x.expect(owed_x + rig.msg(5), "unsent_out first, then the echo of the completed frame")
    y.expect(owed_y + rig.msg(5), "unsent_out first, then the broadcast of the completed frame")
    late = rig.peer()
    late.send(rig.msg(7))
    x.expect(owed_x + rig.msg(5) + rig.msg(7), "a new client's frame after the carried bytes")
    return "ok"


@case("handoff", "PROBE in standby: serves the 2 probe clients at once (split, foreign, whole "
                 "frames), then back to standby when they close")
def probe(rig: Rig) -> str:
    relay = rig.ready("b")
    start = time.monotonic()
    pairs = [socket.socketpair(), socket.socketpair()]
    reply = relay.link.request({"type": "probe"}, PROBE_DEADLINE,
                               fds=[pairs[0][1].fileno(), pairs[1][1].fileno()])
    for _, theirs in pairs:
        theirs.close()
    check(reply.type == "probing" and reply.msg.get("fds") == 2, f"probe reply {reply.msg}")
    left, right = Peer(pairs[0][0]), Peer(pairs[1][0])
    first, second = rig.msg(1), rig.msg(2)
    left.send(first[:20])
    left.send(first[20:] + message(99, (rig.domain + 1) % 256) + second)
    right.expect(first + second, "broadcast to the other probe client")
    left.expect(first + second, "echo to the probe client")
    left.close()
    right.close()
    deadline = time.monotonic() + PROBE_DEADLINE
    while relay.link.stats(2.0).get("state") != "standby":
        if time.monotonic() > deadline:
            raise CaseFailed("the relay did not return to standby after the probe clients closed")
        time.sleep(0.01)
    return f"probe {(time.monotonic() - start) * 1000:.0f} ms"


# ----- failures -------------------------------------------------------------------------

@case("failures", "ADOPT while active is refused with error, its fds closed; serving goes on")
def adopt_refused(rig: Rig) -> str:
    relay = rig.active("a")
    ours, theirs = socket.socketpair()
    try:
        conns = [(ConnState(99), theirs.fileno())]
        try:
            relay.link.adopt(Transfer(None, conns), 2.0)
            raise CaseFailed("ADOPT while active was accepted")
        except HandoffError as exc:
            check("refused" in str(exc), f"expected an error reply, got: {exc}")
        theirs.close()
        ours.settimeout(2.0)
        check(ours.recv(10) == b"", "the refused connection's fd was not closed by the relay")
    finally:
        ours.close()
        theirs.close()
    still_serving(rig)
    return "ok"


@case("failures", "PROBE while active, RESUME and CLOSE without RELEASE, an unknown type: "
                  "each answered with error; serving goes on")
def refused_requests(rig: Rig) -> str:
    relay = rig.active("a")
    ours, theirs = socket.socketpair()
    try:
        refused(relay, {"type": "probe"}, "PROBE while active", fds=[theirs.fileno()])
    finally:
        ours.close()
        theirs.close()
    refused(relay, {"type": "resume"}, "RESUME without RELEASE")
    refused(relay, {"type": "close"}, "CLOSE without RELEASE")
    refused(relay, {"type": "no-such-request"}, "an unknown request type")
    check(relay.link.stats(2.0).get("state") == "active", "no longer active")
    still_serving(rig)
    return "4 refusals"


@case("failures", "ADOPT starting at part 1 is refused; LISTENER in standby is refused")
def adopt_out_of_order(rig: Rig) -> str:
    relay = rig.ready("a")
    refused(relay, {"type": "adopt", "part": 1, "parts": 2, "table": "conn-v1",
                     "connections": 0, "listener": None}, "ADOPT part 1 without part 0")
    refused(relay, {"type": "listener"}, "LISTENER in standby")
    check(relay.link.stats(2.0).get("state") == "standby", "no longer in standby")
    return "ok"


@case("failures", "LISTENER while active: one fd, a copy of the listening public socket")
def listener_copy(rig: Rig) -> str:
    relay = rig.active("a")
    fd = relay.link.listener(2.0)
    sock = socket.socket(fileno=fd)
    try:
        check(sock.getsockname() == str(rig.public), f"the copy is bound to {sock.getsockname()}")
        check(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1,
              "the copy is not a listening socket")
    finally:
        sock.close()
    still_serving(rig)
    return "ok"


@case("failures", "The orchestrator goes away: the relay keeps serving and says HELLO again "
                  "(state active, its connections) within seconds")
def control_lost(rig: Rig) -> str:
    relay = rig.active("a")
    a, b = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    relay.link.close()
    start = time.monotonic()
    msg = rig.msg(1)
    a.send(msg)
    b.expect(msg, "broadcast with the orchestrator gone")
    again = rig.control.accept("a", 5.0, pid=relay.pid)
    took = time.monotonic() - start
    check(again.hello.get("state") == "active" and again.hello.get("connections") == 2,
          f"HELLO after the reconnect says state {again.hello.get('state')!r}, connections "
          f"{again.hello.get('connections')} (expected active, 2)")
    relay.link = again
    check(again.stats(2.0).get("connections_open") == 2, "stats after the reconnect")
    return f"HELLO again after {took * 1000:.0f} ms"


@case("failures", "Released, then the orchestrator goes away: the relay stays released (reads "
                  "nothing) until RESUME on the new connection; nothing is lost")
def released_without_orchestrator(rig: Rig) -> str:
    relay = rig.active("a")
    a, b = rig.peer(), rig.peer()
    rig.wait_connections(relay, 2)
    transfer, _, _ = _release(relay)
    close_transfer(transfer)
    relay.link.close()
    msg = rig.msg(1)
    a.send(msg)
    check(b.quiet(0.8), "a released relay forwarded after losing the orchestrator")
    again = rig.control.accept("a", 5.0, pid=relay.pid)
    relay.link = again
    check(again.hello.get("state") not in ("active", "standby"),
          f"HELLO after the reconnect says {again.hello.get('state')!r} while released")
    again.resume(ADOPT_DEADLINE)
    b.expect(msg, "the frame sent while released, after RESUME")
    return "ok"


@case("failures", "RELEASE answers within its 2 s deadline with a client that never reads and "
                  "megabytes queued for it (flush_ms bounds the flush)")
def release_deadline(rig: Rig) -> str:
    relay = rig.active("a")
    pub, stuck = rig.peer(), rig.peer()
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rig.wait_connections(relay, 2)
    batch = b"".join(rig.msg(i) for i in range(1, 2001))
    sent = 0
    for _ in range(20):
        pub.send(batch)
        sent += len(batch)
        pub.read(sent, timeout=10)
    transfer, _, took = _release(relay, flush_ms=300)
    close_transfer(transfer)
    owed = sum(len(state.unsent_out) for state, _ in transfer.conns)
    check(took < RELEASE_DEADLINE, f"RELEASE took {took:.2f} s with a stuck client")
    relay.link.resume(ADOPT_DEADLINE)
    return f"release {took * 1000:.0f} ms with {owed} bytes owed"

