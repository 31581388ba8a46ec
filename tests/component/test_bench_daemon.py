"""`swapctl bench daemon` in a small configuration: every figure measured, nothing left.

The bench runs the real stack (supervisord, swapctld, reference relays) under a /tmp root
it names in its report; afterwards no process may mention that root.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

# The CLI, with `bench daemon` attached to the `bench` group if swapctl/cli/__init__.py
# does not import it yet (the lead adds it there).
ENTRY = (sys.executable, "-c",
         "from swapctl.cli import main, bench_daemon\n"
         "main(prog_name='swapctl')")


def _running_from(root: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(root in part for part in proc.info["cmdline"] or ()) or any(
                    root in value for value in proc.environ().values()):
                found.append(proc.pid)
    return found


def _measured(figures: dict[str, Any], n: int) -> None:
    assert figures["n"] == n, figures
    for key in ("p50", "p99", "max", "mean"):
        assert figures[key] is not None and figures[key] > 0, (key, figures)
    assert figures["p50"] <= figures["p99"] <= figures["max"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_daemon_small_run_measures_every_figure_and_cleans_up() -> None:
    done = subprocess.run(
        [*ENTRY, "bench", "daemon", "--swaps", "2", "--recoveries", "1", "--rate", "2000",
         "-o", "json"], capture_output=True, timeout=220, check=False,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report["benchmark"] == "daemon" and report["ok"] and report["failures"] == []

    c = report["conditions"]
    assert (c["swaps"], c["rollbacks"], c["recoveries"], c["rate"]) == (2, 2, 1, 2000)
    assert (c["publishers"], c["consumers"], c["strategy_consumers"]) == (2, 2, 1)
    assert c["soak"] > 0 and c["message_sizes_bytes"] and c["cpu_count"]

    up = report["up"]
    assert up["services"] == 3 and 0 < up["api_answers_ms"] <= up["all_healthy_ms"]

    swaps = report["swaps"]
    assert swaps["committed"] == 2 and swaps["canary_lost"] == 0
    for key in ("server_pause_ms", "client_pause_ms", "total_ms"):
        _measured(swaps[key], 2)

    rollbacks = report["rollbacks"]
    assert rollbacks["rolled_back"] == 2 and rollbacks["kind"] == ["warm handoff"]
    for key in ("rollback_ms", "traffic_flowing_ms", "request_to_report_ms"):
        _measured(rollbacks[key], 2)

    recoveries = report["recoveries"]
    assert recoveries["committed"] == 1
    for key in ("restart_to_ready_ms", "restart_to_finished_ms", "soak_left_at_kill_ms"):
        _measured(recoveries[key], 1)
    assert recoveries["restart_to_ready_ms"]["p50"] <= recoveries["restart_to_finished_ms"]["p50"]

    # swapctld's RSS before the first swap and after each (too few swaps for the goal)
    memory = report["swapctld_memory"]
    assert memory["samples"] == 3 and memory["swaps_sampled"] == 2, memory
    assert isinstance(memory["pid"], int) and memory["other_pids"] == []
    assert 10 < memory["rss_mb_first"] <= memory["rss_mb_max"] < 1000
    assert memory["rss_mb_last"] <= memory["rss_mb_max"]
    assert not any(g["name"].startswith("swapctld RSS") for g in report["goals"])

    load = report["load"]
    assert load["ok"] and load["sent"] > 0 and load["received"] > 0
    assert (load["lost"], load["duplicated"], load["reordered"], load["disconnects"]) == \
        (0, 0, 0, 0)
    assert load["largest_gap_ms"] > 0 and len(load["consumers"]) == 2
    assert {g["name"] for g in report["goals"]} >= {
        "rollback during soak, max of 2 (SRE: well under 30 s)"}
    assert all(g["met"] for g in report["goals"]), report["goals"]

    root = report["cleanup"]["root"]
    assert root.startswith("/tmp/") and not Path(root).exists()
    assert _running_from(root) == [], "processes of the bench's stack left running"
