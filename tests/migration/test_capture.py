"""Record, replay and minimized captures on real relays; every capture is read by tshark."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from swapctl.capture.format import Kind
from swapctl.capture.pcapng import MAX_PIECE, read_capture
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Tlv
from swapctl.relay.stats import read_stats
from swapctl.scenarios import builtin
from tests.clients import Client
from tests.conftest import Processes
from tests.unit.test_capture import assert_tshark_reads, tshark_fields

ROOT = Path(__file__).parents[2]


def swapctl(procs: Processes, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = procs.start([sys.executable, "-m", "swapctl", *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd=ROOT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def wait_connections(stats: Path, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while read_stats(stats)["connections_open"] != n:
        assert time.monotonic() < deadline, f"the relay never saw {n} connections"
        time.sleep(0.01)


def packets_expected(path: Path) -> int:
    return sum(max(1, -(-len(r.data) // MAX_PIECE)) for r in read_capture(path).records)


def test_minimized_difference_is_a_capture_that_replays_it(procs: Processes,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "min.pcapng"
    code, text, err = swapctl(procs, "diff", "--old", "reference", "--new", "reference:chunk",
                              "--scenario", "wrong-domain", "--minimize", str(out),
                              "--minimize-trials", "40", "-o", "json")
    assert code == 1, err
    first = json.loads(text)["runs"][0]["clients"][0]["differences"][0]["category"]
    assert "minimize: 33 writes -> 1 (minimal" in err, err
    capture = read_capture(out)
    writes = [r for r in capture.view("scenario") if r.kind is Kind.WRITE]
    assert len(writes) == 1 and writes[0].data[4] != 1  # a wrong-domain message first
    assert {"scenario", "old", "new"} <= set(capture.views)
    assert capture.meta["first_difference"] == first
    assert assert_tshark_reads(out) == packets_expected(out)
    code, text, err = swapctl(procs, "diff", "--old", "reference", "--new", "reference:chunk",
                              "--replay", str(out), "-o", "json")
    assert code == 1, err
    totals = json.loads(text)["runs"][0]["totals"]
    assert first in totals
    code, _, err = swapctl(procs, "diff", "--old", "reference", "--new", "reference",
                           "--replay", str(out))
    assert code == 0, err


def test_saved_run_replays_with_a_check(procs: Processes, sockdir: Path,
                                        tmp_path: Path) -> None:
    cap = tmp_path / "run.pcapng"
    code, _, err = swapctl(procs, "diff", "--old", "reference", "--new", "reference:no-echo",
                           "--scenario", "truncated", "--save", str(cap))
    assert code == 1, err
    assert assert_tshark_reads(cap) == packets_expected(cap)
    rows = tshark_fields(cap, "frame.interface_name", "swapctl.kind")
    assert {r[0] for r in rows} == {"scenario", "old", "new"}
    sock = sockdir / "r.sock"
    procs.relay(sock, "--log-level", "warning")
    code, text, err = swapctl(procs, "replay", str(cap), "--socket", str(sock), "--check")
    assert code == 0, err + text  # the reference delivers what the old (reference) did
    assert "EQUIVALENT" in text


def _publish(pub: Client) -> bytes:
    scenario = builtin.build("mix", 5, 1)
    sent = b"".join(w.data for w in scenario.writes())
    for write in scenario.writes():
        pub.send(write.data)
    big = encode_message(1, 3, [Tlv(250, bytes(range(256)) * 255)] * 3)  # ~196 KiB
    pub.send(big)
    return sent + big


def test_recorded_capture_replays_to_the_same_outputs(procs: Processes, sockdir: Path,
                                                      tmp_path: Path) -> None:
    live, stats = sockdir / "live.sock", sockdir / "live-stats.sock"
    procs.relay(live, "--stats", str(stats), "--log-level", "warning")
    cap = tmp_path / "tap.pcapng"
    recorder = procs.start([sys.executable, "-m", "swapctl", "record", "--socket", str(live),
                            "--out", str(cap), "--duration", "1.5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_connections(stats, 1)
    pub, watcher = Client(live), Client(live)
    wait_connections(stats, 3)
    sent = _publish(pub)
    watched = watcher.recv_bytes(len(sent), timeout=10)
    assert watched == sent
    out, err = recorder.communicate(timeout=20)
    assert recorder.returncode == 0, err
    assert b"recorded" in out
    assert read_stats(stats)["bytes_in"] == len(sent)  # the recorder wrote nothing
    capture = read_capture(cap)
    reads = [r for r in capture.view("tap") if r.kind is Kind.READ]
    assert b"".join(r.data for r in reads) == sent
    stamps = [r.ts_ns for r in reads]
    assert stamps == sorted(stamps) and stamps[0] > 1_600_000_000 * 10**9
    assert assert_tshark_reads(cap) == packets_expected(cap)
    fresh = sockdir / "fresh.sock"
    procs.relay(fresh, "--log-level", "warning")
    code, text, err = swapctl(procs, "replay", str(cap), "--socket", str(fresh), "--check",
                              "-o", "json")
    assert code == 0, err + text
    run = json.loads(text)["runs"][0]
    observer = run["clients"][0]
    assert run["equivalent"] and observer["client"] == "observer"
    assert observer["new_frames"] == observer["old_frames"] > 100
    code, _, err = swapctl(procs, "diff", "--old", "reference", "--new", "reference",
                           "--replay", str(cap))
    assert code == 0, err
