"""The slot layout (isolation for real) and the restart strategy (run by the one swap
engine, `run_strategy`) under `swapctl load`."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl.handoff.controller import ControlServer
from swapctl.legacy import layout as lay
from swapctl.legacy.run import LegacySwap, ReleaseSpec, run_strategy
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.process import signal_group
from swapctl.swap.evidence import FIGURES
from swapctl.swap.report import exit_code, render_text
from swapctl.swap.service import Service
from swapctl.swap.spawner import SubprocessSpawner
from tests.clients import Client, trade
from tests.conftest import Processes
from tests.migration.legacy_support import HANDOFF_RELAY, build_legacy

pytestmark = pytest.mark.timeout(90)


class Box:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.compiled = root / "c" / "md.sock"
        self.layout = lay.Layout(public=self.compiled, compiled=self.compiled, root=root / "st")
        self.old_build = build_legacy(root, self.compiled, name="old")
        self.new_build = build_legacy(root, self.compiled, "--framing", "chunk", name="new")
        self.slots: list[lay.LegacySlot] = []
        self.spawner = SubprocessSpawner(root / "logs")
        (root / "state").mkdir()
        self.service = Service(self.layout.public, root / "state", self.spawner)
        self.service.control = ControlServer(root / "state" / "control.sock")

    def start(self, name: str, argv: list[str]) -> lay.LegacySlot:
        slot = lay.start_legacy(self.layout, name, argv, self.root / "logs")
        self.slots.append(slot)
        return slot

    def close(self) -> None:
        assert self.service.control is not None
        self.service.control.close()
        self.spawner.stop_all(2.0)
        for name in "abcdefgh":  # every relay a strategy started in a slot of this box
            state = lay.read_state(self.layout, name)
            if state is not None:
                signal_group(int(state["pid"]), 9)
        for slot in self.slots:
            slot.stop(1.0)


@pytest.fixture
def box(sockdir: Path) -> Iterator[Box]:
    b = Box(sockdir)
    try:
        yield b
    finally:
        b.close()


def test_two_builds_with_one_compiled_path_run_side_by_side(box: Box) -> None:
    a = box.start("a", box.old_build)
    b = box.start("b", box.new_build)
    assert a.alive() and b.alive()
    # each bound the compiled path inside its own namespace: two sockets, two relays
    assert a.socket.is_socket() and b.socket.is_socket()
    assert not box.compiled.exists()  # the host's compiled path was never touched
    ca1, ca2 = Client(a.socket), Client(a.socket)
    cb1, cb2 = Client(b.socket), Client(b.socket)
    ca1.send(trade(1))
    cb1.send(trade(2))
    assert ca2.recv_frames(1) == [trade(1)]
    assert cb2.recv_frames(1) == [trade(2)]
    assert ca2.quiet(0.1) and cb2.quiet(0.1)  # nothing crosses between the slots


def test_public_link_never_dangles_while_flipped(box: Box) -> None:
    a = box.start("a", box.old_build)
    b = box.start("b", box.new_build)
    lay.point(box.layout, a.socket)
    failures: list[str] = []
    connects = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal connects
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(box.layout.public))
                    connects += 1
                except OSError as exc:
                    failures.append(str(exc))

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        for i in range(200):
            lay.point(box.layout, (a if i % 2 else b).socket)
    finally:
        stop.set()
        thread.join(5)
    assert failures == [] and connects > 0
    assert box.layout.current() in ("a", "b")
    # a target that does not accept is refused and the link is left as it was
    before = os.readlink(box.layout.public)
    a.stop(1.0)
    with pytest.raises(lay.LayoutError, match="dangle"):
        lay.point(box.layout, a.socket)
    assert os.readlink(box.layout.public) == before
    assert not list(box.compiled.parent.glob(".md.sock.swapctl-*"))  # no temp link left


def test_migration_of_a_box_keeps_old_clients_and_sends_new_ones_to_the_slot(
        box: Box, procs: Processes) -> None:
    """Before: the old relay serves its compiled path directly (unisolated)."""
    procs.start(box.old_build)
    lay.wait_connectable(box.compiled, None, 10)
    before = Client(box.layout.public)
    migration, slot = lay.migrate(box.layout, box.new_build, box.root / "logs")
    assert slot is not None and not migration.already and migration.replaced == "socket"
    box.slots.append(slot)
    assert box.layout.public.is_symlink() and box.layout.current() == migration.slot
    after, other = Client(box.layout.public), Client(box.layout.public)
    after.send(trade(5))
    assert other.recv_frames(1) == [trade(5)]  # new clients meet on the slot
    assert before.quiet(0.1)  # the old relay's client is still connected there
    before.send(trade(6))
    assert before.recv_frames(1) == [trade(6)]  # and still served (echo)
    again, _ = lay.migrate(box.layout, box.new_build)
    assert again.already


@pytest.mark.parametrize("to_legacy", [True, False], ids=["to-legacy", "to-handoff"])
def test_restart_under_load_counts_every_cut_client(box: Box, to_legacy: bool) -> None:
    a = box.start("a", box.old_build)
    lay.point(box.layout, a.socket)
    to = ReleaseSpec("v2", tuple(box.new_build if to_legacy else HANDOFF_RELAY), to_legacy)
    request = LegacySwap(box.layout, to, box.root / "state", canary_rate=1000)
    cfg = LoadConfig(socket=box.layout.public, publishers=2, consumers=3, strategy_consumers=1,
                     rate=3000, duration=None, settle=1.0)
    with LoadSession(cfg) as session:
        time.sleep(0.3)
        report = run_strategy("restart", request, load=session, service=box.service)
        load = session.stop()
    assert report["strategy"] == "restart"
    assert report["decision"] == "committed", render_text(report)
    assert not a.alive()
    assert box.layout.current() == "b" and lay.connectable(box.layout.public)
    # restart's own count, before the cut: every connection the old relay held that was
    # not the swap canary's (2 publishers + 3 consumers of the load; the canary counts
    # its own three)
    evidence = report["evidence"]
    assert evidence["cut"] == 5 and "restart" in evidence["cut_by"], evidence
    load_figures = report["checkers"]["load"]
    canary = report["canary"]
    assert canary is not None and canary["disconnects"] > 0  # the canary was cut too
    for key in FIGURES:  # never lower than what the checkers counted
        value = report[key]
        if value is None:
            assert report["figures"][key]["unknown_because"], key
            continue
        own = canary["dead" if key == "dead_consumers" else key]
        assert value >= load_figures[key] + own, key
    assert load_figures["disconnects"] == load.disconnects >= 3  # every load consumer saw EOF
    assert [c.dead for c in load.consumers if c.mode == "strategy"] == [True]
    assert report["disconnects"] == canary["disconnects"] + max(5, load.disconnects)
    # the strategy consumer that stopped for good is in the report
    assert load_figures["dead_consumers"] == 1
    # restart's own count agrees: of the five cut, four came back (publishers and
    # dashboards, not counting the canary's own that came back too), one never did
    assert evidence["reconnected"] == 4, (evidence, report["figures"]["dead_consumers"])
    assert report["dead_consumers"] == canary["dead"] + 1, report["figures"]["dead_consumers"]
    # clients were cut: what they lost is not measured (unknown, never 0)
    assert report["lost"] is None and "cut" in report["figures"]["lost"]["unknown_because"]
    assert exit_code(report) == 1
    assert report["client_pause_ms"] is not None and report["client_pause_ms"] > 0


def test_restart_refuses_a_candidate_that_fails_its_probe(box: Box) -> None:
    a = box.start("a", box.old_build)
    lay.point(box.layout, a.socket)
    sink = build_legacy(box.root, box.compiled, "--sink", name="sink")  # forwards nothing
    request = LegacySwap(box.layout, ReleaseSpec("bad", tuple(sink), True),
                         box.root / "state", canary_rate=0)
    report = run_strategy("restart", request, service=box.service)
    # refused before any client moved: nothing to undo, the old relay never stopped
    assert report["decision"] == "rolled_back" and "probe" in report["reason"], \
        render_text(report)
    assert report["rollback"]["kind"].startswith("not needed")
    assert report["disconnects"] == 0 and exit_code(report) == 1
    assert a.alive() and box.layout.current() == "a"
    assert not lay.connectable(box.layout.slot_socket("b"))  # the candidate was stopped
