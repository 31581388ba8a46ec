"""The bridge between two real relays, and the `bridge` swap strategy, under `swapctl load`."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.legacy.bridge_client import BridgeConfig, BridgeProcess
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport
from swapctl.protocol import encode_message, split_frames
from tests.conftest import Processes

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def relays(sockdir: Path, procs: Processes) -> tuple[Path, Path]:
    a, b = sockdir / "a.sock", sockdir / "b.sock"
    procs.relay(a, "--log-level", "warning")
    procs.relay(b, "--log-level", "warning")
    return a, b


@pytest.fixture
def bridge(relays: tuple[Path, Path]) -> Iterator[BridgeProcess]:
    proc = BridgeProcess(BridgeConfig(*relays))
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


def spread(a: Path, publishers: tuple[Path, ...], consumers: tuple[Path, ...],
           **extra: Any) -> LoadConfig:
    settings: dict[str, Any] = {
        "socket": a, "publishers": len(publishers), "consumers": len(consumers),
        "publisher_sockets": publishers, "consumer_sockets": consumers, "rate": 5000.0,
        "duration": 1.5, "settle": 0.5, "connect_timeout": 5.0}
    settings.update(extra)
    return LoadConfig(**settings)


def assert_exact(report: LoadReport) -> None:
    t = report.total
    assert report.sent > 1000
    assert (t.lost, t.duplicated, t.reordered, t.corrupted, t.unexpected) == (0, 0, 0, 0, 0), \
        report.problems()
    assert report.disconnects == 0
    for c in report.consumers:  # every consumer, on either relay, got every message once
        assert c.audit.received == report.sent, (c.index, c.audit.received, report.sent)


@pytest.mark.parametrize("publisher_on", ["old", "new"])
def test_one_side_publishes_consumers_on_both_see_everything_once(
        relays: tuple[Path, Path], bridge: BridgeProcess, publisher_on: str) -> None:
    a, b = relays
    pub = a if publisher_on == "old" else b
    with LoadSession(spread(a, (pub,), (a, b, a, b), strategy_consumers=2)) as session:
        session.wait(10)
        report = session.stop()
    assert_exact(report)
    stats = bridge.stop()
    src, dst = ("old", "new") if publisher_on == "old" else ("new", "old")
    # every frame the publisher sent crossed once (plus its start-barrier syncs)...
    assert stats[src]["forwarded_frames"] >= report.sent
    # ...and every frame the bridge wrote came back as echo and was dropped, not returned
    assert stats[dst]["echo_dropped_frames"] == stats[src]["forwarded_frames"]
    assert stats[dst]["forwarded_frames"] == 0
    assert stats[src]["echo_missing_frames"] == stats[dst]["echo_missing_frames"] == 0


def test_publishers_on_both_sides_keep_per_publisher_order(
        relays: tuple[Path, Path], bridge: BridgeProcess) -> None:
    a, b = relays
    with LoadSession(spread(a, (a, b, a, b), (a, b), rate=8000.0)) as session:
        session.wait(10)
        report = session.stop()
    assert_exact(report)
    stats = bridge.stop()
    assert stats["drained"] and stats["closed"] == ""


def _reader(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def _read_frames(sock: socket.socket, quiet: float = 0.5) -> list[bytes]:
    sock.settimeout(quiet)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return list(split_frames(data))


def test_identical_frames_published_on_both_sides_all_arrive(
        relays: tuple[Path, Path], bridge: BridgeProcess) -> None:
    """Identical bytes published on both relays at the same moment (identification
    headers, say): the bridge must not take the other side's copy for its own echo and
    drop it. Every consumer sees every copy: its side's and the other side's."""
    a, b = relays
    pa, pb, ca, cb = _reader(a), _reader(b), _reader(a), _reader(b)
    time.sleep(0.2)  # let the relays register the four connections
    same = encode_message(1, 2, b"")  # vector V6: every publisher's identical header
    unique_a = [encode_message(1, 9, b"", sequence=n, timestamp=n) for n in range(1, 201)]
    unique_b = [encode_message(1, 9, b"", sequence=n, timestamp=n) for n in range(1001, 1201)]
    burst_a = b"".join(same + u for u in unique_a)
    burst_b = b"".join(same + u for u in unique_b)
    pa.sendall(burst_a)
    pb.sendall(burst_b)
    got_a, got_b = Counter(_read_frames(ca)), Counter(_read_frames(cb))
    want = Counter([*unique_a, *unique_b, *([same] * 400)])
    assert got_a == want
    assert got_b == want
    stats = bridge.stop()
    assert stats["old"]["forwarded_frames"] == stats["new"]["forwarded_frames"] == 400
    for s in (pa, pb, ca, cb):
        s.close()


def test_frames_keep_their_order_per_publisher_across_the_bridge(
        relays: tuple[Path, Path], bridge: BridgeProcess) -> None:
    a, b = relays
    pa, cb = _reader(a), _reader(b)
    time.sleep(0.2)
    frames = [encode_message(1, 9, b"\x05" * (n % 300), sequence=n, timestamp=n)
              for n in range(1, 3001)]
    for i in range(0, len(frames), 97):  # odd-sized writes: frames split across reads
        pa.sendall(b"".join(frames[i:i + 97]))
    assert _read_frames(cb) == frames
    bridge.stop()
    pa.close()
    cb.close()
