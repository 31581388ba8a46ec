"""The report of `swapctl bench relay`: conditions, figures, comparisons and goals.

The comparisons are made only between figures of the same run: each relay (`relay`,
the Python reference relay; `rust`, the Rust example relay) against the raw forwarder
(what parsing and framing cost) and against the direct link (what the extra hop costs,
and the ceiling of the load generator itself). `summary` puts the targets side by side:
throughput, its share of the raw forwarder's, and the latency each adds to the direct
link (p50/p99) against the operators' < 35 us.
"""

from __future__ import annotations

from typing import Any

from swapctl.bench.relay import RELAY_TARGETS, SERVER_POLICY, SLOW, RelayBenchSettings
from swapctl.bench.report import Goal, Report, conditions, source_revision
from swapctl.bench.rust_relay import rust_relay_binary
from swapctl.probes.bulk.stream import MESSAGE_SIZE

GOAL_VS_RAW_PERCENT = 80.0
GOAL_THROUGHPUT = 1_000_000
GOAL_ADDED_P99_US = 35.0
POINTS = ("p50", "p99", "p99.9")
NAMES = {"direct": "direct link (no server)", "raw": "raw forwarder",
         "relay": "Python reference relay", "rust": "Rust example relay"}
GOAL_PREFIX = {"relay": "relay", "rust": "rust relay"}


def relay_report(s: RelayBenchSettings, results: dict[str, dict[str, dict[str, Any]]]) -> Report:
    throughput, latency, slow = results["throughput"], results["latency"], results.get(SLOW, {})
    relays = [t for t in RELAY_TARGETS if t in s.targets]
    comparison = _comparison(throughput, latency, relays)
    comparison["slow_consumer_relay_vs_raw"] = _ratio(_rate(slow, "relay"), _rate(slow, "raw"))
    runs = [r for mode in results.values() for r in mode.values()]
    goals = [g for relay in relays for g in _goals(relay, throughput, comparison)]
    if "relay" in relays:
        goals += _slow_goals(slow, comparison)
    return {
        "conditions": _conditions(s),
        "summary": _summary(s.targets, throughput, latency, comparison),
        "throughput": throughput,
        SLOW: slow,
        "latency": latency,
        "comparison": comparison,
        "verified": all(r["verified"] for r in runs),
        "goals": [g.to_dict() for g in goals],
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


def _comparison(throughput: dict[str, dict[str, Any]], latency: dict[str, dict[str, Any]],
                relays: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for relay in relays:
        rate = _rate(throughput, relay)
        out[f"throughput_{relay}_vs_raw"] = _ratio(rate, _rate(throughput, "raw"))
        out[f"throughput_{relay}_vs_direct"] = _ratio(rate, _rate(throughput, "direct"))
    out["throughput_raw_vs_direct"] = _ratio(_rate(throughput, "raw"),
                                             _rate(throughput, "direct"))
    if len(relays) > 1:
        out["throughput_rust_vs_relay"] = _ratio(_rate(throughput, "rust"),
                                                 _rate(throughput, "relay"))
    for relay in relays:
        out[f"latency_added_by_{relay}_us"] = _added(latency, relay)
    out["latency_added_by_raw_us"] = _added(latency, "raw")
    for relay in relays:
        out[f"latency_{relay}_minus_raw_us"] = _added(latency, relay, "raw")
    out["note"] = ("added latency = the server's percentile minus the direct link's, same "
                   "run; relay minus raw = what the relay's own work adds to a hop; relay is "
                   "the Python reference relay, rust the Rust example relay")
    return out


def _summary(targets: tuple[str, ...], throughput: dict[str, dict[str, Any]],
             latency: dict[str, dict[str, Any]],
             comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per target, side by side: what the goals read, and whether it was exact."""
    rows = []
    for target in targets:
        added = _added(latency, target) if target != "direct" else {}
        rows.append({
            "target": target, "server": NAMES.get(target, target),
            "messages_per_s": _rate(throughput, target),
            "vs_raw": comparison.get(f"throughput_{target}_vs_raw",
                                     1.0 if target == "raw" else None),
            "added_p50_us": added.get("p50"), "added_p99_us": added.get("p99"),
            "added_p99_goal_us": GOAL_ADDED_P99_US if target in RELAY_TARGETS else None,
            "verified": all(run[target]["verified"] for run in (throughput, latency)
                            if target in run),
        })
    return rows


def _goals(relay: str, throughput: dict[str, dict[str, Any]],
           comparison: dict[str, Any]) -> list[Goal]:
    vs_raw = comparison[f"throughput_{relay}_vs_raw"]
    name = GOAL_PREFIX[relay]
    return [
        Goal.at_least(f"{name} throughput vs raw forwarder",
                      None if vs_raw is None else round(vs_raw * 100, 1),
                      GOAL_VS_RAW_PERCENT, "%"),
        Goal.at_least(f"{name} throughput", _rate(throughput, relay), GOAL_THROUGHPUT, "msg/s"),
        Goal.below(f"p99 latency the {name} adds over the direct link",
                   comparison[f"latency_added_by_{relay}_us"]["p99"], GOAL_ADDED_P99_US, "us"),
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
                               "warning", *s.relay_args, *SERVER_POLICY])
                     + " (64 KiB reads; frame mode and echo unless the options say otherwise)",
            "raw": " ".join(["python -m swapctl.bench.rawfwd --socket P", *SERVER_POLICY])
                   + " (64 KiB reads, echo, parses nothing)",
            **({"rust": f"{rust_relay_binary(s.rust_binary)} --legacy --socket P (tokio "
                        "multi-thread, a worker per core; 64 KiB reads, whole frames, echo; a "
                        "queue of 16,384 reads per consumer; no stats, no block mode)"}
               if "rust" in s.targets else {}),
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
            "servers": f"the relay and the raw forwarder, both with {' '.join(SERVER_POLICY)} "
                       "as in every mode (the Rust relay has no block mode: not run)",
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
        relay_source=source_revision("swapctl/relay", "swapctl/protocol", "sdk/rust"),
        idle_timeout_s=s.idle_timeout,
        relay_args=list(s.relay_args),
    )
