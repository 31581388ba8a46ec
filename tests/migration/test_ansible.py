"""The Ansible fleet role (deploy/ansible) run with ansible-playbook against three simulated
hosts on this machine.

Each host is its own local stack (`swapctl init DIR`, market_data only, `swapctl up`),
reached with `ansible_connection: local` and its own swapctl_config_dir. The role itself
installs the candidate release v2 into each host's service file; h2's v2 is given the
reference relay's `--drop-every 5` fault, so its swap loses messages and swapctl rolls it
back (exit 1). The rollouts must stop at h2, leave h1 as documented (swapped, or rolled
back with swapctl_rollback_on_failure) and not touch h3 at all; the drills must drill
every host and name h2's as failed. Every claim is checked against the stacks themselves
(`swapctl status`, `history`, the service files), not only against the summary.

One module-scoped fleet (three stacks on 2 cores); each test states the releases it
starts from. ansible-playbook runs with ANSIBLE_HOME and its temp dirs under the fleet's
short /tmp root (no ~/.ansible), in its own process group, with a timeout. Teardown:
`swapctl down` for every host, then whatever still runs from the root is killed
(swapctl.process.processes_under: by the root's path, never by name).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from swapctl.config.load import load_config
from swapctl.daemon import stack
from swapctl.process import stop_group
from tests.stack import reap_under

pytest.importorskip("ansible", reason="ansible-core is not installed (pip install -e .[dev])")

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("ansible")]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "deploy" / "ansible"
SWAPCTL = [sys.executable, "-m", "swapctl"]
BIN = Path(sys.executable).parent
HOSTS = ("h1", "h2", "h3")
FAULT = ["--drop-every", "5"]  # h2's v2 drops every 5th frame: its swap rolls back
PLAYBOOK_TIMEOUT = 150


@dataclass
class Fleet:
    root: Path
    inventory: Path
    env: dict[str, str]

    def config_dir(self, host: str) -> Path:
        return self.root / host / "configs"

    def call(self, host: str, op: str, **args: Any) -> Any:
        """One request to HOST's swapctld, in process (what `status`/`history` ask)."""
        config = load_config(self.config_dir(host))
        return stack.client_for(config).call(op, service="market_data", **args)

    def serving(self, host: str) -> str:
        return str(self.call(host, "status")["services"][0]["active"]["release"])

    def swaps(self, host: str) -> list[str]:
        return [s["swap_id"] for s in self.call(host, "history", limit=100)["swaps"]]

    def v2_installed(self) -> bool:
        """Whether the role has installed the v2s (h2's faulty one) yet."""
        h2 = yaml.safe_load((self.config_dir("h2") / "market_data.yaml").read_text())
        return bool(h2["releases"]["v2"]["command"][-2:] == FAULT)

    def start_from_v1(self) -> None:
        for host in HOSTS:
            if self.serving(host) != "v1":
                done = subprocess.run([*SWAPCTL, "swap", "market_data", "--to", "v1", "--yes",
                                       "--config-dir", str(self.config_dir(host))],
                                      capture_output=True, text=True, timeout=60, check=False)
                assert done.returncode == 0, done.stdout + done.stderr
            assert self.serving(host) == "v1"

    def playbook(self, name: str, run_id: str, *extra: str,
                 inventory: Path | None = None) -> tuple[int, str, dict[str, Any]]:
        """Run deploy/ansible/NAME; (exit code, output, the run's summary.json or {})."""
        argv = [str(BIN / "ansible-playbook"), "-i", str(inventory or self.inventory),
                str(ANSIBLE / name),
                "-e", f"swapctl_run_id={run_id}", *extra]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=self.root, env=self.env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=PLAYBOOK_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise AssertionError(f"{name} ran past {PLAYBOOK_TIMEOUT}s") from None
        if name == "install.yml":
            return proc.returncode, out, {}
        summary = self.root / "reports" / f"{name[:-4]}-{run_id}" / "summary.json"
        assert summary.exists(), f"{name}: no summary (exit {proc.returncode})\n{out}"
        return proc.returncode, out, json.loads(summary.read_text())


