"""Shell completion (issue 15): releases of the service after `swap SERVICE --to` and
`drill SERVICE --candidate`, and service names on every command that takes a service."""

from __future__ import annotations

from pathlib import Path

from click.shell_completion import ShellComplete

from swapctl.cli import main
from swapctl.demo import configs


def _complete(args: list[str], incomplete: str = "") -> list[str]:
    shell = ShellComplete(main, {}, "swapctl", "_SWAPCTL_COMPLETE")
    return [c.value for c in shell.get_completions(args, incomplete)]


def test_releases_after_to_and_candidate(tmp_path: Path) -> None:
    config_dir = configs.write(tmp_path, extra_releases={"v3-canary": ["--no-echo"]})
    where = ["--config-dir", str(config_dir)]
    assert _complete(["swap", *where, "market_data", "--to"]) == ["v1", "v2", "v3-canary"]
    assert _complete(["swap", "market_data", *where, "--to"], "v3") == ["v3-canary"]
    assert _complete(["drill", *where, "execution", "--candidate"], "v") == \
        ["v1", "v2", "v3-canary"]
    assert _complete(["swap", *where, "--to"]) == [], "no service typed: nothing to offer"
    assert _complete(["swap", *where, "nosuch", "--to"]) == []
    (config_dir / "execution.yaml").write_text("releases: [broken\n")
    assert _complete(["swap", *where, "execution", "--to"]) == [], "a broken file: none"


def test_service_names_on_every_command_that_takes_one(tmp_path: Path) -> None:
    config_dir = configs.write(tmp_path)
    services = sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem != "swapctld")
    assert len(services) >= 2
    where = ["--config-dir", str(config_dir)]
    for command in (["swap"], ["rollback"], ["commit"], ["abort"], ["status"], ["history"],
                    ["logs"], ["drill"]):
        assert _complete([*command, *where]) == services, command
    assert _complete(["run", "playbook.yaml", *where, "--service"]) == services
    assert _complete(["logs", *where], services[0][:3]) == \
        [s for s in services if s.startswith(services[0][:3])]
