"""supervisord owns the relays: the swap engine through `SupervisorSpawner`, on real processes.

`SubprocessSpawner` is the fake the other swap tests use; the swap tests here run over
both spawners with the same assertions (outcome, journal path, canary audit), which is
what proves the fake behaves like supervisord for the engine. supervisord comes from the
`supervisor` package, lives in a short temp dir, and is stopped at teardown with
`shutdown()`, then by process group (ours and each relay's).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from swapctl.supervise.client import SupervisorClient
from swapctl.supervise.layout import Layout
from swapctl.supervise.spawner import SupervisorSpawner
from swapctl.supervise.supervisord import Supervisord, SupervisordStartError
from swapctl.swap import report
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SpawnError, SubprocessSpawner
from tests.migration.test_swap import FAST, V1, V2, assert_clean, release

SERVICE = "md"
SPAWNERS = ["subprocess", "supervisord"]


def start_supervisord(root: Path) -> Supervisord:
    sup = Supervisord(Layout(root / "sv", (SERVICE,)))
    sup.start()
    return sup


def client_of(sup: Supervisord) -> SupervisorClient:
    assert sup.client is not None
    return sup.client


class Stack:
    """A service whose relays come from one spawner, with canary traffic through it."""

    def __init__(self, root: Path, kind: str) -> None:
        self.supervisord: Supervisord | None = None
        self.spawner: SubprocessSpawner | SupervisorSpawner
        if kind == "subprocess":
            self.spawner = SubprocessSpawner(root / "logs")
        else:
            self.supervisord = start_supervisord(root)
            self.spawner = SupervisorSpawner(client_of(self.supervisord),
                                             self.supervisord.layout, SERVICE)
        self.service = Service(root / "md.sock", root / "state", self.spawner)
        self.service.open(V1)
        self.canary = Canary(root / "md.sock", 2000.0)
        self.canary.start()
        self.journal = Journal(root / "journal.jsonl")

    def swap(self, to: Release, settings: SwapSettings = FAST, **kw: Any) -> dict[str, Any]:
        run = SwapRun(self.service, to, settings, canary=self.canary, journal=self.journal,
                      **kw, actions=HandoffActions()).run()
        return report.build(run)

    def close(self) -> None:
        """Relays first (through their spawner), then supervisord."""
        self.canary.close()
        self.service.close()
        self.spawner.stop_all()
        self.journal.close()
        if self.supervisord is not None:
            self.supervisord.stop()


@pytest.fixture
def make_stack(sockdir: Path) -> Iterator[Callable[[str], Stack]]:
    stacks: list[Stack] = []

    def make(kind: str) -> Stack:
        stacks.append(Stack(sockdir, kind))
        return stacks[-1]

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()


def path_of(result: dict[str, Any]) -> list[str]:
    return [j["to"] for j in result["journal"] if "to" in j]  # transitions, not notes


@pytest.mark.parametrize("kind", SPAWNERS)
def test_swap_v1_to_v2_commits_with_a_clean_canary(make_stack: Callable[[str], Stack],
                                                   kind: str) -> None:
    stack = make_stack(kind)
    old = stack.service.active
    assert old is not None
    result = stack.swap(V2)
    assert result["decision"] == "committed", result["reason"]
    assert result["connections"]["moved"] >= 2  # the canary's publisher and consumers
    assert path_of(result) == ["starting", "probing", "releasing", "adopting", "verifying",
                               "soaking", "committing", "committed"]
    assert not old.alive()
    assert_clean(summarize(stack.canary.stop()))
    if isinstance(stack.spawner, SupervisorSpawner):
        new = stack.service.active
        assert new is not None
        assert stack.supervisord is not None
        infos = client_of(stack.supervisord).infos(["md-blue", "md-green"])
        # supervisord runs the new release in the other slot; the old slot was stopped
        assert [(i.state, i.pid) for i in infos] == [("STOPPED", 0), ("RUNNING", new.handle.pid)]


@pytest.mark.parametrize("kind", SPAWNERS)
def test_candidate_crashing_at_adopt_is_rolled_back(make_stack: Callable[[str], Stack],
                                                    kind: str) -> None:
    stack = make_stack(kind)
    result = stack.swap(release("v2", "--crash-at", "adopt"))
    assert result["decision"] == "rolled_back"
    assert "crashed during adopt (" in result["reason"], result["reason"]
    assert "relay.crash_injected" in result["reason"]  # the end of the candidate's log
    failed = [j for j in result["journal"] if j.get("to") == "rolling_back"]
    assert failed and failed[0]["where"] == "released"
    # the pause is all of releasing (released is journaled after the resume)
    assert path_of(result) == ["starting", "probing", "releasing", "rolling_back",
                               "rolled_back"]
    assert stack.service.active is not None and stack.service.active.release.name == "v1"
    assert_clean(summarize(stack.canary.stop()))


@pytest.mark.parametrize("kind", SPAWNERS)
def test_cold_rollback_after_the_warm_release_was_killed(make_stack: Callable[[str], Stack],
                                                         kind: str) -> None:
    """SIGKILLed from outside (not through its handle): the cold rollback starts v1 again
    at once, into a slot supervisord may not have reaped yet."""
    stack = make_stack(kind)
    requests = iter([None, None, "rollback"])

    def ask() -> str | None:
        warm = stack.service.warm
        if warm is not None and warm.alive():
            os.kill(warm.handle.pid, signal.SIGKILL)
            while warm.alive():
                time.sleep(0.001)
        return next(requests, "rollback")

    opts = replace(FAST, deadlines=Deadlines(soaking=5.0))
    result = stack.swap(V2, opts, requests=ask)
    assert result["decision"] == "rolled_back", result["reason"]
    assert result["rollback"]["kind"].startswith("cold"), result["rollback"]
    assert stack.service.active is not None and stack.service.active.alive()
    assert_clean(summarize(stack.canary.stop()))


def test_a_killed_relay_is_reported_exited_and_not_alive(
        make_stack: Callable[[str], Stack]) -> None:
    stack = make_stack("supervisord")
    assert stack.service.active is not None and stack.supervisord is not None
    handle = stack.service.active.handle
    assert handle.alive()
    os.kill(handle.pid, signal.SIGKILL)
    client = client_of(stack.supervisord)
    deadline = time.monotonic() + 5
    while (info := client.info("md-blue")).state != "EXITED":
        assert time.monotonic() < deadline, info
        time.sleep(0.01)
    assert info.pid == 0
    assert not handle.alive()
    text = handle.describe_exit()
    assert "md-blue: EXITED (terminated by SIGKILL" in text, text
    assert "swapctl launcher: slot md-blue: release v1" in text  # the log of this run
    assert handle.stop(1.0) == -1  # already gone: nothing to stop, the status is kept


def test_stops_right_after_start_are_not_lost_and_slots_are_bounded(sockdir: Path) -> None:
    """supervisord swallows a SIGTERM sent before its child execs (measured: the stop
    then waits for stopwaitsecs and SIGKILL); the handle waits for the exec."""
    sup = start_supervisord(sockdir)
    try:
        spawner = SupervisorSpawner(client_of(sup), sup.layout, SERVICE)
        sleeper = Release("sleeper", ("sleep", "60"))
        ctl, pub = sockdir / "c.sock", sockdir / "p.sock"
        for _ in range(5):
            handle = spawner.spawn(sleeper, "t", ctl, pub)
            began = time.monotonic()
            handle.stop(5.0)
            assert time.monotonic() - began < 1.0  # stopwaitsecs is 2: the SIGTERM worked
            assert "terminated by SIGTERM" in handle.describe_exit()
        blue, green = spawner.spawn(sleeper, "a", ctl, pub), spawner.spawn(sleeper, "b", ctl, pub)
        assert (blue.program, green.program) == ("md-blue", "md-green")
        with pytest.raises(SpawnError, match="both slots are busy"):
            spawner.spawn(sleeper, "c", ctl, pub)
        procs = [psutil.Process(h.pid) for h in (blue, green)]
        with pytest.raises(SupervisordStartError, match="already answers on"):
            Supervisord(sup.layout).start()  # one supervisord per socket
    finally:
        sup.stop()  # per-process stops, then shutdown()
    assert sup.proc is not None and sup.proc.returncode == 0
    assert not blue.alive() and not green.alive()
    assert not any(p.is_running() for p in procs)


def test_a_handle_stops_its_relay_itself_when_supervisord_is_gone(sockdir: Path) -> None:
    sup = start_supervisord(sockdir)
    try:
        spawner = SupervisorSpawner(client_of(sup), sup.layout, SERVICE)
        handle = spawner.spawn(Release("sleeper", ("sleep", "60")), "t",
                               sockdir / "c.sock", sockdir / "p.sock")
        assert sup.proc is not None
        deadline = time.monotonic() + 5  # exec'd: this is about supervisord dying
        while psutil.Process(handle.pid).cmdline() != ["sleep", "60"]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(sup.proc.pid, signal.SIGKILL)  # supervisord only: the relay lives on
        sup.proc.wait(5)
        assert handle.alive()
        began = time.monotonic()
        handle.stop(2.0)  # unreachable: SIGTERM to the relay's group, by pid + create time
        assert not handle.alive() and time.monotonic() - began < 1.0
    finally:
        sup.stop()
