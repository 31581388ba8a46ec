"""The slow-consumer policies (`--on-slow-consumer`), with real clients on real sockets.

A publisher that never reads (the real market-data publisher) sends faster than a slow
consumer (small SO_RCVBUF, small reads with pauses) takes; a fast consumer reads
everything. Each client counts for itself: whole frames, sequences in order. Nothing
here asserts a duration; pauses only make the slow reader slower than the publisher.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from swapctl.protocol import Framer, Frames, split_frames
from swapctl.relay.stats import read_stats
from tests.clients import trade
from tests.conftest import Processes

MESSAGES = 20_000  # 1.48 MB: far past the 64 KiB bound and the kernel's socket buffers
BOUND = "65536"


class Reader(threading.Thread):
    """A consumer counting whole frames by sequence; `pause` > 0 makes it slow, and
    `start_after` holds its first read until the event is set."""

    def __init__(self, path: Path, want: int, chunk: int = 262_144, pause: float = 0.0,
                 start_after: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if pause:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(str(path))
        self.want, self.chunk, self.pause, self.start_after = want, chunk, pause, start_after
        self.framer = Framer()
        self.seqs: list[int] = []
        self.garbage = 0
        self.eof = False

    def run(self) -> None:
        if self.start_after is not None:
            self.start_after.wait(30)
        self.sock.settimeout(2.0)  # silence this long: nothing more is coming
        deadline = time.monotonic() + 25
        while len(self.seqs) < self.want and time.monotonic() < deadline:
            try:
                data = self.sock.recv(self.chunk)
            except (TimeoutError, OSError):
                return
            if not data:
                self.eof = True
                return
            for ev in self.framer.feed(data):
                if isinstance(ev, Frames):
                    self.seqs.extend(int.from_bytes(f[8:16], "little")
                                     for f in split_frames(ev.data))
                else:
                    self.garbage += 1
            if self.pause:
                time.sleep(self.pause)

    def finish(self) -> None:
        self.join(30)
        assert not self.is_alive(), "a reader did not finish"
        self.sock.close()


def _relay(procs: Processes, sockdir: Path, policy: str) -> tuple[Path, Path]:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats), "--max-backlog", BOUND,
                "--on-slow-consumer", policy)
    return sock, stats


def _wait_open(stats: Path, n: int) -> None:
    deadline = time.monotonic() + 10
    while read_stats(stats)["connections_open"] != n:
        assert time.monotonic() < deadline, f"relay never saw {n} connections"
        time.sleep(0.01)


def _publish(path: Path, count: int = MESSAGES, paced_by: Reader | None = None) -> socket.socket:
    """A publisher that never reads: 100 messages a write, as fast as it is let.

    `paced_by`: write the next 100 only once that reader has every message written so far,
    so it stays within the bound however busy the machine (under a CI's load, a reader
    thread sharing the GIL with the publisher fell 64 KiB behind and was cut as slow too).
    """
    pub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pub.settimeout(25)  # an anti-hang deadline: a stalled publisher fails the test
    pub.connect(str(path))
    deadline = time.monotonic() + 25
    for first in range(1, count + 1, 100):
        last = min(first + 100, count + 1)
        pub.sendall(b"".join(trade(i) for i in range(first, last)))
        while paced_by is not None and len(paced_by.seqs) < last - 1:
            assert paced_by.is_alive(), f"the paced reader stopped at {len(paced_by.seqs)}"
            assert time.monotonic() < deadline, "the paced reader fell behind for good"
            time.sleep(0.0005)
    return pub


def _until(stats: Path, key: str, value: int) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while (counters := read_stats(stats))[key] != value:
        assert time.monotonic() < deadline, f"{key} never reached {value}: {counters}"
        time.sleep(0.02)
    return counters


ALL = list(range(1, MESSAGES + 1))


@pytest.mark.timeout(60)
def test_block_a_never_reading_publisher_blocks_nobody(procs: Processes,
                                                      sockdir: Path) -> None:
    """Its own unread echo is shed and counted (echo_shed), never waited for."""
    sock, stats = _relay(procs, sockdir, "block")
    fast = Reader(sock, MESSAGES)
    _wait_open(stats, 1)
    fast.start()
    pub = _publish(sock)  # completes: nothing waits for the publisher's echo
    fast.finish()
    counters = read_stats(stats)
    pub.close()
    assert fast.seqs == ALL and fast.garbage == 0
    # The publisher finished its sends (a blocked one would have hit its 25 s deadline) while
    # its own echo went unread: that echo was shed and counted apart, never waited for. The
    # reader may still be waited for when a busy machine lets it fall behind (block_episodes):
    # that is the policy working, so it is not asserted on.
    assert counters["lag_drops_frames"] == 0  # block never drops a consumer's frames
    assert counters["echo_shed_frames"] > 0  # its echo, past the bound, counted apart


@pytest.mark.timeout(60)
def test_block_a_slow_consumer_loses_nothing(procs: Processes, sockdir: Path) -> None:
    """The slow consumer slows the publisher: it gets every frame, and so does the
    fast one, while the publisher's own echo is still shed rather than waited for."""
    sock, stats = _relay(procs, sockdir, "block")
    slow = Reader(sock, MESSAGES, chunk=4096, pause=0.002)
    fast = Reader(sock, MESSAGES)
    _wait_open(stats, 2)
    slow.start()
    fast.start()
    pub = _publish(sock)
    slow.finish()
    fast.finish()
    counters = read_stats(stats)
    pub.close()
    assert slow.seqs == ALL and slow.garbage == 0, f"slow consumer lost " \
        f"{MESSAGES - len(set(slow.seqs))}"
    assert fast.seqs == ALL and fast.garbage == 0
    assert counters["lag_drops_frames"] == 0 and counters["slow_disconnects"] == 0
    assert counters["block_episodes"] >= 1  # it was slower: the publisher waited for it
    assert counters["echo_shed_frames"] > 0
    assert counters["blocking_consumers"] == 0 and counters["blocked_s"] > 0


