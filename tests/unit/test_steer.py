"""Steering a running swap (swapctl/daemon/steer.py): which phases honour which request,
and the ticket's life between the asker and the engine, with a phase the test moves.

The rule under test: a request is never acknowledged and then ignored. It is honoured
(the engine took it), refused at once (too late, not in this phase), or refused when the
swap moves past every phase that could honour it, with the asker told either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from swapctl.daemon import steer
from swapctl.daemon.steer import NotNow, Steering, TooLate
from swapctl.swap import machine

pytestmark = pytest.mark.timeout(30)
WAIT = 5.0  # generous: the asker normally has its answer in microseconds


class Phase:
    def __init__(self, phase: str) -> None:
        self.now = phase

    def __call__(self) -> str:
        return self.now


def steering(phase: Phase, strategy: str = "handoff") -> Steering:
    return Steering("market_data", "swap-1", strategy, phase)


def asking(s: Steering, request: str, wait: float = WAIT) -> tuple[threading.Thread,
                                                                   dict[str, Any]]:
    """Ask in a thread (the API thread); the outcome lands in the dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["answer"] = s.ask(request, wait)
        except (TooLate, NotNow) as exc:
            out["refused"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


# ----- the table --------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", machine.STRATEGIES)
def test_accepts_follows_the_machine_for_every_phase_and_request(strategy: str) -> None:
    for state, _ in machine.PATHS[strategy]:
        for request in ("rollback", "abort", "commit"):
            assert steer.accepts(strategy, state.value, request) == machine.accepts(
                strategy, state, request)


def test_handoff_rules() -> None:
    for phase in ("starting", "probing", "releasing", "adopting", "verifying", "soaking"):
        assert steer.accepts("handoff", phase, "rollback")
        assert steer.accepts("handoff", phase, "abort")
    assert steer.accepts("handoff", "verifying", "commit")
    assert steer.accepts("handoff", "soaking", "commit")
    assert not steer.accepts("handoff", "starting", "commit")
    for request in ("rollback", "abort", "commit"):
        assert not steer.accepts("handoff", "committing", request)
        assert not steer.accepts("handoff", "committed", request)
        assert not steer.accepts("handoff", "not-a-phase", request)
    assert steer.accepts("handoff", "idle", "abort"), "a swap about to begin takes an abort"


def test_too_late_means_past_every_phase_that_honours_it() -> None:
    assert steer.too_late("handoff", "committing", "rollback")
    assert steer.too_late("handoff", "committing", "commit")
    assert not steer.too_late("handoff", "starting", "commit")  # too early, not too late
    assert steer.too_late("takeover", "adopting", "abort")
    assert not steer.too_late("takeover", "starting", "rollback")  # never honoured at all
    assert steer.too_late("handoff", "rolled_back", "commit")


# ----- asking ------------------------------------------------------------------------------

def test_a_rollback_during_committing_is_refused_at_once_and_says_what_to_do() -> None:
    s = steering(Phase("committing"))
    with pytest.raises(TooLate) as info:
        s.ask("rollback")
    message = str(info.value)
    assert "committing" in message and "too late" in message
    assert "swapctl rollback market_data" in message and "swap-1" in message
    assert info.value.answer()["code"] == "too_late"
    assert info.value.details == {"swap_id": "swap-1", "phase": "committing",
                                  "strategy": "handoff", "request": "rollback"}


def test_a_commit_while_starting_is_refused_not_too_late() -> None:
    with pytest.raises(NotNow, match="accepts commit only while verifying or soaking"):
        steering(Phase("starting")).ask("commit")


def test_a_takeover_never_takes_a_rollback() -> None:
    with pytest.raises(NotNow, match="takeover swap cannot be asked to rollback"):
        steering(Phase("starting"), "takeover").ask("rollback")


def test_the_engine_takes_a_request_and_the_asker_hears_honoured() -> None:
    phase = Phase("soaking")
    s = steering(phase)
    thread, out = asking(s, "rollback")
    until(lambda: s.take("rollback", "abort") is not None or "answer" in out)
    thread.join(WAIT)
    assert out["answer"]["honoured"] and out["answer"]["state"] == "soaking"
    assert s.take("rollback", "abort") is None, "taken once"


def test_the_engine_takes_only_what_it_polls_for() -> None:
    phase = Phase("verifying")
    s = steering(phase)
    thread, out = asking(s, "commit")
    time.sleep(0.05)
    assert s.take("rollback", "abort") is None, "a between-phases poll must leave a commit"
    phase.now = "soaking"
    s.moved()
    until(lambda: s.take("commit") == "commit" or "answer" in out)
    thread.join(WAIT)
    assert out["answer"]["honoured"] and out["answer"]["state"] == "soaking"


def test_a_request_the_swap_moves_past_is_refused_never_dropped() -> None:
    """The race: asked while soaking, the soak window ends before the engine polls."""
    phase = Phase("soaking")
    s = steering(phase)
    thread, out = asking(s, "rollback")
    time.sleep(0.05)  # the asker waits: accepted, not yet taken
    phase.now = "committing"
    s.moved()
    thread.join(WAIT)
    assert isinstance(out.get("refused"), TooLate), out
    assert "committing" in str(out["refused"])
    assert s.take("rollback", "abort") is None, "the engine must not act on it afterwards"


def test_a_swap_that_ends_refuses_what_is_still_waiting() -> None:
    phase = Phase("verifying")
    s = steering(phase)
    thread, out = asking(s, "commit")
    time.sleep(0.05)
    phase.now = "rolled_back"
    s.ended()
    thread.join(WAIT)
    assert isinstance(out.get("refused"), TooLate)
    assert "is over (rolled_back)" in str(out["refused"])
    with pytest.raises(TooLate):
        s.ask("rollback")


def test_an_unanswered_request_is_pending_and_still_answered_later() -> None:
    phase = Phase("starting")
    s = steering(phase)
    answer = s.ask("abort", wait=0.05)
    assert answer["pending"] and not answer["honoured"]
    phase.now = "probing"
    assert s.take("rollback", "abort") == "abort", "the ticket still stands"


def test_a_rollback_while_rolling_back_is_what_happens() -> None:
    answer = steering(Phase("rolling_back")).ask("rollback")
    assert answer["honoured"] and answer["note"] == "already rolling back"
    with pytest.raises(TooLate):
        steering(Phase("rolling_back")).ask("commit")


def test_a_rollback_replaces_a_waiting_commit_and_its_asker_is_told() -> None:
    phase = Phase("verifying")
    s = steering(phase)
    commit_thread, commit = asking(s, "commit")
    time.sleep(0.05)
    rollback_thread, rollback = asking(s, "rollback")
    commit_thread.join(WAIT)
    assert isinstance(commit.get("refused"), NotNow)
    assert "replaced by a rollback" in str(commit["refused"])
    with pytest.raises(NotNow, match="wins over a commit"):
        s.ask("commit", wait=0.01)
    assert s.take("rollback", "abort") == "rollback"
    rollback_thread.join(WAIT)
    assert rollback["answer"]["honoured"]


def test_many_askers_one_answer_each() -> None:
    phase = Phase("soaking")
    s = steering(phase)
    askers = [asking(s, "rollback" if i % 2 else "abort") for i in range(8)]
    until(lambda: len(s._pending) == 8)  # every ticket waits
    assert s.take("rollback", "abort") in ("rollback", "abort")
    for thread, out in askers:
        thread.join(WAIT)
        assert out["answer"]["honoured"], out
