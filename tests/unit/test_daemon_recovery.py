"""recovery.settle() and recovery.decide() as tables: exact tokens, exact Next values.

The relay states are the ones a relay's HELLO reports (relay/handoff_host.py):
active, released, adopted, paused, standby, probing.
"""

from __future__ import annotations

import pytest

from swapctl.daemon.recovery import Next, Settlement, decide, settle
from swapctl.swap.machine import State

# ----- settle: one relay ends up serving, or a problem for the operator ---------------

# (id, states reported, serving, resume, close, problem contains ("" = no problem))
SETTLE_CASES: list[tuple[str, dict[str, str], str | None, tuple[str, ...], tuple[str, ...],
                         str]] = [
    ("one active alone", {"a": "active"}, "a", (), (), ""),
    ("active + old that released: close the old's copies",
     {"new": "active", "old": "released"}, "new", (), ("old",), ""),
    ("active + released + adopted: close both holders, sorted",
     {"z": "released", "m": "active", "b": "adopted"}, "m", (), ("b", "z"), ""),
    ("active + a partial adopter", {"a": "active", "b": "adopted"}, "a", (), ("b",), ""),
    ("active + standby/paused/probing relays are left alone",
     {"a": "active", "s": "standby", "p": "paused", "q": "probing"}, "a", (), (), ""),
    ("none active, one released: resume it",
     {"old": "released"}, "old", ("old",), (), ""),
    ("none active, one released + adopters: resume it, close the adopters",
     {"old": "released", "c2": "adopted", "c1": "adopted"}, "old", ("old",), ("c1", "c2"), ""),
    ("none active, released + standby: standby untouched",
     {"old": "released", "s": "standby"}, "old", ("old",), (), ""),
    ("two active: nobody touched",
     {"a": "active", "b": "active"}, None, (), (), "relays a, b all serve the same socket"),
    ("two active + a holder: still nobody touched",
     {"a": "active", "b": "active", "c": "released"}, None, (), (),
     "relays a, b all serve the same socket"),
    ("two released: nobody resumed",
     {"y": "released", "x": "released"}, None, (), (),
     "relays x, y each released the clients and none serves"),
    ("two released + adopter: nothing closed either",
     {"x": "released", "y": "released", "c": "adopted"}, None, (), (),
     "relays x, y each released"),
    ("only adopters: let go of their copies, nobody serves",
     {"c1": "adopted", "c2": "adopted"}, None, (), ("c1", "c2"),
     "no relay holds the complete set of connections"),
    ("one adopter", {"c": "adopted"}, None, (), ("c",),
     "no relay holds the complete set of connections"),
    ("relays running but none serving or holding",
     {"s": "standby", "p": "paused", "": ""}, None, (), (), "no relay serves the clients"),
    ("nothing running", {}, None, (), (), "no relay is running"),
]


@pytest.mark.parametrize(("states", "serving", "resume", "close", "problem"),
                         [c[1:] for c in SETTLE_CASES], ids=[c[0] for c in SETTLE_CASES])
def test_settle(states: dict[str, str], serving: str | None, resume: tuple[str, ...],
                close: tuple[str, ...], problem: str) -> None:
    got = settle(states)
    assert (got.serving, got.resume, got.close) == (serving, resume, close)
    if problem:
        assert problem in got.problem
    else:
        assert got.problem == ""


def test_settle_never_resumes_and_closes_the_same_relay() -> None:
    for _, states, *_ in SETTLE_CASES:
        got = settle(states)
        assert not set(got.resume) & set(got.close), states
        assert got.serving is None or got.serving not in got.close, states
        # every token acted on is a relay that was reported
        assert set(got.resume) | set(got.close) <= set(states), states


def test_settle_returns_a_frozen_settlement() -> None:
    got = settle({"a": "active"})
    assert got == Settlement("a")
    with pytest.raises(AttributeError):
        got.serving = "b"  # type: ignore[misc]


# ----- decide: what to do with the swap the journal says was running ------------------

ACTIVE_PHASES = (State.STARTING, State.PROBING, State.RELEASING, State.ADOPTING,
                 State.VERIFYING, State.SOAKING)
