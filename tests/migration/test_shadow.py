"""swapctl shadow against a live reference relay: equivalent, lossy and stalled candidates."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

from swapctl.relay.stats import read_stats
from tests.clients import Client, trade
from tests.conftest import Processes

ROOT = Path(__file__).parents[2]


def _wait_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 20) -> list[bytes]:
    """Read the process's stderr until a line contains `needle`; returns the lines read."""
    assert proc.stderr is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            assert line, f"shadow exited early: {b''.join(lines).decode()}"
            lines.append(line)
            if needle in line:
                return lines
    raise AssertionError(f"no {needle!r} within {timeout}s: {b''.join(lines).decode()}")


def _shadow(procs: Processes, live: Path, candidate: str, *extra: str
            ) -> subprocess.Popen[bytes]:
    proc = procs.start([sys.executable, "-m", "swapctl", "shadow", "--socket", str(live),
                        "--candidate", candidate, "-o", "json", "--interval", "0.5", *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _wait_line(proc, b"shadow: ready")
    return proc


def _live(procs: Processes, sockdir: Path) -> tuple[Path, Path]:
    live, stats = sockdir / "live.sock", sockdir / "stats.sock"
    procs.relay(live, "--stats", str(stats), "--log-level", "warning")
    return live, stats


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, dict, bytes]:  # type: ignore[type-arg]
    out, err = proc.communicate(timeout=30)
    return proc.returncode, json.loads(out), err


def test_shadow_matches_an_equivalent_candidate_and_never_writes(procs: Processes,
                                                                 sockdir: Path) -> None:
    live, stats = _live(procs, sockdir)
    proc = _shadow(procs, live, "reference", "--duration", "1.5")
    pub, sub = Client(live), Client(live)
    msgs = [trade(i) for i in range(1, 3001)]
    for k in range(0, len(msgs), 50):
        pub.send(b"".join(msgs[k : k + 50]))
    assert sub.recv_frames(len(msgs)) == msgs
    code, doc, err = _finish(proc)
    assert code == 0, err.decode()
    consumer = doc["runs"][0]["clients"][0]
    assert consumer["old_frames"] == consumer["new_frames"] == 3000
    assert doc["runs"][0]["frames_compared"] == 3000 and not doc["runs"][0]["suppressed"]
    assert b"shadow 0s: live" in err or b"shadow 1s: live" in err  # the live summary
    counters = read_stats(stats)
    assert counters["bytes_in"] == sum(map(len, msgs))  # shadow wrote nothing to the live relay
    assert counters["lag_drops_frames"] == 0


def test_shadow_reports_what_a_lossy_candidate_does_not_forward(procs: Processes,
                                                                sockdir: Path) -> None:
    live, _ = _live(procs, sockdir)
    proc = _shadow(procs, live, "reference:sink", "--duration", "1.5", "--lag", "0.5")
    pub = Client(live)
    pub.send(b"".join(trade(i) for i in range(1, 201)))
    code, doc, err = _finish(proc)
    assert code == 1, err.decode()
    run = doc["runs"][0]
    assert run["totals"] == {"missing": 200}
    first = run["clients"][0]["differences"][0]
    assert first["old"]["frame"] == 0 and bytes.fromhex(first["old"]["hex"]) == trade(1)


def test_a_stalled_candidate_fills_the_bounded_queue_not_the_live_side(procs: Processes,
                                                                       sockdir: Path) -> None:
    live, stats = _live(procs, sockdir)
    stalled = (f"{sys.executable} -m swapctl.relay --socket {{socket}} --stall-after 10 "
               "--log-level warning")
    # 3 s: the clients connect after "ready", and the shadow finds them by polling every
    # --interval; on a loaded box 1.5 s could end before it had tapped them
    proc = _shadow(procs, live, stalled, "--duration", "3", "--queue-bytes", "65536",
                   "--lag", "0.5")
    pub, sub = Client(live), Client(live)
    msgs = [trade(i) for i in range(1, 40_001)]  # ~3 MB: far more than the candidate takes
    for k in range(0, len(msgs), 500):
        pub.send(b"".join(msgs[k : k + 500]))
    assert len(sub.recv_frames(len(msgs), timeout=20)) == len(msgs)
    code, doc, err = _finish(proc)
    assert code == 1, err.decode()
    run = doc["runs"][0]
    dropped = [s for s in run["suppressed"] if "not mirrored" in s["what"]]
    assert dropped and dropped[0]["count"] > 10_000
    assert run["clients"][0]["old_frames"] == len(msgs)  # the tap saw everything
    counters = read_stats(stats)
    assert counters["lag_drops_frames"] == 0 and counters["lagging_consumers"] == 0
