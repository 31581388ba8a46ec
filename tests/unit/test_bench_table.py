"""`swapctl bench table`: README's figures generated from the benchmarks' JSON reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from swapctl.bench.table import BEGIN, END, command, current_block, load, render, replace_block
from swapctl.cli import main
from swapctl.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def _conditions(**extra: Any) -> dict[str, Any]:
    return {"python": "3.11.7", "implementation": "CPython", "cpu_model": "Test CPU",
            "cpu_count": 2, "cores_usable": 2, "load_average_1m_5m": [0.5, 0.75],
            "source": {"commit": "abc1234", "uncommitted_changes": False}, **extra}


def _pause(n: int, p50: float, tail: float) -> dict[str, Any]:
    if n < 100:
        return {"n": n, "p50": p50, "max": tail, "mean": p50, "p99_is_max": True}
    return {"n": n, "p50": p50, "p99": tail, "max": tail * 2, "mean": p50}


def _goal(name: str, measured: float | None, met: bool) -> dict[str, Any]:
    return {"name": name, "target": "<= 2 ms", "measured": measured, "unit": "ms", "met": met}


def _handoff_row(relay: str, clients: int, rate: int, n: int) -> dict[str, Any]:
    return {"relay": relay, "clients": clients, "load_msgs_per_s": rate, "committed": n,
            "swaps": n, "not_committed_reasons": [],
            "server_pause_ms": _pause(n, 0.5, 1.25), "client_pause_ms": _pause(n, 3.0, 7.5),
            "canary": {"lost": 0, "disconnects": 1}, "crowd_disconnects": 2}


def _handoff() -> dict[str, Any]:
    rollback = {"clients": 10, "rollbacks": 4,
                "traffic_flowing_ms": _pause(4, 12.0, 20.0)}
    return {
        "benchmark": "handoff",
        "conditions": _conditions(relays=["python"], swaps_per_config=30, journal="on",
                                  never_reader=True, load_rate_asked=5000,
                                  delivery_budget_msgs_per_s=1_500_000),
        "scm_rights_reference": {"us_per_fd": 0.4},
        "idle": [_handoff_row("python", 10, 0, 30)],
        "under_load": [_handoff_row("python", 10, 5000, 150)],
        "rollback": {"python": {"warm": rollback, "cold": rollback}},
        "per_connection_cost_us": {"python": 0.3},
        "goals": [_goal("server pause p99 under load", 1.25, True),
                  _goal("server pause p99 at 5,000 clients", None, False)],
    }


def _strategies() -> dict[str, Any]:
    row = {"strategy": "takeover", "rate_asked": 10000, "rate_used": 10000, "clients": 100,
           "swaps_asked": 10, "pause_ms": {"n": 10, "p50": 4.0, "p99": 9.5, "max": 9.5},
           "disconnects": {"report": 0, "checker": 0}, "lost": 0, "lost_pct": 0.0,
           "errors": []}
    return {"benchmark": "strategies",
            "conditions": _conditions(message_sizes_bytes={"trade": 74, "quote": 90},
                                      rates_asked=[10000], connected_clients=100,
                                      swaps_per_config=10, canary_msgs_per_s=1000.0),
            "results": [row], "skipped": {}, "bridge_latency": None,
            "goals": [_goal("takeover: client pause p99", 9.5, True)]}


def _codec() -> dict[str, Any]:  # codec writes no "benchmark" key: named by its file
    figures = {"best_msgs_per_s": 2_000_000, "vs_reference": 1.2}
    return {"conditions": _conditions(message_bytes=74, messages_per_repeat=1000, repeats=2),
            "parsing": {"crc_verified": figures}, "construction": {"template": figures},
            "goals": [{"name": "parse crc_verified vs reference", "target": ">= 1 x",
                       "measured": 0.8, "unit": "x", "met": False}]}


def _write(tmp_path: Path, name: str, report: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def _row(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_handoff_labels_the_tail_max_below_100_samples_and_p99_above(tmp_path: Path) -> None:
    text = render(load([_write(tmp_path, "handoff", _handoff())]))
    idle = _row(text, "| handoff | python relay, 10 clients, idle |")
    assert "server pause p50 0.5 / max 1.25 ms" in idle and "p99" not in idle
    assert "lost 0, disconnects 3" in idle and "| 30 of 30 swaps committed |" in idle
    loaded = _row(text, "| handoff | python relay, 10 clients, load 5,000 msg/s |")
    assert "server pause p50 0.5 / p99 1.25 ms" in loaded and "| 150 of 150 swaps" in loaded
    assert "decision -> traffic flowing p50 12 / max 20 ms | 4 rollbacks" in text
    assert "without a swap" not in text  # a report from before the reference: nothing made up


def test_handoff_row_puts_the_client_pause_beside_its_gap_without_a_swap(tmp_path: Path) -> None:
    report = _handoff()
    report["under_load"][0]["client_gap_without_swap_ms"] = _pause(150, 2.0, 6.0)
    text = render(load([_write(tmp_path, "handoff", report)]))
    loaded = _row(text, "| handoff | python relay, 10 clients, load 5,000 msg/s |")
    assert ("client pause p50 3 / p99 7.5 ms (without a swap, as long: p50 2 / p99 6 ms)"
            in loaded)


def test_each_goal_is_met_or_not_and_counted(tmp_path: Path) -> None:
    text = render(load([_write(tmp_path, "handoff", _handoff())]))
    assert "| server pause p99 under load | <= 2 ms | 1.25 ms | met |" in text
    assert "| server pause p99 at 5,000 clients | <= 2 ms | not measured | **not met** |" in text
    assert "| 1 of 2 |" in _row(text, "| handoff | 30 swaps per row")


@pytest.mark.parametrize(("priority", "said", "arg"), [
    (10, "the adopter at SCHED_FIFO 10 through each pause", ""),
    (0, "the relays at their own scheduling", " --pause-priority 0"),
    (None, "", ""),  # a report from before pause_priority: nothing claimed
])
def test_the_pause_priority_is_named_and_reproduced(
        tmp_path: Path, priority: int | None, said: str, arg: str) -> None:
    report = _handoff()
    if priority is not None:
        report["conditions"]["pause_priority"] = priority
    text = render(load([_write(tmp_path, "handoff", report)]))
    conditions = _row(text, "| handoff | 30 swaps per row")
    assert "deliveries/s" + (f", {said}" if said else "") + "; 2 of 2 cores" in conditions
    assert (f"--load-rate 5000{arg} -o json > docs/bench/handoff.json`") in text


def test_strategies_p99_of_fewer_than_100_samples_is_the_maximum(tmp_path: Path) -> None:
    text = render(load([_write(tmp_path, "strategies", _strategies())]))
    row = _row(text, "| strategies | takeover, 10,000 msg/s (10,000 asked), 100 clients |")
    assert "client pause p50 4 / max 9.5 ms" in row and "| 10 of 10 swaps |" in row
    assert "message sizes 74/90 bytes, 100 clients" in text


def test_conditions_and_commands_come_from_the_reports(tmp_path: Path) -> None:
    reports = load([_write(tmp_path, "codec", _codec()),
                    _write(tmp_path, "strategies", _strategies()),
                    _write(tmp_path, "handoff", _handoff())])
    names = [name for name, _ in reports]
    assert names == ["codec", "strategies", "handoff"]
    text = render(reports)
    assert "load average 0.5 / 0.75 (1 / 5 min) as the run ended, commit abc1234" in text
    assert ("`swapctl bench handoff --relay python --clients 10 --swaps 30 --rollbacks 4 "
            "--load-rate 5000 -o json > docs/bench/handoff.json`") in text
    assert ("swapctl bench strategies --rates 10000 --clients 100 --swaps 10 --canary-rate "
            "1000 --strategies takeover -o json") in text
    assert "swapctl bench codec --messages 1000 --repeats 2 -o json" in text
    assert "| codec | parsing: crc_verified | 2,000,000 frames/s parsed (1.2 x" in text
    assert text.index("| codec |") < text.index("| handoff |") < text.index("| strategies |")
    assert "No report yet for: `relay`, `diff`, `daemon`, `drill`, `soak`." in text


def test_a_recorded_argv_is_the_command() -> None:
    report = {"benchmark": "soak", "argv": ["--minutes", "5"], "conditions": _conditions()}
    assert command("soak", report) == ("swapctl bench soak --minutes 5 -o json > "
                                       "docs/bench/soak.json")
    assert "not recorded" in command("soak", {"conditions": _conditions()})


def _daemon() -> dict[str, Any]:
    stats = {"n": 1000, "p50": 0.8, "p99": 2.5, "max": 4.0, "mean": 0.9}
    few = {"n": 20, "p50": 20.0, "p99": 30.0, "max": 30.0, "mean": 21.0}
    return {
        "benchmark": "daemon",
        "conditions": _conditions(swaps=1000, rollbacks=20, recoveries=5, rate=5000,
                                  idle_clients=0, soak=0.2, rollback_soak=30.0,
                                  recovery_soak=3.0, publishers=2, consumers=2,
                                  strategy_consumers=1, stack="supervisord + swapctld"),
        "up": {"api_answers_ms": 900.5, "all_healthy_ms": 1200.25, "services": 3},
        "swaps": {"run": 1000, "committed": 1000, "server_pause_ms": stats,
                  "client_pause_ms": stats, "total_ms": stats, "canary_lost": 0},
        "rollbacks": {"run": 20, "rolled_back": 20, "kind": ["warm handoff"],
                      "rollback_ms": few, "traffic_flowing_ms": few},
        "recoveries": {"run": 5, "committed": 5, "restart_to_ready_ms": few,
                       "restart_to_finished_ms": few},
        "swapctld_memory": {"pid": 7, "other_pids": [], "samples": 1001,
                            "swaps_sampled": 1000, "rss_mb_first": 49.5, "rss_mb_last": 51.25,
                            "rss_mb_max": 51.5, "growth_mb_per_1000_swaps": 1.5,
                            "second_half_growth_mb_per_1000_swaps": 0.125},
        "load": {"sent": 2_500_000, "lost": 0, "duplicated": 0, "reordered": 0,
                 "disconnects": 0, "largest_gap_ms": 35.5},
        "goals": [_goal("swapctld RSS growth", 0.125, True)]}


def test_the_daemon_report_gives_its_command_conditions_and_rows(tmp_path: Path) -> None:
    report = _daemon()
    assert command("daemon", report) == (
        "swapctl bench daemon --swaps 1000 --rollbacks 20 --recoveries 5 --rate 5000 --soak 0.2 "
        "--recovery-soak 3 -o json > docs/bench/daemon.json")
    text = render(load([_write(tmp_path, "daemon", report)]))
    assert "load 5,000 msg/s from 2 publishers to 2 consumers (1 a strategy consumer" in text
    assert "| daemon | swap: server pause | p50 0.8 / p99 2.5 ms | 1,000 of 1,000 committed |" \
        in text
    # 20 rollbacks: the tail is the maximum, and says so
    assert ("| daemon | rollback during soak (warm handoff) | p50 20 / max 30 ms; traffic "
            "flowing p50 20 / max 30 ms | 20 of 20 rolled back |") in text
    assert ("| daemon | swapctld RSS | 49.5 -> 51.2 MB (max 51.5); second half 0.125 MB per "
            "1,000 swaps | 1,001 samples over 1,000 swaps |") in text
    assert ("| daemon | load checker, whole run | lost 0, duplicated 0, reordered 0, "
            "disconnects 0; largest gap 35.5 ms | 2,500,000 messages |") in text


def test_relay_and_drill_reports_give_their_command_conditions_and_rows(tmp_path: Path) -> None:
    relay = {"conditions": _conditions(
        message_bytes=74, connections="1 publisher + 1 consumer",
        servers={"relay": "python -m swapctl.relay", "raw": "rawfwd", "direct": "none"},
        throughput={"duration_s": 1.5}, latency={"rate_msgs_per_s": 5000},
        idle_timeout_s=3.0, relay_args=["--framing", "chunk"]),
        "throughput": {"relay": {"messages_per_s": 1_000_000, "lost": 0, "verified": True,
                                 "delivered": 2_000_000}},
        "slow_consumer": {"relay": {"messages_per_s": 900_000, "lost": 0, "delivered": 1_800_000}},
        "latency": {"relay": {"p50_us": 40.0, "p99_us": 160.0, "samples": 19000,
                              "achieved_rate_msgs_per_s": 5000}}}
    drill = {"conditions": _conditions(
        drills=20, playbook=str(REPO / "playbooks" / "rollback-drill.yaml"),
        params={"soak": "30s", "check": "1s"}, relay="reference relay", stack="supervisord"),
        "drills": {"run": 20, "passed": 19, "lost_messages": 0},
        "drill_seconds": {"samples": 20, "p50": 6.2, "p99": 6.4, "max": 6.4},
        "rollback_seconds": {"samples": 20, "p50": 0.05, "p99": 0.07, "max": 0.07}}
    assert command("relay", relay) == (
        "swapctl bench relay --duration 1.5 --rate 5000 --relay python --idle-timeout 3 "
        "--relay-arg=--framing --relay-arg=chunk -o json > docs/bench/relay.json")
    assert command("drill", drill) == (
        "swapctl bench drill --drills 20 --param soak=30s --param check=1s -o json > "
        "docs/bench/drill.json")
    text = render(load([_write(tmp_path, "relay", relay), _write(tmp_path, "drill", drill)]))
    assert "| relay | throughput: relay | 1,000,000 msg/s, lost 0, verified: yes |" in text
    assert "| relay | slow consumer, block mode: relay | 900,000 msg/s, lost 0 |" in text
    assert "| relay | latency: relay | p50 40 / p99 160 us at 5,000 msg/s | 19,000 samples |" \
        in text
    assert "| drill | drills | 19 of 20 passed, 0 messages lost |" in text
    # 20 drills: the tail is the maximum, and says so
    assert "| drill | rollback | p50 0.05 / max 0.07 s | 20 |" in text
    assert "20 drills of rollback-drill.yaml (soak=30s, check=1s)" in text


def test_replace_and_read_the_block_between_the_markers() -> None:
    readme = f"intro\n{BEGIN}\nold table\n{END}\nafter\n"
    new = replace_block(readme, "| new |")
    assert new == f"intro\n{BEGIN}\n| new |\n{END}\nafter\n"
    assert current_block(new) == "| new |"
    with pytest.raises(UsageError, match="markers"):
        replace_block("no markers here", "| x |")


def test_a_file_that_is_not_a_report_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad\.json: not a readable"):
        load([bad])


def test_check_fails_on_drift_and_write_repairs_it(tmp_path: Path) -> None:
    report = str(_write(tmp_path, "handoff", _handoff()))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\n| hand-written |\n{END}\n", encoding="utf-8")
    runner = CliRunner()
    drifted = runner.invoke(main, ["bench", "table", report, "--check", str(readme)])
    assert drifted.exit_code == 1 and "differs from the reports" in drifted.output
    written = runner.invoke(main, ["bench", "table", report, "--write", str(readme)])
    assert written.exit_code == 0, written.output
    assert runner.invoke(main, ["bench", "table", report, "--check", str(readme)]).exit_code == 0
    assert readme.read_text(encoding="utf-8").startswith(f"# x\n{BEGIN}\n| Benchmark |")


def test_readme_table_is_the_one_docs_bench_gives() -> None:
    reports = sorted(str(p) for p in (REPO / "docs/bench").glob("*.json"))
    assert reports, "docs/bench/*.json: no benchmark reports"
    result = CliRunner().invoke(main, ["bench", "table", *reports,
                                       "--check", str(REPO / "README.md")])
    assert result.exit_code == 0, result.output


def test_swaps_not_committed_are_counted_and_explained(tmp_path: Path) -> None:
    report = _handoff()
    report["idle"][0].update(swaps=30, committed=3, not_committed_reasons=["canary behind"] * 5)
    report["idle"][0]["server_pause_ms"] = _pause(3, 0.5, 1.25)
    row = _row(render(load([_write(tmp_path, "handoff", report)])), "| handoff | python relay, 10")
    assert "; 27 not committed (first: canary behind) | 3 of 30 swaps committed |" in row


def test_each_rows_warm_rollbacks_are_shown_and_their_count_reproduced(tmp_path: Path) -> None:
    report = _handoff()
    report["conditions"]["row_rollbacks"] = 100
    report["under_load"][0]["warm_rollback"] = {
        "rollbacks": 99, "asked": 100, "server_pause_ms": _pause(99, 0.4, 0.9)}
    text = render(load([_write(tmp_path, "handoff", report)]))
    loaded = _row(text, "| handoff | python relay, 10 clients, load 5,000 msg/s |")
    # 99 samples: the tail is the maximum; one of the 100 asked did not roll back
    assert "; warm rollback server pause p50 0.4 / max 0.9 ms (99 of 100 rolled back)" in loaded
    assert "warm rollback server pause" not in _row(text, "| handoff | python relay, 10 "
                                                          "clients, idle |")
    assert "--row-rollbacks 100 -o json > docs/bench/handoff.json`" in text
