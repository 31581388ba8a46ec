"""The report of `swapctl bench relay`: conditions, figures, comparisons and goals.

The comparisons are made only between figures of the same run: relay against the
raw forwarder (what parsing and framing cost) and against the direct link (what the
extra hop costs, and the ceiling of the load generator itself).
"""

from __future__ import annotations

from typing import Any

from swapctl.bench.relay import SLOW, SLOW_POLICY, RelayBenchSettings
from swapctl.bench.report import Goal, Report, conditions, source_revision
from swapctl.probes.bulk.stream import MESSAGE_SIZE

GOAL_VS_RAW_PERCENT = 80.0
GOAL_THROUGHPUT = 1_000_000
GOAL_ADDED_P99_US = 35.0
POINTS = ("p50", "p99", "p99.9")


def relay_report(s: RelayBenchSettings, results: dict[str, dict[str, dict[str, Any]]]) -> Report:
    throughput, latency, slow = results["throughput"], results["latency"], results.get(SLOW, {})
    comparison = _comparison(throughput, latency)
    comparison["slow_consumer_relay_vs_raw"] = _ratio(_rate(slow, "relay"), _rate(slow, "raw"))
    runs = [r for mode in results.values() for r in mode.values()]
    return {
        "conditions": _conditions(s),
        "throughput": throughput,
        SLOW: slow,
        "latency": latency,
        "comparison": comparison,
        "verified": all(r["verified"] for r in runs),
        "goals": [g.to_dict() for g in _goals(throughput, comparison) + _slow_goals(slow,
                                                                                  comparison)],
    }


def _rate(throughput: dict[str, dict[str, Any]], target: str) -> float | None:
    run = throughput.get(target)
    return None if run is None else float(run["messages_per_s"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _added(latency: dict[str, dict[str, Any]], target: str,
           base_target: str = "direct") -> dict[str, float | None]:
    run, base = latency.get(target), latency.get(base_target)
    out: dict[str, float | None] = {}
    for p in POINTS:
        key = f"{p}_us"
        if run is None or base is None or key not in run or key not in base:
            out[p] = None
        else:
            out[p] = round(run[key] - base[key], 1)
    return out


def _comparison(throughput: dict[str, dict[str, Any]],
                latency: dict[str, dict[str, Any]]) -> dict[str, Any]:
    relay, raw, direct = (_rate(throughput, t) for t in ("relay", "raw", "direct"))
    return {
        "throughput_relay_vs_raw": _ratio(relay, raw),
        "throughput_relay_vs_direct": _ratio(relay, direct),
        "throughput_raw_vs_direct": _ratio(raw, direct),
        "latency_added_by_relay_us": _added(latency, "relay"),
        "latency_added_by_raw_us": _added(latency, "raw"),
        "latency_relay_minus_raw_us": _added(latency, "relay", "raw"),
        "note": "added latency = the server's percentile minus the direct link's, same run; "
                "relay minus raw = what the relay's own work adds to a hop",
    }


def _goals(throughput: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> list[Goal]:
    vs_raw = comparison["throughput_relay_vs_raw"]
    return [
        Goal.at_least("relay throughput vs raw forwarder",
                      None if vs_raw is None else round(vs_raw * 100, 1),
                      GOAL_VS_RAW_PERCENT, "%"),
        Goal.at_least("relay throughput", _rate(throughput, "relay"), GOAL_THROUGHPUT, "msg/s"),
        Goal.below("p99 latency the relay adds over the direct link",
                   comparison["latency_added_by_relay_us"]["p99"], GOAL_ADDED_P99_US, "us"),
    ]


def _slow_goals(slow: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> list[Goal]:
    vs_raw = comparison["slow_consumer_relay_vs_raw"]
    lost = slow["relay"]["lost"] if "relay" in slow else None
    return [
        Goal.at_least("block mode, slow consumer: relay throughput vs raw forwarder",
                      None if vs_raw is None else round(vs_raw * 100, 1),
                      GOAL_VS_RAW_PERCENT, "%"),
        Goal.below("block mode, slow consumer: messages the relay lost", lost, 1, "msg"),
    ]


def _conditions(s: RelayBenchSettings) -> dict[str, Any]:
    per_write = s.batch_bytes // MESSAGE_SIZE
    return conditions(
        message_bytes=MESSAGE_SIZE,
        message="header + one Trade TLV, domain 1, checksum 0, unique sequences",
        connections="1 publisher + 1 consumer, each its own process",
        processes="server, publisher and consumer are busy processes sharing the usable "
                  "cores (the direct link has no server): they contend for CPU",
        servers={
            "relay": " ".join(["python -m swapctl.relay --socket P --stats S --log-level "
                               "warning", *s.relay_args])
                     + " (64 KiB reads; frame mode and echo unless the options say otherwise)",
            "raw": "python -m swapctl.bench.rawfwd --socket P (64 KiB reads, echo, parses "
                   "nothing)",
            "direct": "no server: the consumer owns the listener, the publisher connects",
        },
        echo="the relay and the raw forwarder send everything back to the publisher, "
             "which drains it and checks it byte for byte; the direct link has no echo",
        throughput={
            "duration_s": s.duration,
            "bytes_per_write": s.batch_bytes,
            "messages_per_write": per_write,
            "prebuilt_messages": s.count("throughput"),
            "window": "first write to last read; ends after duration_s or when the "
                      "prebuilt messages run out (publisher_stopped_by says which)",
            "figure": "messages delivered intact / window",
        },
        latency={
            "rate_msgs_per_s": s.rate,
            "duration_s_per_target": s.duration,
            "messages_per_write": 1,
            "interleaving": f"one publisher, one schedule: {s.block_messages} messages "
                            f"({s.block:g} s) to each target in turn "
                            f"({', '.join(s.targets)}), each target its own consumer",
            "warmup_messages_left_out": s.warmup_messages,
            "measure": "time.time_ns() at the consumer's read minus the header timestamp "
                       "written just before the send (one host clock)",
        },
        slow_consumer={
            "servers": f"the relay and the raw forwarder, both with {' '.join(SLOW_POLICY)}",
            "publisher": "as in throughput (64 KiB writes of the prebuilt stream, echo "
                         "drained and checked)",
            "consumer": "slower than the publisher: the latency consumer, which splits "
                        "and checks every message in Python (its latency is not measured)",
            "figure": "messages delivered intact / window, one target at a time; "
                      "relay_counters.block_episodes > 0 shows the consumer held the "
                      "publisher back",
        },
        cpu="cpu_percent_of_window: % of one core during the throughput window; "
            "background_cpu_percent: what other processes on the machine used meanwhile; "
            "steal_percent: time the hypervisor took",
        relay_source=source_revision("swapctl/relay", "swapctl/protocol"),
    )
