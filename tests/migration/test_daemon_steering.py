"""A service with a swap running, end to end: every other swap is refused at once, and a
request the swap can no longer honour is refused, never acknowledged and ignored.

Real supervisord, swapctld and reference relays (tests/stack.py), the CLI as operators
run it. Issue 12: `swapctl swap SERVICE` during a soak used to print nothing until the
soak ended and then run unattended; a dry run planned from the soaking candidate.
Issue 16: a rollback asked while committing was answered "requested" (exit 0) and the
swap committed. SWAPCTL_DAEMON_PAUSE_AT holds a swap in committing long enough to ask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from swapctl.daemon import stack
from swapctl.daemon.api import ApiError
from swapctl.daemon.runtime import PAUSE_AT
from tests.stack import Stack, make_stack, teardown

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
LONG_SOAK = 60  # seconds: the second swap must not wait for it
COMMITTING_S = 15  # seconds a swap is held in committing (two CLI runs on a loaded machine)


@pytest.fixture
def stack_root() -> Iterator[Stack]:
    s = make_stack()
    try:
        yield s
    finally:
        left = teardown(s)
        assert not left, f"processes left running: {left}"


def _start(s: Stack, soak: str) -> str:
    done = s.cli("swap", "market_data", "--to", "v2", "--soak", soak, "--no-wait", "-o", "json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["swap_id"])


def test_a_second_swap_rollback_or_drill_is_busy_at_once(stack_root: Stack) -> None:
    s = stack_root
    s.up()
    swap_id = _start(s, f"{LONG_SOAK}s")
    s.wait_state("soaking")

    # the daemon answers busy straight away, naming the swap and its phase
    client = stack.client_for(s.config, timeout=LONG_SOAK / 4)
    asked = time.monotonic()
    with pytest.raises(ApiError) as info:
        client.call("swap", service="market_data", to="v1", wait=True)
    answered = time.monotonic() - asked
    assert info.value.code == "busy"
    assert info.value.details["swap"]["swap_id"] == swap_id
    assert info.value.details["swap"]["phase"] == "soaking"
    print(f"busy answered in {answered * 1000:.1f} ms")

    started = time.monotonic()
    done = s.cli("swap", "market_data", "--to", "v1", "--yes", timeout=LONG_SOAK / 2)
    took = time.monotonic() - started
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert swap_id in done.stderr and "soaking" in done.stderr, done.stderr
    assert took < LONG_SOAK / 2, "the second swap waited for the first one's soak"
    print(f"second `swapctl swap` exited 2 in {took:.2f} s (CLI start included)")

    code, refusal = s.json("swap", "market_data", "--to", "v1", "--yes")
    assert code == 2 and refusal["error"] == "busy"
    assert refusal["swap"]["swap_id"] == swap_id and refusal["swap"]["phase"] == "soaking"

    # a dry run shows the running swap instead of planning from the soaking candidate
    done = s.cli("swap", "market_data", "--dry-run")
    assert done.returncode == 2, done.stdout
    for word in (swap_id, "handoff", "v1 -> v2", "soaking"):
        assert word in done.stderr, (word, done.stderr)
    code, plan = s.json("swap", "market_data", "--to", "v1", "--dry-run")
    assert code == 2 and plan["swap"]["strategy"] == "handoff"
    assert (plan["swap"]["from"], plan["swap"]["to"]) == ("v1", "v2")

    # a drill is refused, naming the running swap
    done = s.cli("drill", "market_data", "--override-window", timeout=LONG_SOAK / 2)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert swap_id in done.stderr, done.stderr

    # a commit while soaking is steering, not a second swap: honoured
    code, answer = s.json("commit", "market_data")
    assert code == 0 and answer["honoured"] and answer["state"] == "soaking", answer
    report = s.wait_report(swap_id)
    assert report["decision"] == "committed", report["reason"]
    requests = [r for r in report["journal"] if r.get("event") == "request"]
    assert [(r["request"], r["answer"]) for r in requests] == [("commit", "honoured")]

    # and once it has ended, the next swap runs
    done = s.cli("rollback", "market_data", "--yes")
    assert done.returncode == 0, done.stderr
    assert s.status()["active"]["release"] == "v1"


def test_a_rollback_during_soak_is_honoured(stack_root: Stack) -> None:
    s = stack_root
    s.up()
    swap_id = _start(s, f"{LONG_SOAK}s")
    s.wait_state("soaking")
    done = s.cli("rollback", "market_data")
    assert done.returncode == 0, done.stderr
    assert "rollback taken by swap" in done.stdout and "soaking" in done.stdout, done.stdout
    report = s.wait_report(swap_id)
    assert report["decision"] == "rolled_back"
    assert s.status()["active"]["release"] == "v1"


def test_a_late_rollback_while_committing_is_refused(stack_root: Stack) -> None:
    s = stack_root
    go_on = s.root / "go-on"  # the swap leaves committing once this exists
    s.up(env={PAUSE_AT: f"committing:{COMMITTING_S}:{go_on}"})
    swap_id = _start(s, "1s")
    s.wait_state("committing")

    done = s.cli("rollback", "market_data")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "committing: too late" in done.stderr, done.stderr
    assert "swapctl rollback market_data" in done.stderr and swap_id in done.stderr
    code, refusal = s.json("abort", "market_data")
    assert code == 2 and refusal["error"] == "too_late" and refusal["phase"] == "committing"
    assert s.status()["swap"]["state"] == "committing", f"raise {COMMITTING_S} s"
    go_on.touch()

    report = s.wait_report(swap_id, timeout=COMMITTING_S + 60)
    assert report["decision"] == "committed", "the refused rollback changed nothing"
    requests = [(r["request"], r["answer"]) for r in report["journal"]
                if r.get("event") == "request"]
    assert requests == [("rollback", "refused"), ("abort", "refused")]
    # what the refusal said to do works once the swap has ended
    done = s.cli("rollback", "market_data", "--yes")
    assert done.returncode == 0, done.stderr
    assert s.status()["active"]["release"] == "v1"
