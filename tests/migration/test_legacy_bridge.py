"""The bridge between two real relays, and the `bridge` swap strategy (run by the one swap
engine, `run_strategy`), under `swapctl load`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
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


# ----- the strategy ---------------------------------------------------------------------

from swapctl.legacy import layout as lay  # noqa: E402
from swapctl.legacy.run import LegacySwap, ReleaseSpec, run_strategy  # noqa: E402
from swapctl.swap.evidence import FIGURES  # noqa: E402
from swapctl.swap.report import exit_code, render_text  # noqa: E402
from swapctl.swap.spawner import Release  # noqa: E402


def legacy_release(compiled: Path) -> Release:
    """The reference relay with its socket path 'compiled in' (always this path)."""
    return Release("legacy", (sys.executable, "-m", "swapctl.relay", "--socket", str(compiled),
                              "--log-level", "warning"), handoff=False)


@pytest.fixture
def legacy(sockdir: Path) -> Iterator[tuple[lay.Layout, lay.LegacySlot, Release]]:
    layout = lay.Layout(public=sockdir / "md.sock", compiled=sockdir / "c" / "md.sock",
                        root=sockdir / "r")
    release = legacy_release(layout.compiled)
    _, old = lay.migrate(layout, list(release.command))
    assert old is not None
    started: list[lay.LegacySlot] = [old]
    try:
        yield layout, old, release
    finally:
        for slot in started:
            slot.stop(1.0)
        for name in "abcd":  # a candidate the strategy left serving
            state = lay.read_state(layout, name)
            if state is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(state["pid"]), signal.SIGKILL)


def request(layout: lay.Layout, release: Release, state: Path, *, drain: float,
            canary_rate: float = 0, **extra: Any) -> LegacySwap:
    """A bridge to another legacy build; `drain` is the drain deadline (the soak window)."""
    return LegacySwap(layout=layout, to=ReleaseSpec("v2", release.command, legacy=True),
                      state_dir=state, canary_rate=canary_rate, soak=drain,
                      extra={"drain_interval": 0.05, **extra})


def churn(public: Path, **extra: Any) -> LoadConfig:
    settings: dict[str, Any] = {"socket": public, "publishers": 2, "consumers": 3,
                                "strategy_consumers": 1, "rate": 4000.0, "duration": None,
                                "settle": 0.5, "dashboard_retry": 0.05,
                                "reconnect_backoff": 0.05}
    settings.update(extra)
    return LoadConfig(**settings)


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def _wait_flipped(layout: lay.Layout, old: lay.LegacySlot, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 30
    while layout.current() == old.name:
        assert thread.is_alive(), "the swap ended before it flipped the public link"
        assert time.monotonic() < deadline, "the public link was never flipped"
        time.sleep(0.01)


def test_strategy_consumer_survives_and_report_equals_checker(
        legacy: tuple[lay.Layout, lay.LegacySlot, Release], sockdir: Path) -> None:
    """The clients leave on their own while the old relay drains: nobody is cut, the
    report's figures are the canary's plus the load checker's, all 0, and it is proven."""
    layout, old, release = legacy
    swap = request(layout, release, sockdir / "st", drain=20.0, canary_rate=500)
    with LoadSession(churn(layout.public)) as session:
        thread, out = _in_thread(lambda: run_strategy("bridge", swap, load=session))
        _wait_flipped(layout, old, thread)  # new connections now reach the candidate
        time.sleep(1.0)  # traffic keeps flowing on the old relay, bridged to the new
        load = session.stop()  # the clients leave on their own: the old relay drains
        thread.join(60)
    assert out, "the swap did not finish"
    report = out[0]
    assert report["strategy"] == "bridge"
    assert report["decision"] == "committed", render_text(report)
    drain = report["evidence"]["drains"][0]
    assert drain["relay"] == "old" and not drain["deadline_hit"] and drain["disconnected"] == 0
    counts = [n for _, n in drain["samples"]]
    assert counts[0] >= 5 and counts[-1] == 0  # 2 publishers + 3 consumers, then none
    assert all(not c.dead for c in load.consumers), load.problems()
    assert load.ok, load.problems()
    checker, canary = report["checkers"]["load"], report["canary"]
    assert checker["lost"] == load.total.lost and checker["disconnects"] == load.disconnects
    assert canary is not None
    for key in FIGURES:
        assert report[key] == checker[key] == 0, (key, report["figures"][key])
        assert canary["dead" if key == "dead_consumers" else key] == 0, (key, canary)
    assert report["proven"] and exit_code(report) == 0, render_text(report)
    assert report["client_pause_ms"] is not None
    assert report["evidence"]["cut"] == 0
    assert not old.alive()
    crossed = report["evidence"]["bridge"]
    assert crossed["old"]["forwarded_frames"] > 1000  # the old relay's traffic crossed
    assert crossed["new"]["echo_dropped_frames"] == crossed["old"]["forwarded_frames"]


