"""Tail loss: a publisher that never reads its echo, sends as fast as it can, then closes.

The relay must forward everything that publisher sent, up to its last byte, even though
its writes to that publisher fail once it has closed (issue 14, finding 1: the relay
used to close the connection on the failed write without reading what was queued).
An independent consumer counts what arrives: every sequence, once, in order.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from swapctl.errors import SwapctlError
from swapctl.protocol import Framer, Frames, split_frames
from swapctl.relay.stats import read_stats
from tests.clients import trade
from tests.conftest import Processes

MESSAGES = 30_000
PER_WRITE = 10  # small writes: many in flight when the publisher closes


def _wait_open(stats: Path, n: int) -> None:
    """Until the relay counts `n` open connections. Its stats socket is bound after the
    public one the fixture waits for (CI once read it before it existed): until then,
    try again."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(SwapctlError):
            if read_stats(stats)["connections_open"] == n:
                return
        assert time.monotonic() < deadline, f"relay never saw {n} connections"
        time.sleep(0.01)


def _publish_and_close(sock_path: Path) -> None:
    """Never reads; small writes as fast as the socket takes them; then close."""
    stream = b"".join(trade(i) for i in range(1, MESSAGES + 1))
    step = PER_WRITE * len(trade(1))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as pub:
        pub.settimeout(20)
        pub.connect(str(sock_path))
        for pos in range(0, len(stream), step):
            pub.sendall(stream[pos : pos + step])


def _count(consumer: socket.socket, want: int, timeout: float = 20.0) -> list[int]:
    """Sequences of the whole frames received until `want` arrived or `timeout` passed
    (or 1 s of silence once the publisher is done)."""
    framer, seqs = Framer(), []
    deadline = time.monotonic() + timeout
    consumer.settimeout(1.0)
    while len(seqs) < want and time.monotonic() < deadline:
        try:
            data = consumer.recv(262_144)
        except TimeoutError:
            break
        if not data:
            break
        for ev in framer.feed(data):
            assert isinstance(ev, Frames), f"the consumer got something else: {ev}"
            seqs.extend(int.from_bytes(f[8:16], "little") for f in split_frames(ev.data))
    return seqs


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("policy", "round_"), [
    ("drop-oldest", 1), ("drop-oldest", 2), ("drop-oldest", 3),
    ("block", 1), ("disconnect", 1),
])
def test_a_closing_never_reading_publisher_loses_nothing(procs: Processes, sockdir: Path,
                                                         policy: str, round_: int) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats), "--on-slow-consumer", policy)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as consumer:
        consumer.connect(str(sock))
        _wait_open(stats, 1)
        _publish_and_close(sock)
        seqs = _count(consumer, MESSAGES)
    lost = MESSAGES - len(set(seqs))
    assert lost == 0, f"{lost} of {MESSAGES} lost (round {round_}); last got {seqs[-1:]}"
    assert seqs == list(range(1, MESSAGES + 1))  # once each, in order
    counters = read_stats(stats)
    assert counters["lag_drops_frames"] == 0  # the consumer lost nothing to shedding
    assert counters["slow_disconnects"] == 0  # a publisher is never cut for being slow
