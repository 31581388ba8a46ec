"""Derived socket paths (swapctl/config/paths.py): `config check` and a standalone swap
refuse, before anything starts, a path swapctl would build past AF_UNIX's 107 bytes, naming
the path, its length and the setting that fixes it; and the paths restated in config/paths.py
are the ones the daemon, supervise and the standalone swap really build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config import load_config
from swapctl.config.paths import (
    MAX_SOCKET_PATH,
    handoff_socket,
    legacy_slot_socket,
    standalone_sockets,
    supervisord_state,
)
from swapctl.daemon.paths import Paths, layout_of
from swapctl.demo import configs as demo_configs
from swapctl.supervise.client import SupervisorClient
from swapctl.supervise.layout import SLOTS, program_name
from swapctl.supervise.spawner import SupervisorSpawner
from swapctl.swap.requests import state_dir_for

SERVICES = ("market_data",)


def _control_of_size(root: Path, size: int) -> Path:
    """A control socket path of exactly `size` bytes under ROOT."""
    base = root / "r"
    name = "control.sock"
    pad = size - len(os.fsencode(base / name)) - 1
    assert pad > 0, f"{root} is too long for a {size}-byte socket path"
    path = base / ("d" * pad) / name
    assert len(os.fsencode(path)) == size
    return path


def _configs(root: Path, control: Path | None = None) -> Path:
    config_dir = demo_configs.write(root, SERVICES)
    if control is not None:
        daemon_file = config_dir / "swapctld.yaml"
        daemon = yaml.safe_load(daemon_file.read_text())
        daemon["control"]["socket"] = str(control)
        daemon_file.write_text(yaml.safe_dump(daemon, sort_keys=False))
    return config_dir


@pytest.fixture
def short_root(tmp_path: Path) -> Path:
    # tmp_path can itself be long; the 107-byte path is built under it
    return tmp_path


def test_107_byte_control_socket_is_refused_for_its_handoff_socket(short_root: Path) -> None:
    control = _control_of_size(short_root, MAX_SOCKET_PATH)
    config_dir = _configs(short_root, control)
    result = CliRunner().invoke(main, ["config", "check", "--config-dir", str(config_dir)])
    assert result.exit_code == 2, result.output
    handoff = handoff_socket(control, "market_data")
    size = len(os.fsencode(handoff))
    assert size == MAX_SOCKET_PATH + len("market_data.handoff.sock") - len("control.sock")
    line = next(li for li in result.output.splitlines() if str(handoff) in li)
    assert "swapctld.yaml: control.socket:" in line
    assert f"is {size} bytes" in line and "control.socket a shorter directory" in line
    assert "(line " in line  # where in swapctld.yaml


def test_a_handoff_socket_that_fits_passes(short_root: Path) -> None:
    fits = MAX_SOCKET_PATH - (len("market_data.handoff.sock") - len("control.sock"))
    config_dir = _configs(short_root, _control_of_size(short_root, fits))
    result = CliRunner().invoke(main, ["config", "check", "--config-dir", str(config_dir)])
    assert result.exit_code == 0, result.output


def test_up_refuses_before_starting_supervisord(short_root: Path) -> None:
    """The issue's case: `up` failed on the handoff socket with supervisord already up."""
    config_dir = _configs(short_root, _control_of_size(short_root, MAX_SOCKET_PATH))
    config = yaml.safe_load((config_dir / "swapctld.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "swapctl", "up", "--config-dir", str(config_dir)],
        capture_output=True, text=True, timeout=60, start_new_session=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "market_data.handoff.sock" in proc.stderr
    sup = Path(config["supervisord"]["socket"])
    assert not sup.exists(), f"up started supervisord ({sup}) before refusing"
    assert not Path(config["state_dir"], "supervisord.conf").exists()


def test_legacy_slot_socket_too_long_names_state_dir(tmp_path: Path) -> None:
    config_dir = _configs(tmp_path)
    service_file = config_dir / "market_data.yaml"
    service = yaml.safe_load(service_file.read_text())
    compiled = "/tmp/torq/" + "m" * 60 + ".sock"
    service["releases"]["old"] = {"command": ["/bin/true"], "handoff": False, "legacy": True,
                                  "compiled_socket": compiled}
    service_file.write_text(yaml.safe_dump(service, sort_keys=False))
    result = CliRunner().invoke(main, ["config", "check", "--config-dir", str(config_dir)])
    assert result.exit_code == 2, result.output
    assert "swapctld.yaml: state_dir:" in result.output
    assert "legacy release market_data/old's slot socket" in result.output
    assert "shorter state_dir" in result.output


def test_standalone_swap_names_derived_socket_and_state_dir(tmp_path: Path) -> None:
    """A valid 92-byte --socket whose derived control.sock does not fit."""
    base = tmp_path / "s"
    socket = base / ("x" * (92 - len(os.fsencode(base)) - 1))
    assert len(os.fsencode(socket)) == 92
    args = ["swap", "--socket", str(socket), "--from", "/bin/true", "--to", "/bin/true"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    derived = state_dir_for(socket) / "control.sock"
    assert f"{derived} is {len(os.fsencode(derived))} bytes" in result.output
    assert "--state-dir" in result.output
    assert not state_dir_for(socket).exists()
    short = CliRunner().invoke(main, [*args, "--state-dir", str(tmp_path / "st"), "--dry-run"])
    assert short.exit_code == 0, short.output


def test_restated_paths_match_the_code_that_builds_them(tmp_path: Path) -> None:
    config = load_config(_configs(tmp_path))
    paths = Paths.of(config)
    control = Path(config.daemon.control.socket)
    assert paths.handoff("market_data") == handoff_socket(control, "market_data")
    layout = layout_of(config, paths)
    state = Path(config.daemon.state_dir)
    assert layout.state_dir == supervisord_state(state)
    spawner = SupervisorSpawner(SupervisorClient(str(layout.socket), 1.0), layout,
                                "market_data")
    token = "old-legacy-" + "x" * 8  # daemon/legacy.py: release-legacy-8 hex digits
    longest = max(SLOTS, key=len)
    expected = spawner.private_dir(program_name("market_data", longest), token) / "a.sock"
    derived = legacy_slot_socket(state, "market_data", "old", Path("/tmp/torq/a.sock"))
    assert derived == expected
    assert standalone_sockets(tmp_path)[0] == tmp_path / "control.sock"
