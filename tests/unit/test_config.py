"""Configuration: the shipped files load; each kind of mistake names file, key and fix.

Every test works on a copy of configs/ under tmp_path with one mistake written into
it, and checks the operator's line: `FILE: KEY: what is wrong, what is right (line N)`.
Nothing here touches the real socket paths the configs name.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config import (
    ConfigError,
    Problem,
    check_config,
    load_config,
    to_canary,
    to_release,
    to_swap_settings,
)
from swapctl.config.convert import service_domain_byte
from swapctl.config.reference import reference_markdown
from swapctl.errors import UsageError
from swapctl.swap.executor import SwapSettings
from swapctl.swap.machine import Deadlines
from swapctl.swap.spawner import Release
from tests.unit.conftest import edit

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SERVICES = ("execution", "market_data", "signal")

MINIMAL = """\
socket: /tmp/swt-config-test/minimal.sock
domain: market_data
profile: torq
releases:
  v1: {command: [/bin/true], handoff: true}
active: v1
"""




def problems_after(confdir: Path, name: str, old: str, new: str) -> list[Problem]:
    edit(confdir / name, old, new)
    result = check_config(confdir)
    assert not result.ok and result.config is None
    return list(result.problems)


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def only(problems: list[Problem]) -> str:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return str(problems[0])


# ----- the shipped configuration -------------------------------------------------


def test_shipped_configs_load() -> None:
    config = load_config(CONFIGS)
    assert sorted(config.services) == list(SERVICES)
    sockets = {name: str(s.socket) for name, s in config.services.items()}
    assert sockets == {"market_data": "/tmp/torq/market_data.sock",
                       "signal": "/tmp/torq/signals.sock",
                       "execution": "/tmp/torq/execution.sock"}
    for name, service in config.services.items():
        assert service.name == name and service.source == CONFIGS / f"{name}.yaml"
        assert service.domain.value == name
        assert service.active in service.releases
        assert to_release(service).handoff, "the active release must be swappable today"
        assert service.rollback.deadline <= 30
    assert config.daemon.control.mode == 0o600
    assert config.daemon.supervisord.start == "systemd"


def test_converters_give_the_engine_types() -> None:
    service = load_config(CONFIGS).service("market_data")
    assert to_release(service, "v2") == Release(
        "v2", ("/opt/relay/v2/bin/swapctl", "relay", "--domain", "market_data", "--profile",
               "alphapulse"), handoff=True)
    legacy = service.releases["generic"]
    assert legacy.legacy and str(legacy.compiled_socket) == "/tmp/torq/market_data.sock"
    assert legacy.env == {"RUST_LOG": "info"}
    assert not to_release(service, "generic").handoff
    settings = to_swap_settings(service)
    assert settings.deadlines.soaking == 60 and settings.deadlines.rolling_back == 30
    assert settings.deadlines.probing == 2 and settings.pause_budget_ms == 250
    assert settings.error_counters == SwapSettings().error_counters
    canary = to_canary(service)
    assert canary is not None and canary.rate == 2000 and canary.domain_byte == 1
    assert canary.consumers == ("strategy", "dashboard")
    assert canary.proc is None, "a converter must not start anything"
    with pytest.raises(UsageError, match=r"no release 'v3'.*use one of generic, v1, v2"):
        to_release(service, "v3")


def test_defaults_are_the_engines(tmp_path: Path) -> None:
    shutil.copy(CONFIGS / "swapctld.yaml", tmp_path)
    (tmp_path / "minimal.yaml").write_text(MINIMAL)
    service = load_config(tmp_path).service("minimal")
    assert to_swap_settings(service) == SwapSettings()
    assert service.rollback.deadline == Deadlines().rolling_back == 30
    assert service_domain_byte(service) == 0  # market_data under torq numbering


def test_rollback_triggers_left_out_turn_checks_off(tmp_path: Path) -> None:
    shutil.copy(CONFIGS / "swapctld.yaml", tmp_path)
    (tmp_path / "minimal.yaml").write_text(
        MINIMAL + "rollback: {auto_on: [not_ready, probe_failed, crash, deadline, canary]}\n"
                  "canary: {rate: 0}\n")
    service = load_config(tmp_path).service("minimal")
    settings = to_swap_settings(service)
    assert math.isinf(settings.pause_budget_ms) and settings.error_counters == ()
    assert to_canary(service) is None


def test_unknown_service_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"unknown service 'market-data' \(did you mean "
                                         r"market_data\?\)"):
        load_config(CONFIGS).service("market-data")


# ----- one test per kind of mistake ----------------------------------------------


def test_missing_key(confdir: Path) -> None:
    text = only(problems_after(confdir, "market_data.yaml",
                               "socket: /tmp/torq/market_data.sock   # where the clients connect\n",
                               ""))
    assert text == (f"{confdir}/market_data.yaml: socket: required, but missing: add it, "
                    "e.g. socket: /tmp/torq/market_data.sock")


def test_unknown_key_suggests_the_right_one(confdir: Path) -> None:
    path = confdir / "signal.yaml"
    text = only(problems_after(confdir, "signal.yaml", "soak: 30s", "sok: 30s"))
    assert text.startswith(f"{path}: sok: unknown key (did you mean soak?): the keys here "
                           "are socket, domain, profile, releases")
    assert text.endswith(f"(line {line_of(path, 'sok:')})")


def test_unknown_nested_key(confdir: Path) -> None:
    text = only(problems_after(confdir, "market_data.yaml", "  timeout: 2s", "  timout: 2s"))
    assert "market_data.yaml: probe.timout: unknown key (did you mean timeout?): the keys " \
           "here are timeout, echo" in text


def test_wrong_type(confdir: Path) -> None:
    edit(confdir / "execution.yaml", "    handoff: true\n", '    handoff: "no"\n')
    text = only(list(check_config(confdir).problems))
    assert text.startswith(f"{confdir}/execution.yaml: releases.v1.handoff: must be true or "
                           "false, not the string 'no', e.g. true (line ")


def test_command_given_as_one_string(confdir: Path) -> None:
    path = confdir / "market_data.yaml"
    edit(path, "command: [/opt/relay/v2/bin/swapctl, relay, --domain, market_data, --profile, "
               "alphapulse]", "command: /opt/relay/v2/bin/swapctl relay --domain market_data")
    text = only(list(check_config(confdir).problems))
    assert text == (f"{path}: releases.v2.command: must be a non-empty list of strings (the "
                    "argument list; no shell), not one string, e.g. [/opt/relay/v2/bin/swapctl, "
                    f"relay, --domain, market_data] (line {line_of(path, 'command: /opt')})")


def test_command_empty(confdir: Path) -> None:
    text = only(problems_after(confdir, "market_data.yaml",
                               "command: [/opt/torq/bin/market_data_relay]", "command: []"))
    assert "market_data.yaml: releases.generic.command: must be a non-empty list of strings " \
           "(the argument list; no shell), e.g. [/opt/relay/generic/market_data_relay]" in text


def test_active_release_not_in_releases(confdir: Path) -> None:
    text = only(problems_after(confdir, "market_data.yaml", "active: v1", "active: v3"))
    assert "market_data.yaml: active: 'v3' is not one of the releases: use one of generic, " \
           "v1, v2 (line " in text


def test_active_checked_even_when_a_release_is_invalid(confdir: Path) -> None:
    edit(confdir / "signal.yaml", "active: v1", "active: v11")
    edit(confdir / "signal.yaml", "command: [/opt/torq/bin/signal_relay]", "command: 7")
    problems = {p.key: str(p) for p in check_config(confdir).problems}
    assert sorted(problems) == ["active", "releases.generic.command"]
    assert "'v11' is not one of the releases (did you mean v1?)" in problems["active"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("domain: market_data", "domain: market-data",
     "domain: must be one of market_data, signal, execution, system, not 'market-data' "
     "(did you mean market_data?)"),
    ("profile: alphapulse", "profile: torque",
     "profile: must be one of alphapulse, torq, not 'torque' (did you mean torq?)"),
])
def test_unknown_domain_or_profile(confdir: Path, old: str, new: str, expected: str) -> None:
    text = only(problems_after(confdir, "market_data.yaml", old, new))
    assert f"market_data.yaml: {expected} (line " in text


@pytest.mark.parametrize(("old", "new", "key", "expected"), [
    ("soak: 60s", "soak: -5s", "soak", "must be a positive duration such as 30s or 250ms, "
                                       "not -5s"),
    ("pause_budget: 250ms", "pause_budget: 0", "pause_budget",
     "must be a positive duration such as 30s or 250ms, not 0"),
    ("  deadline: 30s", "  deadline: soon", "rollback.deadline",
     "must be a duration such as 30s, 250ms or 2m, not 'soon'"),
])
def test_bad_duration(confdir: Path, old: str, new: str, key: str, expected: str) -> None:
    text = only(problems_after(confdir, "market_data.yaml", old, new))
    assert f"market_data.yaml: {key}: {expected} (line " in text


def test_durations_accept_units(tmp_path: Path) -> None:
    shutil.copy(CONFIGS / "swapctld.yaml", tmp_path)
    (tmp_path / "minimal.yaml").write_text(MINIMAL + "soak: 2m\npause_budget: 0.5\n"
                                           "probe: {timeout: 1500ms}\n")
    service = load_config(tmp_path).service("minimal")
    assert (service.soak, service.pause_budget, service.probe.timeout) == (120, 0.5, 1.5)


def test_yaml_syntax_error_has_line_and_column(confdir: Path) -> None:
    path = confdir / "execution.yaml"
    edit(path, "  consumers: [strategy, dashboard]", "  consumers: [strategy, dashboard")
    text = only(list(check_config(confdir).problems))
    assert text.startswith(f"{path}: YAML syntax error: while parsing a flow sequence (from "
                           f"line {line_of(path, 'consumers:')}, column 14)")
    assert "fix the syntax there" in text and text.endswith(", column 1)")


def test_key_declared_twice(confdir: Path) -> None:
    path = confdir / "signal.yaml"
    text = only(problems_after(confdir, "signal.yaml", "soak: 30s", "soak: 30s\nsoak: 5s"))
    first = line_of(path, "soak: 30s")
    assert text == f"{path}: soak: declared twice (first on line {first}): keep one " \
                   f"(line {first + 1})"


def test_legacy_release_needs_its_compiled_path(confdir: Path) -> None:
    text = only(problems_after(confdir, "signal.yaml",
                               "    compiled_socket: /tmp/torq/signals.sock\n", ""))
    assert "signal.yaml: releases.generic.compiled_socket: required when legacy is true: the " \
           "socket path compiled into the release, e.g. /tmp/torq/signal.sock" in text


def test_legacy_release_cannot_speak_handoff(confdir: Path) -> None:
    text = only(problems_after(confdir, "signal.yaml", "    handoff: false\n",
                               "    handoff: true\n"))
    assert "releases.generic.legacy: a legacy release binds its compiled-in path itself" in text


@pytest.mark.parametrize(("env", "key", "expected"), [
    ("{RUST_LOG: info, THREADS: 4}", "releases.generic.env.THREADS",
     "must be a string, not the number 4, e.g. {RUST_LOG: info}"),
    ("{RUST_LOG: info, SWAPCTL_SOCKET: /x}", "releases.generic.env",
     "SWAPCTL_SOCKET: swapctl sets SWAPCTL_* for each start of a release"),
])
def test_release_env(confdir: Path, env: str, key: str, expected: str) -> None:
    text = only(problems_after(confdir, "market_data.yaml", "env: {RUST_LOG: info}",
                               f"env: {env}"))
    assert f"market_data.yaml: {key}: {expected}" in text


def test_rollback_cannot_leave_out_a_crash(confdir: Path) -> None:
    text = only(problems_after(confdir, "market_data.yaml", "probe_failed, crash, deadline,",
                               "probe_failed, deadline,"))
    assert "market_data.yaml: rollback.auto_on: leaves out crash: a swap always rolls back" in text


def test_control_socket_must_be_owner_only(confdir: Path) -> None:
    text = only(problems_after(confdir, "swapctld.yaml", 'mode: "0600"', 'mode: "0660"'))
    assert f"{confdir}/swapctld.yaml: control.mode: 0660 lets group or others in" in text


def test_unquoted_mode_is_explained(confdir: Path) -> None:
    text = only(problems_after(confdir, "swapctld.yaml", 'mode: "0600"', "mode: 0600"))
    assert 'control.mode: must be a quoted octal mode such as "0600" (unquoted, YAML reads' in text


def test_two_services_on_one_socket(confdir: Path) -> None:
    text = only(problems_after(confdir, "signal.yaml", "socket: /tmp/torq/signals.sock",
                               "socket: /tmp/torq/market_data.sock"))
    assert text.startswith(f"{confdir}/signal.yaml: socket: /tmp/torq/market_data.sock is "
                           "already used by market_data.yaml: socket")


def test_missing_daemon_file(confdir: Path) -> None:
    (confdir / "swapctld.yaml").unlink()
    text = only(list(check_config(confdir).problems))
    assert text.startswith(f"{confdir}/swapctld.yaml: missing: the daemon's settings")


def test_every_mistake_is_reported_at_once(confdir: Path) -> None:
    edit(confdir / "market_data.yaml", "soak: 60s", "soak: never")
    edit(confdir / "market_data.yaml", "rate: 2000", "rate: lots")
    edit(confdir / "signal.yaml", "domain: signal", "domain: signals")
    edit(confdir / "swapctld.yaml", "start: systemd", "start: init")
    with pytest.raises(ConfigError) as caught:
        load_config(confdir)
    keys = sorted((p.file.name, p.key) for p in caught.value.problems)
    assert keys == [("market_data.yaml", "canary.rate"), ("market_data.yaml", "soak"),
                    ("signal.yaml", "domain"), ("swapctld.yaml", "supervisord.start")]
    assert str(caught.value).endswith("4 configuration errors")


# ----- swapctl config check --------------------------------------------------------


def run_check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["config", "check", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_check_passes_on_the_shipped_configs() -> None:
    code, output = run_check("--config-dir", str(CONFIGS))
    assert code == 0, output
    assert "market_data: /tmp/torq/market_data.sock (market_data/alphapulse), active v1" in output
    assert output.rstrip().endswith(f"{CONFIGS}: OK (4 files)")


def test_check_lists_every_error_and_exits_2(confdir: Path) -> None:
    edit(confdir / "market_data.yaml", "active: v1", "active: v9")
    edit(confdir / "execution.yaml", "soak: 120s", "soak: 0s")
    code, output = run_check("--config-dir", str(confdir))
    assert code == 2
    lines = output.splitlines()
    assert any(line.startswith(f"{confdir}/market_data.yaml: active: 'v9'") for line in lines)
    assert any(line.startswith(f"{confdir}/execution.yaml: soak: must be") for line in lines)
    assert lines[-1] == f"2 errors in {confdir}: fix them and run `swapctl config check` again"


def test_check_named_services_only(confdir: Path) -> None:
    edit(confdir / "execution.yaml", "soak: 120s", "soak: 0s")
    assert run_check("--config-dir", str(confdir), "market_data", "signal")[0] == 0
    assert run_check("--config-dir", str(confdir), "execution")[0] == 2


def test_check_unknown_service(confdir: Path) -> None:
    code, output = run_check("--config-dir", str(confdir), "market")
    assert code == 2
    assert f"{confdir}/market.yaml: no such service (did you mean market_data?)" in output


def test_check_json(confdir: Path) -> None:
    edit(confdir / "signal.yaml", "profile: alphapulse", "profile: 4")
    code, output = run_check("--config-dir", str(confdir), "-o", "json")
    assert code == 2
    document = json.loads(output)  # JSON only: nothing else on stdout
    assert document["ok"] is False and sorted(document["services"]) == ["execution",
                                                                         "market_data"]
    [error] = document["errors"]
    assert (error["file"], error["key"]) == (f"{confdir}/signal.yaml", "profile")
    assert error["line"] == line_of(confdir / "signal.yaml", "profile:")
    assert error["message"].startswith("must be one of alphapulse, torq, not 4")


def test_check_missing_directory(tmp_path: Path) -> None:
    code, output = run_check("--config-dir", str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory: give --config-dir DIR" in output


def test_check_uses_the_environment(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    edit(confdir / "signal.yaml", "soak: 30s", "soak: 0")
    monkeypatch.setenv("SWAPCTL_CONFIG_DIR", str(confdir))
    code, output = run_check()
    assert code == 2 and f"{confdir}/signal.yaml: soak:" in output


def test_docs_hold_the_generated_reference() -> None:
    """docs/config.md embeds `swapctl config reference` verbatim: the model is the source."""
    docs = (CONFIGS.parent / "docs" / "config.md").read_text()
    result = CliRunner().invoke(main, ["config", "reference"])
    assert result.exit_code == 0 and result.output == reference_markdown()
    assert result.output in docs, "docs/config.md is stale: replace its reference with the " \
                                  "output of `swapctl config reference`"
