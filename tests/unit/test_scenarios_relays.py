"""Naming the relays under test: built-in releases, commands, hard-coded paths, isolation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from swapctl import isolation
from swapctl.errors import UsageError
from swapctl.protocol.profiles import Domain, Profile
from swapctl.scenarios.relays import PLACEHOLDER, RelayProcess, default_path, resolve

MD, AP, TORQ = Domain.MARKET_DATA, Profile.ALPHAPULSE, Profile.TORQ


def test_reference_releases_carry_mode_domain_and_profile() -> None:
    spec = resolve("reference:chunk", Domain.SIGNAL, TORQ)
    assert spec.hardcoded is None and PLACEHOLDER in spec.argv
    args = " ".join(spec.argv)
    assert "--framing chunk" in args and "--domain signal" in args and "--profile torq" in args
    assert "--sink" in resolve("reference:sink", MD, AP).argv
    with pytest.raises(UsageError, match="unknown reference mode 'turbo'"):
        resolve("reference:turbo", MD, AP)


def test_commands_with_and_without_a_socket_placeholder(tmp_path: Path) -> None:
    spec = resolve("/opt/relay --listen {socket} -v", MD, AP)
    assert spec.hardcoded is None
    proc = RelayProcess(spec, tmp_path, "old")
    assert proc.argv() == ["/opt/relay", "--listen", str(tmp_path / "old" / "relay.sock"), "-v"]
    fixed = resolve("/opt/market_data_relay", MD, TORQ)
    assert fixed.hardcoded == Path("/tmp/torq/market_data.sock")
    proc = RelayProcess(fixed, tmp_path, "new")
    assert proc.socket == tmp_path / "new" / "market_data.sock"
    assert proc.argv() == [sys.executable, "-P", "-m", "swapctl.isolation", "--bind",
                           str(tmp_path / "new"), "/tmp/torq", "--", "/opt/market_data_relay"]
    custom = resolve("/opt/r", MD, AP, Path("/run/x/y.sock"))
    assert custom.hardcoded == Path("/run/x/y.sock")


def test_default_paths_of_the_real_relays() -> None:
    assert default_path(Domain.SIGNAL, AP) == Path("/tmp/alphapulse/signals.sock")
    assert default_path(Domain.EXECUTION, TORQ) == Path("/tmp/torq/execution.sock")
    with pytest.raises(UsageError, match="--old-path"):
        default_path(Domain.SYSTEM, AP)
    with pytest.raises(UsageError, match="cannot parse"):
        resolve("relay 'unclosed", MD, AP)


def test_isolation_command_line_round_trips() -> None:
    binds = [isolation.Bind(Path("/tmp/a b"), Path("/tmp/torq")),
             isolation.Bind(Path("/p2"), Path("/tmp/alphapulse"))]
    argv = isolation.command(["relay", "--flag"], binds)
    assert argv[:4] == [sys.executable, "-P", "-m", "swapctl.isolation"]
    assert isolation.parse(argv[4:]) == (binds, ["relay", "--flag"])
    with pytest.raises(UsageError, match="usage"):
        isolation.parse(["--bind", "/a", "/b"])
    with pytest.raises(UsageError, match="two paths"):
        isolation.parse(["--bind", "/a"])
