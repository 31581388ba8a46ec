"""`swapctl bench handoff` in a tiny configuration: it runs, reports, loses nothing; the
Rust example relay beside the Python one when its binary is built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swapctl.bench.fdpass import FdPassSettings, measure_scm_rights
from swapctl.bench.handoff_table import side_by_side
from swapctl.bench.rust_relay import default_binary


def bench_handoff(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "swapctl", "bench", "handoff", *args],
                          capture_output=True, timeout=timeout, check=False)


def assert_clean(row: dict[str, Any]) -> None:
    """A measured row: clients moved, a positive pause and its cost, nothing lost or cut."""
    assert row["committed"] >= 1, row["not_committed_reasons"]
    assert row["connections_moved"] >= row["clients"]
    assert row["server_pause_ms"]["n"] == row["committed"] and row["server_pause_ms"]["p50"] > 0
    assert row["per_connection_us"] > 0
    assert row["canary"]["lost"] == 0 and row["canary"]["disconnects"] == 0
    assert row["crowd_disconnects"] == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_handoff_small_run_reports_every_figure(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    done = bench_handoff("--relay", "python", "--clients", "3,20", "--swaps", "3",
                         "--rollbacks", "2", "--rollback-clients", "7", "--load-rate", "5000",
                         "--row-rollbacks", "2", "-o", "json", "--keep", str(kept))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert report["benchmark"] == "handoff" and report["conditions"]["swaps_per_config"] == 3
    assert report["conditions"]["relays"] == ["python"]
    assert report["scm_rights_reference"]["us_per_fd"] > 0
    for row in report["idle"] + report["under_load"]:
        assert row["relay"] == "python" and row["handoff_mode"] == "precopy"
        assert row["committed"] == 3, row["not_committed_reasons"]
        assert_clean(row)
        assert set(row["pause_stages_p50_ms"]) == {"export", "transfer", "adopt", "resume"}
        # the client pause's reference: after each swap, as long a window with no swap
        for key in ("client_gap_without_swap_ms", "client_pause_window_ms"):
            assert row[key]["n"] == row["committed"] and row[key]["p50"] > 0, (key, row[key])
        # what each swap added: its client pause less its reference, so never more than it
        added = row["client_pause_added_ms"]
        assert added["n"] == row["committed"] and added["max"] <= row["client_pause_ms"]["max"]
        slowest = row["slowest_pause_stages_ms"]
        assert set(slowest) == set(row["pause_stages_p50_ms"])
        # the slowest swap's stages add up to the row's longest pause (each is rounded)
        assert sum(slowest.values()) == pytest.approx(row["server_pause_ms"]["max"], abs=0.01)
        # the default pause_priority: every pause ran real-time (the tests run as root)
        assert row["realtime"] == {"priority": 10, "pauses": 3, "boosted": 3, "denied": [],
                                   "cut_by_watchdog": 0}, row["realtime"]
        # --row-rollbacks: each row ends with warm rollbacks under its own conditions,
        # each hand-back's pause measured (the canary and load checks cover them too)
        back = row["warm_rollback"]
        assert (back["rollbacks"], back["asked"], back["kind"]) == (2, 2, ["warm handoff"])
        assert back["server_pause_ms"]["n"] == 2 and back["server_pause_ms"]["p50"] > 0
        assert back["realtime"]["boosted"] == 2
    assert report["conditions"]["row_rollbacks"] == 2
    assert report["conditions"]["pause_priority"] == 10
    for row in report["under_load"]:
        assert row["load"]["ok"] and row["load"]["sent"] > 0 and row["load"]["lost"] == 0
    warm, cold = report["rollback"]["python"]["warm"], report["rollback"]["python"]["cold"]
    assert warm["kind"] == ["warm handoff"] and cold["kind"] == ["cold handoff"]
    assert warm["rollbacks"] == cold["rollbacks"] == 2
    assert warm["clients"] == cold["clients"] == 7  # --rollback-clients, not 3 or 20
    for mode in (warm, cold):  # the hand-back's pause ran real-time too
        assert mode["realtime"]["boosted"] == 2 and mode["realtime"]["denied"] == []
    assert {g["name"] for g in report["goals"]} >= {"python relay: cost per extra connection"}
    # --keep: each row's logs, journal and every measured swap's report
    assert report["conditions"]["kept"] == str(kept)
    rows = {f"python-{c}-{mode}": ["committed"] * 3 + ["rolled_back"] * 2
            for c in (3, 20) for mode in ("idle", "load")}
    rows |= {"python-rollback-warm": ["rolled_back"] * 2,
             "python-rollback-cold": ["rolled_back"] * 2}
    assert sorted(p.name for p in kept.iterdir()) == sorted(rows)
    for name, want in rows.items():
        lines = [json.loads(line) for line in
                 (kept / name / "swaps.jsonl").read_text().splitlines()]
        assert [swap["decision"] for swap in lines] == want, name
        if "rollback" not in name:  # every measured swap moved the whole crowd, the first too
            clients = int(name.split("-")[1])
            moved = [s["connections"]["moved"] for s in lines if s["decision"] == "committed"]
            assert min(moved) >= clients, (name, moved)
        assert list((kept / name / "logs").glob("*.log")), name  # the relays' logs
        assert (kept / name / "journal.jsonl").stat().st_size > 0
        assert not [p for p in (kept / name).rglob("*.sock")]  # no sockets copied


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not default_binary().exists(),
                    reason="the Rust example relay is not built (scripts/ensure-tools)")
def test_bench_handoff_measures_rust_beside_python() -> None:
    done = bench_handoff("--relay", "both", "--clients", "5", "--swaps", "2", "--rollbacks", "1",
                         "--row-rollbacks", "1", "--no-load", "--pause-priority", "0",
                         "-o", "json", timeout=110)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert report["conditions"]["relays"] == ["python", "rust"]
    assert report["conditions"]["relay_commands"]["rust"] == [str(default_binary())]
    assert [(r["relay"], r["clients"]) for r in report["idle"]] == [("python", 5), ("rust", 5)]
    assert report["under_load"] == []
    # --pause-priority 0: the relays were left at their own scheduling, and the rows say so
    assert report["conditions"]["pause_priority"] == 0
    assert all(row["realtime"] is None for row in report["idle"])
    rust = report["idle"][1]
    assert_clean(rust)
    assert rust["warm_rollback"]["rollbacks"] == 1  # the crate hands back by pre-copy too
    assert rust["warm_rollback"]["server_pause_ms"]["n"] == 1
    assert rust["handoff_mode"] == "precopy"  # the crate speaks the pre-copy extension too
    assert rust["never_reader"] and rust["unsent_bytes_p50"] > 0  # its backlog was carried
    for relay in ("python", "rust"):
        for mode in ("warm", "cold"):
            assert report["rollback"][relay][mode]["rollbacks"] == 1
            assert report["rollback"][relay][mode]["canary"]["lost"] == 0
    assert set(report["per_connection_cost_us"]) == {"python", "rust"}
    table = side_by_side(report)
    assert "python" in table and "rust" in table and "SCM_RIGHTS" in table
    assert "during a swap | without one" in table


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_row_rollbacks_0_ends_no_row_with_a_rollback(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    done = bench_handoff("--relay", "python", "--clients", "3", "--swaps", "2", "--rollbacks", "1",
                         "--row-rollbacks", "0", "--no-load", "-o", "json", "--keep", str(kept),
                         timeout=110)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout)
    assert report["conditions"]["row_rollbacks"] == 0
    (row,) = report["idle"]
    assert_clean(row)
    assert row["warm_rollback"] is None
    lines = (kept / "python-3-idle" / "swaps.jsonl").read_text().splitlines()
    assert [json.loads(line)["decision"] for line in lines] == ["committed"] * 2
    # the timed rollbacks still run: --row-rollbacks is only the rows' own
    assert report["rollback"]["python"]["warm"]["rollbacks"] == 1
    assert "python" in side_by_side(report)


def test_keep_refuses_a_directory_with_something_in_it(tmp_path: Path) -> None:
    (tmp_path / "earlier").mkdir()
    done = bench_handoff("--relay", "python", "--clients", "3", "--keep", str(tmp_path),
                         timeout=30)
    assert done.returncode == 2
    assert f"{tmp_path} is not empty" in done.stderr.decode()


def test_missing_rust_relay_is_a_usage_error() -> None:
    done = bench_handoff("--relay", "rust", "--rust-relay", "/nonexistent/relay",
                         "--clients", "3", timeout=30)
    assert done.returncode == 2
    assert "build it with scripts/ensure-tools" in done.stderr.decode()


def test_a_rust_binary_with_the_python_relay_alone_is_refused() -> None:
    done = bench_handoff("--relay", "python", "--rust-relay", "/bin/true",
                         "--clients", "3", timeout=30)
    assert done.returncode == 2
    assert "--relay python does not measure it" in done.stderr.decode()


def test_scm_rights_reference_passes_every_fd() -> None:
    result = measure_scm_rights(FdPassSettings(count=300, batch=100, repeats=2))
    assert result["fds"] == 300 and result["fds_per_message"] == 100
    assert 0 < result["best_us_per_fd"] <= result["us_per_fd"]
