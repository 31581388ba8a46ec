"""The playbook model, its operator errors, parameters, drill windows and report formats:
no daemon, no relay (the stack tests are tests/migration/test_playbooks.py)."""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

import swapctl.playbook.model
from swapctl.config.errors import ConfigError
from swapctl.config.model import DrillWindow
from swapctl.playbook import reports, windows
from swapctl.playbook.load import load_playbook
from swapctl.playbook.model import (
    GateStep,
    PlaybookKind,
    RollbackStep,
    SwapStep,
    VerifyStep,
)

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yaml"))


def test_shipped_playbooks_load() -> None:
    assert [p.name for p in PLAYBOOKS] == ["ci-equivalence.yaml", "migrate.yaml",
                                           "rollback-drill.yaml"]
    drill = load_playbook(REPO / "playbooks" / "rollback-drill.yaml")
    assert drill.kind is PlaybookKind.DRILL
    kinds = [s.kind for s in drill.steps]
    assert kinds.index("swap") < kinds.index("rollback") < kinds.index("gate")
    rollback = next(s for s in drill.steps if isinstance(s, RollbackStep))
    assert rollback.via == "request"
    gates = [(s.value, s.op, s.threshold) for s in drill.steps if isinstance(s, GateStep)]
    assert ("rollback_seconds", "<=", "rollback_budget") in gates
    assert ("lost", "==", 0.0) in gates
    assert [s.kind for s in drill.cleanup] == ["load", "restore"]
    migrate = load_playbook(REPO / "playbooks" / "migrate.yaml")
    assert [s.kind for s in migrate.steps][:3] == ["config_check", "diff", "gate"]
    assert migrate.cleanup[0].when == "failure"


def test_parameters_are_substituted_with_their_types(tmp_path: Path) -> None:
    drill = load_playbook(REPO / "playbooks" / "rollback-drill.yaml",
                          {"soak": "1s", "load_rate": "500"})
    swap = next(s for s in drill.steps if isinstance(s, SwapStep))
    assert swap.soak == 1.0 and swap.until == "serving"
    load = drill.steps[1]
    assert load.rate == 500.0  # type: ignore[union-attr]
    assert drill.params["soak"] == "1s"
    with pytest.raises(ConfigError) as caught:
        load_playbook(REPO / "playbooks" / "rollback-drill.yaml", {"load_rate": "fast"})
    assert "--param load_rate=fast: must be a whole number, like its default 2000" in str(
        caught.value)


BAD = """\
name: bad
kind: dril
params: {soak: 1s}
steps:
  - {kind: swap, name: go, to: "@cand", soak: "${sok}"}
  - {kind: gate, name: fast enough, value: rollback_secs, op: "<=", threshold: 30s}
  - {kind: wiat, duration: 1s}
  - {kind: wait}
  - {kind: rollback, via: teleport}
  - {kind: wait, duration: 1s, when: failure}
cleanup:
  - {kind: restore, colour: red}
"""


def test_errors_name_file_step_key_fix_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as caught:
        load_playbook(path, {"soakk": "2s"})
    lines = str(caught.value).splitlines()
    expected = [
        "params: --param soakk: no such parameter (did you mean soak?)",
        "steps[0]: soak: ${sok} names no parameter (did you mean soak?): declare it under "
        "params (there are: soak) (line 5)",
        "kind: must be one of migration, drill, ci, not 'dril' (did you mean drill?) (line 2)",
        "steps[0] (go): to: @cand is not a release reference: use @baseline, @candidate or a "
        "release name (line 5)",
        "steps[1] (fast enough): value: 'rollback_secs' is not a measured value (did you mean "
        "rollback_seconds?)",
        "steps[2]: kind 'wiat' is unknown (did you mean wait?): the kinds are commit, "
        "config_check, diff, gate, load, restore, rollback, shadow, steady_state, swap, "
        "verify, wait (line 7)",
        "steps[3] (wait): duration: required, but missing: add it, e.g. duration: 5s (line 8)",
        "steps[4] (rollback): via: must be one of request, abort, swap_back, not 'teleport' "
        "(line 9)",
        "steps[5] (wait): when: only cleanup steps have a when",
        "cleanup[0] (restore): colour: unknown key: the keys here are kind, name, timeout, "
        "when (line 12)",
    ]
    for text in expected:
        assert any(line.startswith(f"{path}: {text}") for line in lines), (text, lines)
    assert lines[-1] == f"{len(lines) - 1} configuration errors"


