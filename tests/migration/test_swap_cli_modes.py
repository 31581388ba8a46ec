"""`swapctl swap`'s three modes: every option that does not apply is refused (exit 2,
naming it), and `--dry-run` prints the plan and does nothing else: no process started
(the releases are scripts that would leave a marker), nothing written (the temp tree is
byte for byte the same, the state dir not created), the phases of the right strategy."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.legacy import layout as lay
from swapctl.process import signal_group
from swapctl.swap.machine import PATHS, Deadlines, plan
from tests.migration.legacy_support import HANDOFF_RELAY, build_legacy

pytestmark = pytest.mark.timeout(60)

SWAPCTL = Path(sys.executable).with_name("swapctl")
MARKER_SCRIPT = """import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("started")
time.sleep(30)
"""


def swapctl(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `swapctl` command (own session), bounded in time."""
    command = [str(SWAPCTL)] if SWAPCTL.exists() else [sys.executable, "-m", "swapctl"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=30,
                          check=False, start_new_session=True)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["swap", *args])
    return result.exit_code, result.stdout, result.stderr


class Box:
    """A temp dir with release scripts that leave a marker if anything starts them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / f"dry-{uuid.uuid4().hex[:8]}.sock"
        script = root / "bin" / "release.py"
        script.parent.mkdir()
        script.write_text(MARKER_SCRIPT)
        self.script = script
        self.markers = root / "markers"
        self.markers.mkdir()

    def release(self, name: str) -> str:
        return f"{sys.executable} {self.script} {self.markers / name}"

    def tree(self) -> dict[str, tuple[bool, int, int]]:
        """Every path under the box: directory?, size, modification time."""
        out = {}
        for path in [self.root, *self.root.rglob("*")]:
            st = path.lstat()
            out[str(path)] = (path.is_dir(), st.st_size, st.st_mtime_ns)
        return out


@pytest.fixture
def box(sockdir: Path) -> Box:
    return Box(sockdir)


def release_processes(box: Box) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(box.script) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def dry_run(box: Box, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `swapctl swap ARGS --dry-run` and check that it did nothing but print."""
    before, children = box.tree(), {p.pid for p in psutil.Process().children(recursive=True)}
    done = swapctl("swap", *args, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert box.tree() == before  # nothing written: no state dir, log, journal or socket
    assert not list(box.markers.iterdir())  # neither release was ever started
    assert not release_processes(box)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children
    return done


def phases_of(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.strip().startswith("phases:"))
    return [part.split("<=")[0].strip() for part in line.split(":", 1)[1].split(",")]


def path_of(strategy: str) -> list[str]:
    return [state.value for state, _ in PATHS[strategy]]


# ----- refusals -------------------------------------------------------------------------

DAEMON_ONLY = [("--yes",), ("--no-wait",), ("--timeout", "3s"), ("--config-dir", "CFG")]
NOT_THROUGH_DAEMON = [("--socket", "S"), ("--from", "CMD"), ("--rollback-after", "1"),
                      ("--canary-rate", "100"), ("--canary-rate", "2000"),
                      ("--pause-budget-ms", "10"), ("--domain", "signal"),
                      ("--profile", "torq"), ("--state-dir", "D"), ("--compiled", "C"),
                      ("--from-legacy",), ("--from-handoff",), ("--to-legacy",),
                      ("--to-handoff",)]


def modes(box: Box) -> dict[str, list[str]]:
    cmd = box.release("r")
    return {"daemon": ["market_data"],
            "handoff": ["--socket", str(box.socket), "--from", cmd, "--to", cmd],
            "legacy": ["--socket", str(box.socket), "--to", cmd, "--strategy", "restart",
                       "--state-dir", str(box.root / "state")]}


MODE_WORDS = {"daemon": "through swapctld", "handoff": "standalone handoff swap",
              "legacy": "standalone legacy swap"}
CASES = ([("daemon", o) for o in NOT_THROUGH_DAEMON]
         + [("handoff", o) for o in [*DAEMON_ONLY, ("--compiled", "C")]]
         + [("legacy", o) for o in [*DAEMON_ONLY, ("--rollback-after", "1"),
                                    ("--pause-budget-ms", "10"), ("--soak", "5s")]])


@pytest.mark.parametrize(("mode", "option"), CASES, ids=[f"{m}:{' '.join(o)}" for m, o in CASES])
def test_an_option_that_does_not_apply_is_refused_naming_it(box: Box, mode: str,
                                                             option: tuple[str, ...]) -> None:
    before = box.tree()
    code, out, err = invoke(*modes(box)[mode], *option)
    assert code == 2, err
    assert out == ""
    named = option[0].split("/")[0]
    assert f"{named}" in err and "does not apply to" in err
    assert MODE_WORDS[mode] in err.split("does not apply to", 1)[1].split(":")[0]
    assert box.tree() == before and not list(box.markers.iterdir())


def test_soak_on_a_takeover_is_refused_and_on_a_bridge_is_the_drain_deadline(box: Box) -> None:
    cmd = box.release("r")
    legacy = ["--socket", str(box.socket), "--from", cmd, "--from-legacy", "--to", cmd,
              "--state-dir", str(box.root / "state"), "--soak", "7s"]
    code, _, err = invoke(*legacy, "--strategy", "takeover", "--dry-run")
    assert code == 2 and "--soak does not apply" in err and "strategy takeover" in err
    assert "--strategy bridge" in err  # what to use instead
    code, out, err = invoke(*legacy, "--to-legacy", "--dry-run", "-o", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["strategy"] == "bridge" and shown["drain_deadline_s"] == 7.0
    assert shown["phases"] == plan("bridge", Deadlines(soaking=7.0))


def test_every_refused_option_is_named_at_once(box: Box) -> None:
    code, _, err = invoke(*modes(box)["daemon"], "--socket", "S", "--canary-rate", "0",
                          "--profile", "torq")
    assert code == 2
    assert all(flag in err for flag in ("--socket", "--canary-rate", "--profile"))


@pytest.mark.parametrize("mode", ["daemon", "handoff", "legacy"])
def test_the_real_command_refuses_with_exit_2(box: Box, mode: str) -> None:
    option = {"daemon": ["--pause-budget-ms", "10"], "handoff": ["--no-wait"],
              "legacy": ["--rollback-after", "2"]}[mode]
    before = box.tree()
    done = swapctl("swap", *modes(box)[mode], *option)
    assert done.returncode == 2, done.stderr
    assert f"{option[0]} does not apply to" in done.stderr
    assert done.stderr.startswith("swapctl: error:") and done.stdout == ""
    assert box.tree() == before and not release_processes(box)


# ----- dry runs -------------------------------------------------------------------------

def test_dry_run_of_a_standalone_handoff_does_nothing_but_print_the_plan(box: Box) -> None:
    done = dry_run(box, "--socket", str(box.socket), "--from", box.release("from"),
                   "--to", box.release("to"), "--soak", "9s")
    assert phases_of(done.stdout) == path_of("handoff")
    assert "soaking <= 9s" in done.stdout
    assert "strategy:  handoff" in done.stdout and str(box.socket) in done.stdout
    assert f".{box.socket.name}.swapctl (not created by a dry run)" in done.stdout
    assert str(box.markers / "from") in done.stdout and str(box.markers / "to") in done.stdout


def test_dry_run_json_and_no_proof_warning(box: Box) -> None:
    done = dry_run(box, "--socket", str(box.socket), "--from", box.release("from"),
                   "--to", box.release("to"), "--canary-rate", "0", "--domain", "signal",
                   "--profile", "torq", "-o", "json")
    shown = json.loads(done.stdout)
    assert shown["mode"] == "standalone handoff" and shown["strategy"] == "handoff"
    assert shown["phases"] == plan("handoff", Deadlines(soaking=5.0))
    assert shown["state_dir_exists"] is False
    assert shown["canary"]["proof"] is False and "unproven" in shown["canary"]["warning"]
    assert shown["canary"]["domain_byte"] == 1  # signal under torq


@pytest.mark.parametrize(("flags", "strategy"), [
    (["--strategy", "restart", "--from-legacy"], "restart"),
    (["--strategy", "auto", "--from-legacy", "--to-legacy"], "bridge"),
    (["--strategy", "auto", "--from-legacy", "--to-handoff"], "takeover"),
    (["--from-legacy", "--to-legacy"], "bridge"),
])
def test_dry_run_of_a_standalone_legacy_swap_does_nothing(box: Box, flags: list[str],
                                                          strategy: str) -> None:
    state = box.root / "state"
    done = dry_run(box, "--socket", str(box.socket), "--from", box.release("from"),
                   "--to", box.release("to"), "--state-dir", str(state), *flags)
    assert phases_of(done.stdout) == path_of(strategy)
    assert f"strategy:  {strategy} (" in done.stdout
    assert f"{state} (not created by a dry run)" in done.stdout
    assert not state.exists()


def test_dry_run_legacy_default_state_dir_is_not_created(box: Box) -> None:
    """Without --state-dir a legacy swap's slots live under /var/lib/swapctl/legacy/NAME:
    a dry run must not create it either."""
    default = Path("/var/lib/swapctl/legacy") / box.socket.stem
    assert not default.exists()
    done = dry_run(box, "--socket", str(box.socket), "--from", box.release("from"),
                   "--from-legacy", "--to", box.release("to"), "--strategy", "bridge",
                   "-o", "json")
    assert json.loads(done.stdout)["state_dir"] == str(default)
    assert not default.exists()


@pytest.fixture
def serving(sockdir: Path) -> Iterator[tuple[Box, lay.Layout, lay.LegacySlot]]:
    """A legacy relay serving the public link from slot a (build and logs outside the box)."""
    (sockdir / "box").mkdir()
    box = Box(sockdir / "box")
    layout = lay.Layout(public=box.socket, compiled=box.root / "c" / "md.sock",
                        root=box.root / "state")
    build = build_legacy(sockdir / "build", layout.compiled)
    slot = lay.start_legacy(layout, "a", build, sockdir / "logs")
    try:
        lay.point(layout, slot.socket)
        yield box, layout, slot
    finally:
        signal_group(slot.pid, 9)
        slot.stop(1.0)


def test_dry_run_auto_reads_the_serving_slot_and_starts_nothing(
        serving: tuple[Box, lay.Layout, lay.LegacySlot]) -> None:
    """auto asks the slot serving the public link what runs there (legacy: takeover to a
    handoff-capable release); the plan names it, and it is the only relay afterwards."""
    box, layout, slot = serving

    def in_slots() -> set[int]:
        return {p.pid for p in psutil.process_iter(["cmdline"])
                if str(layout.root) in " ".join(p.info["cmdline"] or [])}

    before = in_slots()
    done = dry_run(box, "--socket", str(layout.public), "--compiled", str(layout.compiled),
                   "--state-dir", str(layout.root), "--from-legacy", "--to", box.release("to"),
                   "--strategy", "auto", "-o", "json")
    shown = json.loads(done.stdout)
    assert shown["strategy"] == "takeover" and shown["why"].startswith("the old release is")
    assert shown["from"]["serving"] == {"slot": "a", "pid": slot.pid}
    assert shown["from"]["legacy"] is True and shown["state_dir_exists"] is True
    assert [p["phase"] for p in shown["phases"]] == path_of("takeover")
    assert slot.alive() and layout.current() == "a"
    assert in_slots() == before  # no relay started in another slot


def test_the_daemon_path_passes_dry_run_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """swapctld plans a daemon dry run: the CLI only passes it on (and refuses nothing)."""
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("swapctl.cli.ops.daemon_swap",
                        lambda *args, **kw: calls.append({"args": args, **kw}))
    code, _, err = invoke("market_data", "--to", "v2", "--soak", "30s", "--dry-run",
                          "--strategy", "bridge", "-o", "json")
    assert code == 0, err
    assert len(calls) == 1 and calls[0]["dry_run"] is True
    assert calls[0]["args"][1:] == ("market_data", "v2", 30.0)
    assert calls[0]["strategy"] == "bridge" and calls[0]["output"] == "json"


def test_canary_rate_zero_is_announced_as_no_proof(box: Box) -> None:
    """The help says what 0 means on both standalone paths, and a real swap with it warns
    on stderr before its first phase."""
    help_text = " ".join(swapctl("swap", "--help").stdout.split())
    assert "committed, unproven" in help_text and "no proof" in help_text
    legacy_help = " ".join(swapctl("swap-legacy", "--help").stdout.split())
    assert "committed, unproven" in legacy_help
    relay = " ".join(HANDOFF_RELAY)
    done = swapctl("swap", "--socket", str(box.socket), "--from", relay, "--to", relay,
                   "--soak", "0.2", "--canary-rate", "0")
    lines = done.stderr.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("swapctl: warning"))
    first_phase = next(i for i, line in enumerate(lines) if "idle -> starting" in line)
    assert warning < first_phase and "no proof" in lines[warning]
    assert "decision: COMMITTED" in done.stdout and "lost unknown" in done.stdout
    assert done.returncode == 1  # committed, unproven