@pytest.mark.timeout(60)
def test_disconnect_cuts_the_slow_consumer_and_counts_it(procs: Processes,
                                                        sockdir: Path) -> None:
    sock, stats = _relay(procs, sockdir, "disconnect")
    go = threading.Event()
    slow = Reader(sock, MESSAGES, chunk=4096, start_after=go)  # reads nothing until go
    fast = Reader(sock, MESSAGES)
    _wait_open(stats, 2)
    slow.start()
    fast.start()
    pub = _publish(sock, paced_by=fast)  # the fast one never comes near the bound
    fast.finish()
    counters = _until(stats, "slow_disconnects", 1)
    go.set()  # now it reads what it was sent before the cut, then EOF
    slow.finish()
    pub.close()
    assert fast.seqs == ALL and fast.garbage == 0  # the fast one and the publisher go on
    assert slow.eof and 0 < len(slow.seqs) < MESSAGES
    assert slow.seqs == list(range(1, len(slow.seqs) + 1))  # whole frames, no gap
    assert slow.framer.buffered < len(trade(1))  # at most the frame being written, cut
    assert counters["slow_disconnect_bytes"] > 0 and counters["lag_drops_frames"] == 0
    assert counters["echo_shed_frames"] > 0  # the publisher, slow at its echo, is not cut


@pytest.mark.timeout(60)
def test_drop_oldest_sheds_whole_frames_and_counts_them(procs: Processes,
                                                       sockdir: Path) -> None:
    sock, stats = _relay(procs, sockdir, "drop-oldest")
    go = threading.Event()
    slow = Reader(sock, MESSAGES, chunk=4096, start_after=go)
    fast = Reader(sock, MESSAGES)
    _wait_open(stats, 2)
    slow.start()
    fast.start()
    pub = _publish(sock, paced_by=fast)  # the fast one never comes near the bound
    fast.finish()
    go.set()
    slow.finish()
    counters = read_stats(stats)
    pub.close()
    assert fast.seqs == ALL and fast.garbage == 0
    shed = counters["lag_drops_frames"]
    assert shed > 0 and counters["lag_episodes"] >= 1
    # whole frames only, in order, and every frame either delivered or counted as shed
    assert slow.garbage == 0 and slow.framer.buffered == 0
    assert slow.seqs == sorted(set(slow.seqs)) and len(slow.seqs) + shed == MESSAGES
    assert counters["echo_shed_frames"] > 0  # the publisher's echo, counted apart
