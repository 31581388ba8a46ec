"""Pre-copy swaps and rollbacks lose nothing while clients come and go.

Clients open and close between the pre-copy and the freeze (a hook right after the
pre-copy, on the way there and on the way back) and all the time (a churning thread,
so some land inside the freeze). Judged by the independent load checker with a
strategy consumer, and by long-lived clients that must receive a last message.

On both relays. The Rust relay also has a crowd of 300 reading clients, so that its
freezes find a fan-out in flight: by default it speaks `defer-all` (section 13 of
docs/handoff-protocol.md: every client held until the BACKLOG says what it is owed),
and with `--no-defer-all` the `tail` extension carries the fan-out in the delta
(section 12). The test checks that the one asked for was used and that no client of
the crowd was cut.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapctl.handoff.controller import RelayLink
from swapctl.handoff.manifest import Transfer
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.swap import report
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.machine import Deadlines
from swapctl.swap.priority import CONTROL_THREAD, thread_name, threads_of
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner
from tests.clients import Client, ReadingCrowd, trade
from tests.rust import example_relay

PYTHON = (sys.executable, "-m", "swapctl.relay", "--log-level", "warning")


def releases(relay: str) -> tuple[Release, Release]:
    """`rust-tail`: the Rust relay without `defer-all`, so its freezes use `tail`."""
    command: tuple[str, ...] = PYTHON if relay == "python" else (str(example_relay()),)
    if relay == "rust-tail":
        command += ("--no-defer-all",)
    return Release("v1", command), Release("v2", command)


class ChurnBetween(HandoffActions):
    """Right after each pre-copy (before the freeze): close two clients, open two."""

    def __init__(self, public: Path) -> None:
        super().__init__()
        self.public = public
        self.keepers: list[Client] = []
        self.closed = 0

    def _pre_copy(self, run: SwapRun, old: RelayLink, new: RelayLink) -> Transfer | None:
        base = super()._pre_copy(run, old, new)
        for client in self.keepers[:2]:
            client.close()
            self.closed += 1
        self.keepers = self.keepers[2:] + [Client(self.public, plain_only=True)
                                           for _ in range(2)]
        time.sleep(0.02)  # the old relay sees the hang-ups and accepts the newcomers
        return base


class Churn(threading.Thread):
    """Connect, say one message, hang up; again and again."""

    def __init__(self, public: Path) -> None:
        super().__init__(daemon=True)
        self.public = public
        self.stop = threading.Event()
        self.cycles = 0

    def run(self) -> None:
        while not self.stop.is_set():
            client = Client(self.public, plain_only=True)
            client.send(trade(10_000 + self.cycles))
            client.close()
            self.cycles += 1
            time.sleep(0.002)


@pytest.fixture(params=["python", "rust", "rust-tail"])
def relay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def service(relay: str, sockdir: Path) -> Iterator[Service]:
    spawner = SubprocessSpawner(sockdir / "logs")
    svc = Service(sockdir / "md.sock", sockdir / "state", spawner)
    svc.open(releases(relay)[0])
    try:
        yield svc
    finally:
        svc.close()
        spawner.stop_all()


@pytest.mark.timeout(240)
def test_precopy_swaps_and_rollbacks_with_churn_lose_nothing(relay: str, service: Service,
                                                             sockdir: Path) -> None:
    public = service.socket_path
    assert service.active is not None
    rust = relay != "python"
    V1, V2 = releases(relay)
    if rust:  # its control thread has the name the pause's boost raises (priority.py)
        pid = service.active.link.pid
        assert CONTROL_THREAD in {thread_name(pid, tid) for tid in threads_of(pid)}
    crowd = ReadingCrowd(public, 300 if rust else 0)
    crowd.start()
    actions = ChurnBetween(public)
    actions.keepers = [Client(public, plain_only=True) for _ in range(6)]
    load = LoadSession(LoadConfig(public, publishers=2, consumers=2, rate=3000,
                                  duration=None, strategy_consumers=1))
    load.start()
    churn = Churn(public)
    churn.start()
    commit = SwapSettings(deadlines=Deadlines(soaking=0.0), pause_budget_ms=10_000.0,
                          verify_messages=0, keep_old=True)
    back = SwapSettings(deadlines=Deadlines(soaking=30.0), pause_budget_ms=10_000.0,
                        verify_messages=0, keep_old=True)
    results = []
    try:
        target = V2
        for i in range(24):
            if i % 3 == 2:  # a swap rolled back by the operator: the reverse pre-copy
                run = SwapRun(service, V1 if target is V2 else V2, back,
                              requests=lambda: "rollback", actions=actions).run()
            else:
                run = SwapRun(service, target, commit, actions=actions).run()
                target = V1 if target is V2 else V2
            results.append(report.build(run))
        churn.stop.set()
        churn.join(5)
        verdict = load.stop()
    finally:
        churn.stop.set()
        load.close()
        crowd.close()
    decisions = [r["decision"] for r in results]
    assert decisions == ["committed" if i % 3 != 2 else "rolled_back" for i in range(24)], \
        [r["reason"] for r in results]
    assert all(r["rollback"]["kind"] == "warm handoff" for r in results
               if r["decision"] == "rolled_back")
    assert all("precopied" in r["handoff"] for r in results)  # the extension was used
    assert sum(r["handoff"].get("delta_closed", 0) for r in results) > 0
    assert sum(r["handoff"].get("delta_new", 0) for r in results) > 0
    assert churn.cycles > 100
    from_tail = sum(r["handoff"].get("delta_from_tail", 0) for r in results)
    held_all = sum(bool(r["handoff"].get("delta_held_all")) for r in results)
    if relay == "rust":  # freezes found a fan-out in flight and left it to the BACKLOG
        assert held_all > 0 and from_tail == 0, [r["handoff"] for r in results]
        assert sum(r["handoff"].get("backlog_connections") or 0 for r in results) > 0
        # and the report says how long every client was held after the resume for it
        committed_held = [r["handoff"] for r in results
                          if r["decision"] == "committed" and r["handoff"].get("delta_held_all")]
        assert all(h.get("held_after_resume_ms", 0) > 0 for h in committed_held), committed_held
        assert not [r["handoff"] for r in results if not r["handoff"].get("delta_held_all")
                    and "held_after_resume_ms" in r["handoff"]]
    elif relay == "rust-tail":  # ... or carried it as a tail
        assert from_tail > 0 and held_all == 0, [r["handoff"] for r in results]
    if rust:
        assert crowd.received > 0 and crowd.cut == 0
        # each freeze raised its relay's workers to the real-time priority the pause
        # gave its control thread (sched.rs), when the pause ran real-time
        boosted = all(r["handoff"]["realtime"]["denied"] is None for r in results)
        freezes = [line for log in (sockdir / "logs").glob("*.log")
                   for line in log.read_text(errors="replace").splitlines()
                   if "swapctl-handoff: freeze " in line]
        assert len(freezes) == 24 + 8, freezes  # each swap, and each rollback's reverse freeze
        raised = [int(line.split("threads_raised=")[1].split()[0]) for line in freezes]
        assert all(n > 0 for n in raised) if boosted else all(n == 0 for n in raised), freezes
        if relay == "rust":  # the clients owed a fan-out's end: told by the ring, no task woken
            owed = [line for log in (sockdir / "logs").glob("*.log")
                    for line in log.read_text(errors="replace").splitlines()
                    if "swapctl-handoff: owed " in line]
            assert sum(int(line.split("from_ring=")[1].split()[0]) for line in owed) > 0, owed
    else:  # the reference relay speaks neither `tail` nor `defer-all`
        assert from_tail == 0 and held_all == 0
    assert verdict.ok, verdict.problems()
    assert verdict.sent > 0 and verdict.disconnects == 0
    last = trade(999_999)
    Client(public, plain_only=True).send(last)
    for client in actions.keepers:  # opened in some pre-copy window, never reconnected
        deadline = time.monotonic() + 10
        while last not in client.frames and time.monotonic() < deadline:
            client.recv_frames(len(client.frames) + 1, timeout=1)
        assert last in client.frames
