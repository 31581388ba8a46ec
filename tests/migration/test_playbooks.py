"""Playbooks and drills end to end on the real stack: supervisord, swapctld, reference
relays, the CLI as operators (and systemd's drill timer) run it, and independent load
sessions as the judge of loss.

Durations are kept short through playbook parameters (soak, shadow, load checks). Every
test has its own /tmp root; teardown stops the stack and kills whatever is left of it by
the root's unique path (tests/stack.py). Children started here (a `swapctl run` to
interrupt) run in their own process group and are ended by group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from swapctl.playbook.runner import HANG_AT
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.process import stop_group
from tests.stack import Stack, make_stack, teardown

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
# The CLI, with `run`, `drill` and `bench drill` registered if swapctl/cli/__init__.py
# does not list them yet (the lead adds them there).
ENTRY = (sys.executable, "-c",
         "from swapctl.cli import main, playbook, bench_drill\n"
         "if 'drill' not in main.commands: playbook.register(main)\n"
         "main(prog_name='swapctl')")
FAST = ("--param", "soak=20s", "--param", "check=0.5s", "--param", "load_rate=1000")
FAULTY = {"noecho": ["--no-echo"], "lossy": ["--drop-every", "5"]}


@pytest.fixture
def s() -> Iterator[Stack]:
    stack = make_stack("swp-", ENTRY, services=("market_data",), extra_releases=FAULTY)
    try:
        stack.up()
        yield stack
    finally:
        left = teardown(stack)
        assert not left, f"processes left running: {left}"


def _reports(run: dict[str, Any]) -> tuple[dict[str, Any], ET.Element, dict[str, float]]:
    """Every file a run wrote, parsed: the JSON report, JUnit XML, Prometheus textfile."""
    files = run["files"]
    report = json.loads(Path(files["report"]).read_text())
    journal = json.loads(Path(files["journal"]).read_text())
    assert journal["run_id"] == report["run_id"] == run["run_id"]
    junit = ET.parse(files["junit"]).getroot()
    metrics: dict[str, float] = {}
    if "metrics" in files:
        for family in text_string_to_metric_families(Path(files["metrics"]).read_text()):
            for sample in family.samples:
                metrics[sample.name] = sample.value
        latest = Path(files["textfile"]).read_text()
        assert latest == Path(files["metrics"]).read_text()
    return report, junit, metrics


def _case_failures(junit: ET.Element) -> dict[str, str]:
    return {case.get("name", ""): child.tag for case in junit.iter("testcase")
            for child in case if child.tag in ("failure", "error", "skipped")}


def _serves(s: Stack, release: str) -> None:
    status = s.status()
    assert status["active"]["release"] == release and status["health"]["healthy"], status
    assert status["swap"] is None or not status["swap"]["running"]


def test_rollback_drill_passes_with_evidence(s: Stack) -> None:
    code, run = s.json("drill", "market_data", *FAST, timeout=180)
    assert code == 0, run
    assert run["state"] == "passed" and run["baseline"] == "v1" and run["candidate"] == "v2"
    values = run["values"]
    assert 0 < values["rollback_seconds"] <= 30
    assert values["rollback_serving_seconds"] <= values["rollback_seconds"]
    assert values["lost"] == 0 and values["disconnects"] == 0 and values["received"] > 0
    assert values["restored"] == 0, "the drill itself rolled back: cleanup had nothing to do"
    _serves(s, "v1")

    report, junit, metrics = _reports(run)
    assert report["ok"] and report["failed_gate"] is None
    assert [g["value"] for g in report["gates"]] == ["rollback_seconds", "lost", "disconnects"]
    assert report["gates"][0]["threshold"] == 30.0  # rollback.deadline's default
    assert _case_failures(junit) == {}
    assert len(list(junit.iter("testcase"))) == 12
    assert metrics["swapctl_drill_success"] == 1.0
    assert metrics["swapctl_drill_rollback_seconds"] == values["rollback_seconds"]
    assert metrics["swapctl_drill_lost_messages"] == 0.0

    journal = json.loads(Path(run["files"]["journal"]).read_text())
    releases = journal["releases"]
    assert releases["candidate"]["name"] == "v2" and len(
        releases["candidate"]["command_sha256"]) == 64
    decisions = [e["decision"] for e in journal["events"] if e["event"] == "decision"]
    assert decisions[:2] == ["swap_started", "rollback_requested"]
    assert "gate_passed" in decisions

    code, rows = s.json("history", "--drills", "market_data")
    assert code == 0 and rows[0]["run_id"] == run["run_id"] and rows[0]["state"] == "passed"
    text = s.cli("history", "--drills").stdout
    assert run["run_id"] in text and "PASSED" in text and "rollback 0." in text


@pytest.mark.parametrize(("candidate", "failing_kinds", "words"), [
    ("noecho", ("swap",), "probe failed"),
    ("lossy", ("swap", "verify", "rollback", "gate"), "dropped"),
], ids=["probe-fails", "drops-messages"])
def test_drill_against_a_faulty_candidate_ends_rolled_back(
        s: Stack, candidate: str, failing_kinds: tuple[str, ...], words: str) -> None:
    code, run = s.json("drill", "market_data", "--candidate", candidate, *FAST, timeout=180)
    assert code == 1, run
    assert run["state"] == "failed"
    gate = run["failed_gate"]
    assert gate["kind"] in failing_kinds and gate["reason"], gate
    if candidate == "noecho":
        assert words in gate["reason"]
    else:  # swapctld's error counters, its canary, or the independent load: one sees it;
        # or swapctld's canary already rolled the swap back, and the drill's verify step
        # finds the baseline serving instead of the candidate (seen in a CI run)
        assert words in gate["reason"] or "lost" in gate["reason"] \
            or gate["reason"].startswith("v1 serves"), gate
    _serves(s, "v1")
    report, junit, metrics = _reports(run)
    assert report["failed_gate"] == gate
    failures = _case_failures(junit)
    assert failures[f"{gate_index(report, gate['step'])}: {gate['step']}"] == "failure"
    assert "skipped" in failures.values()
    assert metrics["swapctl_drill_success"] == 0.0
    code, rows = s.json("history", "--drills")
    assert rows[0]["state"] == "failed" and rows[0]["reason"] == run["reason"]


def gate_index(report: dict[str, Any], name: str) -> int:
    return next(st["index"] for st in report["steps"] if st["name"] == name)


def test_migrate_and_ci_equivalence_end_to_end(s: Stack) -> None:
    judge = LoadSession(LoadConfig(s.root / "sockets" / "market_data.sock", rate=1000,
                                   duration=None, consumer_mode=ConsumerMode.DASHBOARD,
                                   consumers=2, strategy_consumers=1))
    judge.start()
    try:
        code, run = s.json("run", str(PLAYBOOKS / "migrate.yaml"), "--service", "market_data",
                           "--candidate", "v2", "--param", "shadow=1s", "--param", "soak=1s",
                           timeout=200)
    finally:
        result = judge.stop()
    assert code == 0, (run["reason"], run["steps"])
    assert run["state"] == "passed" and "metrics" not in run["files"]  # not a drill
    assert run["values"]["diff_different"] == 0 and run["values"]["shadow_differences"] == 0
    assert run["values"]["canary_lost"] == 0
    assert Path(run["files"]["journal"]).parent.parent.name == "playbooks"
    _serves(s, "v2")
    assert result.ok, result.problems()  # the migration lost nothing a client sent
    _reports(run)

    code, run = s.json("run", str(PLAYBOOKS / "ci-equivalence.yaml"), "--service",
                       "market_data", "--candidate", "v1", "--param", "scenarios=ci")
    assert code == 0 and run["state"] == "passed", run
    code, run = s.json("run", str(PLAYBOOKS / "ci-equivalence.yaml"), "--service",
                       "market_data", "--candidate", "noecho", "--param", "scenarios=ci")
    assert code == 1 and run["failed_gate"]["value"] == "diff_different", run
    assert run["failed_gate"]["measured"] >= 1
    _serves(s, "v2")  # CI touches nothing live


def _playbook(s: Stack, name: str, body: dict[str, Any]) -> Path:
    path = s.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "kind": "migration", **body}))
    return path


HOLD = [{"kind": "load", "action": "start", "rate": 1000},
        {"kind": "swap", "name": "to v2", "to": "v2", "soak": "60s", "until": "serving"}]
CLEANUP = [{"kind": "load", "name": "stop load", "action": "stop"},
           {"kind": "restore", "name": "restore"}]


def test_cleanup_restores_after_a_step_times_out(s: Stack) -> None:
    path = _playbook(s, "times-out", {"steps": [
        *HOLD, {"kind": "wait", "name": "too long", "duration": "30s", "timeout": "1s"}],
        "cleanup": CLEANUP})
    started = time.monotonic()
    code, run = s.json("run", str(path), "--service", "market_data")
    assert code == 1 and run["state"] == "timed_out", run
    assert time.monotonic() - started < 60
    assert run["failed_gate"]["step"] == "too long"
    assert [st["result"] for st in run["steps"] if st["section"] == "cleanup"] == \
        ["passed", "passed"]
    assert run["values"]["restored"] == 1 and run["values"]["lost"] == 0
    _serves(s, "v1")
    _, junit, _ = _reports(run)
    assert _case_failures(junit)["2: too long"] == "error"


def _wait_step(journal: Path, step: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            events = json.loads(journal.read_text())["events"]
        except (OSError, json.JSONDecodeError, KeyError):
            events = []
        if any(e["event"] == "step_started" and e.get("step") == step for e in events):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never started")


def _start_run(s: Stack, path: Path, env: dict[str, str] | None = None
               ) -> tuple[subprocess.Popen[bytes], Path]:
    before = set((s.root / "state" / "playbooks").glob("2*"))
    proc = subprocess.Popen(s.argv("run", str(path), "--service", "market_data", "-o", "json"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = set((s.root / "state" / "playbooks").glob("2*")) - before
        if new and (next(iter(new)) / "journal.json").exists():
            return proc, next(iter(new)) / "journal.json"
        time.sleep(0.05)
    stop_group(proc)
    raise AssertionError("the run wrote no journal")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cleanup_runs_after_a_signal(s: Stack, sig: signal.Signals) -> None:
    path = _playbook(s, "interrupted", {"steps": [
        *HOLD, {"kind": "wait", "name": "hold", "duration": "60s"}], "cleanup": CLEANUP})
    proc, journal = _start_run(s, path)
    try:
        _wait_step(journal, "hold")
        assert s.status()["active"]["release"] == "v2"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the load session's processes"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_group(proc)
    run = json.loads(out)
    assert proc.returncode == 1 and run["state"] == "interrupted", run
    assert sig.name in run["reason"]
    assert run["values"]["restored"] == 1 and run["values"]["lost"] == 0
    _serves(s, "v1")
    # what the run started ends with it (multiprocessing's resource tracker reads until
    # the run's exit closes its pipe: a moment after, on a busy machine)
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not [c for c in alive if c.is_running() and c.status() != "zombie"]


def test_watchdog_restores_when_a_step_stalls(s: Stack) -> None:
    path = _playbook(s, "stalls", {"watchdog_grace": "1s", "steps": [
        *HOLD, {"kind": "wait", "name": "stuck", "duration": "1s", "timeout": "1s"}],
        "cleanup": CLEANUP})
    proc, journal = _start_run(s, path, {HANG_AT: "stuck"})
    try:
        proc.communicate(timeout=90)
    finally:
        stop_group(proc)
    assert proc.returncode == 1
    data = json.loads(journal.read_text())
    assert data["state"] == "watchdog" and "v1 restored" in data["result"]["reason"]
    assert [e["event"] for e in data["events"]][-2:] == ["watchdog_fired", "watchdog_restored"]
    _serves(s, "v1")


def test_a_killed_run_is_recovered_by_the_next_drill(s: Stack) -> None:
    path = _playbook(s, "killed", {"steps": [
        *HOLD, {"kind": "wait", "name": "hold", "duration": "60s"}], "cleanup": CLEANUP})
    proc, journal = _start_run(s, path)
    try:
        _wait_step(journal, "hold")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_group(proc)
    assert s.status()["active"]["release"] == "v2", "nobody restored it yet"
    code, run = s.json("drill", "market_data", *FAST, timeout=180)
    assert code == 0, run
    dead = json.loads(journal.read_text())
    assert dead["state"] == "killed" and "hold" in dead["result"]["reason"]
    recovered = dead["recovered_by_next_run"]
    assert any("aborted swap" in a for a in recovered["actions"]), recovered
    current = json.loads(Path(run["files"]["journal"]).read_text())
    assert current["recovered"]["run_id"] == dead["run_id"]
    _serves(s, "v1")


def test_refused_window_is_honoured_and_overridable(s: Stack) -> None:
    daemon_file = s.config_dir / "swapctld.yaml"
    daemon = yaml.safe_load(daemon_file.read_text())
    daemon["drills"] = {"refuse": [{"start": "00:00", "end": "00:00", "reason": "always"}]}
    daemon_file.write_text(yaml.safe_dump(daemon))
    code, run = s.json("drill", "market_data", *FAST)
    assert code == 2 and run["state"] == "refused" and "always" in run["reason"], run
    assert "--override-window" in run["reason"]
    assert s.status()["swap"] is None, "nothing was done"
    _, junit, metrics = _reports(run)
    assert metrics["swapctl_drill_refused"] == 1.0 and metrics["swapctl_drill_success"] == 0.0
    assert _case_failures(junit) == {"run": "skipped"}

    code, plan = s.json("drill", "--schedule", "market_data", "--count", "3")
    assert code == 0 and len(plan[0]["runs"]) == 3
    assert all(r["refused"] for r in plan[0]["runs"])

    code, run = s.json("drill", "market_data", "--override-window", *FAST, timeout=180)
    assert code == 0 and run["state"] == "passed", run
    journal = json.loads(Path(run["files"]["journal"]).read_text())
    assert any(e.get("decision") == "window_overridden" for e in journal["events"])


def test_dry_run_prints_the_plan_and_does_nothing(s: Stack) -> None:
    code, plan = s.json("drill", "market_data", "--dry-run")
    assert code == 0 and plan["playbook"] == "rollback-drill"
    assert [st["kind"] for st in plan["cleanup"]] == ["load", "restore"]
    text = s.cli("run", str(PLAYBOOKS / "migrate.yaml"), "--service", "market_data",
                 "--dry-run").stdout
    assert "plan: migrate (migration) on market_data" in text and "[shadow, <= 120s]" in text
    assert not (s.root / "state" / "drills").exists()
    assert s.status()["swap"] is None


def test_bench_drill_reports_percentiles_and_conditions() -> None:
    done = subprocess.run([*ENTRY, "bench", "drill", "--drills", "1", "--param", "check=0.3s",
                           "-o", "json"], capture_output=True, text=True, timeout=200,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["drills"] == {"run": 1, "passed": 1, "lost_messages": 0, "failures": []}
    rollback = report["rollback_seconds"]
    assert rollback["samples"] == 1 and 0 < rollback["p50"] == rollback["p99"] < 30
    assert report["drill_seconds"]["p50"] > rollback["p50"]
    assert report["conditions"]["params"]["check"] == "0.3s"
    assert "drill 1/1: passed" in done.stderr


@pytest.mark.slow
def test_a_killed_run_is_restored_by_swapctld_when_its_lease_expires(s: Stack) -> None:
    """Nobody runs the next drill: swapctld's lease of the dead run expires and the
    daemon itself puts the baseline back (the run's swap had been committed)."""
    path = _playbook(s, "killed2", {"steps": [
        *HOLD, {"kind": "wait", "name": "hold", "duration": "60s"}], "cleanup": CLEANUP})
    proc, journal = _start_run(s, path)
    try:
        _wait_step(journal, "hold")
        assert s.status()["lease"] is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_group(proc)
    assert s.status()["active"]["release"] == "v2", "nobody restored it yet"
    deadline = time.monotonic() + 40  # the lease's 15 s, the restore swap, margins
    while s.status()["active"]["release"] != "v1" or (s.status()["swap"] or {}).get("running"):
        assert time.monotonic() < deadline, "swapctld did not restore the dead run's baseline"
        time.sleep(0.2)
    journal_text = (s.root / "state" / "journal.jsonl").read_text()
    assert '"event": "lease_expired"' in journal_text
    _serves(s, "v1")
