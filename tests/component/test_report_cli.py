"""`swapctl report ID --html/--svg` through the CLI and a real control socket.

The handler answers `report` as swapctld's op_report does: STATE/reports/ID.json if filed,
else the swap's journal records (a swap still running), else an unknown swap. The state
dir holds a report filed by a real demo run (tests/data/reports/committed.json).
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from swapctl.cli import main
from swapctl.daemon.api import ApiServer
from swapctl.demo import configs

pytestmark = pytest.mark.timeout(30)
DATA = Path(__file__).parent.parent / "data" / "reports"
RUNNING = "swap-20261203T000000-runnin"


class StateDir:
    """Answers `report` from ROOT/state like the daemon; counts the requests."""

    def __init__(self, root: Path) -> None:
        self.reports = root / "state" / "reports"
        self.reports.mkdir(parents=True)
        self.journal: list[dict[str, Any]] = []
        self.asked = 0

    def __call__(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.asked += 1
        swap_id = request["swap_id"]
        path = self.reports / f"{swap_id}.json"
        if path.exists():
            yield {"type": "result", "report": json.loads(path.read_text())}
            return
        records = [r for r in self.journal if r.get("swap") == swap_id]
        if not records:
            yield {"type": "error", "code": "usage",
                   "message": f"no swap {swap_id}: see `swapctl history`"}
            return
        yield {"type": "result",
               "report": {"swap_id": swap_id, "decision": "running", "journal": records}}


@pytest.fixture
def stack(sockdir: Path) -> Iterator[tuple[Path, StateDir, str]]:
    config_dir = configs.write(sockdir)
    (sockdir / "run").mkdir()
    state = StateDir(sockdir)
    report = json.loads((DATA / "committed.json").read_text())
    shutil.copy(DATA / "committed.json", state.reports / f"{report['swap_id']}.json")
    server = ApiServer(sockdir / "run" / "control.sock", state)
    server.start()
    try:
        yield config_dir, state, report["swap_id"]
    finally:
        server.close()


def _run(config_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["report", *args, "--config-dir", str(config_dir)])


def test_html_and_svg_of_a_filed_report(stack: tuple[Path, StateDir, str],
                                        tmp_path: Path) -> None:
    config_dir, state, swap_id = stack
    page, image = tmp_path / "t.html", tmp_path / "t.svg"
    done = _run(config_dir, swap_id, "--html", str(page), "--svg", str(image))
    assert done.exit_code == 0, done.output
    assert "decision: COMMITTED" in done.stdout, "the report is printed as without --html"
    assert f"timeline of {swap_id} written to {page}" in done.stderr
    filed = json.loads((state.reports / f"{swap_id}.json").read_text())
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    svg = ET.fromstring(image.read_text())
    phases = [r.get("data-phase") for r in svg.iter("{http://www.w3.org/2000/svg}rect")
              if r.get("class") == "phase"]
    assert phases[:len(filed["phases"])] == [p["phase"] for p in filed["phases"]]
    assert html[html.index("<svg"):html.index("</svg>") + 6] == image.read_text()

    done = _run(config_dir, swap_id, "-o", "json", "--svg", str(image))
    assert done.exit_code == 0 and json.loads(done.stdout) == filed


def test_a_swap_without_timing_exits_2_and_writes_nothing(
        stack: tuple[Path, StateDir, str], tmp_path: Path) -> None:
    config_dir, state, _ = stack
    state.journal = [{"swap": RUNNING, "event": "request", "request": "abort"}]
    page = tmp_path / "t.html"
    done = _run(config_dir, RUNNING, "--html", str(page))
    assert done.exit_code == 2, done.output
    assert f"swap {RUNNING} has no phase timings to draw" in done.stderr
    assert "Traceback" not in done.output and not page.exists()

    done = _run(config_dir, "swap-unknown", "--html", str(page))
    assert done.exit_code == 2 and "no swap swap-unknown" in done.stderr


def test_an_unwritable_file_exits_2_and_says_which(stack: tuple[Path, StateDir, str],
                                                   tmp_path: Path) -> None:
    config_dir, state, swap_id = stack
    done = _run(config_dir, swap_id, "--html", str(tmp_path / "missing" / "t.html"))
    assert done.exit_code == 2
    assert f"--html {tmp_path / 'missing' / 't.html'}: no directory" in done.stderr
    assert state.asked == 0, "refused before asking the daemon"

    dangling = tmp_path / "t.svg"
    os.symlink(tmp_path / "gone" / "t.svg", dangling)  # the directory exists, the write fails
    done = _run(config_dir, swap_id, "--svg", str(dangling))
    assert done.exit_code == 2 and f"--svg {dangling}: cannot write it" in done.stderr
    assert "Traceback" not in done.output

    done = _run(config_dir, swap_id, "--html", str(tmp_path))
    assert done.exit_code == 2 and "is a directory" in done.stderr
