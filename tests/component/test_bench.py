"""`swapctl bench codec|relay` in tiny configurations: they run, report, verify, clean up.

No assertion here is about speed: only that figures exist, are positive, come with
their conditions, and that exactness checks catch loss and corruption.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from swapctl.bench.codec import REFERENCE_CONSTRUCT, REFERENCE_PARSE
from swapctl.bench.rust_relay import default_binary
from swapctl.cli import main
from swapctl.probes.bulk.stream import MESSAGE_SIZE, StreamCheck, build_stream, end_message
from swapctl.protocol import Framer

RUST_BUILT = default_binary().exists()  # ./run test builds it (scripts/ensure-tools)
TARGETS = ("direct", "raw", "relay", *(("rust",) if RUST_BUILT else ()))


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def _unverified(out: str) -> str:
    """What a failed `bench relay` run says about each run that did not verify, for the
    assertion message (it showed a starved consumer meeting drop-oldest: relay.py)."""
    try:
        report = json.loads(out)
    except ValueError:
        return out[-2000:]
    keys = ("sent", "delivered", "lost", "duplicated", "reordered", "corrupted",
            "consumer_ended_by", "publisher_stopped_by", "lost_samples", "relay_counters",
            "echo", "background_cpu_percent", "steal_percent")
    # (a string: pytest shortens an object in an assertion message, and cut these)
    return json.dumps([(mode, target, {k: row[k] for k in keys if k in row})
                       for mode in ("throughput", "latency", "slow_consumer")
                       for target, row in report.get(mode, {}).items()
                       if isinstance(row, dict) and row.get("verified") is False])


def _descendants() -> set[tuple[int, float]]:
    return {(p.pid, p.create_time()) for p in psutil.Process().children(recursive=True)}


def test_stream_is_74_byte_messages_with_unique_sequences() -> None:
    stream = build_stream(2000)
    framer = Framer(domain=1)
    framer.feed(stream)
    assert len(stream) == 2000 * MESSAGE_SIZE == 2000 * 74
    assert framer.frames == 2000 and not framer.buffered
    seqs = [int.from_bytes(stream[i + 8 : i + 16], "little") for i in range(0, len(stream), 74)]
    assert seqs == list(range(1, 2001))


def _check(received: bytes, chunk: int = 777) -> StreamCheck:
    check = StreamCheck(build_stream(1000))
    for i in range(0, len(received), chunk):
        check.feed(received[i : i + chunk])
    return check


def test_stream_check_passes_an_exact_stream_split_anywhere() -> None:
    check = _check(build_stream(1000) + end_message(1000), chunk=1)
    audit = check.audit()
    assert check.done and check.classifier.end == 1000
    assert (audit.sent, audit.received) == (1000, 1000)
    assert (audit.lost, check.classifier.corrupted, audit.duplicated, audit.reordered) == (
        0, 0, 0, 0)


def test_stream_check_counts_loss_corruption_and_duplicates() -> None:
    msgs = [build_stream(1000)[i * 74 : (i + 1) * 74] for i in range(1000)]
    bad = bytearray(msgs[10])
    bad[50] ^= 0xFF
    received = [*msgs[:10], bytes(bad), *msgs[11:500], *msgs[503:], msgs[900]]
    check = _check(b"".join(received) + end_message(1000))
    audit = check.audit()
    assert check.done and check.classifier.end == 1000
    assert audit.received == 1000 - 1 - 3
    assert (audit.lost, audit.damaged, audit.duplicated) == (3, 1, 1)
    assert check.classifier.corrupted == 1
    assert list(audit.lost_samples) == [501, 502, 503]


def test_bench_codec_json() -> None:
    code, out = _invoke("codec", "--messages", "5000", "--repeats", "2", "-o", "json")
    assert code == 0
    report = json.loads(out)
    cond = report["conditions"]
    assert cond["message_bytes"] == 74 and cond["messages_per_repeat"] == 5000
    assert cond["cores_usable"] >= 1 and cond["python"]
    assert report["machine_during_run"]["background_cpu_percent"] >= 0
    assert report["reference"]["parse_msgs_per_s"] == REFERENCE_PARSE
    assert report["reference"]["construct_msgs_per_s"] == REFERENCE_CONSTRUCT
    figures = [*report["parsing"].values(), *report["construction"].values()]
    assert len(figures) == 5
    for fig in figures:
        assert fig["best_msgs_per_s"] > 0 and fig["vs_reference"] > 0
        assert len(fig["repeats_msgs_per_s"]) == 2
    assert all(isinstance(g["met"], bool) for g in report["goals"])


def test_bench_codec_text() -> None:
    code, out = _invoke("codec", "--messages", "1000", "--repeats", "1")
    assert code == 0
    assert out.startswith("swapctl bench codec") and "\ngoals\n" in out and "MET" in out


def _assert_run(run: dict[str, Any], target: str) -> None:
    assert run["verified"] is True, run
    assert run["lost"] == run["corrupted"] == run["duplicated"] == 0
    assert run["delivered"] == run["sent"] > 0
    assert run["background_cpu_percent"] >= 0
    if target != "direct":
        assert run["echo"] == {"bytes": run["echo"]["bytes"], "complete": True, "exact": True}
        assert run["server_cpu_us_per_message"] >= 0


def test_bench_relay_json_verified() -> None:
    code, out = _invoke("relay", "--duration", "0.3", "-o", "json",
                        "--relay", "both" if RUST_BUILT else "python")
    assert code == 0, _unverified(out)
    report = json.loads(out)
    assert [row["target"] for row in report["summary"]] == list(TARGETS)
    assert report["verified"] is True
    assert report["conditions"]["cores_usable"] >= 1
    assert report["conditions"]["throughput"]["messages_per_write"] == 885
    for target in TARGETS:
        tp, lat = report["throughput"][target], report["latency"][target]
        _assert_run(tp, target)
        _assert_run(lat, target)
        assert tp["messages_per_s"] > 0 and tp["window_s"] > 0
        assert set(tp["cpu_percent_of_window"]) >= {"publisher", "consumer"}
        assert lat["samples"] > 0
        assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p99.9_us"]
    assert report["comparison"]["throughput_relay_vs_raw"] > 0
    assert set(report["comparison"]["latency_added_by_relay_us"]) == {"p50", "p99", "p99.9"}
    rust_goals = ["rust relay throughput vs raw forwarder", "rust relay throughput",
                  "p99 latency the rust relay adds over the direct link"]
    assert [g["name"] for g in report["goals"]] == [
        "relay throughput vs raw forwarder", "relay throughput",
        "p99 latency the relay adds over the direct link", *(rust_goals if RUST_BUILT else []),
        "block mode, slow consumer: relay throughput vs raw forwarder",
        "block mode, slow consumer: messages the relay lost"]
    for target in ("raw", "relay"):  # block mode, a consumer slower than the publisher
        slow = report["slow_consumer"][target]
        assert slow["verified"] is True and slow["lost"] == 0 and slow["messages_per_s"] > 0
    assert report["comparison"]["slow_consumer_relay_vs_raw"] > 0
    assert all(g["measured"] is not None for g in report["goals"])
    if RUST_BUILT:  # the Rust relay side by side: its own figures, no block-mode run
        assert report["comparison"]["throughput_rust_vs_raw"] > 0
        assert set(report["comparison"]["latency_added_by_rust_us"]) == {"p50", "p99", "p99.9"}
        assert "rust" not in report["slow_consumer"]
        rust = next(row for row in report["summary"] if row["target"] == "rust")
        assert rust["verified"] and rust["messages_per_s"] > 0 and rust["added_p99_goal_us"] == 35


def test_bench_relay_without_the_rust_binary_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["bench", "relay", "--relay", "rust",
                                       "--rust-relay", "/nonexistent/relay"])
    assert result.exit_code == 2
    assert "build it with scripts/ensure-tools" in result.stderr


def test_bench_relay_reports_loss_and_exits_1() -> None:
    # the default idle timeout (2 s): the raw reference must not be cut by a consumer
    # starved half a second by a heavy test beside it (a CI run lost it that way)
    code, out = _invoke("relay", "--relay", "python", "--duration", "0.2", "-o", "json",
                        "--relay-arg=--drop-every", "--relay-arg=500")
    assert code == 1
    report = json.loads(out)
    assert report["verified"] is False
    for mode in ("throughput", "latency"):
        relay = report[mode]["relay"]
        assert relay["verified"] is False and relay["lost"] > 0
        assert report[mode]["raw"]["verified"] is True, _unverified(out)


def test_bench_relay_names_a_relay_that_fails_to_start() -> None:
    result = CliRunner().invoke(main, ["bench", "relay", "--relay", "python", "--duration", "0.2",
                                       "--relay-arg=--no-such-option"])
    assert result.exit_code == 3
    assert "relay exited with code 2" in result.stderr
    assert "no-such-option" in result.stderr  # the relay's own complaint is quoted


def test_sigterm_stops_the_bench_and_its_processes() -> None:
    bench = subprocess.Popen(
        [sys.executable, "-c", "from swapctl.cli import main; main()", "bench", "relay",
         "--duration", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert bench.stderr is not None
        line = bench.stderr.readline()
        while b"throughput via direct" not in line:
            assert line, "the bench ended before it started a run"
            line = bench.stderr.readline()
        deadline = time.monotonic() + 10
        children = psutil.Process(bench.pid).children(recursive=True)
        while len(children) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            children = psutil.Process(bench.pid).children(recursive=True)
        assert len(children) >= 2
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(20) == 3
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


@pytest.fixture(autouse=True)
def _no_leftovers() -> Any:
    before = _descendants()
    yield
    assert _descendants() <= before
