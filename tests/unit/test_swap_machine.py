"""The swap state machine: one table, an injected clock, every transition journaled."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from swapctl.swap.executor import SOAK_CHECK_FLOOR, Actions, Failure, SwapRun, SwapSettings
from swapctl.swap.machine import (
    TRANSITIONS,
    Deadlines,
    Event,
    IllegalTransition,
    State,
    SwapMachine,
    Transition,
)
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release

HAPPY = [Event.BEGIN, Event.READY, Event.PROBE_PASSED, Event.RELEASED, Event.ADOPTED,
         Event.VERIFIED, Event.SOAK_DONE, Event.COMMITTED]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def machine() -> tuple[SwapMachine, Clock, list[Transition]]:
    clock, journal = Clock(), []
    return SwapMachine(Deadlines(soaking=5.0), clock, journal.append), clock, journal


def test_happy_path_is_journaled_with_durations() -> None:
    m, clock, journal = machine()
    for event in HAPPY:
        clock.now += 0.5
        m.fire(event)
    assert m.state is State.COMMITTED and m.state.terminal
    assert [t.event for t in journal] == HAPPY
    assert [t.target for t in journal][-1] is State.COMMITTED
    assert all(d == pytest.approx(0.5) for _, d in m.durations())
    assert m.deadline() is None


@pytest.mark.parametrize("stop", range(1, 7))
def test_failure_in_any_active_state_rolls_back(stop: int) -> None:
    m, _, journal = machine()
    for event in HAPPY[:stop]:
        m.fire(event)
    m.fire(Event.FAIL, "candidate crashed")
    assert m.state is State.ROLLING_BACK and m.reason == "candidate crashed"
    m.fire(Event.ROLLED_BACK)
    assert m.state is State.ROLLED_BACK
    assert journal[-2].reason == "candidate crashed"


def test_manual_rollback_during_soak_and_failed_rollback() -> None:
    m, _, _ = machine()
    for event in HAPPY[:6]:
        m.fire(event)
    assert m.state is State.SOAKING
    m.fire(Event.ROLLBACK, "operator")
    m.fire(Event.ROLLBACK_FAILED, "old release would not start")
    assert m.state is State.FAILED and m.reason == "old release would not start"


def test_illegal_transitions_raise() -> None:
    m, _, _ = machine()
    with pytest.raises(IllegalTransition):
        m.fire(Event.ADOPTED)
    for event in HAPPY:
        m.fire(event)
    for event in Event:
        with pytest.raises(IllegalTransition):
            m.fire(event)


def test_deadlines_fire_on_the_injected_clock() -> None:
    m, clock, _ = machine()
    m.fire(Event.BEGIN)
    clock.now += 9.9
    assert m.tick() is State.STARTING
    clock.now += 0.2
    assert m.tick() is State.ROLLING_BACK
    assert "starting took longer than 10.0s" in m.reason


def test_soak_deadline_means_soak_done() -> None:
    m, clock, _ = machine()
    for event in HAPPY[:6]:
        m.fire(event)
    assert m.remaining() == pytest.approx(5.0)
    clock.now += 5.0
    assert m.tick() is State.COMMITTING


def test_rollback_deadline_fails_the_rollback() -> None:
    m, clock, _ = machine()
    m.fire(Event.BEGIN)
    m.fire(Event.FAIL, "x")
    clock.now += 31
    assert m.tick() is State.FAILED


def test_table_has_no_way_out_of_terminal_states() -> None:
    assert not [key for key in TRANSITIONS if key[0].terminal]


def test_a_soak_check_gets_its_floor_however_little_of_the_window_is_left() -> None:
    """3 plain swaps of the 60-minute soak rolled back because a stats call begun 10 ms
    before the end of a 0.3 s soak window was given those 10 ms."""
    clock = Clock()
    run = SwapRun(cast(Service, SimpleNamespace(active=object())), Release("v2", ("true",)),
                  SwapSettings(deadlines=Deadlines(soaking=5.0, verifying=5.0)),
                  clock=clock, actions=cast(Actions, SimpleNamespace(strategy="handoff")))
    for event in HAPPY[:5]:
        run.machine.fire(event)
    assert run.machine.state is State.VERIFYING
    clock.now += 4.99
    assert run.timeout() == pytest.approx(0.01)  # outside the soak: what is left
    clock.now += 0.02
    with pytest.raises(Failure, match=r"verifying took longer than 5\.0s"):
        run.timeout()
    run.machine.fire(Event.VERIFIED)
    assert run.timeout() == pytest.approx(5.0)
    clock.now += 4.99
    assert run.timeout() == SOAK_CHECK_FLOOR
    clock.now += 1.0  # the window closed during a check: tick() ends the soak
    assert run.timeout() == SOAK_CHECK_FLOOR
