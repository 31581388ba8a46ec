"""swapctl diff on real relay processes: the reference against itself and its emulations,
a relay with a hard-coded path in mount namespaces, and the command line's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl.capture.replay import streams_of
from swapctl.diff import Category, Stream
from swapctl.diff.explain import explain
from swapctl.diff.report import DiffReport
from swapctl.diff.tokens import Gap, frame_stream
from swapctl.protocol.profiles import Domain, Profile
from swapctl.scenarios import builtin, files
from swapctl.scenarios.relays import RelaySpec, resolve
from swapctl.scenarios.sidebyside import Setup, SideBySide
from tests.conftest import Processes

MD, AP = Domain.MARKET_DATA, Profile.ALPHAPULSE
ROOT = Path(__file__).parents[2]
HARDCODED = ROOT / "tests" / "data" / "hardcoded_relay.py"
# one worker for the module: its fixture is module-scoped (./run test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("diff")

HARDCODED_PATH = Path("/tmp/swapctl-test-hardcoded/md.sock")
EDGE_CASES = [n for n in builtin.names() if n not in ("ci", "soak")]


def pair(old: str, new: str) -> SideBySide:
    return SideBySide(Setup(resolve(old, MD, AP), resolve(new, MD, AP)))


@pytest.fixture(scope="module")
def reference_pair() -> Iterator[SideBySide]:
    with pair("reference", "reference") as sbs:
        yield sbs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reference_is_equivalent_to_itself_on_every_scenario(reference_pair: SideBySide,
                                                             seed: int) -> None:
    for name in EDGE_CASES:
        report = reference_pair.run(builtin.build(name, seed, 1))
        assert report.equivalent, f"{name} seed {seed}: {report.comparison.first}"
        assert report.comparison.frames_compared > 0
        assert not report.info.notes, report.info.notes


def test_reference_is_equivalent_to_itself_on_ci_soak_and_files(
        reference_pair: SideBySide) -> None:
    runs = [builtin.build("ci", 4, 1), builtin.build("soak", 4, 1, {"messages": 20_000})]
    runs += [files.load(p, None, 1) for p in sorted((ROOT / "scenarios").glob("*.yaml"))]
    for scenario in runs:
        report = reference_pair.run(scenario)
        assert report.equivalent, f"{scenario.name}: {report.comparison.first}"
    assert report.comparison.frames_compared > 0


def _first_divergence(old: Stream, new: Stream) -> int:
    """Frames before the first place where two streams differ, computed the naive way:
    token by token over the whole streams (a gap counts by kind and length)."""
    a, b = frame_stream(old.raw), frame_stream(new.raw)

    def key(t: bytes | Gap) -> object:
        return t.key(False) if isinstance(t, Gap) else t

    pairs = zip(a.tokens, b.tokens, strict=False)
    k = next((k for k, (x, y) in enumerate(pairs) if key(x) != key(y)),
             min(len(a.tokens), len(b.tokens)))
    return (a if k < len(a.tokens) else b).frame_index(k)


def _streams(sbs: SideBySide, scenario_name: str) -> tuple[DiffReport, dict[str, Stream],
                                                           dict[str, Stream]]:
    """Run with recording, and rebuild each side's streams from the records."""
    report = sbs.run(builtin.build(scenario_name, 1, 1), record=True)
    recs = sbs.recording or []
    return (report, streams_of([r for r in recs if r.view == "old"]),
            streams_of([r for r in recs if r.view == "new"]))


@pytest.mark.parametrize(("mode", "scenario", "category", "clients"), [
    ("chunk", "split", Category.MISSING, "all"),
    ("no-validate", "garbage", Category.FRAMING, "all"),
    ("sink", "mix", Category.MISSING, "all"),
    ("no-echo", "mix", Category.MISSING, "publishers"),
])
def test_each_emulation_mode_differs_with_the_right_category(
        mode: str, scenario: str, category: Category, clients: str) -> None:
    with pair("reference", f"reference:{mode}") as sbs:
        report, old, new = _streams(sbs, scenario)
    assert not report.equivalent
    cmp = report.comparison
    assert category in cmp.totals()
    differing = {c.client for c in cmp.clients if not c.equivalent}
    if clients == "all":
        assert differing == {c.client for c in cmp.clients}
    else:  # without echo only the writers lose frames: their own
        assert differing == {"adapter-1", "adapter-2", "quiet"}
        assert all(dict(c.counts).keys() == {Category.MISSING} for c in cmp.clients
                   if c.client in differing)
    first = cmp.first
    assert first is not None
    client = first.client
    expected = _first_divergence(old[client], new[client])
    side = first.old if first.old is not None else first.new
    assert side is not None and side.frame == expected
    text = explain(first)
    assert f"client {client}" in text and f"frame {expected}" in text


