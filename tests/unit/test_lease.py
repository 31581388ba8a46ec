"""A run's lease on a service (daemon/lease.py) on a manual clock: take, a second holder
refused, renew, expiry making the named release due once no swap runs, release."""

from __future__ import annotations

from pathlib import Path

import pytest

from swapctl.config import load_config
from swapctl.daemon.jobs import Busy
from swapctl.daemon.lease import MAX_TTL, Due, LeaseState
from swapctl.errors import UsageError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TTL = 5.0
CONFIG = load_config(CONFIGS).service("market_data")
RESTORE = CONFIG.active


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> LeaseState:
    return LeaseState("market_data", clock)


def test_a_second_holder_is_busy_until_the_lease_expires(state: LeaseState,
                                                         clock: Clock) -> None:
    state.take("run-a", TTL, RESTORE, CONFIG)
    with pytest.raises(Busy, match="held by run-a"):
        state.take("run-b", TTL, RESTORE, CONFIG)
    clock.now += TTL  # expired, not yet watched: the next holder may take it
    assert state.take("run-b", TTL, RESTORE, CONFIG).holder == "run-b"


def test_replaces_takes_over_a_dead_holders_lease(state: LeaseState) -> None:
    state.take("dead", TTL, RESTORE, CONFIG)
    assert state.take("next", TTL, RESTORE, CONFIG, replaces="dead").holder == "next"


@pytest.mark.parametrize("ttl", [0.0, -1.0, MAX_TTL + 1])
def test_a_ttl_out_of_range_is_refused(state: LeaseState, ttl: float) -> None:
    with pytest.raises(UsageError, match="lease ttl"):
        state.take("run", ttl, RESTORE, CONFIG)
    assert state.held is None


def test_an_unknown_release_to_restore_is_refused(state: LeaseState) -> None:
    with pytest.raises(UsageError, match="no release 'nope'"):
        state.take("run", TTL, "nope", CONFIG)


def test_renewing_keeps_the_lease(state: LeaseState, clock: Clock) -> None:
    state.take("run", TTL, RESTORE, CONFIG)
    clock.now += TTL * 0.9
    state.renew("run")
    clock.now += TTL * 0.9
    assert state.watch(swap_running=False) == Due()
    status = state.status()
    assert status is not None and status["holder"] == "run"
    assert 0 < status["expires_in_s"] <= TTL


def test_expiry_makes_the_release_due_once_no_swap_runs(state: LeaseState,
                                                        clock: Clock) -> None:
    lease = state.take("run", TTL, RESTORE, CONFIG)
    clock.now += TTL
    assert state.watch(swap_running=True) == Due(expired=lease)
    assert state.status() is None
    with pytest.raises(UsageError, match=f"holds no lease .*{RESTORE} is being put back"):
        state.renew("run")
    assert state.watch(swap_running=True) == Due(), "not while a swap runs"
    assert state.watch(swap_running=False) == Due(restore=RESTORE)
    assert state.watch(swap_running=False) == Due(), "handed out once"


def test_a_new_lease_cancels_a_pending_restore(state: LeaseState, clock: Clock) -> None:
    state.take("run", TTL, RESTORE, CONFIG)
    clock.now += TTL
    state.watch(swap_running=True)
    state.take("next", TTL, RESTORE, CONFIG)
    assert state.watch(swap_running=False) == Due()


def test_release_ends_only_the_holders_lease(state: LeaseState) -> None:
    state.take("run", TTL, RESTORE, CONFIG)
    assert not state.release("other")
    assert state.release("run")
    assert state.held is None and not state.release("run")
