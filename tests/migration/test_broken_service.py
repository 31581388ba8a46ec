"""A broken service file affects that service only, on a real stack (issue 15).

One stack (supervisord, swapctld, reference relays) for the whole module: signal.yaml
has an unknown key. swapctld serves market_data and execution; `status` shows signal
with its error and exits 3; every command for signal exits 2 with that error; swaps,
status and history of the others work. Fixing the file and restarting swapctld (the
relays keep serving) brings signal up.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from tests.stack import Stack, make_stack, teardown

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("broken_service")]
KEY_ERROR = "signal.yaml: soack: unknown key (did you mean soak?)"


@pytest.fixture(scope="module")
def broken() -> Iterator[Stack]:
    s = make_stack(prefix="swb-")
    path = s.config_dir / "signal.yaml"
    path.write_text(path.read_text().replace("soak:", "soack:", 1))
    try:
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def test_the_check_fails_but_up_serves_the_good_services(broken: Stack) -> None:
    s = broken
    done = s.cli("config", "check")
    assert done.returncode == 2 and KEY_ERROR in done.stdout + done.stderr
    code, out = s.json("up")
    assert code == 3, "up serves the good services and says the broken one is not served"
    assert [x["service"] for x in out["status"]["services"] if x.get("config_error")] \
        == ["signal"]
    code, status = s.json("status")
    assert code == 3, "a broken service is an unhealthy one"
    services = {x["service"]: x for x in status["services"]}
    assert sorted(services) == ["execution", "market_data", "signal"]
    assert services["market_data"]["health"]["healthy"]
    assert services["execution"]["health"]["healthy"]
    bad = services["signal"]
    assert not bad["health"]["healthy"] and bad["active"] is None
    (problem,) = bad["config_error"]["problems"]
    assert problem["file"] == str(s.config_dir / "signal.yaml") and problem["key"] == "soack"
    assert problem["line"] and KEY_ERROR in problem["text"]
    assert any(r["service"] == "signal" and r["action"].startswith("not_started")
               for r in status["daemon"]["recovery"])

    done = s.cli("status")
    assert done.returncode == 3
    line = next(x for x in done.stdout.splitlines() if x.startswith("signal "))
    assert "UNHEALTHY: configuration error" in line and KEY_ERROR in line
    assert s.cli("status", "signal").returncode == 3


def test_commands_for_the_broken_service_fail_with_its_error(broken: Stack) -> None:
    for args in (("swap", "signal", "--to", "v2", "--yes"), ("history", "signal"),
                 ("abort", "signal")):
        done = broken.cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert KEY_ERROR in done.stderr and "cannot be used" in done.stderr, args
    done = broken.cli("swap", "signl", "--to", "v2", "--yes")
    assert done.returncode == 4 and "did you mean signal" in done.stderr


def test_the_other_services_swap_and_report(broken: Stack) -> None:
    s = broken
    code, report = s.json("swap", "market_data", "--to", "v2", "--yes")
    assert code == 0 and report["decision"] == "committed", report
    code, status = s.json("status", "market_data")
    assert code == 0 and status["services"][0]["active"]["release"] == "v2"
    code, rows = s.json("history", "market_data")
    assert code == 0 and [r["to"] for r in rows] == ["v2"]
    code, rows = s.json("history")
    assert code == 0 and [r["service"] for r in rows] == ["market_data"]


def test_a_file_broken_after_start_refuses_the_next_swap(broken: Stack) -> None:
    s = broken
    path = s.config_dir / "execution.yaml"
    good = path.read_text()
    path.write_text(good.replace("active: v1", "active: v9", 1))
    try:
        done = s.cli("swap", "execution", "--to", "v2", "--yes")
        assert done.returncode == 2
        assert "execution.yaml: active: 'v9' is not one of the releases" in done.stderr
        code, status = s.json("status", "execution")
        assert code == 0 and status["services"][0]["active"]["release"] == "v1", \
            "it still serves, as it did"
    finally:
        path.write_text(good)


def test_fixed_and_restarted_it_is_served(broken: Stack) -> None:
    s = broken
    path = s.config_dir / "signal.yaml"
    path.write_text(path.read_text().replace("soack:", "soak:", 1))
    pid = s.daemon_pid()
    os.kill(pid, signal.SIGTERM)  # a restart of swapctld: the relays keep serving
    psutil.Process(pid).wait(30)
    s.up()
    code, status = s.json("status")
    assert code == 0, status
    assert {x["service"]: x["active"]["release"] for x in status["services"]} == {
        "execution": "v1", "market_data": "v2", "signal": "v1"}
