"""One broken service file affects that service only (issue 15, operator fixes).

`load_config` keeps the services whose files are good and carries each broken file with
its problems (file, key, what is wrong, line); only a problem of the whole
(swapctld.yaml, no service file) still fails the load. `config check` stays strict.
Every test works on a copy of configs/ under tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config import BrokenService, ConfigError, UnknownService, check_config, load_config
from swapctl.daemon.paths import Paths, layout_of
from tests.unit.conftest import edit


def test_bad_yaml_sets_that_service_aside(confdir: Path) -> None:
    edit(confdir / "signal.yaml", "domain: signal", "domain: [signal")
    config = load_config(confdir)
    assert sorted(config.services) == ["execution", "market_data"]
    assert list(config.broken) == ["signal"]
    assert config.names == ["execution", "market_data", "signal"]
    problem = config.broken["signal"][0]
    assert problem.file == confdir / "signal.yaml" and problem.line
    with pytest.raises(BrokenService) as caught:
        config.service("signal")
    text = str(caught.value)
    assert text.startswith("signal cannot be used: its configuration is not valid")
    assert f"{confdir}/signal.yaml: " in text and "restart swapctld" in text
    assert config.service("market_data").name == "market_data"


def test_bad_key_names_file_key_and_fix(confdir: Path) -> None:
    edit(confdir / "execution.yaml", "soak:", "soack:")
    config = load_config(confdir)
    assert "execution" not in config.services and set(config.broken) == {"execution"}
    (problem,) = config.broken["execution"]
    assert problem.key == "soack" and "did you mean soak" in problem.message
    assert str(problem).startswith(f"{confdir}/execution.yaml: soack: unknown key")
    # a broken service is still a service: exit 2 with its error, not exit 4
    with pytest.raises(BrokenService):
        config.service("execution")
    with pytest.raises(UnknownService, match=r"'executoin' \(did you mean execution\?\)"):
        config.service("executoin")


def test_socket_taken_by_another_service_breaks_only_the_later_file(confdir: Path) -> None:
    edit(confdir / "signal.yaml", "socket: /tmp/torq/signals.sock",
         "socket: /tmp/torq/market_data.sock")
    config = load_config(confdir)
    assert "market_data" in config.services and "signal" not in config.services
    assert config.broken["signal"][0].key == "socket"


def test_a_broken_daemon_file_still_fails_everything(confdir: Path) -> None:
    edit(confdir / "swapctld.yaml", "start: systemd", "start: init")
    edit(confdir / "signal.yaml", "domain: signal", "domain: signals")
    with pytest.raises(ConfigError) as caught:
        load_config(confdir)
    files = sorted(p.file.name for p in caught.value.problems)
    assert files == ["signal.yaml", "swapctld.yaml"], "every mistake, at once"


def test_files_that_cannot_be_services_are_carried_by_file_name(confdir: Path) -> None:
    shutil.copy(confdir / "signal.yaml", confdir / "risk.yml")
    shutil.copy(confdir / "signal.yaml", confdir / "Risk Desk.yaml")
    config = load_config(confdir)
    assert sorted(config.services) == ["execution", "market_data", "signal"]
    assert sorted(config.broken) == ["Risk Desk.yaml", "risk.yml"]
    assert "rename it to risk.yaml" in config.broken["risk.yml"][0].message
    assert config.names == ["execution", "market_data", "signal"], "not supervisord programs"


def test_reread_of_one_broken_service_refuses_it(confdir: Path) -> None:
    """swapctld re-reads a service's file before each swap: load_config(dir, [name])."""
    edit(confdir / "market_data.yaml", "active: v1", "active: v9")
    fresh = load_config(confdir, ["market_data"])
    with pytest.raises(BrokenService, match=r"market_data.yaml: active: 'v9' is not one of"):
        fresh.service("market_data")
    (confdir / "market_data.yaml").unlink()
    with pytest.raises(BrokenService, match="no such service"):
        load_config(confdir, ["market_data"]).service("market_data")


def test_the_layout_keeps_a_broken_service_programs(confdir: Path) -> None:
    """Its relays, if any run, stay supervisord's (and `down` stops them)."""
    edit(confdir / "signal.yaml", "domain: signal", "domain: signals")
    config = load_config(confdir)
    layout = layout_of(config, Paths.of(config))
    assert "signal-blue" in layout.programs() and "signal-green" in layout.programs()


def test_check_still_fails_naming_every_broken_file(confdir: Path) -> None:
    edit(confdir / "signal.yaml", "domain: signal", "domain: [signal")
    edit(confdir / "execution.yaml", "soak:", "soack:")
    result = check_config(confdir)
    assert result.config is None
    assert {p.file.name for p in result.problems} == {"signal.yaml", "execution.yaml"}
    done = CliRunner().invoke(main, ["config", "check", "--config-dir", str(confdir)],
                              catch_exceptions=False)
    assert done.exit_code == 2
    assert f"{confdir}/signal.yaml" in done.output and f"{confdir}/execution.yaml: soack" \
        in done.output
