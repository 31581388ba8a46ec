"""`swapctl conformance` against the two relays that speak the handoff protocol: the
Python reference relay and the Rust example relay (sdk/rust), and against a relay that
breaks the frame semantics (the suite must say so)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from typing import Any

import pytest

from swapctl.conformance.suite import ALL_CASES
from tests.rust import example_relay

SWAPCTL = [sys.executable, "-m", "swapctl"]
PYTHON_RELAY = f"{shlex.quote(sys.executable)} -m swapctl.relay --log-level warning"


def conformance(relay: str, *args: str, timeout: float = 400) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([*SWAPCTL, "conformance", "--relay", relay, *args, "-o", "json"],
                          capture_output=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    return done.returncode, json.loads(done.stdout) if done.stdout else {}


def failures(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["cases"] if not c["ok"]}


@pytest.mark.slow
@pytest.mark.timeout(450)
@pytest.mark.parametrize("relay", ["python", "rust"])
def test_every_case_passes(relay: str) -> None:
    command = PYTHON_RELAY if relay == "python" else shlex.quote(str(example_relay()))
    code, report = conformance(command)
    assert failures(report) == {}
    assert code == 0
    assert report["passed"] == len(ALL_CASES) and report["failed"] == 0
    assert {c["group"] for c in report["cases"]} == {"start-up", "frames", "handoff", "failures"}


def test_a_relay_that_breaks_framing_and_echo_fails() -> None:
    broken = f"{PYTHON_RELAY} --framing chunk --no-echo"
    code, report = conformance(broken, "--case", "echo", "--case", "split-frame",
                               "--case", "hello", timeout=100)
    assert code == 1
    assert set(failures(report)) == {"echo", "split-frame"}
    assert "echo to the sender" in failures(report)["echo"]


def test_a_relay_that_never_connects_fails_with_its_output() -> None:
    silent = f"{shlex.quote(sys.executable)} -c \"print('no handoff here')\""
    code, report = conformance(silent, "--case", "hello", timeout=60)
    assert code == 1
    assert "did not connect" in failures(report)["hello"]


def test_usage_errors_exit_2() -> None:
    unknown = subprocess.run([*SWAPCTL, "conformance", "--relay", "x", "--case", "nope"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode == 2 and "unknown case nope" in unknown.stderr
    missing = subprocess.run([*SWAPCTL, "conformance", "--relay", "/nonexistent/relay",
                              "--case", "echo"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert missing.returncode == 2 and "cannot run" in missing.stderr
