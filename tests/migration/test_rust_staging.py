"""The Rust crate's staged sockets wait outside its reactor until the relay serves.

A pre-copy stages every client socket on the candidate while the old relay serves them.
Registered with tokio's reactor (read and write, edge-triggered), each staged socket
woke the candidate every time its client read something from the old relay: 32% of a CPU
at 1,000 clients under load, taken from the relay serving them. Staged sockets are
watched for input only (EPOLLIN, an epoll set of their own) and registered by their task
once the relay serves. Checked here from the kernel's side: /proc/PID/fdinfo lists what
every epoll set of the process watches, by inode and event mask.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl.handoff.controller import (
    forward_backlog,
    hand_over,
    pre_copy,
)
from swapctl.handoff.manifest import Transfer
from tests.clients import Client, trade
from tests.handoff_rig import Rig
from tests.rust import example_relay

CLIENTS = 20


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def watched(pid: int) -> dict[int, list[int]]:
    """Inode -> the event mask of each of `pid`'s epoll sets that watches it."""
    out: dict[int, list[int]] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            lines = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
        except OSError:
            continue
        for line in lines:  # tfd: N events: MASK data: D pos:P ino:INO sdev:S
            if line.startswith("tfd:"):
                fields = line.split()
                mask = int(fields[fields.index("events:") + 1], 16)
                ino = int(next(f for f in fields if f.startswith("ino:"))[4:], 16)
                out.setdefault(ino, []).append(mask)
    return out


class Pair(Rig):
    """Two Rust example relays in handoff mode on one listener: `a` serving, `b` ready."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, (str(example_relay()), "--any-domain"))
        _, self.a = self.start("a")
        self.activate(self.a)
        _, self.b = self.start("b")
        self.b.wait_ready(5)


@pytest.fixture
def pair(sockdir: Path) -> Iterator[Pair]:
    p = Pair(sockdir)
    try:
        yield p
    finally:
        p.close()


def close_transfer(t: Transfer) -> None:
    for fd in [t.listener, *(fd for _, fd in t.conns)]:
        if fd is not None and fd >= 0:
            os.close(fd)


@pytest.mark.timeout(60)
def test_staged_sockets_are_watched_for_input_only_until_the_relay_serves(pair: Pair) -> None:
    clients = [Client(pair.public) for _ in range(CLIENTS)]
    deadline = time.monotonic() + 10  # each accepted and subscribed before the first send
    while pair.a.stats(5)["connections_open"] < CLIENTS and time.monotonic() < deadline:
        time.sleep(0.01)
    clients[0].send(trade(1))
    for client in clients:
        assert client.recv_frames(1) == [trade(1)]
    base = pre_copy(pair.a, pair.b, lambda: 5.0)
    try:
        listener = os.fstat(pair.listener.fileno()).st_ino
        staged = (socket_inodes(pair.a.pid) & socket_inodes(pair.b.pid)) - {listener}
        assert len(staged) == CLIENTS, "every client socket is open in both relays"
        seen = watched(pair.b.pid)
        assert all(ino in seen for ino in staged)
        # (the bug: tokio's registration, EPOLLOUT among its events, on every staged socket)
        assert not [seen[ino] for ino in staged if any(m & select.EPOLLOUT for m in seen[ino])]
        assert all(any(m & select.EPOLLIN for m in seen[ino]) for ino in staged)

        clients[0].send(trade(2))  # the old relay still serves while the new one stages
        for client in clients:
            assert client.recv_frames(2)[-1] == trade(2)

        delta = hand_over(pair.a, pair.b, 0.0, lambda: 5.0, lambda _: None,
                          precopy=int(base.meta["generation"]), resume=pair.b.adopt_resume)
        close_transfer(delta)
        if not pair.b.adopt_resume:
            pair.b.resume(5)
        forward_backlog(pair.a, pair.b, 5.0)
        pair.a.close_held(5)
    finally:
        close_transfer(base)

    clients[0].send(trade(3))  # served by the new relay: every socket registered by its task
    for client in clients:
        assert client.recv_frames(3)[-1] == trade(3)
    deadline = time.monotonic() + 10
    while True:
        seen = watched(pair.b.pid)
        unregistered = [ino for ino in staged
                        if not any(m & select.EPOLLOUT for m in seen.get(ino, []))]
        if not unregistered or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert unregistered == [], f"{len(unregistered)} of {CLIENTS} never registered"
