"""The window a swap's client pause is measured over, which the bench's no-swap
reference copies (swapctl/bench/handoff.py `cutover_window_ms`)."""

from __future__ import annotations

from typing import Any

from swapctl.bench.handoff import cutover_window_ms


def _report(decision: str, precopy_ms: float | None) -> dict[str, Any]:
    phases = [("starting", 2.0), ("probing", 1.0), ("releasing", 60.0), ("adopting", 12.5),
              ("verifying", 8.0), ("soaking", 0.5), ("committing", 1.5)]
    return {"decision": decision, "phases": [{"phase": p, "ms": ms} for p, ms in phases],
            "handoff": {} if precopy_ms is None else {"precopy_ms": precopy_ms}}


def test_the_window_runs_from_after_the_pre_copy_to_the_end_of_verification() -> None:
    # releasing less its pre-copy, then adopting and verifying; not starting, probing,
    # soaking or committing (the canary's gap window is restarted after the pre-copy)
    assert cutover_window_ms(_report("committed", 22.0)) == 60.0 - 22.0 + 12.5 + 8.0


def test_a_swap_without_a_pre_copy_counts_all_of_releasing() -> None:
    assert cutover_window_ms(_report("committed", None)) == 60.0 + 12.5 + 8.0


def test_a_swap_that_did_not_commit_has_no_window() -> None:
    assert cutover_window_ms(_report("rolled_back", 22.0)) is None