TERMINAL = (State.COMMITTED, State.ROLLED_BACK, State.FAILED)
ROLES = ("old", "candidate", None)


def expected(phase: State | None, role: str | None) -> Next:
    """The table, written out: the clients' position decides."""
    if phase is None or phase in TERMINAL:
        return Next.IDLE
    if role != "candidate":
        return Next.ROLL_BACK
    return {State.ROLLING_BACK: Next.REDO_ROLLBACK,
            State.COMMITTING: Next.COMMIT}.get(phase, Next.CONTINUE)


DECIDE_CASES = [(phase, role) for phase in (None, *State) for role in ROLES]


@pytest.mark.parametrize(("phase", "role"), DECIDE_CASES,
                         ids=[f"{p.value if p else 'none'}-{r}" for p, r in DECIDE_CASES])
def test_decide_every_phase_and_role(phase: State | None, role: str | None) -> None:
    got = decide(phase, role)
    assert got.next is expected(phase, role)
    assert got.why
    assert got.extra == {}
    if got.next is Next.IDLE:
        assert got.why == "no swap was running"
    elif got.next in (Next.ROLL_BACK, Next.CONTINUE):
        assert phase is not None and phase.value in got.why  # names where it stopped


# A few rows spelled out, so the table above is not only checked against itself.
@pytest.mark.parametrize(("phase", "role", "nxt", "why"), [
    (None, "old", Next.IDLE, "no swap was running"),
    (State.COMMITTED, "candidate", Next.IDLE, "no swap was running"),
    (State.FAILED, None, Next.IDLE, "no swap was running"),
    (State.STARTING, "old", Next.ROLL_BACK, "during starting; the clients were on the old"),
    (State.RELEASING, "old", Next.ROLL_BACK, "during releasing; the clients were on the old"),
    (State.ADOPTING, None, Next.ROLL_BACK, "no relay of this swap serves the clients"),
    (State.ADOPTING, "candidate", Next.CONTINUE, "goes on from verification"),
    (State.VERIFYING, "candidate", Next.CONTINUE, "during verifying"),
    (State.SOAKING, "candidate", Next.CONTINUE, "during soaking"),
    (State.SOAKING, "old", Next.ROLL_BACK, "rolled back"),
    (State.ROLLING_BACK, "candidate", Next.REDO_ROLLBACK, "still on the candidate"),
    (State.ROLLING_BACK, "old", Next.ROLL_BACK, "during rolling_back"),
    (State.ROLLING_BACK, None, Next.ROLL_BACK, "no relay of this swap"),
    (State.COMMITTING, "candidate", Next.COMMIT, "while committing"),
    (State.COMMITTING, None, Next.ROLL_BACK, "during committing"),
])
def test_decide_rows(phase: State | None, role: str | None, nxt: Next, why: str) -> None:
    got = decide(phase, role)
    assert got.next is nxt
    assert why in got.why


def test_decide_treats_an_unknown_role_as_no_role() -> None:
    assert decide(State.SOAKING, "stray").next is Next.ROLL_BACK
    assert decide(State.SOAKING, "stray").why == decide(State.SOAKING, None).why


def test_settle_then_decide_after_a_crash_mid_soak() -> None:
    """Crash during SOAKING: candidate active, old still paused with its copies."""
    tokens = {"old": "O", "candidate": "C"}
    got = settle({"O": "released", "C": "active"})
    assert (got.serving, got.resume, got.close) == ("C", (), ("O",))
    role = next(r for r, t in tokens.items() if t == got.serving)
    assert decide(State.SOAKING, role).next is Next.CONTINUE


def test_settle_then_decide_after_a_crash_mid_handoff() -> None:
    """Crash during ADOPTING before the candidate resumed: the old released everything,
    the candidate adopted part: the old serves again and the swap rolls back."""
    got = settle({"O": "released", "C": "adopted"})
    assert (got.serving, got.resume, got.close) == ("O", ("O",), ("C",))
    assert decide(State.ADOPTING, "old").next is Next.ROLL_BACK