def test_deadline_retirement_reports_the_disconnected_count(
        legacy: tuple[lay.Layout, lay.LegacySlot, Release], sockdir: Path) -> None:
    """The clients never leave on their own: the drain deadline cuts all five, the
    report counts them, names the strategy consumer that stopped for good, and does not
    pretend to know what the cut clients lost."""
    layout, old, release = legacy
    swap = request(layout, release, sockdir / "st", drain=0.3)
    with LoadSession(churn(layout.public)) as session:
        time.sleep(0.3)
        report = run_strategy("bridge", swap, load=session)
        load = session.stop()  # stopped by run_strategy after the reconnect window
    assert report["decision"] == "committed", render_text(report)
    drain = report["evidence"]["drains"][0]
    assert drain["deadline_hit"] and drain["disconnected"] == 5
    assert report["evidence"]["cut"] == 5 and "drain deadline" in report["evidence"]["cut_by"]
    assert report["disconnects"] == load.disconnects == 5
    dead = sum(1 for c in load.consumers if c.dead)
    assert dead == 1  # the strategy consumer stopped
    assert report["dead_consumers"] == dead, report["figures"]["dead_consumers"]
    assert report["lost"] is None and report["figures"]["lost"]["unknown_because"]
    assert exit_code(report) == 1  # committed, but clients were cut
    assert not old.alive()


def test_rollback_flips_back_and_retires_the_candidate(
        legacy: tuple[lay.Layout, lay.LegacySlot, Release], sockdir: Path) -> None:
    """The operator asks for a rollback while the old relay drains (a `requests` poll):
    the link flips back, the one client that had reached the candidate is cut at the
    (rollback's) drain deadline and counted; the old relay's clients never notice."""
    layout, old, release = legacy
    late: list[socket.socket] = []

    def requests() -> str | None:
        if layout.current() == old.name:
            return None
        if not late:  # first poll after the flip: a client reaches the candidate
            late.append(_reader(layout.public))
            return None
        return "rollback"

    swap = request(layout, release, sockdir / "st", drain=1.0)
    with LoadSession(churn(layout.public, strategy_consumers=3)) as session:
        time.sleep(0.3)
        report = run_strategy("bridge", swap, requests=requests)
        time.sleep(0.3)
        load = session.stop()
    assert late, "the drain never polled for a request"
    assert report["decision"] == "rolled_back", render_text(report)
    assert report["reason"] == "operator asked for a rollback"
    assert report["rollback"]["kind"].startswith("link flipped back")
    assert layout.current() == old.name
    back = report["evidence"]["drains"][-1]
    assert back["relay"] == "candidate" and back["deadline_hit"]
    assert back["disconnected"] == 1  # the one client that had reached the candidate
    late[0].settimeout(10)
    while late[0].recv(1 << 16):  # bridged traffic, then EOF: the candidate is gone
        pass
    late[0].close()
    # it was cut and never came back: counted as a disconnect and a dead consumer
    assert report["disconnects"] == 1 and report["dead_consumers"] == 1
    assert load.ok, load.problems()  # the old relay's clients never noticed
    assert load.disconnects == 0
    assert old.alive()
    assert exit_code(report) == 1


def test_run_strategy_bridge_through_the_library_entry_point(
        legacy: tuple[lay.Layout, lay.LegacySlot, Release], sockdir: Path) -> None:
    layout, old, release = legacy
    swap = LegacySwap(layout=layout, to=ReleaseSpec("v2", release.command, legacy=True),
                      state_dir=sockdir / "st", canary_rate=0,
                      extra={"drain_deadline": 5.0, "drain_interval": 0.05})
    report = run_strategy("bridge", swap)
    assert report["strategy"] == "bridge"
    assert report["decision"] == "committed", render_text(report)
    assert report["disconnects"] == 0 and report["dead_consumers"] == 0
    assert report["evidence"]["drains"][0]["samples"][-1][1] == 0
    # no canary: nothing proves that nothing was lost; committed, unproven
    assert report["lost"] is None and not report["proven"] and exit_code(report) == 1
    assert [j["event"] for j in report["journal"]][:2] == ["begin", "ready"]
    assert (sockdir / "st" / "journal.jsonl").exists()  # the production journal, on disk
    assert not old.alive() and layout.current() != old.name
