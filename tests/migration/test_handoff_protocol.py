"""The handoff protocol between real relay processes, driven step by step."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl.handoff.controller import ControlServer, HandOverFailed, hand_over
from swapctl.handoff.manifest import Transfer
from swapctl.handoff.messages import ChannelClosed, HandoffError
from swapctl.unixsock import open_listener
from tests.clients import Client, trade
from tests.handoff_rig import Rig


@pytest.fixture
def rig(sockdir: Path) -> Iterator[Rig]:
    r = Rig(sockdir)
    try:
        yield r
    finally:
        r.close()


def close_fds(transfer: Transfer) -> None:
    for fd in transfer.fds:
        os.close(fd)


def test_handoff_carries_partial_frames_and_keeps_every_client(rig: Rig) -> None:
    _, a = rig.start("a")
    rig.activate(a)
    pub, sub = Client(rig.public), Client(rig.public)
    pub.send(trade(1))
    assert sub.recv_frames(1) == [trade(1)]
    pub.send(trade(2)[:50])  # a partial frame sits in relay a's framer
    time.sleep(0.05)
    _, b = rig.start("b")
    transfer = rig.handoff(a, b)
    pending = sorted(len(state.pending_in) for state, _ in transfer.conns)
    assert pending == [0, 50]
    assert transfer.listener is not None
    close_fds(transfer)
    pub.send(trade(2)[50:] + trade(3))
    assert sub.recv_frames(3) == [trade(1), trade(2), trade(3)]
    assert pub.recv_frames(3) == [trade(1), trade(2), trade(3)]  # echo too
    late = Client(rig.public)  # new connections reach the new relay
    late.send(trade(4))
    assert sub.recv_frames(4)[-1] == trade(4)
    assert a.stats(5)["state"] == "standby" and a.stats(5)["connections_open"] == 0
    stats = b.stats(5)
    # counters only: a summary of every client (the stats socket's) would stop the relay's
    # loop at each verification and health check
    assert stats["connections_open"] == 3 and "connections" not in stats


def test_unsent_backlog_is_carried_and_written_first(rig: Rig) -> None:
    _, a = rig.start("a", "--no-echo")
    rig.activate(a)
    pub, slow = Client(rig.public), Client(rig.public)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    msgs = [trade(i) for i in range(1, 20_001)]
    pub.send(b"".join(msgs[:19_000]))
    deadline = time.monotonic() + 5
    while a.stats(5)["frames_in"] < 19_000:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _, b = rig.start("b", "--no-echo")
    b.wait_ready(5)
    transfer = a.release(flush_ms=0, timeout=5)
    owed = sum(len(state.unsent_out) for state, _ in transfer.conns)
    assert owed > 0  # the slow consumer had not read everything
    b.adopt(transfer, 5)
    b.resume(5)
    a.close_held(5)
    close_fds(transfer)
    pub.send(b"".join(msgs[19_000:]))
    assert slow.recv_frames(20_000, timeout=10) == msgs
    assert bytes(slow.raw) == b"".join(msgs)


def test_more_connections_than_one_message_can_carry(rig: Rig) -> None:
    _, a = rig.start("a")
    rig.activate(a)
    clients = [Client(rig.public) for _ in range(600)]
    deadline = time.monotonic() + 10
    while a.stats(5)["connections_open"] < 600:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _, b = rig.start("b")
    transfer = rig.handoff(a, b)
    close_fds(transfer)
    assert len(transfer.conns) == 600
    clients[-1].send(trade(7))
    for client in clients:
        assert client.recv_frames(1) == [trade(7)]


def test_candidate_crash_mid_adopt_leaves_the_old_relay_whole(rig: Rig) -> None:
    _, a = rig.start("a")
    rig.activate(a)
    pub, sub = Client(rig.public), Client(rig.public)
    pub.send(trade(1) + trade(2)[:40])
    assert sub.recv_frames(1) == [trade(1)]
    handle, b = rig.start("b", "--crash-at", "adopt")
    b.wait_ready(5)
    transfer = a.release(flush_ms=5, timeout=5)
    with pytest.raises(ChannelClosed):
        b.adopt(transfer, 5)
    assert handle.proc.wait(5) == 70
    a.resume(5)  # the old relay kept everything it released
    close_fds(transfer)
    pub.send(trade(2)[40:])
    assert sub.recv_frames(2) == [trade(1), trade(2)]
    assert a.stats(5)["connections_open"] == 2


def test_probe_connections_then_back_to_standby(rig: Rig) -> None:
    _, b = rig.start("b")
    b.wait_ready(5)
    left, right = socket.socketpair(), socket.socketpair()
    b.probe([left[1].fileno(), right[1].fileno()], 5)
    left[1].close()
    right[1].close()
    left[0].sendall(trade(9))
    left[0].settimeout(5)
    right[0].settimeout(5)
    assert left[0].recv(1000) == trade(9) and right[0].recv(1000) == trade(9)
    left[0].close()
    right[0].close()
    deadline = time.monotonic() + 5
    while b.stats(5)["state"] != "standby":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_adopt_is_refused_unless_standby(rig: Rig) -> None:
    _, a = rig.start("a")
    rig.activate(a)
    spare = open_listener(rig.root / "spare.sock")
    with pytest.raises(HandoffError, match="not standby"):
        a.adopt(Transfer(spare.fileno(), []), 5)
    spare.close()
    assert a.stats(5)["state"] == "active"


def test_relay_outlives_its_orchestrator_and_reconnects(rig: Rig) -> None:
    _, a = rig.start("a")
    rig.activate(a)
    pub, sub = Client(rig.public), Client(rig.public)
    a.close()  # the orchestrator goes away: the relay keeps serving its clients
    pub.send(trade(1))
    assert sub.recv_frames(1) == [trade(1)]
    again = rig.control.accept("a", timeout=5)
    assert again.hello["state"] == "active" and again.hello["connections"] == 2


def test_pipelined_hand_over_survives_a_candidate_dying_on_the_first_part(rig: Rig) -> None:
    _, a = rig.start("a")
    rig.activate(a)
    clients = [Client(rig.public) for _ in range(600)]  # three parts
    deadline = time.monotonic() + 10
    while a.stats(5)["connections_open"] < 600:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    handle, b = rig.start("b", "--crash-at", "adopt")
    b.wait_ready(5)
    released: list[Transfer] = []
    with pytest.raises(HandOverFailed) as failed:
        hand_over(a, b, 5, lambda: 5.0, released.append)
    assert failed.value.side == "new"
    assert len(released) == 1 and len(released[0].conns) == 600  # every part was drained
    assert handle.proc.wait(5) == 70
    a.resume(5)  # the old relay kept everything
    close_fds(released[0])
    clients[0].send(trade(3))
    for client in clients:
        assert client.recv_frames(1) == [trade(3)]


def test_a_new_orchestrator_recovers_the_listener_and_swaps(rig: Rig, sockdir: Path) -> None:
    """The orchestrator dies (its control socket and fd store gone); the relay keeps
    serving, reconnects to a new control socket at the same path, hands the new
    orchestrator a copy of its listener, and a swap goes through the recovered state."""
    _, a = rig.start("a")
    rig.activate(a)
    pub, sub = Client(rig.public), Client(rig.public)
    rig.control.close()  # the orchestrator is gone: control socket and listener copy
    rig.listener.close()
    a.close()
    pub.send(trade(1))
    assert sub.recv_frames(1) == [trade(1)]  # clients never noticed
    rig.control = ControlServer(sockdir / "ctl.sock")  # a restarted orchestrator
    a2 = rig.control.accept("a", timeout=10)
    assert a2.hello["state"] == "active" and a2.hello["connections"] == 2
    listener_fd = a2.listener(5)
    recovered = socket.socket(fileno=listener_fd)
    assert recovered.getsockname() == str(rig.public)
    rig.listener = recovered
    _, b = rig.start("b")
    transfer = rig.handoff(a2, b)
    close_fds(transfer)
    pub.send(trade(2))
    assert sub.recv_frames(2) == [trade(1), trade(2)]
    late = Client(rig.public)  # the listener moved too
    late.send(trade(3))
    assert sub.recv_frames(3)[-1] == trade(3)


def test_listener_request_is_refused_in_standby(rig: Rig) -> None:
    _, b = rig.start("b")
    b.wait_ready(5)
    with pytest.raises(HandoffError, match="no listener"):
        b.listener(5)