def _inventory(root: Path) -> dict[str, Any]:
    v2 = yaml.safe_load((root / "h1" / "configs" / "market_data.yaml").read_text())
    command = v2["releases"]["v2"]["command"]  # what `swapctl init` wrote: v2 as is
    hosts: dict[str, Any] = {h: {"swapctl_config_dir": str(root / h / "configs")}
                             for h in HOSTS}
    hosts["h2"]["swapctl_release_command"] = [*command, *FAULT]
    return {"swapctl": {"hosts": hosts, "vars": {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "swapctl_venv": sys.prefix,             # swapctl is installed here (checked, kept)
        "swapctl_release_venv": sys.prefix,     # and the release runs from it too
        "swapctl_version": version("swapctl"),
        "swapctl_service": "market_data",
        "swapctl_release": "v2",
        "swapctl_release_command": command,
        "swapctl_soak": "1s",
        "swapctl_fleet_dir": str(root / "reports"),
    }}}


def _env(root: Path) -> dict[str, str]:
    home = root / "ah"
    (home / "tmp").mkdir(parents=True)
    (home / "ansible.cfg").write_text("")  # no ansible.cfg of the user's or the cwd's
    return {**os.environ, "ANSIBLE_CONFIG": str(home / "ansible.cfg"),
            "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "rtmp"),
            "ANSIBLE_COLLECTIONS_PATH": str(home / "collections"),
            "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "1", "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0", "ANSIBLE_DEPRECATION_WARNINGS": "0"}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    assert (BIN / "ansible-playbook").exists(), f"no ansible-playbook beside {sys.executable}"
    root = Path(tempfile.mkdtemp(prefix="swan-", dir="/tmp"))
    try:
        _each_host("init", [str(root / h) for h in HOSTS])
        for host in HOSTS:  # one service a host keeps the fleet lean
            for other in ("signal", "execution"):
                (root / host / "configs" / f"{other}.yaml").unlink()
        _each_host("up", [f"--config-dir={root / h / 'configs'}" for h in HOSTS])
        inventory = root / "inventory.yml"
        inventory.write_text(yaml.safe_dump(_inventory(root)))
        yield Fleet(root, inventory, _env(root))
    finally:
        _stop(root)


def _each_host(command: str, args: list[str], check: bool = True) -> None:
    """`swapctl COMMAND ARG` for every ARG at once (the hosts are independent)."""
    procs = [subprocess.Popen([*SWAPCTL, command, arg], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                              start_new_session=True) for arg in args]
    for arg, proc in zip(args, procs, strict=True):
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            raise
        assert proc.returncode == 0 or not check, f"{command} {arg}: {proc.returncode}\n{out}"


def _stop(root: Path) -> None:
    configs = [f"--config-dir={root / h / 'configs'}" for h in HOSTS
               if (root / h / "configs" / "swapctld.yaml").exists()]
    with contextlib.suppress(subprocess.TimeoutExpired):
        _each_host("down", configs, check=False)
    left = reap_under(root)
    assert not left, f"still running under {root}: {left}"


def _rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert [r["host"] for r in summary["hosts"]] == list(HOSTS)
    return {r["host"]: r for r in summary["hosts"]}


def _junit(fleet: Fleet, kind: str, run_id: str) -> dict[str, str]:
    """Each test case's verdict in the run's junit.xml: passed, failure, error, skipped."""
    suite = ET.parse(fleet.root / "reports" / f"{kind}-{run_id}" / "junit.xml").getroot()
    verdicts = {case.get("name", ""): next((c.tag for c in case if c.tag in
                                            ("failure", "error", "skipped")), "passed")
                for case in suite.iter("testcase")}
    counted = {k: int(suite.get(k, "-1")) for k in ("tests", "failures", "errors", "skipped")}
    assert counted == {"tests": len(verdicts),
                       **{k: sum(v == k.rstrip("s") for v in verdicts.values())
                          for k in ("failures", "errors")},
                       "skipped": sum(v == "skipped" for v in verdicts.values())}, counted
    return verdicts


@pytest.mark.slow
def test_a_batch_with_rollback_stops_at_the_faulty_host_and_rolls_back_the_swapped(
        fleet: Fleet) -> None:
    fleet.start_from_v1()
    before = {h: (fleet.config_dir(h) / "market_data.yaml").read_text() for h in HOSTS}
    h3_swaps = fleet.swaps("h3")
    code, out, summary = fleet.playbook("rollout.yml", "batch", "-e", "swapctl_serial=2",
                                        "-e", "swapctl_rollback_on_failure=true")
    assert code == 2, out  # a host failed
    rows = _rows(summary)
    assert (summary["ok"], summary["stopped_at"], summary["failed_hosts"]) == \
        (False, "h2", ["h2"]), summary
    assert summary["rollback_on_failure"] is True
    assert rows["h1"]["outcome"] == "rolled_back_by_fleet", rows["h1"]
    assert rows["h1"]["decision"] == "committed" and rows["h1"]["fleet_rollback"]["rc"] == 0
    assert rows["h2"]["outcome"] == "rolled_back" and rows["h2"]["rc"] == 1, rows["h2"]
    assert "fault_dropped" in rows["h2"]["reason"], rows["h2"]
    assert rows["h3"]["outcome"] == "not_reached" and rows["h3"]["report_file"] is None
    assert _junit(fleet, "rollout", "batch") == {"h1": "passed", "h2": "failure",
                                                 "h3": "skipped"}
    # the hosts themselves: all back on v1, h3 never touched (no swap, no edit)
    assert {h: fleet.serving(h) for h in HOSTS} == dict.fromkeys(HOSTS, "v1")
    h1_report = json.loads((fleet.root / "reports" / "rollout-batch" / "hosts" /
                            "h1.json").read_text())
    h1_swaps = fleet.swaps("h1")
    assert h1_report["swap_id"] in h1_swaps
    assert h1_report["fleet_rollback"]["report"]["swap_id"] == h1_swaps[0]  # newest first
    assert fleet.swaps("h3") == h3_swaps
    after = {h: (fleet.config_dir(h) / "market_data.yaml").read_text() for h in HOSTS}
    assert after["h1"] == before["h1"] and after["h3"] == before["h3"]
    assert after["h2"] != before["h2"]  # the role installed h2's (faulty) v2
    v2 = yaml.safe_load(after["h2"])["releases"]["v2"]["command"]
    assert v2[-2:] == FAULT


@pytest.mark.slow
def test_host_by_host_stops_at_the_faulty_host_and_keeps_the_hosts_before(
        fleet: Fleet) -> None:
    fleet.start_from_v1()
    h3_swaps = fleet.swaps("h3")
    # once the first test has installed v2 on h1 and h2, skip the install tasks
    skip = ["--skip-tags", "install"] if fleet.v2_installed() else []
    code, out, summary = fleet.playbook("rollout.yml", "serial", *skip)
    assert code == 2, out
    assert "PLAY RECAP" in out and "\nh3 " not in out.split("PLAY RECAP", 1)[1], out
    assert ("Install or upgrade" in out) is not skip
    rows = _rows(summary)
    assert (summary["stopped_at"], summary["rollback_on_failure"]) == ("h2", False)
    assert summary["counts"] == {"swapped": 1, "rolled_back": 1, "not_reached": 1}
    assert (rows["h1"]["outcome"], rows["h1"]["serving"]) == ("swapped", "v2"), rows["h1"]
    assert rows["h1"]["swap_id"] == fleet.swaps("h1")[0]
    assert (rows["h2"]["outcome"], rows["h2"]["serving"]) == ("rolled_back", "v1")
    assert rows["h3"]["outcome"] == "not_reached"
    assert _junit(fleet, "rollout", "serial") == {"h1": "passed", "h2": "failure",
                                                  "h3": "skipped"}
    assert {h: fleet.serving(h) for h in HOSTS} == {"h1": "v2", "h2": "v1", "h3": "v1"}
    assert fleet.swaps("h3") == h3_swaps

    # again on h1, which serves v2 now: nothing to do, nothing run
    h1_swaps = fleet.swaps("h1")
    code, out, summary = fleet.playbook("rollout.yml", "again", "--skip-tags", "install",
                                        "--limit", "h1")
    assert code == 0, out
    assert summary["ok"] and summary["stopped_at"] is None
    assert [r["host"] for r in summary["hosts"]] == ["h1"]
    assert (summary["hosts"][0]["outcome"], summary["hosts"][0]["serving"]) == ("already", "v2")
    assert fleet.swaps("h1") == h1_swaps


@pytest.mark.slow
def test_drills_run_on_every_host_and_the_summary_names_the_failed_one(
        fleet: Fleet) -> None:
    if not fleet.v2_installed():  # run alone: the rollouts did not install v2
        code, out, _ = fleet.playbook("install.yml", "install")
        assert code == 0, out
    serving = {h: fleet.serving(h) for h in HOSTS}
    code, out, summary = fleet.playbook(
        "drill.yml", "drill", "-e", "swapctl_drill_serial=3",
        "-e", json.dumps({"swapctl_drill_params": {"check": "0.3s", "load_rate": 500}}))
    assert code == 2, out  # h2's drill failed: its host fails at the end
    rows = _rows(summary)
    assert (summary["ok"], summary["failed_hosts"]) == (False, ["h2"]), summary
    assert [rows[h]["outcome"] for h in HOSTS] == ["passed", "drill_failed", "passed"], rows
    assert rows["h2"]["candidate"] == "v2" and rows["h2"]["failed_step"], rows["h2"]
    for host in HOSTS:  # each host's own drill files, and its baseline serving again
        assert Path(rows[host]["files"]["report"]).is_relative_to(fleet.root / host)
        assert rows[host]["baseline"] == serving[host]
    assert {h: fleet.serving(h) for h in HOSTS} == serving
    assert _junit(fleet, "drill", "drill") == {"h1": "passed", "h2": "failure",
                                               "h3": "passed"}


@pytest.mark.slow
def test_a_host_whose_swapctld_does_not_answer_stops_the_rollout_with_its_error(
        fleet: Fleet) -> None:
    down = fleet.root / "h9"  # configured, never started
    done = subprocess.run([*SWAPCTL, "init", str(down)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    inventory = _inventory(fleet.root)
    inventory["swapctl"]["hosts"] = {"h9": {"swapctl_config_dir": str(down / "configs")}}
    path = fleet.root / "down.yml"
    path.write_text(yaml.safe_dump(inventory))
    code, out, summary = fleet.playbook("rollout.yml", "down", "--skip-tags", "install",
                                        inventory=path)
    assert code == 2, out
    (row,) = summary["hosts"]
    assert (summary["stopped_at"], row["outcome"], row["rc"]) == ("h9", "error", 7), row
    assert f"{down}/run/control.sock" in row["reason"] and "swapctl up" in row["reason"]


def _release_module() -> Any:
    path = ANSIBLE / "roles" / "swapctl" / "library" / "swapctl_release.py"
    spec = importlib.util.spec_from_file_location("swapctl_release", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["v2", "v3", "generic"])
def test_the_release_module_edits_one_entry_and_keeps_the_comments(name: str) -> None:
    text = (REPO / "configs" / "market_data.yaml").read_text()
    entry = {"command": ["/opt/relay/v3/bin/swapctl", "relay"], "handoff": True}
    edited = _release_module().edit(text, name, entry)
    expected = yaml.safe_load(text)
    expected["releases"][name] = entry
    assert yaml.safe_load(edited) == expected
    kept = [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]
    assert kept and all(ln in edited.splitlines() for ln in kept)
