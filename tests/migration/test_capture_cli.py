"""record and replay as operators run them (issue 15): a missing socket is one clear line
and the documented exit code, never a traceback; -o json is one JSON document on stdout."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from swapctl.capture.format import scenario_records
from swapctl.capture.pcapng import write_capture
from swapctl.cli import main
from swapctl.scenarios import builtin
from tests.conftest import Processes


def _capture(path: Path) -> Path:
    scenario = builtin.build("churn", 3, 1, None)
    write_capture(path, scenario_records(scenario), {"scenario": "churn", "seed": 3})
    return path


def test_missing_socket_is_a_clear_error(sockdir: Path, tmp_path: Path) -> None:
    cap = _capture(tmp_path / "c.pcapng")
    runner = CliRunner()
    (sockdir / "file").write_text("")  # a path that is there but no socket
    for sock in (sockdir / "missing.sock", sockdir / "file"):
        done = runner.invoke(main, ["replay", str(cap), "--socket", str(sock)])
        assert done.exit_code == 2, done.output
        assert isinstance(done.exception, SystemExit), "an error, not a traceback"
        assert f"{sock}" in done.stderr and "Traceback" not in done.output
    out = tmp_path / "tap.pcapng"
    done = runner.invoke(main, ["record", "--socket", str(sockdir / "missing.sock"),
                                "--out", str(out), "--duration", "0.1", "-o", "json"])
    assert done.exit_code == 3, done.output  # README: a socket not reachable
    assert isinstance(done.exception, SystemExit) and done.stdout == ""
    assert "cannot connect to the relay" in done.stderr and not out.exists()


def test_record_and_replay_say_what_they_did_in_json(procs: Processes, sockdir: Path,
                                                     tmp_path: Path) -> None:
    live = sockdir / "live.sock"
    procs.relay(live, "--log-level", "warning")
    runner = CliRunner()
    out = tmp_path / "tap.pcapng"
    done = runner.invoke(main, ["record", "--socket", str(live), "--out", str(out),
                                "--duration", "0.3", "-o", "json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["out"] == str(out) and out.exists()
    assert summary["socket"] == str(live) and summary["relay_closed"] is False
    assert summary["frames"] == summary["bytes"] == 0  # nobody published
    done = runner.invoke(main, ["replay", str(_capture(tmp_path / "c.pcapng")), "--socket",
                                str(live), "-o", "json"])
    assert done.exit_code == 0, done.output
    replayed = json.loads(done.stdout)
    assert replayed["checked"] is False and replayed["writes"] > 0 and replayed["bytes"] > 0
    assert replayed["clients"] == len(builtin.build("churn", 3, 1, None).clients)
