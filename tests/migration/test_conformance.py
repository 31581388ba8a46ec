"""`swapctl conformance` against the two relays that speak the handoff protocol: the
Python reference relay and the Rust example relay (sdk/rust), and against a relay that
breaks the frame semantics (the suite must say so)."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swapctl.conformance.rig import Peer, message
from swapctl.conformance.suite import ALL_CASES
from swapctl.process import stop_group
from tests.conftest import wait_connectable
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
@pytest.mark.parametrize("relay", ["python", "rust", "rust-v1"])
def test_every_case_passes(relay: str) -> None:
    # rust-v1: the Rust relay without the pre-copy extensions, so every handoff case runs
    # the version-1 ADOPT path (its sockets staged too, conn.rs `Sock`)
    command = PYTHON_RELAY if relay == "python" else shlex.quote(str(example_relay()))
    if relay == "rust-v1":
        command += " --no-precopy"
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


def test_rust_relay_in_legacy_mode_serves_its_compiled_path(sockdir: Path) -> None:
    """`--legacy --socket PATH`: no handoff, deletes and binds its path like the real
    relays, a multi-threaded tokio runtime, broadcast with echo of whole frames."""
    path = sockdir / "alphapulse" / "market_data.sock"
    path.parent.mkdir()
    path.write_bytes(b"")  # a stale file at the path: replaced, as the real relays do
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAPCTL_")}
    proc = subprocess.Popen([str(example_relay()), "--legacy", "--socket", str(path)],
                            env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_connectable(path, proc, 10)
        assert len(os.listdir(f"/proc/{proc.pid}/task")) > 1  # tokio multi-thread
        sub = Peer(_connect(path))
        sub.send(message(100))
        sub.expect(message(100), "echo (sub is served)")
        pub = Peer(_connect(path))
        pub.send(message(101))
        pub.expect(message(101), "echo (pub is served)")
        frame = message(1)
        pub.send(frame[:10])
        pub.send(frame[10:] + message(2))
        sub.expect(message(100) + message(101) + frame + message(2), "broadcast, whole frames")
        pub.expect(message(101) + frame + message(2), "echo of whole frames")
    finally:
        stop_group(proc, 5)
    bad = subprocess.run([str(example_relay()), "--legacy"], capture_output=True, text=True,
                         timeout=30, check=False, env=env)
    assert bad.returncode == 2 and "--socket" in bad.stderr
    unmanaged = subprocess.run([str(example_relay())], capture_output=True, text=True,
                               timeout=30, check=False, env=env)
    assert unmanaged.returncode == 2 and "SWAPCTL_HANDOFF is not set" in unmanaged.stderr


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock
