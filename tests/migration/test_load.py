"""`swapctl load` against the real reference relay: exact verdicts, faults, reconnects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from swapctl.errors import UsageError
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.control import LoadError
from swapctl.probes.load import LoadSession, run_load
from swapctl.probes.report import LoadReport
from swapctl.protocol.profiles import Domain, Profile
from swapctl.relay.stats import read_stats
from tests.conftest import Processes, wait_connectable

CLI = [sys.executable, "-c", "from swapctl.cli import main; main()", "load"]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def quick(sock: Path, **overrides: Any) -> LoadConfig:
    """A short run with fast settling, as tests need."""
    settings: dict[str, Any] = {"socket": sock, "publishers": 2, "consumers": 2, "rate": 4000.0,
                                "duration": 1.0, "settle": 0.3, "dashboard_retry": 0.05,
                                "reconnect_backoff": 0.05, "connect_timeout": 3.0}
    settings.update(overrides)
    return LoadConfig(**settings)


def run_cli(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([*CLI, *args, "-o", "json"], capture_output=True, timeout=60,
                          check=False)
    return proc.returncode, json.loads(proc.stdout)  # stdout holds JSON only


# ----- clean runs --------------------------------------------------------------------

def test_clean_run_reports_zero_loss(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock)
    report = run_load(quick(sock, id_header=True, audit_echo=True))
    assert report.ok, report.problems()
    assert 3600 <= report.sent <= 4000  # 4000 msg/s for 1 s, paced
    assert report.rate_achieved == pytest.approx(4000, rel=0.1)
    for consumer in report.consumers:
        audit = consumer.audit
        assert audit.received == audit.expected == report.sent
        assert audit.id_headers == 2  # one per publisher connect: known, not unexpected
        assert audit.latency.count == report.sent
        assert 0 < audit.latency.p50 <= audit.latency.max
        assert 0 < audit.max_gap_ns < 1_000_000_000
    for publisher in report.publishers:
        assert publisher.echo is not None and publisher.echo.received == report.sent
    assert {p.index: p.sent for p in report.publishers}.keys() == {0, 1}


def test_cli_json_clean_on_a_torq_signal_relay(procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "s.sock"
    procs.relay(sock, "--domain", "signal", "--profile", "torq")
    code, out = run_cli("--socket", str(sock), "--domain", "signal", "--profile", "torq",
                        "--rate", "2000", "--duration", "0.5", "--settle", "0.3",
                        "--mix", "signal=1,vendor=1", "--vendor-size", "1000")
    assert code == 0, out["problems"]
    assert out["ok"] and out["problems"] == []
    cond = out["conditions"]
    assert (cond["domain_byte"], cond["rate_asked"]) == (1, 2000)
    assert cond["message_sizes"] == {"signal": 204, "vendor": 1037}
    assert out["total"]["received"] == out["sent"] > 0


def test_cli_usage_error_exits_2_with_nothing_on_stdout(sockdir: Path) -> None:
    proc = subprocess.run([*CLI, "--socket", str(sockdir / "r.sock"), "--publishers", "0",
                           "-o", "json"], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"--publishers 0: use 1-255" in proc.stderr


# ----- faults injected by the relay ----------------------------------------------------

def test_sink_relay_loses_everything_and_the_start_is_unconfirmed(
        procs: Processes, sockdir: Path) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock, "--sink")
    report = run_load(quick(sock, publishers=1, consumers=1, duration=0.3, connect_timeout=0.5))
    assert report.sent > 0
    assert report.total.lost == report.total.expected == report.sent
    assert len(report.unsynced) == 1 and report.unsynced[0].startswith("consumer 0 ")
    assert any("start not confirmed" in w for w in report.warnings())
    assert not report.ok

def test_drop_every_is_reported_exactly_and_fails(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "st.sock"
    relay_with_stats(procs, sock, stats, "--drop-every", "100")
    code, out = run_cli("--socket", str(sock), "--publishers", "2", "--consumers", "2",
                        "--rate", "4000", "--duration", "1", "--settle", "0.3")
    dropped = read_stats(stats)["fault_dropped"]
    assert dropped >= 30
    assert code == 1
    assert f"{2 * dropped} lost" in out["problems"]
    for consumer in out["consumers"]:
        audit = consumer["audit"]
        assert audit["lost"] == dropped
        assert audit["received"] == out["sent"] - dropped
        assert audit["duplicated"] == audit["reordered"] == audit["corrupted"] == 0


def test_corrupt_every_is_counted_as_corrupted(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "st.sock"
    relay_with_stats(procs, sock, stats, "--corrupt-every", "50")
    report = run_load(quick(sock, publishers=1))
    corrupted = read_stats(stats)["fault_corrupted"]
    assert corrupted >= 50
    assert not report.ok
    for consumer in report.consumers:
        audit = consumer.audit
        assert audit.corrupted == audit.checksum_mismatches == corrupted
        assert audit.lost == 0  # damaged, not missing
        assert audit.received == report.sent - corrupted


# ----- disconnects and the real clients' reactions --------------------------------------

def traffic_through(stats: Path, frames: int) -> Callable[[], bool]:
    return lambda: read_stats(stats)["frames_in"] >= frames


def relay_with_stats(procs: Processes, sock: Path, stats: Path,
                     *args: str) -> subprocess.Popen[bytes]:
    relay = procs.relay(sock, "--stats", str(stats), *args)
    wait_connectable(stats, relay, 5.0)  # the stats socket listens just after the main one
    return relay


def test_relay_killed_mid_run(procs: Processes, sockdir: Path) -> None:
    sock, stats, stats2 = sockdir / "r.sock", sockdir / "a.sock", sockdir / "b.sock"
    relay = relay_with_stats(procs, sock, stats)
    config = quick(sock, publishers=1, consumers=2, strategy_consumers=1, duration=None)
    with LoadSession(config) as session:
        wait_for("traffic through the first relay", traffic_through(stats, 500))
        os.killpg(relay.pid, signal.SIGKILL)
        relay.wait()
        relay_with_stats(procs, sock, stats2)
        wait_for("publisher and dashboard back",
                 lambda: read_stats(stats2)["connections_open"] == 2)
        base = read_stats(stats2)["frames_in"]
        wait_for("traffic through the new relay", traffic_through(stats2, base + 300))
        report = session.stop()
    dashboard, strategy = report.consumers
    assert (dashboard.mode, strategy.mode) == ("dashboard", "strategy")
    assert strategy.dead and "stops for good" in strategy.last_error
    assert (strategy.disconnects, strategy.reconnects) == (1, 0)
    # a reconnect can land in the dying relay's backlog and be reset once more: real too
    assert dashboard.disconnects == dashboard.reconnects >= 1 and not dashboard.dead
    # it saw the new relay (300 frames went through it): more than the strategy consumer,
    # dead since the kill, by a margin (the two need not have read the same number
    # from the dying relay: on a loaded box they were ~50 apart)
    assert dashboard.audit.received > strategy.audit.received + 100
    (publisher,) = report.publishers
    assert publisher.disconnects == publisher.reconnects >= 1 and not publisher.dead
    for consumer in report.consumers:
        audit = consumer.audit
        assert audit.received + audit.lost == audit.expected == report.sent
        assert audit.duplicated == audit.reordered == 0  # the failed message is sent once
    assert not report.ok
    assert f"{report.disconnects} unexpected disconnects" in report.problems()
    assert report.disconnects >= 3
    assert any("consumer 1 (strategy) dead" in p for p in report.problems())


def test_publisher_gives_up_after_its_attempts(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "a.sock"
    relay = relay_with_stats(procs, sock, stats)
    config = quick(sock, publishers=1, consumers=1, duration=None, reconnect_attempts=3,
                   reconnect_backoff=0.01)
    with LoadSession(config) as session:
        wait_for("traffic", traffic_through(stats, 200))
        os.killpg(relay.pid, signal.SIGKILL)
        assert session.wait(timeout=10), "the publisher did not give up on its own"
        report = session.stop()
    (publisher,) = report.publishers
    assert publisher.dead and publisher.reconnects == 0
    assert "gave up after 3 reconnect attempts" in publisher.last_error
    (consumer,) = report.consumers
    assert consumer.connect_failures >= 1 and not consumer.dead
    assert consumer.audit.received + consumer.audit.lost == publisher.sent
    assert any("publisher 0 gave up" in p for p in report.problems())


def test_publisher_without_reconnect_dies_on_eof(procs: Processes, sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "a.sock"
    relay = relay_with_stats(procs, sock, stats)
    config = quick(sock, publishers=1, consumers=1, duration=None, publisher_reconnect=False,
                   consumer_mode=ConsumerMode.STRATEGY)
    with LoadSession(config) as session:
        wait_for("traffic", traffic_through(stats, 200))
        os.killpg(relay.pid, signal.SIGKILL)
        assert session.wait(timeout=5)
        report: LoadReport = session.stop()
    assert report.publishers[0].dead and report.publishers[0].disconnects == 1
    assert report.consumers[0].dead


# ----- failures of the run itself, and no orphans ---------------------------------------

def test_unreachable_relay_is_a_load_error(sockdir: Path) -> None:
    config = quick(sockdir / "nobody.sock", connect_timeout=0.2)
    session = LoadSession(config)
    with pytest.raises(LoadError, match=r"cannot connect to .*nobody\.sock"):
        session.start()
    assert session.pids() and not any(psutil.pid_exists(p) and _alive(p) for p in session.pids())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


HOLDER = """
import sys, time
from pathlib import Path
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
with LoadSession(LoadConfig(socket=Path(sys.argv[1]), rate=500, duration=None)) as s:
    print(" ".join(map(str, s.pids())), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_orphans_when_the_parent_is_interrupted_or_killed(
        procs: Processes, sockdir: Path, sig: signal.Signals) -> None:
    sock = sockdir / "r.sock"
    procs.relay(sock)
    holder = procs.start([sys.executable, "-c", HOLDER, str(sock)], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    pids = [int(p) for p in holder.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    if sig == signal.SIGINT:
        os.killpg(holder.pid, sig)  # as a terminal's Ctrl-C reaches the whole group
    else:
        os.kill(holder.pid, sig)  # only the parent dies: children must notice on their own
    holder.wait(10)
    wait_for("every child to exit", lambda: not any(_alive(p) for p in pids), timeout=10)
    wait_connectable(sock, None, 1.0)  # the relay itself is untouched


def test_bad_settings_are_usage_errors(sockdir: Path) -> None:
    with pytest.raises(UsageError, match="--strategy-consumers 3"):
        LoadConfig(socket=sockdir / "x", consumers=2, strategy_consumers=3)
    with pytest.raises(UsageError, match="--consumers 0 checks nothing"):
        LoadConfig(socket=sockdir / "x", consumers=0)
    assert LoadConfig(socket=sockdir / "x", domain=Domain.EXECUTION,
                      profile=Profile.TORQ).domain_byte == 2
