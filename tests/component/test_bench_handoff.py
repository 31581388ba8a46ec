"""`swapctl bench handoff` in a tiny configuration: it runs, reports, loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_handoff_small_run_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "swapctl", "bench", "handoff", "--clients", "3,20",
         "--swaps", "3", "--rollbacks", "2", "--load-rate", "5000", "-o", "json"],
        capture_output=True, timeout=170, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert report["benchmark"] == "handoff" and report["conditions"]["swaps_per_config"] == 3
    for row in report["idle"] + report["under_load"]:
        assert row["committed"] == 3, row["not_committed_reasons"]
        assert row["connections_moved"] >= row["clients"]
        assert row["server_pause_ms"]["n"] == 3 and row["server_pause_ms"]["p50"] > 0
        assert set(row["pause_stages_p50_ms"]) == {"export", "transfer", "adopt", "resume"}
        assert row["canary"]["lost"] == 0 and row["canary"]["disconnects"] == 0
        assert row["crowd_disconnects"] == 0
    for row in report["under_load"]:
        assert row["load"]["ok"] and row["load"]["sent"] > 0
    warm, cold = report["rollback"]["warm"], report["rollback"]["cold"]
    assert warm["kind"] == ["warm handoff"] and cold["kind"] == ["cold handoff"]
    assert warm["rollbacks"] == cold["rollbacks"] == 2
    assert {g["name"] for g in report["goals"]} >= {"cost per extra connection"}
