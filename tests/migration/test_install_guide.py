"""systemd/README.md's install guide, followed line by line in a temporary root.

No root and no running systemd: /etc, /opt, /var, /run and /tmp/torq are rewritten to
ROOT/... in the guide's lines and in the files it copies (the metrics port to 0, to share
the machine); a venv is the checkout's own, linked where the guide creates one. For
`systemctl enable --now` the test does what systemd does: it creates the units'
StateDirectory=, LogsDirectory= and RuntimeDirectory=, and runs each unit's own
ExecStartPre= and ExecStart= with its Environment= (swapctld, Type=notify, with a
NOTIFY_SOCKET it waits on for READY=1). A guide line this test does not know fails it.
Everything started is stopped as systemd would, and by pid, never by name.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from swapctl.process import end_processes, processes_under

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "systemd" / "README.md"
SECTION = "## Install, step by step"
VENV = Path(sys.executable).parent.parent  # the checkout's venv: swapctl and supervisor
PREFIXES = re.compile(r"(?<![\w.\-/])(/etc/|/opt/|/var/|/run/|/tmp/torq\b)")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(90)


def guide_lines() -> list[str]:
    """Every command of the guide's sh blocks, continuation lines joined."""
    text = GUIDE.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.split(" #")[0].strip())
    return lines


def parse_unit(path: Path) -> dict[str, list[str]]:
    """KEY -> values (every section; the units here repeat no key across sections)."""
    keys: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(s|min)?", value).groups()  # type: ignore[union-attr]
    return float(number) * (60 if unit == "min" else 1)


@dataclass
class Started:
    unit: str
    proc: subprocess.Popen[bytes]
    keys: dict[str, list[str]]


