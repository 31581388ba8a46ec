"""README's "Your own stack in a minute" runs as written, and `swapctl init` and
`swapctl demo --keep` do what it promises.

The README block (between <!-- own-stack:begin --> and <!-- own-stack:end -->) is parsed,
its DIR (/tmp/mystack) replaced by a fresh short temp dir, and each command run in order
with its exit code checked; the program `.venv/bin/swapctl` is run as this interpreter's
`-m swapctl` (the venv the tests run in). Cleanup in a `finally`: `down`, then anything
still running from the temp dir is killed, found by that path in its command line or
environment (swapctl.process.processes_under), never by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl.process import processes_under
from tests.stack import reap_under

REPO = Path(__file__).resolve().parents[2]
README_DIR = "/tmp/mystack"
PROGRAM = ".venv/bin/swapctl"
SWAPCTL = [sys.executable, "-m", "swapctl"]


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- own-stack:begin -->\n```\n(.*?)```\n<!-- own-stack:end -->",
                      text, re.S)
    assert found, "README.md has no own-stack block between its markers"
    lines = [ln for ln in found.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    return [shlex.split(ln) for ln in lines]


def _run(argv: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="swos-", dir="/tmp"))
    try:
        yield path
    finally:
        _stop(path)


def _stop(path: Path) -> None:
    """`down` for every configuration under PATH, then kill what is left of it."""
    for configs in path.glob("**/configs/swapctld.yaml"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run([*SWAPCTL, "down", "--config-dir", str(configs.parent)], timeout=60)
    left = reap_under(path)
    assert not left, f"still running under {path}: {left}"


def test_the_readme_block_is_complete() -> None:
    commands = readme_commands()
    assert [c[:2] for c in commands] == [[PROGRAM, name] for name in
                                         ("init", "up", "status", "swap", "rollback",
                                          "drill", "down")]
    assert all(f"{README_DIR}/configs" in c for c in commands[1:]), commands


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_your_own_stack_runs_as_written(root: Path) -> None:
    stack = root / "s"
    started = time.monotonic()
    for written in readme_commands():
        assert written[0] == PROGRAM
        argv = [*SWAPCTL, *(a.replace(README_DIR, str(stack)) for a in written[1:])]
        done = _run(argv)
        assert done.returncode == 0, f"{argv[3:]}: exit {done.returncode}\n{done.stdout}\n" \
                                     f"{done.stderr}"
        if argv[3] == "init":  # it prints the same next commands, for this DIR
            assert f"up --config-dir {stack}/configs" in done.stdout, done.stdout
        if argv[3] == "up":  # --force does not overwrite a running stack's configuration
            refused = _run([*SWAPCTL, "init", "--force", str(stack)])
            assert refused.returncode == 2 and "is running" in refused.stderr, refused.stderr
        if argv[3] == "swap":
            assert "v1 -> v2" in done.stdout and "decision: COMMITTED" in done.stdout
        if argv[3] == "rollback":
            assert "v2 -> v1" in done.stdout and "decision: COMMITTED" in done.stdout
    assert not processes_under(stack), "down left processes running"
    assert time.monotonic() - started < 90


def _market_data_logs(stdout: str, lines: int = 40) -> str:
    """The tail of the demo's market_data relay logs (they warn of lagging consumers
    and skipped bytes) and swapctld's: a failure shows what they saw before the test's
    dir is removed (a CI run's checker found 2 lost and 2 corrupted that both reports
    and their canaries did not see, and nothing was left to tell why)."""
    found = re.search(r"working in (\S+)", stdout)
    if found is None:
        return "(no demo dir printed)"
    out = []
    root = Path(found.group(1))
    for log in sorted([*(root / "state" / "supervisord" / "logs").glob("market_data*"),
                       root / "logs" / "swapctld.log"]):
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"== {log.name}\n" + "\n".join(tail))
    return "\n".join(out) or "(no market_data logs)"


def test_init_refuses_an_existing_configuration_and_a_too_long_dir(root: Path) -> None:
    done = _run([*SWAPCTL, "init", str(root / "a")])
    assert done.returncode == 0, done.stderr
    before = (root / "a" / "configs" / "swapctld.yaml").read_text()
    (root / "a" / "configs" / "swapctld.yaml").write_text(before + "# mine\n")
    again = _run([*SWAPCTL, "init", str(root / "a")])
    assert again.returncode == 2
    assert "already holds a configuration" in again.stderr and "--force" in again.stderr
    assert "swapctld.yaml" in again.stderr
    assert (root / "a" / "configs" / "swapctld.yaml").read_text().endswith("# mine\n")
    forced = _run([*SWAPCTL, "init", "--force", str(root / "a")])
    assert forced.returncode == 0 and \
        (root / "a" / "configs" / "swapctld.yaml").read_text() == before

    deep = root / ("d" * (107 - len(str(root)) - len("/run/x.sock")))
    long = _run([*SWAPCTL, "init", str(deep)])
    assert long.returncode == 2, long.stdout
    assert f"{deep}/run/market_data.handoff.sock is " in long.stderr, long.stderr
    assert "longer than AF_UNIX's 107" in long.stderr and "choose a DIR of at most" in long.stderr
    assert not deep.exists()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_keep_leaves_the_stack_up_until_down(root: Path) -> None:
    env = {**os.environ, "TMPDIR": str(root), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*SWAPCTL, "demo", "--keep", "--soak", "1"], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env=env,
                          check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{_market_data_logs(done.stdout)}"
    printed = re.findall(r"^\s+(\S.*? down --config-dir (\S+))\s+#", done.stdout, re.M)
    assert len(printed) == 1, done.stdout
    down, config_dir = printed[0]
    assert Path(config_dir).parent.parent == root
    assert "stopped every relay" not in done.stdout
    daemons = [p for p in processes_under(root) if "daemon" in p.cmdline()]
    assert daemons, "swapctld is not running after demo --keep"
    stopped = _run([*SWAPCTL, "down", *shlex.split(down.split(" down ", 1)[1])], timeout=60)
    assert stopped.returncode == 0 and "stopped every relay and exited" in stopped.stdout, \
        stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 5
    while left := processes_under(Path(config_dir).parent):
        assert time.monotonic() < deadline, [p.pid for p in left]
        time.sleep(0.1)
