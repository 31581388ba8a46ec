"""A soaking swap's followers hear from it each second (issue 15): the soak window left and
the canary's counts, from its latest snapshot; nothing while the swap is in other phases."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, cast

from swapctl.daemon.jobs import SoakProgress, SwapJob
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.machine import Deadlines, State, SwapMachine


def _job(state: State, canary: Any) -> SwapJob:
    deadlines = Deadlines(soaking=30.0)
    machine = SwapMachine(deadlines, time.monotonic)
    machine.restore(state, time.monotonic() - 5.0)  # five seconds into the phase
    run = SimpleNamespace(machine=machine, settings=SwapSettings(deadlines=deadlines))
    job = SwapJob("swap-t", "swap", "handoff", "v1", "v2", cast(SwapRun, run))
    job.canary = canary
    return job


def _follow(job: SwapJob, seconds: float) -> list[Any]:
    got: list[Any] = []
    follower = threading.Thread(target=lambda: got.extend(job.follow(tick=0.05)))
    follower.start()
    time.sleep(seconds)
    job.add({"swap": "swap-t", "from": "soaking", "to": "committing", "event": "soak_done"})
    job.finish({"swap_id": "swap-t", "decision": "committed"})
    follower.join(5)
    assert not follower.is_alive()
    return got


def test_each_tick_of_a_soak_has_the_window_left_and_the_canary_counts() -> None:
    canary = SimpleNamespace(last={"sent": 1200, "streams": [
        {"name": "strategy", "arrivals": 1190, "missing": 0},
        {"name": "dashboard", "arrivals": 1180, "missing": 3}]})
    got = _follow(_job(State.SOAKING, canary), 0.4)
    ticks = [g for g in got if isinstance(g, SoakProgress)]
    assert len(ticks) >= 4, got
    first = ticks[0]
    assert (first.phase, first.window_s, first.sent, first.seen, first.lost) == \
        ("soaking", 30.0, 1200, 1180, 3)
    assert 20.0 < ticks[-1].remaining_s < first.remaining_s <= 25.0  # 5 s were gone
    assert first.answer()["type"] == "soak" and first.answer()["remaining_s"] == \
        first.remaining_s
    assert got[-1] == {"report": {"swap_id": "swap-t", "decision": "committed"}}


def test_no_ticks_outside_the_soak_and_none_counts_without_a_canary() -> None:
    got = _follow(_job(State.VERIFYING, None), 0.3)
    assert not [g for g in got if isinstance(g, SoakProgress)]
    ticks = [g for g in _follow(_job(State.SOAKING, None), 0.2)
             if isinstance(g, SoakProgress)]
    assert ticks and ticks[0].sent is None and ticks[0].lost is None
