"""The first swap of a box that runs today's relays (issue 13): a relay serving its
compiled-in path, started outside swapctl (unisolated, like the production Rust relays),
adopted by `swapctl swap --socket P --to CMD [--old-pid PID]` and taken over into a
handoff-capable release with no client cut.

The old relay is the Python reference relay in legacy mode (tests/data/legacy_relay.py,
"compiled" to a path under the test's temp dir) or the Rust example relay in legacy mode
(`--legacy --socket P`, a tokio multi-thread runtime: every thread must be frozen). An
independent `swapctl load` run (two publishers, a dashboard and a strategy consumer that
stops for good on EOF) is connected to it before the swap; the report's top-level figures
must equal what the load checker counted plus what the swap's own canary counted, and
both must say 0. Afterwards the box is in swapctl's slot layout: the public path is a
link into a slot whose state file names the candidate. Refusals (an --old-pid that does
not hold the listener, a socket nobody listens on, a listener held by two processes) exit
2 with their message; --dry-run names the adopted pid and starts and writes nothing.

swapctld's side (`adopt: true` in the service file) is checked on its own pieces, as
swapctld calls them: `daemon.legacy.start_adopted` makes the running relay the service's
active slot, and the first swap, the engine with `daemon.legacy.actions` (DaemonPlace),
takes it over under load and leaves swapctld holding the listener. (The candidate is
started by a subprocess spawner here, not supervisord.)
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from swapctl.config.convert import to_release
from swapctl.config.model import ServiceConfig
from swapctl.daemon import legacy as daemon_legacy
from swapctl.legacy import layout as lay
from swapctl.legacy import sockets
from swapctl.legacy.takeover import TakeoverSettings, freeze, signal_relay
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport
from swapctl.process import signal_group
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service
from swapctl.swap.spawner import SubprocessSpawner
from tests.conftest import Processes, wait_connectable
from tests.migration.legacy_support import HANDOFF_RELAY, build_legacy
from tests.rust import example_relay

pytestmark = pytest.mark.timeout(60)

SWAPCTL = [sys.executable, "-m", "swapctl"]
FIGURES = ("lost", "duplicated", "reordered", "corrupted", "disconnects", "dead_consumers")
CANARY = {"dead_consumers": "dead"}  # the canary's name for a figure, where it differs


@dataclass
class Box:
    """A box running a relay that swapctl did not start, at its compiled-in path."""

    root: Path
    public: Path
    relay: subprocess.Popen[bytes]
    kind: str

    @property
    def layout(self) -> lay.Layout:
        return lay.Layout(public=self.public, compiled=self.public, root=self.root / "st")

    def swap(self, procs: Processes, to: str, *extra: str,
             timeout: float = 40.0) -> tuple[int, str, str]:
        """`swapctl swap --socket P --to TO ...` (its own process group)."""
        proc = procs.start([*SWAPCTL, "swap", "--socket", str(self.public), "--to", to,
                            "--state-dir", str(self.root / "st"), *extra],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"swapctl swap still running after {timeout} s") from None
        return proc.returncode, out.decode(), err.decode()

    def candidate_pid(self) -> int | None:
        state = lay.read_state(self.layout, "a")
        return None if state is None else int(state["pid"])


def to_command(kind: str) -> str:
    return shlex.join(HANDOFF_RELAY) if kind == "python" else shlex.quote(
        str(example_relay()))


def legacy_command(kind: str, root: Path, public: Path) -> list[str]:
    if kind == "python":
        return build_legacy(root / "bin", public)
    return [str(example_relay()), "--legacy", "--socket", str(public)]


@pytest.fixture
def box(sockdir: Path, procs: Processes, request: pytest.FixtureRequest) -> Iterator[Box]:
    kind = getattr(request, "param", "python")
    public = sockdir / "torq" / "md.sock"  # the "compiled-in" path, under the temp dir
    relay = procs.start(legacy_command(kind, sockdir, public), stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_connectable(public, relay, 20)
    found = Box(sockdir, public, relay, kind)
    try:
        yield found
    finally:
        pid = found.candidate_pid()
        if pid is not None:
            signal_group(pid, 9)


def load_config(public: Path) -> LoadConfig:
    return LoadConfig(public, publishers=2, consumers=2, strategy_consumers=1, rate=2000.0,
                      duration=None, settle=1.0, connect_timeout=10.0)


def judge(report: dict[str, Any], code: int, verdict: LoadReport, err: str) -> None:
    """Committed; every top-level figure = the load checker's + the canary's, and all of
    them 0; the strategy consumer alive; exit 0. Both candidates count the bytes they
    skip (skipped_bytes in their stats), so both can vouch for every byte."""
    canary = report.get("canary") or {}
    load = {"lost": verdict.total.lost, "duplicated": verdict.total.duplicated,
            "reordered": verdict.total.reordered,
            "corrupted": verdict.total.corrupted + verdict.total.unexpected,
            "disconnects": verdict.disconnects,
            "dead_consumers": sum(1 for c in verdict.consumers if c.dead)}
    want = {k: load[k] + int(canary.get(CANARY.get(k, k)) or 0) for k in FIGURES}
    top = {k: report.get(k) for k in FIGURES}
    # who lost what: one message lost by every receiver (dropped before its fan-out)
    # reads differently from one receiver's queue lost
    per_client = [(f"{c.mode}-{c.index}", c.audit.lost, c.audit.max_gap_ns // 1_000_000)
                  for c in verdict.consumers]
    per_client += [(f"echo-{p.index}", p.echo.lost, p.echo.max_gap_ns // 1_000_000)
                   for p in verdict.publishers if p.echo is not None]
    context = (f"exit {code}; report {top} ({report.get('decision')}: {report.get('reason')});"
               f" load {load} (lost, max gap ms by client: {per_client}); "
               f"canary {({k: canary.get(k) for k in FIGURES})}; "
               f"evidence {report.get('evidence')}; stderr {err[-1500:]}")
    if os.environ.get("SWAPCTL_TEST_REPORTS"):  # scripts/repeat-test's summary
        with open(os.environ["SWAPCTL_TEST_REPORTS"], "a") as f:
            f.write(json.dumps({"report": top, "evidence": report.get("evidence"),
                                "load": load}) + "\n")
    assert report.get("decision") == "committed", context
    assert code == 0, context
    assert top == want, context
    assert not any(want.values()), context
    assert verdict.ok and verdict.sent > 0, verdict.problems()
    strategy = [c for c in verdict.consumers if c.mode == "strategy"]
    assert strategy and not any(c.dead for c in strategy), context


def assert_in_layout(box: Box, report: dict[str, Any]) -> None:
    """The old relay is gone; the public path is swapctl's link into a slot whose state
    file names the candidate, and it accepts."""
    assert box.relay.wait(5) is not None  # (taken over: killed while frozen)
    assert box.public.is_symlink() and box.layout.current() == "a"
    state = lay.read_state(box.layout, "a")
    assert state is not None and state["kind"] == "handoff"
    assert state["pid"] == report["evidence"]["candidate_pid"]
    assert lay.connectable(box.public)


CASES = [("python", "python", "owner"), ("python", "rust", "pid"),
         ("rust", "rust", "owner"), ("rust", "python", "pid")]


@pytest.mark.parametrize(("box", "to", "found_by"), CASES, indirect=["box"],
                         ids=[f"{a}-to-{b}-by-{c}" for a, b, c in CASES])
def test_first_swap_adopts_the_running_relay_with_no_client_cut(
        box: Box, procs: Processes, to: str, found_by: str) -> None:
    by_pid = ["--old-pid", str(box.relay.pid)] if found_by == "pid" else []
    session = LoadSession(load_config(box.public))
    session.start()
    try:
        code, out, err = box.swap(procs, to_command(to), *by_pid, "--canary-rate", "500",
                                  "-o", "json")
        verdict = session.stop()
    finally:
        session.close()
    assert out, f"exit {code}, no report: {err[-2000:]}"
    report = json.loads(out)
    expected = "--old-pid" if found_by == "pid" else "the listener's owner"
    assert f"adopting pid {box.relay.pid} (found by {expected})" in err
    assert report["strategy"] == "takeover"
    judge(report, code, verdict, err)
    # the load's 4 clients and the canary's 3 were on the adopted relay, and moved
    assert report["connections"]["moved"] >= 7, report["connections"]
    assert report["evidence"]["legacy_pid"] == box.relay.pid
    assert_in_layout(box, report)


@pytest.mark.parametrize("box", ["rust"], indirect=True)
def test_the_next_swap_starts_from_the_slot(box: Box, procs: Processes) -> None:
    """After the adoption the box is an ordinary slot layout: the next `swapctl swap
    --socket P --to CMD` (no --old-pid) starts from the slot's relay, whose control link
    ended with the first command, takes it over too, and cuts no one."""
    code, out, err = box.swap(procs, to_command("rust"), "--canary-rate", "500", "-o", "json")
    first = json.loads(out)
    assert first["decision"] == "committed" and code == 0, err  # proven: it counts skips
    session = LoadSession(load_config(box.public))
    session.start()
    try:
        code, out, err = box.swap(procs, to_command("python"), "--canary-rate", "500",
                                  "-o", "json")
        verdict = session.stop()
    finally:
        session.close()
    assert "adopting" not in err and "control link ended" in err
    report = json.loads(out)
    judge(report, code, verdict, err)
    assert report["evidence"]["legacy_pid"] == first["evidence"]["candidate_pid"]
    assert report["connections"]["moved"] >= 7, report["connections"]
    assert box.layout.current() == "a" and lay.connectable(box.public)
    state = lay.read_state(box.layout, "a")
    assert state is not None and state["pid"] == report["evidence"]["candidate_pid"]


@pytest.mark.parametrize("box", ["rust"], indirect=True)
def test_every_thread_of_the_rust_relay_is_frozen_and_seen_idle(box: Box) -> None:
    """The idle check looks at every thread of a multi-threaded (tokio) relay: stopped
    together, each parked in a waiting system call."""
    threads = len(os.listdir(f"/proc/{box.relay.pid}/task"))
    assert threads > 2  # main thread and the runtime's workers
    frozen = freeze(box.relay.pid, str(box.public), TakeoverSettings())
    try:
        assert len(frozen.syscalls) == threads
        assert all(sockets.proc_state(box.relay.pid, t) in ("T", "t") for t in frozen.syscalls)
        assert frozen.quiescent, frozen.syscalls
        assert all(sockets.waiting(n) for n in frozen.syscalls.values()), frozen.syscalls
    finally:
        frozen.close()
        signal_relay(box.relay.pid, signal.SIGCONT)
    assert lay.connectable(box.public)


def test_dry_run_names_the_adopted_pid_and_does_nothing(box: Box, procs: Processes) -> None:
    def tree() -> dict[str, tuple[int, int]]:
        return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns)
                for p in [box.root, *box.root.rglob("*")]}

    before, children = tree(), {p.pid for p in psutil.Process().children(recursive=True)}
    code, out, err = box.swap(procs, to_command("python"), "--dry-run", "-o", "json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["strategy"] == "takeover"
    assert plan["from"]["adopt"]["pid"] == box.relay.pid
    assert plan["from"]["adopt"]["found_by"] == "the listener's owner"
    assert plan["state_dir_exists"] is False
    code, out, err = box.swap(procs, "false", "--old-pid", str(box.relay.pid), "--dry-run")
    assert code == 0, err
    assert f"pid {box.relay.pid}, not started by swapctl: adopted (found by --old-pid)" in out
    assert tree() == before  # no state dir, no link, no log, the socket untouched
    assert not box.public.is_symlink()
    new = {p.pid for p in psutil.Process().children(recursive=True)} - children
    assert not [p for p in new if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_an_old_pid_that_does_not_hold_the_listener_is_refused(box: Box,
                                                                procs: Processes) -> None:
    code, _, err = box.swap(procs, "false", "--old-pid", str(os.getpid()))
    assert code == 2, err
    assert f"--old-pid {os.getpid()} does not hold the listener at {box.public}" in err
    assert f"pid {box.relay.pid} (" in err  # who does
    assert box.relay.poll() is None and not (box.root / "st").exists()


def test_a_socket_nobody_listens_on_is_refused(sockdir: Path, procs: Processes) -> None:
    stale = sockdir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # bound, never listening, then closed: the file stays
    box = Box(sockdir, stale, procs.start(["true"]), "none")
    code, _, err = box.swap(procs, "false")
    assert code == 2, err
    assert f"no relay to adopt at {stale}: no process listens on it" in err


def test_a_listener_held_by_two_processes_is_refused_naming_both(
        sockdir: Path, procs: Processes) -> None:
    public = sockdir / "md.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(public))
        sock.listen()
        child = procs.start([sys.executable, "-c", "import time; time.sleep(30)"],
                            pass_fds=[sock.fileno()])
        code, _, err = Box(sockdir, public, child, "none").swap(procs, "false")
    assert code == 2, err
    assert "2 processes hold the listener" in err and "--old-pid" in err
    assert f"pid {os.getpid()} (" in err and f"pid {child.pid} (" in err


class DaemonHost:
    """The parts of swapctld's ServiceRuntime that adoption and the legacy strategies
    use (daemon/legacy.py `AdoptHost`), around a real Service."""

    def __init__(self, box: Box, config: ServiceConfig) -> None:
        self.name, self.config = "md", config
        state = box.root / "daemon"
        self.service = Service(box.public, state, SubprocessSpawner(state / "logs"))
        self.service.open_control()
        self.spawner: Any = None  # supervisord's: a takeover starts its candidate by service
        self.legacy_socket: Path | None = None
        self.stored: list[int] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.remembered = ""

    def listener_store(self, fd: int) -> None:
        self.stored.append(fd)

    @property
    def legacy_root(self) -> Path:
        return self.service.state_dir / "legacy"

    domain_byte, start_timeout, probe_echo = 1, 10.0, True

    def remember(self, release: str) -> None:
        self.remembered = release

    def journal_event(self, kind: str, **details: Any) -> None:
        self.events.append((kind, details))

    def refresh(self) -> dict[str, Any]:
        return {}


def service_config(box: Box, to: str) -> ServiceConfig:
    return ServiceConfig.model_validate({
        "socket": str(box.public), "domain": "market_data", "profile": "alphapulse",
        "releases": {
            "today": {"command": legacy_command(box.kind, box.root, box.public),
                      "handoff": False, "legacy": True, "compiled_socket": str(box.public)},
            "v2": {"command": shlex.split(to_command(to)), "handoff": True}},
        "active": "today", "adopt": True}, context={"service": "md"})


@pytest.mark.parametrize("box", ["rust"], indirect=True)
def test_swapctld_adopts_the_running_relay_and_its_first_swap_takes_it_over(
        box: Box) -> None:
    host = DaemonHost(box, service_config(box, "python"))
    session = LoadSession(load_config(box.public))
    canary = Canary(box.public, 500.0, domain_byte=1)
    try:
        started = daemon_legacy.start_adopted(host, to_release(host.config, "today"))
        assert started == {"service": "md", "action": "adopted", "release": "today",
                           "pid": box.relay.pid}
        active = host.service.active
        assert active is not None and active.release.legacy and active.handle.pid == \
            box.relay.pid and host.legacy_socket == box.public
        assert host.events[0][0] == "adopted" and host.remembered == "today"
        session.start()
        canary.start()
        canary.mark()
        release = to_release(host.config, "v2")
        run = SwapRun(host.service, release, SwapSettings(deadlines=Deadlines()),
                      canary=canary, journal=Journal(None), domain_byte=1,
                      actions=daemon_legacy.actions(host, "takeover", release, 5.0)).run()
        final = run.canary_final if run.canary_final is not None else canary.stop()
        verdict = session.stop()
        report = swap_report.build(run, final)
    finally:
        canary.close()
        session.close()
        host.service.close()
    judge(report, 0 if report["decision"] == "committed" else 1, verdict, "")
    assert report["connections"]["moved"] >= 7, report["connections"]
    assert box.relay.wait(5) is not None
    assert len(host.stored) == 1 and host.legacy_socket is None  # swapctld holds P's listener


def test_adopt_is_only_for_a_legacy_active_release(sockdir: Path) -> None:
    data = {"socket": str(sockdir / "md.sock"), "domain": "market_data",
            "profile": "alphapulse", "releases": {"v2": {"command": ["relay"],
                                                         "handoff": True}},
            "active": "v2", "adopt": True}
    with pytest.raises(ValueError, match="the active release \\(v2\\) must be declared legacy"):
        ServiceConfig.model_validate(data)
    config = ServiceConfig.model_validate({**data, "adopt": False})
    host: Any = SimpleNamespace(config=config)  # adopt off: nothing else is looked at
    assert daemon_legacy.start_adopted(host, to_release(config, "v2")) is None
