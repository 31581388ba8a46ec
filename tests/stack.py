"""The real stack for migration tests: supervisord, swapctld and reference relays under one
private temp root, the CLI as operators run it, and cleanup by the root's unique path.

`make_stack(**write_options)` writes the embedded config (swapctl.demo.configs) under a
fresh /tmp root (short AF_UNIX paths); `teardown(stack)` brings the stack up again
(recovering whatever a test left) and down, then kills anything still running from that
root (found by the root's path in its command line or environment, never by name) and
removes it. A test module wraps the two in a fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from swapctl.config.load import Config, load_config
from swapctl.daemon import stack
from swapctl.demo import configs
from swapctl.process import processes_under

SWAPCTL = (sys.executable, "-m", "swapctl")


@dataclass
class Stack:
    root: Path
    config_dir: Path
    entry: tuple[str, ...] = field(default=SWAPCTL)  # how the CLI is started

    @property
    def config(self) -> Config:
        return load_config(self.config_dir)

    def argv(self, *args: str) -> list[str]:
        return [*self.entry, *args, "--config-dir", str(self.config_dir)]

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})}, check=False)

    def json(self, *args: str, **kw: Any) -> tuple[int, Any]:
        done = self.cli(*args, "-o", "json", **kw)
        try:
            return done.returncode, json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"{args}: exit {done.returncode}, stdout {done.stdout!r}, "
                                 f"stderr {done.stderr!r}") from None

    def up(self, **kw: Any) -> dict[str, Any]:
        code, out = self.json("up", **kw)
        assert code == 0, out
        return dict(out)

    def status(self, service: str = "market_data") -> dict[str, Any]:
        return dict(stack.client_for(self.config).call("status", service=service)
                    ["services"][0])

    def daemon_pid(self) -> int:
        return int(stack.client_for(self.config).call("ping")["pid"])

    def wait_report(self, swap_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        client = stack.client_for(self.config)
        while True:
            with contextlib.suppress(Exception):
                report = client.call("report", swap_id=swap_id)["report"]
                if report.get("decision") not in (None, "running"):
                    return dict(report)
            assert time.monotonic() < deadline, f"swap {swap_id} did not end in {timeout}s"
            time.sleep(0.1)

    def wait_state(self, state: str, timeout: float = 30,
                   service: str = "market_data") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            swap = self.status(service)["swap"]
            if swap and swap["running"] and swap["state"] == state:
                return dict(swap)
            if time.monotonic() >= deadline:
                ended = ""
                if swap and not swap["running"]:  # it ended first: say how, from its report
                    report = self.wait_report(swap["swap_id"], timeout=10)
                    ended = (f"; it ended as {report.get('decision')}: {report.get('reason')}"
                             f"; notes {(report.get('evidence') or {}).get('notes')}")
                raise AssertionError(f"swap never reached {state}: {swap}{ended}")
            time.sleep(0.02)


def leftovers(root: Path) -> list[psutil.Process]:
    """Processes of this stack (swapctl.process.processes_under: by the root's path)."""
    return processes_under(root)


def make_stack(prefix: str = "swd-", entry: tuple[str, ...] = SWAPCTL,
               **write_options: Any) -> Stack:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    options = {"soak": "1s", "metrics": "127.0.0.1:0", **write_options}
    return Stack(root, configs.write(root, **options), entry)


def teardown(s: Stack) -> list[int]:
    """Stop the stack, kill what is left of it; the pids that had to be killed."""
    with contextlib.suppress(Exception):
        stack.up(s.config, timeout=30)
        stack.down(s.config, timeout=30)
    left = leftovers(s.root)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(s.root, ignore_errors=True)
    return [p.pid for p in left]


def reap_under(path: Path) -> list[int]:
    """After `down`: SIGKILL whatever still runs from PATH (by path, never by name), remove
    PATH, and return the pids that had been left running (the caller asserts none)."""
    left = processes_under(path)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(path, ignore_errors=True)
    return [p.pid for p in left]
