"""Hot swaps between real relay processes, judged by the canary's exact audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.swap import handoff_actions, report
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal, read
from swapctl.swap.machine import Deadlines
from swapctl.swap.priority import Boost, threads_of
from swapctl.swap.requests import state_dir_for
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SpawnError, SubprocessSpawner
from tests.clients import Client, trade

RELAY = (sys.executable, "-m", "swapctl.relay", "--log-level", "warning")
V1, V2 = Release("v1", RELAY), Release("v2", RELAY)
GENEROUS = 10_000.0  # tests judge loss, not timing: the pause budget only guards against hangs


def settings(**kw: Any) -> SwapSettings:
    kw.setdefault("pause_budget_ms", GENEROUS)
    return SwapSettings(**kw)


FAST = settings(deadlines=Deadlines(soaking=0.0))


def release(name: str, *args: str) -> Release:
    return Release(name, (*RELAY, *args))


class Stack:
    def __init__(self, root: Path, canary_rate: float = 2000.0) -> None:
        self.root = root
        self.public = root / "md.sock"
        self.spawner = SubprocessSpawner(root / "logs")
        self.service = Service(self.public, root / "state", self.spawner)
        self.service.open(V1)
        self.canary = Canary(self.public, canary_rate)
        self.canary.start()
        self.journal = Journal(root / "journal.jsonl")

    def swap(self, to: Release, settings: SwapSettings = FAST, **kw: Any) -> dict[str, Any]:
        run = SwapRun(self.service, to, settings, canary=self.canary, journal=self.journal,
                      **kw, actions=HandoffActions()).run()
        return report.build(run)

    def final(self) -> dict[str, Any]:
        return summarize(self.canary.stop())

    def close(self) -> None:
        self.canary.close()
        self.service.close()
        self.spawner.stop_all()
        self.journal.close()


@pytest.fixture
def stack(sockdir: Path) -> Iterator[Stack]:
    s = Stack(sockdir)
    try:
        yield s
    finally:
        s.close()


def assert_clean(final: dict[str, int]) -> None:
    bad = {k: final[k] for k in ("lost", "duplicated", "reordered", "corrupted", "unexpected",
                                 "disconnects", "dead")}
    assert not any(bad.values()), bad
    assert final["received_min"] == final["sent"] > 0


SWAPS = 40  # the hour of swaps is `swapctl bench soak`'s, not the suite's


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_forty_back_and_forth_swaps_lose_nothing(stack: Stack) -> None:
    """Judged three ways: the canary, an independent `swapctl load` run (with a strategy
    consumer), and a plain client that never reconnects."""
    pub, strategy = Client(stack.public, plain_only=True), Client(stack.public, plain_only=True)
    load = LoadSession(LoadConfig(stack.public, publishers=2, consumers=2, rate=5000,
                                  duration=None, strategy_consumers=1))
    load.start()
    listener_inode = stack.public.stat().st_ino
    reports = []
    try:
        for i in range(SWAPS):
            pub.send(trade(i + 1))
            reports.append(stack.swap(V2 if i % 2 == 0 else V1))
            strategy.recv_frames(i + 1)  # keep reading, as a live consumer does
        pub.send(trade(SWAPS + 1))
        verdict = load.stop()
    finally:
        load.close()
    assert verdict.ok, verdict.problems()
    assert stack.public.stat().st_ino == listener_inode  # created once, never unlinked
    assert verdict.sent > 0 and verdict.disconnects == 0
    reasons = [r["reason"] for r in reports if r["decision"] != "committed"]
    assert not reasons, reasons
    assert all(r["connections"]["moved"] >= 5 for r in reports)
    assert all(r["server_pause_ms"] is not None for r in reports)  # measured every time
    # every pause ran real-time (swap/priority.py): this thread and the adopter's threads,
    # ended by the swap, not by the watchdog; afterwards the relays run normal again
    boosts = [r["handoff"]["realtime"] for r in reports]
    assert all(b["threads"] >= 2 and b["denied"] is None and not b["cut_by_watchdog"]
               for b in boosts), boosts
    active = stack.service.active
    assert active is not None and threads_of(active.link.pid)
    for tid in threads_of(active.link.pid):
        assert os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_OTHER
    assert_clean(stack.final())
    # a plain client that never reconnects saw every message, in order, once
    assert strategy.recv_frames(SWAPS + 1) == [trade(i) for i in range(1, SWAPS + 2)]
    journal = read(stack.root / "journal.jsonl")
    assert sum(1 for r in journal if r.get("to") == "committed") == SWAPS


def test_a_pause_not_permitted_to_run_real_time_is_said_in_the_report(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(pids: list[int], priority: int, named: tuple[list[int], str]) -> Boost:
        return Boost(priority, denied="not permitted (Operation not permitted): ...")

    monkeypatch.setattr(handoff_actions, "boost", denied)
    result = stack.swap(V2)
    assert result["decision"] == "committed"
    assert result["handoff"]["realtime"]["denied"].startswith("not permitted")
    assert any("not SCHED_FIFO 10: not permitted" in note
               for note in result["evidence"]["notes"]), result["evidence"]
    assert_clean(stack.final())


@pytest.mark.slow
def test_a_thousand_clients_move_in_one_swap(stack: Stack) -> None:
    clients = [Client(stack.public, plain_only=True) for _ in range(1000)]
    deadline = time.monotonic() + 20
    while stack.service.connections() < 1003:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    result = stack.swap(V2)
    assert result["decision"] == "committed"
    assert result["connections"]["moved"] == 1003
    stages = result["pause_stages_ms"]  # where the pause went, from four processes' clocks
    assert list(stages) == ["export", "transfer", "adopt", "resume"]
    assert all(v >= 0 for v in stages.values())
    assert sum(stages.values()) == pytest.approx(result["server_pause_ms"], abs=0.01)
    clients[0].send(trade(5))
    for client in clients:
        assert client.recv_frames(1, timeout=20) == [trade(5)]
    assert_clean(stack.final())


@pytest.mark.parametrize(("args", "where"), [
    (("--crash-at", "ready"), "old"),
    (("--crash-at", "probe"), "old"),
    (("--crash-at", "adopt"), "released"),
    (("--crash-at", "resume"), "released"),
])
def test_candidate_crash_before_it_serves_rolls_back_losing_nothing(
        stack: Stack, args: tuple[str, ...], where: str) -> None:
    client = Client(stack.public, plain_only=True)
    result = stack.swap(release("v2", *args))
    assert result["decision"] == "rolled_back"
    assert "crashed" in result["reason"] or "exited" in result["reason"], result["reason"]
    failed = [j for j in result["journal"] if j.get("to") == "rolling_back"]
    assert failed and failed[0]["where"] == where
    assert result["rollback"]["ms"] is not None and result["rollback"]["ms"] < 30_000
    client.send(trade(1))
    assert client.recv_frames(1) == [trade(1)]  # served by v1 again
    assert_clean(stack.final())


def test_candidate_that_reads_but_never_confirms_is_killed_before_the_old_relay_resumes(
        stack: Stack) -> None:
    """adopt-resume: the candidate starts reading at the end of its ADOPT; its `adopted`
    is lost. The orchestrator must not let the old relay read the same sockets while the
    candidate may: it kills the candidate first, and the report says so."""
    client = Client(stack.public, plain_only=True)
    result = stack.swap(release("v2", "--no-reply-at", "adopt"))
    assert result["decision"] == "rolled_back"
    failed = [j for j in result["journal"] if j.get("to") == "rolling_back"]
    assert failed and failed[0]["where"] == "released"
    assert any("killed before the old relay read again" in note
               for note in result["evidence"]["notes"]), result["evidence"]["notes"]
    [cand] = [h for h in stack.spawner.handles if "--no-reply-at" in h.proc.args]
    assert cand.returncode == -9  # SIGKILL, before the old relay's RESUME
    assert cand.log_path is not None
    assert "handoff.reply_withheld" in cand.log_path.read_text()  # it did adopt and resume
    client.send(trade(1))
    assert client.recv_frames(1) == [trade(1)]  # served by v1 again


def test_candidate_crash_during_soak_keeps_every_client(stack: Stack) -> None:
    before = Client(stack.public, plain_only=True)
    opts = settings(deadlines=Deadlines(soaking=5.0))
    result = stack.swap(release("v2", "--crash-after-seconds", "1.0"), opts)
    assert result["decision"] == "rolled_back"
    assert "crashed during soak" in result["reason"]
    assert "held sockets" in result["rollback"]["kind"]
    assert result["rollback"]["ms"] < 30_000
    before.send(trade(1))
    assert before.recv_frames(1) == [trade(1)]  # still connected, served by v1
    final = stack.final()
    assert final["disconnects"] == 0 and final["dead"] == 0
    assert final["duplicated"] == 0 and final["reordered"] == 0
    # bytes the candidate had read but not forwarded die with it: reported, not hidden
    assert final["lost"] == final["sent"] - final["received_min"]


def test_candidate_that_never_reads_fails_its_probe(stack: Stack) -> None:
    result = stack.swap(release("v2", "--stall-after", "0"))
    assert result["decision"] == "rolled_back"
    assert result["reason"].startswith("probe failed")
    assert result["connections"]["moved"] == 0
    assert_clean(stack.final())


def test_candidate_that_stalls_after_cutover_is_rolled_back_without_loss(stack: Stack) -> None:
    opts = settings(deadlines=Deadlines(soaking=5.0), error_counters=())
    result = stack.swap(release("v2", "--stall-after", "600"), opts)
    assert result["decision"] == "rolled_back"
    assert "canary" in result["reason"]
    assert result["rollback"]["kind"] == "warm handoff"
    assert_clean(stack.final())  # the stalled relay never read it: nothing was lost


@pytest.mark.parametrize("fault", ["--drop-every", "--corrupt-every"])
def test_canary_catches_a_candidate_that_drops_or_corrupts(stack: Stack, fault: str) -> None:
    opts = settings(deadlines=Deadlines(soaking=5.0), error_counters=())
    result = stack.swap(release("v2", fault, "200"), opts)
    assert result["decision"] == "rolled_back"
    word = "missing" if fault == "--drop-every" else "corrupted"
    assert "canary" in result["reason"] and word in result["reason"], result["reason"]
    assert result["rollback"]["ms"] < 30_000
    final = stack.final()
    assert final["disconnects"] == 0 and final["dead"] == 0
    assert (final["lost"] if word == "missing" else final["corrupted"]) > 0


def test_candidate_that_never_says_ready_hits_its_deadline(stack: Stack) -> None:
    opts = replace(FAST, deadlines=Deadlines(starting=1.0, soaking=0.0))
    result = stack.swap(release("v2", "--never-ready"), opts)
    assert result["decision"] == "rolled_back"
    assert "ready" in result["reason"]
    assert_clean(stack.final())


def test_pause_budget_exceeded_rolls_back(stack: Stack) -> None:
    opts = SwapSettings(deadlines=Deadlines(soaking=1.0), pause_budget_ms=0.0)
    result = stack.swap(V2, opts)
    assert result["decision"] == "rolled_back"
    assert "pause budget exceeded" in result["reason"]
    assert result["rollback"]["kind"] == "warm handoff"
    assert_clean(stack.final())


def test_cold_rollback_when_the_old_release_is_gone(stack: Stack) -> None:
    opts = settings(deadlines=Deadlines(soaking=5.0))
    requests = iter([None, None, "rollback"])
    old = stack.service.active
    assert old is not None

    def ask() -> str | None:
        if stack.service.warm is not None and stack.service.warm.alive():
            stack.service.warm.handle.kill()  # the warm release dies during soak
        return next(requests, "rollback")

    result = stack.swap(V2, opts, requests=ask)
    assert result["decision"] == "rolled_back"
    assert result["rollback"]["kind"].startswith("cold")
    assert result["rollback"]["ms"] < 30_000
    assert_clean(stack.final())


def test_a_rollback_that_cannot_start_the_old_release_leaves_the_candidate_serving(
        stack: Stack) -> None:
    """The warm old relay dies during soak and the old release then cannot be started
    (in the 60-minute soak: "both slots are busy"): the rollback fails, and the candidate,
    which holds every client, keeps serving them. It used to be stopped, leaving the
    service with no relay and the clients cut."""
    opts = settings(deadlines=Deadlines(soaking=5.0))
    pub, strategy = Client(stack.public, plain_only=True), Client(stack.public, plain_only=True)
    pub.send(trade(1))
    assert strategy.recv_frames(1) == [trade(1)]
    real_spawn = stack.spawner.spawn
    refused: list[str] = []

    def spawn(release: Release, *args: Any) -> Any:
        if release.name == "v1" and stack.service.warm is not None:
            refused.append(release.name)
            raise SpawnError("release v1: both slots are busy (test)")
        return real_spawn(release, *args)

    stack.service.spawner = spawn_only(spawn)
    requests = iter([None, None, "rollback"])

    def ask() -> str | None:
        if stack.service.warm is not None and stack.service.warm.alive():
            stack.service.warm.handle.kill()  # the warm release dies during soak
        return next(requests, "rollback")

    result = stack.swap(V2, opts, requests=ask)
    assert refused == ["v1"]
    assert result["decision"] == "failed"
    assert "v2 keeps serving" in result["reason"], result["reason"]
    active = stack.service.active
    assert active is not None and active.release.name == "v2" and active.alive()
    pub.send(trade(2))  # the plain clients are still connected, through the candidate
    assert strategy.recv_frames(2) == [trade(1), trade(2)]
    assert_clean(stack.final())


class spawn_only:  # a Spawner made of one function
    def __init__(self, spawn: Any) -> None:
        self.spawn = spawn


def test_cli_swap_with_manual_rollback_during_soak(sockdir: Path) -> None:
    public = sockdir / "md.sock"
    cmd = " ".join(RELAY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "swapctl", "swap", "--socket", str(public),
         "--from", cmd, "--to", cmd, "--soak", "20", "-o", "json"],
        stdout=subprocess.PIPE, start_new_session=True)
    requests = state_dir_for(public) / "requests.sock"
    try:
        deadline = time.monotonic() + 30
        journal = state_dir_for(public) / "journal.jsonl"
        while not (journal.exists() and any(r.get("to") == "soaking" for r in read(journal))):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-m", "swapctl", "rollback", "--socket", str(public)],
            capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out)
    after = subprocess.run(
        [sys.executable, "-m", "swapctl", "rollback", "--socket", str(public)],
        capture_output=True, check=False)
    assert after.returncode == 3 and b"no swap in progress" in after.stderr
    assert proc.returncode == 1
    assert result["decision"] == "rolled_back" and result["reason"].startswith("operator")
    assert result["canary"]["lost"] == 0 and result["canary"]["disconnects"] == 0
    assert not requests.exists()


def test_cli_swap_prints_live_phases_and_the_report(sockdir: Path) -> None:
    cmd = " ".join(RELAY)
    done = subprocess.run(
        [sys.executable, "-m", "swapctl", "swap", "--socket", str(sockdir / "md.sock"),
         "--from", cmd, "--to", cmd, "--soak", "0.2"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    phases = [line.split("ms", 1)[1].split("(")[0].strip()
              for line in done.stderr.splitlines() if "->" in line]
    assert phases == ["idle -> starting", "starting -> probing", "probing -> releasing",
                      "releasing -> adopting", "adopting -> verifying",
                      "verifying -> soaking", "soaking -> committing",
                      "committing -> committed"]
    assert "decision: COMMITTED" in done.stdout and "lost 0" in done.stdout