@dataclass
class Install:
    root: Path
    user: str | None = None
    venvs: list[Path] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)
    status: subprocess.CompletedProcess[str] | None = None
    notify: socket.socket | None = None

    def rooted(self, text: str) -> str:
        return PREFIXES.sub(lambda m: f"{self.root}{m[1]}", text)

    def env(self, keys: dict[str, list[str]] | None = None) -> dict[str, str]:
        env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": str(self.root / "var/lib")}
        for assignment in (keys or {}).get("Environment", []):
            name, value = assignment.split("=", 1)
            env[name] = value
        return env

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=REPO, env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout, check=False)

    # ----- the guide's commands -----------------------------------------------------

    def follow(self, line: str) -> None:
        argv = shlex.split(self.rooted(line))
        name = Path(argv[0]).name
        if argv[0] == "useradd":
            self.user = argv[-1]
        elif argv[:3] == ["python3", "-m", "venv"]:
            self.venv(Path(argv[3]))
        elif name == "pip":
            self.pip(Path(argv[0]), argv[1:])
        elif argv[:2] == ["install", "-d"] or argv[0] == "cp":
            self.copy(argv)
        elif name == "swapctl" and argv[1] == "status":
            self.status = self.run(argv)
        elif name == "swapctl":
            done = self.run(argv)
            assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        elif argv[:2] == ["systemd-analyze", "verify"]:  # tests/unit/test_systemd_units.py
            assert all(Path(p).is_file() for p in argv[2:]), line
        elif argv[:2] == ["systemctl", "daemon-reload"] or argv[:2] == ["systemctl",
                                                                       "list-timers"]:
            pass
        elif argv[:3] == ["systemctl", "enable", "--now"]:
            for unit in argv[3:]:
                self.enable(unit)
        else:
            pytest.fail(f"{GUIDE}: a line this test does not follow: {line!r}: teach "
                        "tests/migration/test_install_guide.py what it does")

    def venv(self, path: Path) -> None:
        assert path.is_relative_to(self.root), path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(VENV, target_is_directory=True)
        self.venvs.append(path)

    def pip(self, pip: Path, args: list[str]) -> None:
        assert args[0] == "install" and pip.parent.parent in self.venvs, (pip, args)
        for package in args[1:]:
            if package == "supervisor":
                assert (pip.parent / "supervisord").is_file()
            elif package == "/path/to/swapctl":
                assert (pip.parent / "swapctl").is_file()
            else:
                pytest.fail(f"pip install {package}: not a package the guide installs")

    def copy(self, argv: list[str]) -> None:
        """`install -d` and `cp [-r] SRC... DEST`, with the copied text rooted."""
        if argv[0] == "install":
            done = self.run(argv)
            assert done.returncode == 0, done.stderr
            return
        recursive = argv[1] == "-r"
        *sources, dest = argv[2:] if recursive else argv[1:]
        target = Path(dest)
        assert target.is_relative_to(self.root) and target.is_dir(), dest
        for pattern in sources:
            matches = sorted(glob.glob(str(REPO / pattern)))
            assert matches, f"cp {pattern}: nothing matches in {REPO}"
            for match in map(Path, matches):
                if match.is_dir():
                    assert recursive, f"cp {match} needs -r"
                    shutil.copytree(match, target / match.name)
                else:
                    (target / match.name).write_text(self.rooted(match.read_text())
                                                     .replace(":9464", ":0"))

    # ----- what systemd does -----------------------------------------------------------

    def enable(self, unit: str) -> None:
        units = self.root / "etc/systemd/system"
        if unit.endswith(".timer"):  # an instance of the drill's template
            template = re.sub(r"@[^.]+\.", "@.", unit)
            instance = unit.split("@")[1].split(".", 1)[0]
            assert (units / template).is_file() and (units / template.replace(
                ".timer", ".service")).is_file(), unit
            assert (self.root / "etc/swapctl" / f"{instance}.yaml").is_file(), unit
            return
        keys = parse_unit(units / unit)
        assert keys["User"] == [self.user], f"{unit}: User= is not the user the guide adds"
        self.files_named(unit, keys)
        for key, base in (("StateDirectory", "var/lib"), ("LogsDirectory", "var/log"),
                          ("RuntimeDirectory", "run")):
            for name in keys.get(key, []):
                (self.root / base / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {**self.env(keys), "INVOCATION_ID": uuid.uuid4().hex}
        for command in keys.get("ExecStartPre", []):
            done = self.run(shlex.split(command), env)
            assert done.returncode == 0, f"{unit}: ExecStartPre={command}: {done.stderr}"
        if keys["Type"] == ["notify"]:
            env["NOTIFY_SOCKET"] = str(self.notify_socket())
            env["WATCHDOG_USEC"] = str(int(seconds(keys["WatchdogSec"][0]) * 1e6))
        [command] = keys["ExecStart"]
        with (self.root / f"{unit}.out").open("ab") as out:
            proc = subprocess.Popen(shlex.split(command), env=env, cwd="/", stdout=out,
                                    stderr=out, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.started.append(Started(unit, proc, keys))
        if keys["Type"] == ["notify"]:
            self.wait_ready(unit, proc)

    def files_named(self, unit: str, keys: dict[str, list[str]]) -> None:
        """Every file an Exec line or the environment of `unit` names exists."""
        for key in ("ExecStartPre", "ExecStart", "Environment"):
            for value in keys.get(key, []):
                for word in re.split(r"[\s=]", value):
                    if word.startswith(str(self.root)):
                        assert Path(word).exists(), f"{unit}: {key}= names {word}: missing"

    def notify_socket(self) -> Path:
        path = self.root / "run" / "notify.sock"
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(path))
        return path

    def wait_ready(self, unit: str, proc: subprocess.Popen[bytes]) -> None:
        assert self.notify is not None
        self.notify.settimeout(0.2)
        said: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT
        while "READY=1" not in said or "WATCHDOG=1" not in said:
            assert proc.poll() is None, f"{unit} exited with {proc.returncode}: " \
                f"{(self.root / f'{unit}.out').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{unit}: no READY=1 and WATCHDOG=1 " \
                f"within {START_TIMEOUT:g}s (got {said})"
            with contextlib.suppress(TimeoutError):
                said += self.notify.recv(4096).decode().splitlines()

    def stop(self) -> list[psutil.Process]:
        """Stop as systemd would, last started first: SIGTERM to the main process; then
        (KillMode=mixed) SIGKILL to its group, or (KillMode=process) to nothing more.
        Returns what was left under ROOT, killed."""
        for unit in reversed(self.started):
            if unit.proc.poll() is None:
                unit.proc.send_signal(signal.SIGTERM)
            timeout = min(seconds(unit.keys.get("TimeoutStopSec", ["15s"])[0]), 15.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                unit.proc.wait(timeout)
            if unit.keys.get("KillMode") == ["mixed"] or unit.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(unit.proc.pid, signal.SIGKILL)
            unit.proc.wait(5)
        left = [p for p in processes_under(self.root) if p.pid != os.getpid()]
        end_processes(left)
        if self.notify is not None:
            self.notify.close()
        return left


def short_root() -> Path:
    """/tmp/iXXX: the production paths leave 9 bytes to a root (the longest socket they
    derive, a legacy slot's under /var/lib/swapctl, is 98 of AF_UNIX's 107 bytes)."""
    for _ in range(200):
        path = Path(f"/tmp/i{secrets.token_hex(2)[:3]}")
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o755)
            return path
    pytest.fail("no free /tmp/iXXX directory for the install root")


@pytest.fixture
def install() -> Iterator[Install]:
    root = short_root()
    (root / "etc/systemd/system").mkdir(parents=True)  # as on every systemd host
    done = Install(root)
    try:
        yield done
    finally:
        done.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_install_guide_brings_up_a_healthy_stack(install: Install) -> None:
    lines = guide_lines()
    for line in lines:
        install.follow(line)
    units = [s.unit for s in install.started]
    assert units == ["swapctl-supervisord.service", "swapctld.service"]
    status = install.status
    assert status is not None, "the guide never runs swapctl status"
    assert status.returncode == 0, status.stdout + status.stderr
    for service in ("market_data", "signal", "execution"):
        assert service in status.stdout
    supervisord = psutil.Process(install.started[0].proc.pid)
    relays = supervisord.children()
    assert len(relays) == 3, [r.cmdline() for r in relays]  # each service's active release
    left = install.stop()
    assert not left, f"left running after the stop: {[p.info['cmdline'] for p in left]}"
    assert all(not r.is_running() for r in relays)


def test_the_guide_refuses_a_line_it_does_not_know(install: Install) -> None:
    """The walk above cannot pass over a new step silently."""
    with pytest.raises(pytest.fail.Exception, match="does not follow"):
        install.follow("chown -R swapctl /etc/swapctl")
