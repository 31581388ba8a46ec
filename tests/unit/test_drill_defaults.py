"""`swapctl drill` / `swapctl run`: the default candidate, unknown services, -o json.

The default candidate (`other`) is the first handoff-capable release besides the one
serving, never a legacy one (with the shipped configs the first other release is
`generic`, a legacy Rust relay); with none the run is refused, saying what to pass. An
unknown service exits 4 with a did-you-mean, as every other command does. None of these
reaches swapctld: they are decided before a run starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config import load_config
from swapctl.config.model import ReleaseConfig
from swapctl.errors import UsageError
from swapctl.playbook.runner import pick_candidate

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DRILL = ROOT / "playbooks" / "rollback-drill.yaml"


def releases(**kinds: str) -> dict[str, ReleaseConfig]:
    """name=handoff|plain|legacy -> releases in that order."""
    def one(kind: str) -> ReleaseConfig:
        if kind == "legacy":
            return ReleaseConfig(command=["/bin/relay"], handoff=False, legacy=True,
                                 compiled_socket="/tmp/x.sock")  # type: ignore[arg-type]
        return ReleaseConfig(command=["/bin/relay"], handoff=kind == "handoff")
    return {name: one(kind) for name, kind in kinds.items()}


@pytest.mark.parametrize("service", ["market_data", "signal", "execution"])
def test_shipped_configs_drill_a_handoff_release_not_the_legacy_one(service: str) -> None:
    svc = load_config(CONFIGS).service(service)
    assert next(iter(svc.releases)) == "generic" and svc.releases["generic"].legacy, \
        "the first release is the legacy one: what this test is about"
    assert pick_candidate("other", "v1", svc.releases, "f.yaml") == "v2"
    assert pick_candidate("other", "v2", svc.releases, "f.yaml") == "v1"
    assert pick_candidate("other", "generic", svc.releases, "f.yaml") == "v1"


def test_no_handoff_capable_candidate_is_refused_saying_what_to_pass() -> None:
    found = releases(old="legacy", v1="handoff", plain="plain")
    with pytest.raises(UsageError) as caught:
        pick_candidate("other", "v1", found, "/etc/swapctl/x.yaml")
    text = str(caught.value)
    assert text.startswith("/etc/swapctl/x.yaml: releases: no handoff-capable release besides "
                           "v1 (which serves): old (legacy), plain (handoff: false)")
    assert "--candidate NAME" in text and "handoff: true" in text


def test_an_explicit_candidate_may_be_legacy() -> None:
    found = releases(old="legacy", v1="handoff")
    assert pick_candidate("old", "v1", found, "x.yaml") == "old"
    with pytest.raises(UsageError, match="v1 serves already"):
        pick_candidate("v1", "v1", found, "x.yaml")
    with pytest.raises(UsageError, match="no 'v3': use one of old, v1"):
        pick_candidate("v3", "v1", found, "x.yaml")
    with pytest.raises(UsageError, match="only v1 is configured"):
        pick_candidate("other", "v1", releases(v1="handoff"), "x.yaml")


def invoke(*args: str) -> tuple[int, str, str]:
    done = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return done.exit_code, done.stdout, done.stderr


def test_drill_and_run_of_an_unknown_service_exit_4() -> None:
    code, out, err = invoke("drill", "market_dta", "--config-dir", str(CONFIGS))
    assert code == 4 and not out
    assert "unknown service 'market_dta' (did you mean market_data?)" in err
    code, _, err = invoke("run", str(DRILL), "--service", "nope", "--config-dir", str(CONFIGS))
    assert code == 4 and "unknown service 'nope'" in err
    code, _, err = invoke("drill", "--schedule", "sginal", "--config-dir", str(CONFIGS))
    assert code == 4 and "did you mean signal" in err


def test_drill_of_a_broken_service_exits_2_with_its_error(tmp_path: Path) -> None:
    confdir = tmp_path / "configs"
    shutil.copytree(CONFIGS, confdir)
    path = confdir / "signal.yaml"
    path.write_text(path.read_text().replace("soak:", "soack:", 1))
    code, _, err = invoke("drill", "signal", "--dry-run", "--config-dir", str(confdir))
    assert code == 2 and f"{path}: soack: unknown key" in err
    code, out, _ = invoke("drill", "market_data", "--dry-run", "--config-dir", str(confdir))
    assert code == 0 and "plan: rollback-drill (drill) on market_data" in out


@pytest.mark.parametrize("command", [("drill", "market_data"),
                                     ("run", str(DRILL), "--service", "market_data")])
def test_json_output_is_one_document_on_stdout(command: tuple[str, ...]) -> None:
    code, out, _ = invoke(*command, "--dry-run", "-o", "json", "--config-dir", str(CONFIGS))
    assert code == 0
    plan = json.loads(out)
    assert plan["service"] == "market_data" and plan["steps"]
