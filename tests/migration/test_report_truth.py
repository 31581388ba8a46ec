"""The swap report never disagrees with the clients (issue 12, "Done when").

Every strategy (handoff, takeover, bridge, restart) runs standalone (`swapctl swap --socket
... --strategy S`) and through swapctld (`swapctl swap SERVICE`) under three independent
clients that count for themselves (tests/clients/counting_client.py, no swapctl code): a
publisher that never reads its echo, a dashboard that reconnects on EOF and a strategy
consumer that stops for good on EOF. Each writes its own counts to a JSON file when it
stops. The report's top-level figures must equal what the clients saw, plus what the
swap's own canary saw (its clients are clients too):
- disconnects == every EOF or write error the clients met;
- dead_consumers == the consumers that stopped for good;
- lost == 0 when the clients lost nothing; otherwise the exact count or null (unknown,
  with the reason), never 0;
- the exit code follows the rule (docs: 0 committed and every figure measured and 0,
  6 the rollback failed, 1 anything else).
Handoff and takeover must cut no one; the bridge's drain deadline (the soak window, 1 s
here) cuts the clients left on the old relay; restart cuts everyone. A takeover of a
legacy relay that keeps closed sockets open must not count swapctl's own probes (closed
before the freeze) as client disconnects (issue 12 item 3).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from swapctl.demo import configs
from swapctl.errors import SwapctlError
from swapctl.legacy import layout as lay
from swapctl.process import signal_group
from swapctl.relay.stats import read_stats
from tests.conftest import Processes, wait_connectable
from tests.migration.legacy_support import HANDOFF_RELAY, build_legacy
from tests.stack import SWAPCTL, Stack, make_stack, teardown

pytestmark = pytest.mark.timeout(60)

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "counting_client.py"
CANARY_RATE = "500"
DRAIN = "1s"  # the bridge's drain deadline (its soak window): cuts whoever is left
TRAFFIC_S = 0.5  # traffic through the new relay before the clients stop
FIGURES = ("lost", "duplicated", "reordered", "corrupted", "disconnects", "dead_consumers")


# ----- the clients -------------------------------------------------------------------

@dataclass
class Truth:
    """What the clients counted themselves (their JSON files)."""

    files: dict[str, dict[str, Any]]

    @property
    def disconnects(self) -> int:
        return sum(int(f["disconnects"]) for f in self.files.values())

    @property
    def dead(self) -> int:
        return sum(1 for role in ("dashboard", "strategy") if self.files[role]["dead"])

    @property
    def lost(self) -> int:
        """Per consumer and source: published since the consumer first heard the source,
        minus the distinct messages it received (gaps and the tail after it died)."""
        sent = int(self.files["publisher"]["sent"])
        source = str(self.files["publisher"]["source"])
        lost = 0
        for role in ("dashboard", "strategy"):
            seen = self.files[role]["sources"][source]
            lost += sent - (int(seen["first"]) - 1) - int(seen["distinct"])
        return lost

    def summary(self) -> str:
        return (f"clients: disconnects {self.disconnects}, dead {self.dead}, lost {self.lost}; "
                + json.dumps(self.files, sort_keys=True))


class Clients:
    """The three independent clients on one socket, each its own process (group)."""

    def __init__(self, procs: Processes, where: Path, path: Path) -> None:
        self.procs, self.where, self.socket = procs, where, path
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        where.mkdir(parents=True, exist_ok=True)

    def _out(self, role: str) -> Path:
        return self.where / f"{role}.json"

    def start(self, leavers: int = 0) -> None:
        """Start the three, wait until traffic flows; then `leavers` more clients connect
        and close again (clients that left before the swap: nobody's disconnect)."""
        for role in ("dashboard", "strategy", "publisher"):  # consumers first
            self.running[role] = self.procs.start(
                [sys.executable, str(CLIENT), role, "--socket", str(self.socket),
                 "--out", str(self._out(role))], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not all(Path(f"{self._out(r)}.ready").exists() for r in self.running):
            gone = {r: p.returncode for r, p in self.running.items() if p.poll() is not None}
            assert not gone, f"clients exited before traffic flowed: {gone}"
            assert time.monotonic() < deadline, "clients: no traffic within 20 s"
            time.sleep(0.02)
        for _ in range(leavers):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leaver:
                leaver.connect(str(self.socket))

    def stop(self) -> Truth:
        """The publisher stops writing (and says how many it sent) but stays connected
        while the consumers read what is still under way; then everyone leaves."""
        publisher = self.running["publisher"]
        publisher.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while not self._out("publisher").exists():
            assert publisher.poll() is None, f"the publisher exited with {publisher.returncode}"
            assert time.monotonic() < deadline, "the publisher did not stop within 15 s"
            time.sleep(0.02)
        for role in ("dashboard", "strategy", "publisher"):
            proc = self.running[role]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        files = {role: json.loads(self._out(role).read_text()) for role in self.running}
        for role, data in files.items():
            assert "error" not in data, f"{role}: {data['error']}"
        return Truth(files)


# ----- the judgement -----------------------------------------------------------------

def _canary(report: dict[str, Any], *keys: str) -> int:
    """What the swap's own canary counted (its clients are clients too); 0 without one."""
    canary = report.get("canary") or (report.get("checkers") or {}).get("canary") or {}
    for key in keys:
        if canary.get(key) is not None:
            return int(canary[key])
    return 0


def _exit_rule(report: dict[str, Any], clients_saw_something: bool) -> int:
    """0 committed and every figure measured and 0; 6 the rollback failed; else 1."""
    if report.get("decision") == "failed":
        return 6
    clean = all(report.get(k) == 0 for k in FIGURES)
    ok = report.get("decision") == "committed" and clean and not clients_saw_something
    return 0 if ok else 1


def judge(report: dict[str, Any], code: int, truth: Truth, cuts: bool) -> None:
    """Every disagreement between the report and the clients, in one failure."""
    want = {"disconnects": truth.disconnects + _canary(report, "disconnects"),
            "dead_consumers": truth.dead + _canary(report, "dead_consumers", "dead"),
            "lost": truth.lost + _canary(report, "lost")}
    problems = []
    if report.get("decision") != "committed":
        problems.append(f"decision {report.get('decision')!r}: {report.get('reason')}")
    missing = [k for k in want if k not in report]
    if missing:
        problems.append(f"no top-level {', '.join(missing)} in the report")
    for key in ("disconnects", "dead_consumers"):
        if key in report and report[key] != want[key]:
            problems.append(f"{key}: report {report[key]!r}, clients {want[key]}")
    lost = report.get("lost", "missing")
    if want["lost"] == 0 and lost != 0:
        problems.append(f"lost: report {lost!r}, clients lost nothing")
    if want["lost"] > 0 and lost not in (None, want["lost"]):
        problems.append(f"lost: report {lost!r}, clients lost {want['lost']} (say that "
                        "count, or null: unknown, never less)")
    if lost is None and not ((report.get("figures") or {}).get("lost") or {}).get(
            "unknown_because"):
        problems.append("lost is null (unknown) with no figures.lost.unknown_because")
    saw = any(want.values())
    if not missing and code != _exit_rule(report, saw):
        problems.append(f"exit code {code}, the rule says {_exit_rule(report, saw)}")
    # the scenario itself: who must be cut, and who must not
    if cuts and not (truth.disconnects >= 3 and truth.dead == 1):
        problems.append("scenario: the swap was to cut the three clients (strategy dead)")
    if not cuts and (truth.disconnects or truth.dead):
        problems.append("scenario: this strategy must cut no one, the clients were cut")
    top = {k: report.get(k, "missing") for k in ("decision", *FIGURES)}
    canary = {k: v for k, v in (report.get("canary") or {}).items() if k != "streams"}
    assert not problems, "\n".join([*problems, f"report: {top}, exit {code}",
                                    f"figures: {report.get('figures')}", f"canary: {canary}",
                                    truth.summary()])


# ----- standalone: `swapctl swap --socket ...` ---------------------------------------

def _swapctl(*args: str) -> list[str]:
    return [*SWAPCTL, *args]


def _json_out(done: tuple[int, str, str]) -> tuple[int, dict[str, Any]]:
    code, out, err = done
    try:
        return code, dict(json.loads(out))
    except json.JSONDecodeError:
        raise AssertionError(f"exit {code}, stdout {out!r}, stderr {err[-2000:]!r}") from None


def _run(procs: Processes, argv: list[str], timeout: float,
         why: str) -> tuple[int, str, str]:
    """Run a command in its own process group (ended at teardown if it hangs)."""
    proc = procs.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{shlex.join(argv)}: still running after {timeout} s ({why})"
                             ) from None
    return proc.returncode, out.decode(), err.decode()


def standalone_handoff(root: Path, procs: Processes) -> tuple[int, dict[str, Any], Truth]:
    """The command starts --from itself: the candidate waits on a gate until the clients
    are connected, and the swap is committed (`swapctl commit --socket`) once they stop,
    while the relays it owns still run."""
    sock, state, gate, stats = root / "md.sock", root / "st", root / "go", root / "new.stats"
    relay = shlex.join(HANDOFF_RELAY)
    gated = (f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.02; done; "
             f"exec {relay} --stats {shlex.quote(str(stats))}")
    swap = procs.start(_swapctl(
        "swap", "--socket", str(sock), "--state-dir", str(state), "--from", relay,
        "--to", shlex.join(["sh", "-c", gated]), "--strategy", "handoff", "--soak", "60s",
        "--canary-rate", CANARY_RATE, "-o", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    wait_connectable(sock, swap, 20)
    clients = Clients(procs, root / "clients", sock)
    clients.start()
    gate.touch()
    _wait_moved(stats, swap)
    time.sleep(TRAFFIC_S)
    truth = clients.stop()
    _run(procs, _swapctl("commit", "--socket", str(sock), "--state-dir", str(state)), 20,
         "a commit request is answered at once")
    try:
        out, err = swap.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("the standalone handoff did not end 20 s after commit") from None
    code, report = _json_out((swap.returncode, out.decode(), err.decode()))
    return code, report, truth


def _connections(stats: Path) -> int:
    """A relay's open connections; -1 while its stats socket does not answer yet."""
    try:
        return int(read_stats(stats, timeout=1.0)["connections_open"])
    except SwapctlError:
        return -1


def _wait_moved(stats: Path, swap: subprocess.Popen[bytes]) -> None:
    """Until the candidate serves the clients (three of ours, three of the canary's)."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(SwapctlError, ValueError):
            now = read_stats(stats, timeout=1.0)
            if now.get("state") == "active" and int(now["connections_open"]) >= 3:
                return
        assert swap.poll() is None, f"the swap ended first (exit {swap.returncode})"
        assert time.monotonic() < deadline, "the candidate never served the clients"
        time.sleep(0.05)


@dataclass
class Box:
    """A legacy build serving slot a behind the public link (a box migrated once)."""

    root: Path
    layout: lay.Layout
    slots: list[lay.LegacySlot]

    def close(self) -> None:
        for name in "abcdefgh":  # every relay a strategy started in a slot of this box
            state = lay.read_state(self.layout, name)
            if state is not None:
                signal_group(int(state["pid"]), signal.SIGKILL)
        for slot in self.slots:
            slot.stop(1.0)


@contextlib.contextmanager
def legacy_box(root: Path, *flags: str) -> Iterator[Box]:
    compiled = root / "c" / "md.sock"
    layout = lay.Layout(public=compiled, compiled=compiled, root=root / "st")
    box = Box(root, layout, [])
    try:
        box.slots.append(lay.start_legacy(layout, "a", build_legacy(root, compiled, *flags),
                                          root / "logs"))
        lay.point(layout, box.slots[0].socket)
        yield box
    finally:
        box.close()


def standalone_legacy(root: Path, procs: Processes, strategy: str, *flags: str,
                      leavers: int = 0) -> tuple[int, dict[str, Any], Truth]:
    with legacy_box(root, *flags) as box:
        if strategy == "takeover":
            to = ["--to", shlex.join(HANDOFF_RELAY), "--to-handoff"]
        else:
            new = build_legacy(root, box.layout.compiled, name="new")
            to = ["--to", shlex.join(new), "--to-legacy"]
        soak = ["--soak", DRAIN] if strategy == "bridge" else []
        clients = Clients(procs, root / "clients", box.layout.public)
        clients.start(leavers)
        why = (f"--soak {DRAIN} is the drain deadline: the clients still on the old relay "
               "are cut then" if soak else f"a {strategy} takes seconds")
        done = _run(procs, _swapctl(
            "swap", "--socket", str(box.layout.public), "--state-dir", str(box.layout.root),
            "--from-legacy", *to, "--strategy", strategy, *soak, "--canary-rate", CANARY_RATE,
            "-o", "json"), 20, why)
        time.sleep(TRAFFIC_S)
        truth = clients.stop()
    code, report = _json_out(done)
    return code, report, truth


# ----- through swapctld: `swapctl swap SERVICE` --------------------------------------

LEGACY = ("generic", "generic2")


def daemon_releases(root: Path, *flags: str) -> dict[str, Any]:
    compiled = root / "compiled" / "market_data.sock"  # never the real /tmp/torq
    command = build_legacy(root / "builds", compiled, *flags, name="generic")
    releases: dict[str, Any] = {
        name: {"command": command, "handoff": False, "legacy": True,
               "compiled_socket": str(compiled)} for name in LEGACY}
    for name in ("v1", "v2"):
        releases[name] = {"command": configs.relay_command("market_data"), "handoff": True}
    return releases


DAEMON_SWAPS = {  # strategy: (active release, swap arguments)
    "handoff": ("v1", ("--to", "v2")),
    "takeover": ("generic", ("--to", "v2")),
    "bridge": ("v2", ("--to", "generic", "--soak", DRAIN)),
    "restart": ("generic", ("--to", "generic2", "--strategy", "restart")),
}


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = make_stack(prefix="swr-", services=("market_data",))
    try:
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def through_daemon(s: Stack, procs: Processes, strategy: str, *flags: str,
                   leavers: int = 0) -> tuple[int, dict[str, Any], Truth]:
    active, args = DAEMON_SWAPS[strategy]
    configs.write(s.root, services=("market_data",), soak="1s", canary_rate=float(CANARY_RATE),
                  metrics="127.0.0.1:0", service_overrides={
                      "releases": daemon_releases(s.root, *flags), "active": active})
    s.up()
    clients = Clients(procs, s.root / "clients", s.root / "sockets" / "market_data.sock")
    clients.start(leavers)
    code, report = s.json("swap", "market_data", *args, "--yes", timeout=40)
    time.sleep(TRAFFIC_S)
    return code, report, clients.stop()


# ----- the cases ---------------------------------------------------------------------

def test_the_clients_count_a_clean_run_clean_and_a_killed_relay_as_cuts(
        sockdir: Path, procs: Processes) -> None:
    """The judge's own instrument against a plain relay: nothing to see while it serves;
    when it is killed and another takes its path, every client saw the cut, the strategy
    stayed down, the dashboard and the publisher came back, messages were lost."""
    sock = sockdir / "r.sock"
    relay = procs.relay(sock, "--log-level", "warning")
    clean = Clients(procs, sockdir / "clean", sock)
    clean.start()
    time.sleep(TRAFFIC_S)
    truth = clean.stop()
    assert (truth.disconnects, truth.dead, truth.lost) == (0, 0, 0), truth.summary()
    assert truth.files["publisher"]["sent"] > 0
    cut = Clients(procs, sockdir / "cut", sock)
    cut.start()
    signal_group(relay.pid, signal.SIGKILL)
    relay.wait(10)
    stats = sockdir / "stats.sock"
    procs.relay(sock, "--log-level", "warning", "--stats", str(stats))
    deadline = time.monotonic() + 20
    while _connections(stats) < 2:  # the publisher and the dashboard are back
        assert time.monotonic() < deadline, "the publisher and the dashboard did not return"
        time.sleep(0.02)
    assert cut.running["strategy"].wait(10) == 0  # it stopped for good on EOF
    truth = cut.stop()
    files = truth.files
    # each saw the cut (a dashboard may land once more on the dying listener and be
    # reset: that is a disconnect too); only the strategy stayed down
    assert all(f["disconnects"] >= 1 for f in files.values()), truth.summary()
    assert truth.dead == 1 and files["strategy"]["dead"], truth.summary()
    assert files["publisher"]["reconnects"] >= 1 and files["dashboard"]["reconnects"] >= 1
    assert truth.lost > 0, truth.summary()


CUTS = {"handoff": False, "takeover": False, "bridge": True, "restart": True}


@pytest.mark.parametrize("strategy", list(CUTS))
def test_standalone_report_agrees_with_the_clients(strategy: str, sockdir: Path,
                                                   procs: Processes) -> None:
    if strategy == "handoff":
        code, report, truth = standalone_handoff(sockdir, procs)
    else:
        code, report, truth = standalone_legacy(sockdir, procs, strategy)
    judge(report, code, truth, CUTS[strategy])


@pytest.mark.parametrize("strategy", list(CUTS))
def test_daemon_report_agrees_with_the_clients(strategy: str, stack: Stack,
                                               procs: Processes) -> None:
    code, report, truth = through_daemon(stack, procs, strategy)
    judge(report, code, truth, CUTS[strategy])


@pytest.mark.parametrize("path", ["standalone", "daemon"])
def test_takeover_does_not_count_closed_probes_as_disconnects(
        path: str, sockdir: Path, procs: Processes, request: pytest.FixtureRequest) -> None:
    """The legacy relay keeps every closed socket open, as the real old relay does: the
    sockets of swapctl's probes (and of three clients that left before the swap), closed
    before the freeze, are not client disconnects."""
    if path == "standalone":
        code, report, truth = standalone_legacy(sockdir, procs, "takeover", "--keep-closed",
                                                leavers=3)
    else:
        code, report, truth = through_daemon(request.getfixturevalue("stack"), procs,
                                             "takeover", "--keep-closed", leavers=3)
    judge(report, code, truth, cuts=False)


def test_a_candidate_killed_for_not_confirming_is_judged_by_the_clients(
        stack: Stack, procs: Processes) -> None:
    """adopt-resume with the candidate's `adopted` lost: it read, it is killed before the
    old relay reads again. Whatever the clients lost in between, the report says that
    count or "unknown", never less; nobody is cut (swapctld holds every socket)."""
    s = stack
    releases = daemon_releases(s.root)
    releases["v2"]["command"] = [*releases["v2"]["command"], "--no-reply-at", "adopt"]
    configs.write(s.root, services=("market_data",), soak="1s", canary_rate=float(CANARY_RATE),
                  metrics="127.0.0.1:0",
                  service_overrides={"releases": releases, "active": "v1"})
    s.up()
    clients = Clients(procs, s.root / "clients", s.root / "sockets" / "market_data.sock")
    clients.start()
    code, report = s.json("swap", "market_data", "--to", "v2", "--yes", timeout=40)
    time.sleep(TRAFFIC_S)  # traffic through the old relay again
    truth = clients.stop()
    assert report["decision"] == "rolled_back", report.get("reason")
    assert any("killed before the old relay read again" in n
               for n in report["evidence"]["notes"]), report["evidence"]["notes"]
    assert (truth.disconnects, truth.dead) == (0, 0), truth.summary()
    assert report["disconnects"] == 0 and report["dead_consumers"] == 0, report
    clients_lost = truth.lost + _canary(report, "lost")
    assert report["lost"] is None or report["lost"] == clients_lost, (
        f"report lost {report['lost']!r}, clients lost {clients_lost}: "
        f"{report.get('figures')}; {truth.summary()}")
    assert code != 0