def test_a_hardcoded_relay_runs_side_by_side_with_itself_in_mount_namespaces() -> None:
    spec = RelaySpec("hardcoded", (sys.executable, str(HARDCODED)), HARDCODED_PATH)
    host_dir_existed = HARDCODED_PATH.parent.exists()
    try:
        with SideBySide(Setup(spec, spec)) as sbs:
            old, new = sbs.relays
            assert old.socket != new.socket and old.socket.name == "md.sock"
            assert not HARDCODED_PATH.exists()  # each bound its own private folder
            ours = os.readlink("/proc/self/ns/mnt")
            namespaces = {os.readlink(f"/proc/{r.proc.pid}/ns/mnt") for r in sbs.relays
                          if r.proc is not None}
            assert len(namespaces) == 2 and ours not in namespaces
            report = sbs.run(builtin.build("mix", 1, 1))
            assert report.equivalent and report.comparison.frames_compared > 1000
            wrong = sbs.run(builtin.build("wrong-domain", 1, 1))
            assert wrong.equivalent
    finally:
        if not host_dir_existed and HARDCODED_PATH.parent.exists():
            HARDCODED_PATH.parent.rmdir()  # the empty mount point; fails loudly if not empty


def _swapctl(procs: Processes, *args: str, timeout: float = 60
             ) -> tuple[int, str, str]:
    proc = procs.start([sys.executable, "-m", "swapctl", *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd=ROOT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def test_cli_different_gives_1_with_json_and_junit(procs: Processes, tmp_path: Path) -> None:
    junit = tmp_path / "diff.xml"
    code, out, err = _swapctl(procs, "diff", "--old", "reference", "--new", "reference:sink",
                              "--scenario", "garbage", "--seed", "2", "--junit", str(junit),
                              "-o", "json")
    assert code == 1, err
    doc = json.loads(out)
    assert doc["equivalent"] is False and doc["runs"][0]["totals"]["missing"] > 0
    root = ET.parse(junit).getroot()
    clients = len(doc["runs"][0]["clients"])
    assert (root.get("tests"), root.get("failures")) == (str(clients), str(clients))
    assert root.find("testsuite/testcase/failure") is not None


def test_cli_equivalent_gives_0(procs: Processes, tmp_path: Path) -> None:
    junit = tmp_path / "diff.xml"
    code, out, err = _swapctl(procs, "diff", "--old", "reference", "--new", "reference",
                              "--scenario", "wrong-domain", "--scenario", "truncated",
                              "--junit", str(junit))
    assert code == 0, err
    assert out.count("EQUIVALENT") == 2
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and len(root.findall("testsuite")) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "nope"], "unknown scenario 'nope'"),
    (["--new", "sh -c 'echo broken >&2; exit 4' {socket}"], "exited with code 4"),
])
def test_cli_errors_give_2_and_say_why(procs: Processes, tmp_path: Path, args: list[str],
                                       message: str) -> None:
    base = {"--old": "reference", "--new": "reference"}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    junit = tmp_path / "diff.xml"
    flat = [x for kv in base.items() for x in kv]
    code, _, err = _swapctl(procs, "diff", *flat, "--junit", str(junit))
    assert code == 2 and message in err, err
    assert ET.parse(junit).getroot().get("errors") == "1"
    if "exited" in message:
        assert "broken" in err  # the relay's own log is quoted


def test_bench_diff_reports_speed_and_the_ci_wall_time(procs: Processes) -> None:
    code, out, err = _swapctl(procs, "bench", "diff", "--frames", "20000", "--repeats", "1",
                              "--scenario", "mix", "-o", "json")
    assert code == 0, err
    doc = json.loads(out)
    speed = doc["compare"]
    assert set(speed) == {"identical", "one_missing_in_the_middle", "one_altered_near_the_end",
                          "all_missing"}
    assert all(case["frames_compared"] == 20_000 and case["best_frames_per_s"] > 0
               for case in speed.values())
    ci = doc["ci_scenario"]
    assert ci["equivalent"] is True and ci["wall_s"] >= ci["scenario_s"] > 0
    assert [g["target"] for g in doc["goals"]] == [">= 1,000,000 frames/s"] * 2
