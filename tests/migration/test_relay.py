"""The reference relay as a real process on real Unix sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swapctl.protocol import Tlv, checksum_ok, encode_message
from swapctl.relay.stats import read_stats
from tests.clients import Client, trade
from tests.conftest import Processes, wait_connectable
from tests.vectors import load_vectors

V = load_vectors()


def clients(sock: Path, n: int) -> list[Client]:
    return [Client(sock) for _ in range(n)]


def wait_connections(stats: Path, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while read_stats(stats)["connections_open"] != n:
        assert time.monotonic() < deadline, f"relay never saw {n} connections"
        time.sleep(0.01)


@pytest.mark.parametrize(("profile", "good", "bad"), [("alphapulse", 1, 0), ("torq", 0, 1)])
def test_broadcast_echo_and_domain(procs: Processes, sockdir: Path, profile: str, good: int,
                                   bad: int) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--profile", profile, "--stats", str(stats))
    a, b, c = clients(sock, 3)
    wait_connections(stats, 3)
    msgs = [trade(i, domain=good) for i in range(1, 4)]
    a.send(msgs[0] + trade(99, domain=bad) + msgs[1])
    b.send(msgs[2])
    for client in (a, b, c):
        got = client.recv_frames(3)
        assert got[:2] == msgs[:2] and got[2] == msgs[2]
    assert all(cl.quiet() for cl in (a, b, c))
    counters = read_stats(stats)
    assert counters["rejected_domain"] == 1 and counters["frames_in"] == 3


def test_one_global_order_for_all_receivers(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats))
    pubs, subs = clients(sock, 3), clients(sock, 2)
    wait_connections(stats, 5)
    for i in range(300):
        pubs[i % 3].send(trade(i + 1, source=i % 3))
    orders = [c.recv_frames(300) for c in pubs + subs]
    assert len(orders[0]) == 300 and sorted(orders[0]) == sorted(trade(i + 1, source=i % 3)
                                                                 for i in range(300))
    assert all(order == orders[0] for order in orders)


@pytest.mark.parametrize("split", ["halves", "byte_by_byte", "coalesced"])
def test_split_and_coalesced_writes_arrive_whole(procs: Processes, sockdir: Path,
                                                 split: str) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock)
    pub, sub = clients(sock, 2)
    msgs = [V["V1"], V["V2"], V["V3"], V["V5"], V["V6"]]
    stream = b"".join(msgs)
    if split == "coalesced":
        pub.send(stream)
    else:
        step = len(stream) // 2 + 1 if split == "halves" else 1
        for i in range(0, len(stream), step):
            pub.send(stream[i : i + step])
            time.sleep(0.0005)
    assert sub.recv_frames(len(msgs)) == msgs
    assert sub.recv_bytes(len(stream)) == stream  # nothing but whole frames


def test_garbage_is_skipped_and_the_stream_resynchronises(procs: Processes,
                                                          sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats))
    pub, sub = clients(sock, 2)
    pub.send(b"GET / HTTP/1.0\r\n\r\n" + V["V2"] + b"\xef\xbe\x00garbage" + V["V3"])
    pub.send(b"\x00" * 100)
    pub.send(V["V1"])
    assert sub.recv_frames(3) == [V["V2"], V["V3"], V["V1"]]
    assert sub.recv_bytes(74 + 90 + 74) == V["V2"] + V["V3"] + V["V1"]
    counters = read_stats(stats)
    assert counters["skipped_bytes"] == 18 + 10 + 100
    assert counters["resyncs"] >= 3


def test_truncated_then_disconnect_is_counted_never_forwarded(procs: Processes,
                                                              sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats))
    pub, sub = clients(sock, 2)
    pub.send(V["V1"] + V["V2"][:40])
    pub.close()
    assert sub.recv_frames(1) == [V["V1"]]
    assert sub.quiet()
    deadline = time.monotonic() + 5
    while read_stats(stats)["truncated"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_a_thousand_concurrent_connections(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats))
    conns = clients(sock, 1000)
    wait_connections(stats, 1000, timeout=20)
    msgs = [trade(i) for i in range(1, 6)]
    conns[0].send(b"".join(msgs))
    for conn in conns:
        assert conn.recv_frames(5, timeout=20) == msgs
    assert read_stats(stats)["frames_out"] == 5000
    for conn in conns:
        conn.close()


def test_slow_consumer_sheds_oldest_whole_units(procs: Processes, sockdir: Path) -> None:
    """A consumer that stops reading loses its oldest whole units, counted; others lose none."""
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stats", str(stats), "--max-backlog", "65536", "--no-echo")
    pub, fast, slow = clients(sock, 3)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    wait_connections(stats, 3)
    msgs = [trade(i) for i in range(1, 20_001)]
    for i in range(0, len(msgs), 100):
        pub.send(b"".join(msgs[i : i + 100]))
        fast.recv_frames(i + 100)
    assert fast.frames == msgs
    counters = read_stats(stats)
    assert counters["lag_episodes"] >= 1 and counters["lagging_consumers"] == 1
    shed = counters["lag_drops_frames"]
    assert shed > 0
    # the slow consumer now reads everything that is left: whole frames, oldest missing
    got = slow.recv_frames(len(msgs) - shed, timeout=10)
    assert slow.quiet()
    assert len(got) == len(msgs) - shed
    assert got[-1] == msgs[-1]
    seqs = [int.from_bytes(f[8:16], "little") for f in got]
    assert seqs == sorted(seqs)  # what survived is in order and intact
    assert bytes(slow.raw) == b"".join(got)
    assert read_stats(stats)["lagging_consumers"] == 0


def test_no_echo(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock, "--no-echo")
    pub, sub = clients(sock, 2)
    pub.send(V["V1"])
    assert sub.recv_frames(1) == [V["V1"]]
    assert pub.quiet()


def test_sink_forwards_nothing(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--sink", "--stats", str(stats))
    pub, sub = clients(sock, 2)
    pub.send(V["V1"] + V["V2"])
    assert sub.quiet() and pub.quiet()
    assert read_stats(stats)["frames_in"] == 2


def test_chunk_mode_loses_a_split_message_like_the_generic_relay(procs: Processes,
                                                                 sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--framing", "chunk", "--stats", str(stats))
    pub, sub = clients(sock, 2)
    pub.send(V["V1"][:20])
    time.sleep(0.05)
    pub.send(V["V1"][20:])
    time.sleep(0.05)
    pub.send(V["V2"] + V["V4"])  # one read: forwarded together, wrong domain rides along
    assert sub.recv_bytes(74 + 204) == V["V2"] + V["V4"]
    assert sub.quiet()
    assert read_stats(stats)["chunks_dropped"] == 2


def test_no_validate_forwards_anything(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock, "--no-validate")
    pub, sub = clients(sock, 2)
    junk = b"not protocol v2 at all" + V["V4"]
    pub.send(junk)
    assert sub.recv_bytes(len(junk)) == junk


def test_fault_drop_every(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock, "--drop-every", "3")
    pub, sub = clients(sock, 2)
    msgs = [trade(i) for i in range(1, 10)]
    pub.send(b"".join(msgs))
    assert sub.recv_frames(6) == [m for i, m in enumerate(msgs, 1) if i % 3]
    assert sub.quiet()


def test_fault_corrupt_every(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock, "--corrupt-every", "2")
    pub, sub = clients(sock, 2)
    pub.send(b"".join(trade(i) for i in range(1, 5)))
    assert [checksum_ok(f) for f in sub.recv_frames(4)] == [True, False, True, False]


def test_fault_stall_after(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    procs.relay(sock, "--stall-after", "2", "--stats", str(stats))
    pub, sub = clients(sock, 2)
    pub.send(trade(1) + trade(2))
    assert len(sub.recv_frames(2)) == 2
    pub.send(trade(3))
    assert sub.quiet(0.3)
    assert read_stats(stats)["stalled"] is True


def test_fault_crash_after_messages(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    proc = procs.relay(sock, "--crash-after", "2")
    pub, sub = clients(sock, 2)
    pub.send(trade(1) + trade(2) + trade(3))
    assert proc.wait(10) == 70
    assert len(sub.frames) <= 2
    with pytest.raises(EOFError):
        sub.recv_frames(3)


def test_fault_crash_after_seconds(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    start = time.monotonic()
    proc = procs.relay(sock, "--crash-after-seconds", "0.5")
    assert proc.wait(10) == 70
    assert time.monotonic() - start >= 0.5


def test_fault_slow_start_and_never_ready(procs: Processes, sockdir: Path) -> None:
    slow = sockdir / "slow.sock"
    start = time.monotonic()
    procs.relay(slow, "--slow-start", "0.5")
    assert time.monotonic() - start >= 0.5
    never = sockdir / "never.sock"
    proc = procs.relay(never, "--never-ready", ready=False)
    with pytest.raises(TimeoutError):
        wait_connectable(never, proc, timeout=1.0)
    assert proc.poll() is None


def test_refuses_to_steal_a_live_socket_and_replaces_a_stale_one(procs: Processes,
                                                                 sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    first = procs.relay(sock)
    second = procs.start([sys.executable, "-m", "swapctl.relay", "--socket", str(sock)],
                         stderr=subprocess.PIPE)
    assert second.wait(10) == 3
    assert b"served by another process" in second.stderr.read()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    assert sock.exists()  # a dead relay leaves its socket file behind
    procs.relay(sock)  # the stale file is replaced
    pub, sub = clients(sock, 2)
    pub.send(V["V1"])
    assert sub.recv_frames(1) == [V["V1"]]


def test_sigterm_stops_cleanly_and_logs_counters(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    proc = procs.relay(sock, stderr=subprocess.PIPE)
    pub, sub = clients(sock, 2)
    pub.send(V["V1"])
    sub.recv_frames(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    lines = [json.loads(line) for line in proc.stderr.read().splitlines()]
    stopped = [entry for entry in lines if entry["event"] == "relay.stopped"]
    assert stopped and stopped[0]["frames_in"] == 1 and stopped[0]["frames_out"] == 2


def test_messages_across_many_sizes(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock)
    pub, sub = clients(sock, 2)
    msgs = [encode_message(1, 3, [Tlv(200, bytes([i % 256]) * n)], sequence=i)
            for i, n in enumerate((0, 1, 255, 256, 4000, 65_535, 200_000 // 4), 1)]
    big = encode_message(1, 3, [Tlv(200, b"x" * 60_000)] * 16)  # ~1 MB, under the limit
    msgs.append(big)
    pub.send(b"".join(msgs))
    assert sub.recv_frames(len(msgs), timeout=10) == msgs
