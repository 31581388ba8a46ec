"""The pre-copy freeze reads only the connections the relay keeps as changed (those
carrying owed bytes or a partial frame, those created since the pre-copy), not every
connection. This checks that bookkeeping against a full scan of the relay's table, on a
real relay over real sockets driven through random traffic, churn and slow consumers:
whatever the freeze leaves out would be a client lost or a frame torn at a swap."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from swapctl.handoff.manifest import DEFERRED, Transfer
from swapctl.relay.config import RelayConfig
from swapctl.relay.connection import Connection
from swapctl.relay.server import Relay
from tests.clients import trade


def _pump(relay: Relay, rounds: int = 20) -> None:
    """Run the relay's event loop until it has nothing left to do (bounded)."""
    for _ in range(rounds):
        events = relay.epoll.poll(0.005)
        if not events:
            return
        for fd, mask in events:
            relay._dispatch(fd, mask)
            if relay._closing and not relay.paused:
                relay._finish_closing()


def _full_scan(relay: Relay, precopied: set[int]) -> dict[str, object]:
    """What the freeze must describe, found the slow way: every connection looked at."""
    records = {}
    for c in relay.conns.values():
        pending = c.carried_in + (c.framer.pending if c.framer and c.framer.buffered else b"")
        new = c.id not in precopied
        if pending or c.out or new:
            records[c.id] = (pending, new, bool(c.out))
    live = {c.id for c in relay.conns.values()}
    return {"records": records, "closed": sorted(precopied - live)}


def _described(delta: Transfer) -> dict[str, object]:
    return {"records": {s.id: (s.pending_in, fd >= 0, bool(delta.owed.get(s.id, (0, 0))[0]
                                                          & DEFERRED))
                        for s, fd in delta.conns},
            "closed": sorted(delta.closed)}


def test_the_freeze_describes_exactly_what_a_full_scan_finds(tmp_path: Path) -> None:
    rng = random.Random(20261204)
    relay = Relay(RelayConfig(tmp_path / "relay.sock"))
    relay.listen()
    host = relay.handoff
    peers: dict[int, socket.socket] = {}  # connection id -> the client's end
    half: dict[int, bytes] = {}  # a frame a client sent only the start of

    def connect(slow: bool = False) -> None:
        ours, theirs = socket.socketpair()
        if slow:  # a consumer that never reads, with little room: the relay queues for it
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setblocking(False)
        peers[relay.add_connection(ours).id] = theirs

    def drain_readers() -> None:
        for conn_id, peer in peers.items():
            if conn_id % 3:  # every third client never reads
                try:
                    while peer.recv(1 << 16):
                        pass
                except (BlockingIOError, ConnectionError):
                    pass

    def step(seq: int) -> None:
        conn_id = rng.choice(sorted(peers))
        roll = rng.random()
        msg = trade(seq)
        if roll < 0.08 and len(peers) > 10:
            peers.pop(conn_id).close()
            half.pop(conn_id, None)
        elif roll < 0.15:
            connect(slow=rng.random() < 0.3)
        elif roll < 0.35 and conn_id not in half:
            cut = rng.randrange(1, len(msg))
            peers[conn_id].send(msg[:cut])
            half[conn_id] = msg[cut:]
        elif conn_id in half:
            peers[conn_id].send(half.pop(conn_id) + msg)
        else:
            peers[conn_id].send(msg * rng.randint(1, 40))
        if rng.random() < 0.5:
            drain_readers()
        _pump(relay)

    for _ in range(60):
        connect(slow=rng.random() < 0.2)
    _pump(relay)
    seq = 1
    owed_seen = partial_seen = new_seen = closed_seen = 0
    for _ in range(12):  # pre-copy, traffic and churn, freeze, compare, take it back
        for _ in range(rng.randint(5, 40)):
            step(seq)
            seq += 1
        base = host.handoff_precopy()
        precopied = {s.id for s, _ in base.conns}
        # (base.fds and delta.fds are the relay's own descriptors, which the control
        # channel would send as copies: nothing to close here)
        for _ in range(rng.randint(0, 25)):
            step(seq)
            seq += 1
        expected = _full_scan(relay, precopied)
        delta = host.handoff_freeze(int(base.meta["generation"]))
        assert _described(delta) == expected
        records = expected["records"]
        assert isinstance(records, dict)
        owed_seen += sum(owed for _, _, owed in records.values())
        partial_seen += sum(bool(p) for p, _, _ in records.values())
        new_seen += sum(new for _, new, _ in records.values())
        closed_seen += len(expected["closed"])  # type: ignore[arg-type]
        host.handoff_resume()  # (the old relay taken back, as in a rollback)
        _pump(relay)
    # the comparison covered each kind of change, not only empty deltas
    assert owed_seen and partial_seen and new_seen and closed_seen, (
        owed_seen, partial_seen, new_seen, closed_seen)
    # and the table of connections that may carry state stays a small superset
    carrying: dict[int, Connection] = relay.carrying
    assert set(carrying) <= {c.id for c in relay.conns.values()}
    for peer in peers.values():
        peer.close()
    relay.close()