def test_a_playbook_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- kind: wait\n")
    with pytest.raises(ConfigError, match="a playbook is a mapping with name, kind and steps"):
        load_playbook(path)
    path.write_text("name: x\nkind: ci\nsteps: [\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_playbook(path)


def test_defaults_per_kind() -> None:
    verify = VerifyStep(kind="verify")
    steady = VerifyStep(kind="steady_state")
    assert (verify.expected, verify.load_s) == ("@candidate", None)
    assert (steady.expected, steady.load_s) == ("@baseline", 1.0)
    assert steady.deadline_s == 32.0 and steady.title == "steady_state"
    assert SwapStep(kind="swap", timeout=5.0).deadline_s == 5.0


def test_the_model_does_no_io() -> None:
    tree = ast.parse(Path(swapctl.playbook.model.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"socket", "subprocess", "os", "threading", "signal", "asyncio",
                           "multiprocessing", "pathlib"}


# ----- windows -------------------------------------------------------------------------

def _at(text: str, zone: str = "America/New_York") -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


MARKET = DrillWindow(days=["mon", "tue", "wed", "thu", "fri"], start="09:30", end="16:00",
                     timezone="America/New_York", reason="US equity market hours")
NIGHT = DrillWindow(days=["sun"], start="22:00", end="02:00", reason="futures open")


@pytest.mark.parametrize(("when", "window", "inside"), [
    ("2026-11-24T10:00", MARKET, True),   # Tuesday morning in New York
    ("2026-11-24T09:29", MARKET, False),
    ("2026-11-24T16:00", MARKET, False),  # end is exclusive
    ("2026-11-28T10:00", MARKET, False),  # Saturday
    ("2026-11-29T23:00", NIGHT, True),    # Sunday night, UTC
    ("2026-11-30T01:59", NIGHT, True),    # Monday, still the Sunday window
    ("2026-11-30T02:00", NIGHT, False),
    ("2026-11-30T23:00", NIGHT, False),   # Monday night: not a day it opens
])
def test_windows(when: str, window: DrillWindow, inside: bool) -> None:
    zone = window.timezone
    assert windows.inside(window, _at(when, zone)) is inside
    if inside:
        assert window.reason in windows.describe(window, _at(when, zone))


def test_window_rejects_a_bad_zone_and_time() -> None:
    with pytest.raises(ValueError, match="not a known time zone"):
        DrillWindow(start="09:30", end="16:00", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="should match pattern"):
        DrillWindow(start="9:30", end="16:00")


def test_schedule_from_systemd_analyze() -> None:
    files = windows.timer_files("market_data", REPO / "systemd" / "swapctl-drill@.timer")
    keys = windows.timer_settings(files)
    assert keys["OnCalendar"] == ["Sun *-*-* 04:00:00 UTC"] and keys["Persistent"] == ["true"]
    runs = windows.next_runs(keys["OnCalendar"], 3)
    assert len(runs) == 3
    assert all(r.weekday() == 6 and (r.hour, r.minute) == (4, 0) for r in runs)
    assert [(b - a).days for a, b in itertools.pairwise(runs)] == [7, 7]
    assert runs[0] > dt.datetime.now(dt.UTC)


def test_timer_drop_in_resets_on_calendar(tmp_path: Path) -> None:
    main = tmp_path / "t.timer"
    main.write_text("[Timer]\nOnCalendar=Sun *-*-* 04:00:00 UTC\nPersistent=true\n")
    drop = tmp_path / "override.conf"
    drop.write_text("[Timer]\nOnCalendar=\nOnCalendar=Sat *-*-* 05:00:00 UTC\n")
    assert windows.timer_settings([main, drop])["OnCalendar"] == ["Sat *-*-* 05:00:00 UTC"]


# ----- reports -------------------------------------------------------------------------

JOURNAL = {
    "run_id": "20261125T000000Z-rollback-drill-market_data-abcdef",
    "playbook": "rollback-drill", "kind": "drill", "service": "market_data",
    "state": "failed", "started": 1795600000.0, "ended": 1795600012.5,
    "releases": {"baseline": {"name": "v1", "command_sha256": "a" * 64},
                 "candidate": {"name": "v9", "command_sha256": "b" * 64}},
    "values": {"rollback_seconds": 0.25, "lost": 3},
    "gates": [{"step": "rollback within budget", "value": "rollback_seconds",
               "measured": 0.25, "op": "<=", "threshold": 30.0, "ok": True},
              {"step": "no message lost", "value": "lost", "measured": 3, "op": "==",
               "threshold": 0.0, "ok": False}],
    "steps": [
        {"section": "steps", "index": 0, "name": "rollback within budget", "kind": "gate",
         "result": "passed", "seconds": 0.001, "reason": ""},
        {"section": "steps", "index": 1, "name": "no message lost", "kind": "gate",
         "result": "failed", "seconds": 0.001, "reason": "lost 3 is not == 0"},
        {"section": "steps", "index": 2, "name": "later", "kind": "wait",
         "result": "skipped", "seconds": 0.0, "reason": "an earlier step failed"},
        {"section": "cleanup", "index": 0, "name": "restore", "kind": "restore",
         "result": "timed_out", "seconds": 90.0, "reason": "did not finish"},
    ],
    "result": {"ok": False, "state": "failed", "reason": "no message lost: lost 3 is not == 0",
               "seconds": 12.5},
}


def test_summary_names_the_failed_gate() -> None:
    summary = reports.summary(JOURNAL)
    assert summary["failed_gate"] == {
        "step": "no message lost", "kind": "gate", "result": "failed",
        "reason": "lost 3 is not == 0", "value": "lost", "measured": 3, "op": "==",
        "threshold": 0.0}
    assert (summary["baseline"], summary["candidate"]) == ("v1", "v9")
    text = reports.render_text(summary)
    assert "FAILED" in text and "gate lost 3 == 0: FAILED" in text


def test_junit_parses_and_marks_each_step() -> None:
    root = ET.fromstring(reports.junit_xml(JOURNAL))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"),
            suite.get("skipped")) == ("4", "1", "1", "1")
    cases = {c.get("name"): [x.tag for x in c] for c in suite.iter("testcase")}
    assert cases == {"0: rollback within budget": [], "1: no message lost": ["failure"],
                     "2: later": ["skipped"], "0: restore": ["error"]}
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["candidate"] == "v9 sha256:" + "b" * 64


def test_prometheus_textfile_parses(tmp_path: Path) -> None:
    path = tmp_path / "drill.prom"
    reports.write_metrics(path, JOURNAL)
    samples = {s.name: (s.labels, s.value)
               for family in text_string_to_metric_families(path.read_text())
               for s in family.samples}
    labels = {"service": "market_data", "playbook": "rollback-drill"}
    assert samples["swapctl_drill_success"] == (labels, 0.0)
    assert samples["swapctl_drill_rollback_seconds"] == (labels, 0.25)
    assert samples["swapctl_drill_lost_messages"] == (labels, 3.0)
    assert samples["swapctl_drill_duration_seconds"] == (labels, 12.5)
    assert samples["swapctl_drill_last_run_timestamp_seconds"] == (labels, 1795600012.5)
