"""The README's demo runs, succeeds and leaves no process or file behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_runs_clean_and_leaves_nothing_behind() -> None:
    before = set(Path(tempfile.gettempdir()).glob("swapctl-demo-*"))
    proc = subprocess.Popen([sys.executable, "-m", "swapctl", "demo", "-o", "json"],
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out)
    assert proc.returncode == 0, result
    assert [s["decision"] for s in result["swaps"]] == ["committed", "rolled_back",
                                                        "rolled_back"]
    assert result["swaps"][1]["reason"].startswith("probe failed: echo")
    assert result["swaps"][2]["rollback"]["kind"] == "warm handoff"
    assert result["load"]["ok"] and result["canary"]["lost"] == 0
    # nothing left running in the demo's session (an exited child may wait a moment
    # for init to reap it), and no temp dir
    deadline = time.monotonic() + 5
    while leftovers := _running_in_session(proc.pid):
        assert time.monotonic() < deadline, leftovers
        time.sleep(0.05)
    assert set(Path(tempfile.gettempdir()).glob("swapctl-demo-*")) == before


def _running_in_session(sid: int) -> list[dict[str, object]]:
    return [p.info for p in psutil.process_iter(["pid", "cmdline", "status"])
            if _session(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
