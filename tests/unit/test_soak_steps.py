"""`bench soak` stops when the stack does not recover, and keeps what it wrote to look at.

The 60-minute soak of the last round ran 116,000 failing steps for 20 minutes after its
market_data lost every relay, and deleted the journal and logs that would have said why.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, cast

from swapctl.bench.daemon_stack import keep
from swapctl.bench.soak import (
    SoakRecord,
    SoakSettings,
    SoakSteps,
    _run_steps,
    clean,
    trends,
)
from swapctl.bench.soak_plot import _series, _slope
from swapctl.errors import SwapctlError


class Broken:
    """Steps whose swaps fail (as with no active relay), and whose settle works."""

    def __init__(self, fail_from: int) -> None:
        self.calls = 0
        self.fail_from = fail_from
        self.settled = 0

    def swap(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls >= self.fail_from:
            raise SwapctlError("market_data: no active relay")
        return {"decision": "committed"}

    def rollback(self) -> dict[str, Any]:
        return {"decision": "failed", "reason": "rollback failed: both slots are busy"}

    def settle(self) -> None:
        self.settled += 1


def test_five_failed_steps_in_a_row_end_the_run() -> None:
    steps = Broken(fail_from=3)
    settings = SoakSettings(minutes=10.0, every=0.0, rollback_every=1000)
    record = SoakRecord()
    said: list[str] = []
    _run_steps(cast(SoakSteps, steps), settings, record, said.append)
    assert steps.calls == 2 + settings.give_up_after  # not 10 minutes of them
    assert len(record.steps) == 2 and not clean(record)
    assert record.failures[-1].startswith("the stack did not recover: 5 steps in a row")
    assert any("did not recover" in line for line in said)


def test_a_step_that_ends_wrong_counts_as_failed_and_a_good_one_resets_the_count() -> None:
    class Flaky(Broken):
        def swap(self) -> dict[str, Any]:
            self.calls += 1
            return {"decision": "committed" if self.calls % 4 == 0 else "rolled_back"}

    steps = Flaky(fail_from=0)
    record = SoakRecord()
    _run_steps(cast(SoakSteps, steps), SoakSettings(minutes=0.002, every=0.0,
                                                    rollback_every=1000), record, print)
    assert steps.calls > 5  # three wrong, one good: never five wrong in a row
    assert not any("did not recover" in f for f in record.failures)
    assert not clean(record)  # the rolled-back plain swaps are failures of the report


def test_keep_copies_the_state_but_not_the_sockets(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "state" / "logs").mkdir(parents=True)
    (root / "state" / "journal.jsonl").write_text('{"to": "committed"}\n')
    (root / "state" / "logs" / "swapctld.log").write_text("started\n")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "state" / "api.sock"))
    try:
        keep(root, tmp_path / "kept")
    finally:
        listener.close()
    kept = tmp_path / "kept" / "state"
    assert (kept / "journal.jsonl").read_text() == '{"to": "committed"}\n'
    assert (kept / "logs" / "swapctld.log").read_text() == "started\n"
    assert not (kept / "api.sock").exists()


def _sample(t: float, *procs: tuple[str, int, float, int]) -> dict[str, Any]:
    return {"t_s": t, "processes": [{"role": r, "pid": p, "rss_mb": m, "fds": f}
                                    for r, p, m, f in procs]}


def test_a_role_restarted_every_minute_still_has_a_trend_across_its_pids() -> None:
    """With faults swapctld lives ~50 s: no pid has 3 samples, so its own slope is None;
    the role's total at each sample (whichever pid it was) still says whether each new
    one starts larger (the journal read at start did: +23 MB/h)."""
    samples = [_sample(60.0 * i, ("swapctld", 100 + i, 50.0 + i, 24),
                       ("relay:md-blue", 7, 17.5, 8), ("relay:md-green", 9, 17.5, 8))
               for i in range(6)]
    found = trends(samples)
    assert found["swapctld"]["rss_slope_mb_per_h"] is None
    assert found["swapctld"]["all_pids"]["rss_slope_mb_per_h"] == 60.0  # +1 MB a minute
    assert found["swapctld"]["all_pids"]["fds_slope_per_h"] == 0.0
    relay = found["relay"]
    assert relay["rss_slope_mb_per_h"] == 0.0 and relay["all_pids"]["rss_mb_first"] == 35.0
    series = _series(samples)
    assert set(series) == {"swapctld", "relay:md-blue", "relay:md-green"}
    assert [p[3] for p in series["swapctld"]] == [100, 101, 102, 103, 104, 105]
    assert _slope(found["swapctld"]) == "+60 MB/h across 6 pids"
    assert _slope(relay) == "+0 MB/h"
