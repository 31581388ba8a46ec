"""The systemd units: `systemd-analyze verify` prints nothing, and the relations hold.

verify exits 0 on unknown keys and bad values ("ignoring"), so any line it prints is a
failure. It also checks that every ExecStart= binary exists: the units name the
documented install prefix (/opt/swapctl/venv, systemd/README.md), so verify runs in a
temporary root holding the distribution's units, ours, and stand-ins for exactly the
binaries the README installs there. A unit naming any other binary fails.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
PREFIX = "/opt/swapctl/venv/bin"
BINARIES = ("swapctl", "supervisord")  # what systemd/README.md installs under PREFIX
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
SERVICES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if p.stem != "swapctld")
FILES = sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))


# one worker for the module: its fixture is module-scoped (./run test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("systemd_units")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: run scripts/ensure-tools (apt: systemd)")
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sysroot")
    system = next((d for d in SYSTEM_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if system is None:
        pytest.fail("no systemd unit directory: run scripts/ensure-tools (apt: systemd)")
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(UNITS, root / "etc/systemd/system",
                    ignore=shutil.ignore_patterns("*.md"))
    bindir = root / PREFIX.lstrip("/")
    bindir.mkdir(parents=True)
    for name in BINARIES:
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return root


def verify(root: Path, *units: str) -> str:
    """Everything `systemd-analyze verify` says about `units` (paths or unit names)."""
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", f"--root={root}", *units],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    said = (done.stdout + done.stderr).strip()
    return said or ("" if done.returncode == 0 else f"exit code {done.returncode}")


def test_units_verify_without_a_word(root: Path) -> None:
    assert {"swapctld.service", "swapctl-supervisord.service", "swapctl-drill@.service",
            "swapctl-drill@.timer"} <= set(FILES)
    files = [str(root / "etc/systemd/system" / name) for name in FILES]
    instances = [f"swapctl-drill@{s}.{kind}" for s in SERVICES for kind in ("service", "timer")]
    assert SERVICES == ["execution", "market_data", "signal"]
    assert verify(root, *files, *instances) == ""


def test_the_check_sees_a_warning(root: Path) -> None:
    """The check is not vacuous: an unknown key (which verify ignores, exit 0) is caught."""
    bad = root / "etc/systemd/system/swapctl-typo.service"
    bad.write_text((UNITS / "swapctld.service").read_text().replace(
        "WatchdogSec=", "WatchDogSec="))
    try:
        said = verify(root, str(bad))
    finally:
        bad.unlink()
    assert "Unknown key 'WatchDogSec'" in said


def parse(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    [value] = unit[section][key]
    return value


STOP_PROPAGATING = ("PartOf", "BindsTo", "Requires", "Requisite", "PropagatesStopTo",
                    "StopPropagatedFrom", "PropagatesReloadTo", "ReloadPropagatedFrom",
                    "Conflicts", "JoinsNamespaceOf")


def test_a_daemon_restart_never_reaches_the_relays() -> None:
    daemon, supervisor = parse("swapctld.service"), parse("swapctl-supervisord.service")
    for key in STOP_PROPAGATING:
        assert "swapctld" not in " ".join(supervisor["Unit"].get(key, [])), key
        assert "supervisord" not in " ".join(daemon["Unit"].get(key, [])), key
    assert one(daemon, "Unit", "Wants") == "swapctl-supervisord.service"
    assert one(daemon, "Service", "Type") == "notify"
    assert one(daemon, "Service", "WatchdogSec")
    assert one(daemon, "Service", "Restart") == "always"
    assert one(daemon, "Service", "KillMode") == "mixed"  # its own cgroup only
    assert "Slice" not in daemon["Service"] and "Slice" not in supervisor["Service"]
    # a supervisord crash must not take the relays (and every client) with it
    assert one(supervisor, "Service", "KillMode") == "process"
    assert one(supervisor, "Service", "Restart") == "on-failure"


def test_units_agree_with_swapctld_yaml() -> None:
    daemon, supervisor = parse("swapctld.service"), parse("swapctl-supervisord.service")
    conf = yaml.safe_load((REPO / "configs/swapctld.yaml").read_text())
    config_dir = one(daemon, "Service", "Environment").removeprefix("SWAPCTL_CONFIG_DIR=")
    assert config_dir == "/etc/swapctl"
    argv = one(supervisor, "Service", "ExecStart").split()
    assert argv[0] == f"{PREFIX}/supervisord" and "--nodaemon" in argv
    assert argv[argv.index("--configuration") + 1] == conf["supervisord"]["config"]
    assert Path(conf["supervisord"]["socket"]).parent == \
        Path("/run") / one(supervisor, "Service", "RuntimeDirectory")
    assert Path(conf["control"]["socket"]).parent == \
        Path("/run") / one(daemon, "Service", "RuntimeDirectory")
    for unit in (daemon, supervisor):
        assert Path("/var/lib") / one(unit, "Service", "StateDirectory") == \
            Path(conf["state_dir"])
        assert Path("/var/log") / one(unit, "Service", "LogsDirectory") == Path(conf["log_dir"])
    assert conf["supervisord"]["start"] == "systemd"  # never a child of swapctld


def test_swapctld_may_raise_the_relays_for_a_pause() -> None:
    """pause_priority (swap/priority.py) sets another process's threads SCHED_FIFO: a
    non-root swapctld needs CAP_SYS_NICE, which NoNewPrivileges does not take away from
    an ambient set."""
    daemon = parse("swapctld.service")
    assert one(daemon, "Service", "User") != "root"
    assert "CAP_SYS_NICE" in one(daemon, "Service", "AmbientCapabilities").split()


def test_drill_template_and_timer() -> None:
    service, timer = parse("swapctl-drill@.service"), parse("swapctl-drill@.timer")
    assert one(service, "Service", "ExecStart") == f"{PREFIX}/swapctl drill %i"
    assert one(service, "Service", "Type") == "oneshot"
    assert one(service, "Unit", "Requisite") == "swapctld.service"  # never starts a daemon
    assert one(timer, "Timer", "OnCalendar")
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "RandomizedDelaySec")
    assert one(timer, "Install", "WantedBy") == "timers.target"
