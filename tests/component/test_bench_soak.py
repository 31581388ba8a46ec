"""`swapctl bench soak` for half a minute with faults, on the reference relay and on the
Rust example relay: nothing lost, the JSON complete, the plot written, nothing left running.

The bench runs the real stack (supervisord, swapctld, the relays) and the real clients
under a /tmp root it names in its report; afterwards no process may mention it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from swapctl.bench.soak import role_of
from swapctl.supervise.layout import LAUNCHER_MODULE
from tests.rust import example_relay

ENTRY = (sys.executable, "-m", "swapctl")


def _running_from(root: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(root in part for part in proc.info["cmdline"] or ()) or any(
                    root in value for value in proc.environ().values()):
                found.append(proc.pid)
    return found


def _run(args: list[str], timeout: float) -> tuple[int, str, str]:
    """The bench in its own session; on a hang, SIGTERM (it tears its stack down), then
    SIGKILL of its group. (SIGINT: pytest's handler is reset to the default by exec.)"""
    proc = subprocess.Popen([*ENTRY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"bench soak hung; stderr: {err[-3000:]}")
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("relay", ["python", "rust"])
def test_soak_half_a_minute_with_faults(tmp_path: Path, relay: str) -> None:
    # seed 5: swapctld is killed 1.9 s into its swap (past `starting`: a kill there leaves
    # the candidate running and later swaps find both slots busy; see the report)
    plot = tmp_path / "soak.png"
    if relay == "rust":
        example_relay()
    code, out, err = _run(["bench", "soak", "--minutes", "0.5", "--faults", "--every", "2.5",
                           "--seed", "5", "--relay", relay, "-o", "json", "--plot", str(plot)],
                          timeout=150)
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["benchmark"] == "soak" and report["ok"] and report["failures"] == []

    load = report["load"]
    assert load["ok"] and load["sent"] > 0 and load["received"] > 0
    assert (load["lost"], load["duplicated"], load["reordered"], load["corrupted"],
            load["disconnects"]) == (0, 0, 0, 0, 0)
    assert not any(c["dead"] for c in load["consumers"])

    steps = report["steps"]
    assert steps["run"] >= 4 and steps["by_kind"]["swap"].get("committed", 0) >= 1
    injected = report["faults"]["injected"]
    assert report["faults"]["enabled"] and injected, "no fault in half a minute"
    assert injected[0]["fault"] == "swapctld" and injected[0]["phase"]
    assert report["faults"]["not_yet"] == {}  # every fault kind is injected in turn

    pauses = report["pauses"]
    assert pauses["server_ms"]["n"] >= 1 and pauses["series"]
    assert all(p["server_ms"] is None or p["server_ms"] >= 0 for p in pauses["series"])

    samples = report["samples"]
    assert len(samples) >= 3
    roles = {p["role"].split(":")[0] for s in samples for p in s["processes"]}
    assert {"swapctld", "supervisord", "relay"} <= roles
    relays = {p["name"] for s in samples for p in s["processes"] if p["role"].startswith("relay")}
    # every relay that served was the one asked for (the Python relay runs as python3.11)
    assert relays and all(name.startswith("swapctl-example" if relay == "rust" else "python")
                          for name in relays), relays
    for role in ("swapctld", "supervisord", "relay"):
        trend = report["processes"][role]
        assert trend["samples"] >= 1 and trend["rss_mb_last"] > 0 and trend["fds_last"] > 0
        assert "rss_slope_mb_per_h" in trend and "fds_slope_per_h" in trend
    conditions = report["conditions"]
    assert conditions["minutes"] == 0.5 and conditions["faults"] is True
    assert conditions["relay"] == relay
    assert conditions["sample_interval_s"] > 0 and conditions["cpu_count"]

    assert report["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = report["cleanup"]["root"]
    assert root and not Path(root).exists() and _running_from(root) == []


def test_a_rust_binary_without_the_rust_relay_is_refused_before_the_run() -> None:
    code, _, err = _run(["bench", "soak", "--minutes", "0.1", "--rust-relay", "/bin/true"],
                        timeout=60)
    assert code == 2 and "--relay rust" in err and "Traceback" not in err
    code, _, err = _run(["bench", "soak", "--minutes", "0.1", "--relay", "rust",
                         "--rust-relay", "/nonexistent/relay"], timeout=60)
    assert code == 2 and "not built" in err and "Traceback" not in err


def test_plot_refused_before_the_run_for_an_unknown_suffix(tmp_path: Path) -> None:
    code, _, err = _run(["bench", "soak", "--minutes", "0.1", "--plot",
                         str(tmp_path / "soak.txt")], timeout=60)
    assert code == 2 and ".png" in err and "Traceback" not in err


def test_a_slot_launcher_before_its_exec_is_no_relay_sample() -> None:
    # supervisord starts a slot's launcher (Python, with SUPERVISOR_PROCESS_NAME), which
    # execs the relay; a sample between the two is neither a relay nor the relay's RSS
    code = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(30)"
    env = {**os.environ, "SUPERVISOR_PROCESS_NAME": "market_data-blue"}
    roles = []
    for extra in ((LAUNCHER_MODULE,), ()):
        proc = subprocess.Popen([sys.executable, "-c", code, *extra], env=env,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "up\n"
            roles.append(role_of(psutil.Process(proc.pid)))
        finally:
            proc.kill()
            proc.wait(10)
    assert roles == [None, "relay:market_data-blue"]
