"""`swapctl bench daemon`'s view of swapctld's memory (bench/daemon.py `memory`, `_goals`):
the trend over the second half of the swaps, per 1,000 swaps, is what the goal holds to."""

from __future__ import annotations

import pytest

from swapctl.bench.daemon import MEMORY_GOAL_SWAPS, _goals, memory
from swapctl.bench.report import slope

PID = 4242


def _samples(rss_of, swaps: int = 1000, pid: int = PID) -> list[tuple[int, int, float]]:
    return [(n, pid, rss_of(n)) for n in range(swaps + 1)]


def test_a_warm_up_then_flat_is_flat_over_the_second_half():
    # +3 MB over the first 300 swaps (caches, allocator), then flat, as the soaks saw
    mem = memory(_samples(lambda n: 50.0 + 3.0 * min(n, 300) / 300))
    assert mem["pid"] == PID and mem["samples"] == 1001 and mem["swaps_sampled"] == 1000
    assert (mem["rss_mb_first"], mem["rss_mb_last"], mem["rss_mb_max"]) == (50.0, 53.0, 53.0)
    assert mem["second_half_growth_mb_per_1000_swaps"] == 0.0
    assert mem["growth_mb_per_1000_swaps"] > 2  # the whole run's slope still shows it


def test_a_leak_of_one_kilobyte_a_swap_reads_one_megabyte_per_thousand():
    mem = memory(_samples(lambda n: 50.0 + n / 1024))
    assert mem["second_half_growth_mb_per_1000_swaps"] == pytest.approx(0.977, abs=0.001)
    assert mem["growth_mb_per_1000_swaps"] == pytest.approx(0.977, abs=0.001)


def test_a_restarted_swapctld_is_not_mixed_into_the_trend():
    early = [(n, 1, 80.0) for n in range(5)]  # another pid, far larger: left out
    mem = memory(early + _samples(lambda n: 50.0, swaps=200)[5:])
    assert mem["pid"] == PID and mem["other_pids"] == [1]
    assert mem["rss_mb_max"] == 50.0 and mem["second_half_growth_mb_per_1000_swaps"] == 0.0


def test_no_samples_measure_nothing():
    mem = memory([])
    assert mem["samples"] == 0 and mem["pid"] is None
    assert mem["second_half_growth_mb_per_1000_swaps"] is None


def _memory_goal(mem):
    goals = _goals(([], []), load=None, canary_lost=0, memory=mem)
    return [g for g in goals if g.name.startswith("swapctld RSS")]


def test_the_goal_holds_the_trend_to_one_megabyte_per_thousand_swaps():
    flat = _memory_goal(memory(_samples(lambda n: 50.0 + 3.0 * min(n, 300) / 300)))
    assert [(g.name, g.met, g.target) for g in flat] == [
        ("swapctld RSS growth over the second half of 1,000 swaps, per 1,000 swaps", True,
         "<= 1 MB")]
    leak = _memory_goal(memory(_samples(lambda n: 50.0 + n / 512)))  # 2 KB a swap
    assert len(leak) == 1 and not leak[0].met and leak[0].measured > 1


def test_too_few_swaps_set_no_goal():
    short = memory(_samples(lambda n: 50.0, swaps=MEMORY_GOAL_SWAPS - 1))
    assert _memory_goal(short) == []
    assert _memory_goal(memory(_samples(lambda n: 50.0, swaps=MEMORY_GOAL_SWAPS)))


def test_slope_needs_three_points_and_spread():
    assert slope([(0, 1.0), (1, 2.0)]) is None
    assert slope([(1, 1.0), (1, 2.0), (1, 3.0)]) is None
    assert slope([(0, 1.0), (1, 3.0), (2, 5.0)]) == pytest.approx(2.0)


def test_the_rollback_goal_names_its_tail_by_the_samples_it_had():
    def rollbacks(n):
        return [{"rollback_ms": 10.0 + i} for i in range(n)]

    def name(n):
        goals = _goals(([], rollbacks(n)), load=None, canary_lost=0, memory=memory([]))
        return next(g.name for g in goals if g.name.startswith("rollback"))

    assert name(20) == "rollback during soak, max of 20 (SRE: well under 30 s)"
    assert name(100) == "rollback during soak, p99 (SRE: well under 30 s)"
