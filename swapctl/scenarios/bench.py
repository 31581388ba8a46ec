"""`swapctl bench diff`: how fast the diff engine compares, and what the CI scenario costs.

How it works: the comparison is timed in this process on two in-memory streams of
`frames` 74-byte Trade messages with unique sequences (built before the clock
starts; the new stream is a distinct copy, so equal bytes are really compared):
identical, one frame missing in the middle, one frame altered near the end, and every
frame missing (a sink). Each case is repeated; the best repeat is the figure, all are
shown. Frames compared = the larger side's frame count, summed over clients. Then the
standard CI scenario runs once, reference relay against itself: wall time including
both relays' start and stop, and the scenario alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swapctl.bench.report import Goal, Report, conditions
from swapctl.diff import Stream, compare
from swapctl.gcquiet import no_gc
from swapctl.protocol import Trade, encode_message
from swapctl.protocol.profiles import Domain, Profile
from swapctl.scenarios import builtin
from swapctl.scenarios.relays import resolve
from swapctl.scenarios.sidebyside import Setup, SideBySide

GOAL_FRAMES_PER_S = 1_000_000


@dataclass(frozen=True, slots=True)
class DiffBenchSettings:
    frames: int = 1_000_000
    repeats: int = 3
    scenario: str = "ci"
    seed: int = 1


def _streams(n: int) -> list[bytes]:
    base = encode_message(1, 2, [Trade(7, 6_500_000_000_000, 100_000_000, 0, 1, 1).to_tlv()])
    head, tail = base[:8], base[16:]
    return [head + i.to_bytes(8, "little") + tail for i in range(1, n + 1)]


def _cases(frames: list[bytes]) -> dict[str, bytes]:
    n = len(frames)
    altered = bytearray(frames[n - 10])
    altered[-1] ^= 0xFF
    return {
        "identical": bytes(bytearray(b"".join(frames))),
        "one_missing_in_the_middle": b"".join(frames[: n // 2] + frames[n // 2 + 1 :]),
        "one_altered_near_the_end": b"".join([*frames[: n - 10], bytes(altered),
                                              *frames[n - 9 :]]),
        "all_missing": b"",
    }


def _time(old: bytes, new: bytes) -> tuple[float, int]:
    with no_gc(collect_first=True):
        start = time.perf_counter()
        result = compare({"consumer": Stream(old)}, {"consumer": Stream(new)})
        return time.perf_counter() - start, result.frames_compared


def compare_speed(settings: DiffBenchSettings, progress: Callable[[str], None]
                  ) -> dict[str, Any]:
    frames = _streams(settings.frames)
    old = b"".join(frames)
    out: dict[str, Any] = {}
    for name, new in _cases(frames).items():
        repeats = 1 if name == "all_missing" else settings.repeats
        progress(f"diff: comparing {settings.frames:,} frames, {name}, x{repeats}")
        runs = [_time(old, new) for _ in range(repeats)]
        best = min(seconds for seconds, _ in runs)
        compared = runs[0][1]
        out[name] = {"frames_compared": compared, "best_seconds": round(best, 4),
                     "best_frames_per_s": round(compared / best),
                     "repeats_frames_per_s": [round(compared / s) for s, _ in runs]}
    return out


def ci_scenario(settings: DiffBenchSettings, progress: Callable[[str], None]) -> dict[str, Any]:
    md, ap = Domain.MARKET_DATA, Profile.ALPHAPULSE
    scenario = builtin.build(settings.scenario, settings.seed, 1)
    setup = Setup(resolve("reference", md, ap), resolve("reference", md, ap))
    progress(f"diff: scenario {settings.scenario} (seed {settings.seed}), reference vs "
             "reference, relays started and stopped inside the timing")
    start = time.perf_counter()
    with SideBySide(setup) as sbs:
        started = time.perf_counter()
        report = sbs.run(scenario)
    wall = time.perf_counter() - start
    return {"scenario": settings.scenario, "seed": settings.seed,
            "writes": sum(1 for _ in scenario.writes()), "traffic_bytes": scenario.traffic_bytes,
            "clients": len(scenario.clients), "wall_s": round(wall, 3),
            "relays_start_s": round(started - start, 3),
            "scenario_s": round(report.info.seconds, 3),
            "frames_compared": report.comparison.frames_compared,
            "equivalent": report.equivalent}


def run_diff_bench(settings: DiffBenchSettings, progress: Callable[[str], None]) -> Report:
    speed = compare_speed(settings, progress)
    ci = ci_scenario(settings, progress)
    identical = speed["identical"]["best_frames_per_s"]
    one = speed["one_missing_in_the_middle"]["best_frames_per_s"]
    return {
        "conditions": conditions(frames=settings.frames, message_bytes=74,
                                 repeats=settings.repeats, gc="disabled while timed"),
        "compare": speed,
        "ci_scenario": ci,
        "goals": [
            Goal.at_least("frames compared per second (identical 74-byte streams)",
                          identical, GOAL_FRAMES_PER_S, "frames/s").to_dict(),
            Goal.at_least("frames compared per second (one frame missing)", one,
                          GOAL_FRAMES_PER_S, "frames/s").to_dict(),
        ],
    }
