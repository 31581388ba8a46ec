"""A swap that has reached its end is not busy while it files its report; one that is
still under way is, at once."""

from __future__ import annotations

import threading
import time

from swapctl.daemon.jobs import SwapJob


def _job(phase: str) -> SwapJob:
    return SwapJob("swap-1", "swap", "handoff", "v1", "v2", phase_now=phase)


def test_an_ended_swap_is_waited_for_while_it_files_its_report() -> None:
    job = _job("committed")
    threading.Timer(0.1, job.finish, args=({"decision": "committed"},)).start()
    started = time.monotonic()
    assert job.ended_by(5.0)
    assert time.monotonic() - started < 4.0  # woken by the report, not the timeout


def test_an_ended_swap_that_never_files_is_still_busy_after_the_wait() -> None:
    assert not _job("rolled_back").ended_by(0.05)


def test_a_swap_under_way_is_busy_at_once() -> None:
    job = _job("soaking")
    started = time.monotonic()
    assert not job.ended_by(5.0)
    assert time.monotonic() - started < 1.0  # no wait for a swap that is not over
