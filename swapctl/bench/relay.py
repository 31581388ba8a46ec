"""`swapctl bench relay`: the reference relay against a raw forwarder and a direct link.

How it works: for each mode (throughput, then latency) and each target (direct,
raw, relay) it starts, in a private temporary directory, the server if any (`python
-m swapctl.relay`, or `python -m swapctl.bench.rawfwd`), a consumer and a publisher
(`python -m swapctl.bench.loadgen`), each in its own session. Both sides build their
traffic first; once the consumer is connected (or, for the direct link, listening)
the publisher is told to go. Throughput: 74-byte messages written 885 at a time
(64 KiB) for `duration` seconds; the figure is messages delivered intact divided by
the time from the first write to the last read. Latency: one message per write at a
fixed rate, one-way time from the header timestamp to the consumer's read. The
servers echo to the publisher, which drains and checks its echo; the direct link has
no echo. Every run checks exactness (lost, corrupted, duplicated must all be 0).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from swapctl.bench.procs import Child, ProcessScope, wait_connectable
from swapctl.bench.stream import MESSAGE_SIZE
from swapctl.relay.stats import read_stats

TARGETS = ("direct", "raw", "relay")
MODES = ("throughput", "latency")
RELAY_COUNTERS = ("reads", "frames_in", "frames_out", "bytes_out", "lag_drops_frames",
                  "lag_episodes", "skipped_bytes", "rejected_domain")


@dataclass(frozen=True, slots=True)
class RelayBenchSettings:
    duration: float = 2.0  # seconds per measurement window
    rate: int = 10_000  # latency: messages per second, one per write
    batch: int = 65_536  # throughput: bytes per write (rounded down to whole messages)
    warmup: float = 0.1  # latency: seconds of samples left out at the start
    pool_rate: int = 5_000_000  # throughput: messages prebuilt per second of duration
    max_pool: int = 10_000_000  # 740 MB in the publisher and again in the consumer
    targets: tuple[str, ...] = TARGETS
    relay_args: tuple[str, ...] = ()  # extra options for `python -m swapctl.relay`
    idle_timeout: float = 2.0  # a stream or echo silent this long is over (some was lost)

    @property
    def batch_bytes(self) -> int:
        return max(1, self.batch // MESSAGE_SIZE) * MESSAGE_SIZE

    def count(self, mode: str) -> int:
        if mode == "latency":
            return max(1, round(self.rate * self.duration))
        return max(1, min(self.max_pool, round(self.pool_rate * self.duration)))

    @property
    def warmup_messages(self) -> int:
        return min(round(self.rate * self.warmup), self.count("latency") // 2)


def server_command(target: str, sock: Path, stats: Path,
                   relay_args: tuple[str, ...] = ()) -> list[str] | None:
    if target == "relay":
        return [sys.executable, "-m", "swapctl.relay", "--socket", str(sock),
                "--stats", str(stats), "--log-level", "warning", *relay_args]
    if target == "raw":
        return [sys.executable, "-m", "swapctl.bench.rawfwd", "--socket", str(sock)]
    return None


Results = dict[str, dict[str, dict[str, Any]]]


def run_relay_bench(settings: RelayBenchSettings,
                    progress: Callable[[str], None] | None = None) -> Results:
    """Every mode x target; returns {mode: {target: figures}}."""
    workdir = Path(tempfile.mkdtemp(prefix="swb-"))
    results: Results = {}
    try:
        with ProcessScope(workdir) as scope:
            for mode in MODES:
                for target in settings.targets:
                    if progress is not None:
                        progress(f"relay: {mode} via {target}")
                    run = _run(scope, workdir, target, mode, settings)
                    results.setdefault(mode, {})[target] = run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _loadgen(role: str, sock: Path, mode: str, count: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "swapctl.bench.loadgen", role, "--socket", str(sock),
            "--mode", mode, "--count", str(count), *extra]


@dataclass(frozen=True, slots=True)
class _Run:
    target: str
    mode: str
    server: Child | None
    consumer: Child
    publisher: Child
    stats: Path


def _run(scope: ProcessScope, workdir: Path, target: str, mode: str,
         s: RelayBenchSettings) -> dict[str, Any]:
    run = _start(scope, workdir, target, mode, s)
    cpu0, t0 = _cpu(run.server), time.monotonic()
    run.publisher.send("go")
    pub = run.publisher.read_event(s.duration * 2 + 60)
    con = run.consumer.read_event(30)
    server_cpu = (_cpu(run.server) - cpu0) / (time.monotonic() - t0)
    counters = _relay_counters(run.stats) if target == "relay" else None
    for child in (run.publisher, run.consumer, run.server):
        if child is not None:
            scope.stop(child)
    result = _throughput(pub, con) if mode == "throughput" else _latency(pub, con)
    result.update(_exactness(pub, con))
    result["cpu_percent"] = _cpu_percent(pub, con, server_cpu if run.server else None)
    if "echo" in pub:
        result["echo"] = pub["echo"]
    if counters is not None:
        result["relay_counters"] = counters
    return result


def _start(scope: ProcessScope, workdir: Path, target: str, mode: str,
           s: RelayBenchSettings) -> _Run:
    """Server (if any), consumer and publisher, each ready: traffic built, consumer in place."""
    sock, stats = workdir / f"{target}-{mode}.sock", workdir / f"{target}-{mode}.stats"
    command = server_command(target, sock, stats, s.relay_args)
    server = scope.start(target, command) if command else None
    if server is not None:
        wait_connectable(sock, server, 15.0)
    count, idle = s.count(mode), ("--idle-timeout", str(s.idle_timeout))
    consumer = scope.start("consumer", _loadgen(
        "consume", sock, mode, count, *idle, "--warmup", str(s.warmup_messages),
        *(["--listen"] if server is None else [])))
    publisher = scope.start("publisher", _loadgen(
        "publish", sock, mode, count, *idle, "--duration", str(s.duration),
        "--batch", str(s.batch_bytes), "--rate", str(s.rate),
        *(["--echo"] if server is not None else [])))
    consumer.read_event(120)
    publisher.read_event(120)
    return _Run(target, mode, server, consumer, publisher, stats)


def _cpu(server: Child | None) -> float:
    if server is None:
        return 0.0
    times = psutil.Process(server.pid).cpu_times()
    return float(times.user + times.system)


def _relay_counters(stats: Path) -> dict[str, Any]:
    data = read_stats(stats)
    return {k: data[k] for k in RELAY_COUNTERS if k in data}


def _throughput(pub: dict[str, Any], con: dict[str, Any]) -> dict[str, Any]:
    window = max(1e-9, con["t_last"] - pub["t_start"])
    return {"messages_per_s": round(con["delivered"] / window),
            "megabytes_per_s": round(con["delivered"] * MESSAGE_SIZE / window / 1e6, 1),
            "window_s": round(window, 3), "publisher_stopped_by": pub["ended_by"]}


def _latency(pub: dict[str, Any], con: dict[str, Any]) -> dict[str, Any]:
    sending = max(1e-9, pub["t_end"] - pub["t_start"])
    return {**con["latency"], "achieved_rate_msgs_per_s": round(pub["sent"] / sending),
            "window_s": round(sending, 3), "timer_slack_ns": pub["timer_slack_ns"]}


def _exactness(pub: dict[str, Any], con: dict[str, Any]) -> dict[str, Any]:
    sent, delivered = pub["sent"], con["delivered"]
    missing = max(0, sent - delivered)
    lost = max(0, missing - con["corrupted"])
    verified = (delivered == sent and con["end_count"] == sent and not con["corrupted"]
                and not con["duplicated"])
    return {"verified": verified, "sent": sent, "delivered": delivered, "lost": lost,
            "corrupted": con["corrupted"], "duplicated": con["duplicated"],
            "consumer_ended_by": con["ended"]}


def _cpu_percent(pub: dict[str, Any], con: dict[str, Any],
                 server: float | None) -> dict[str, float]:
    out = {"publisher": pub["cpu_s"] / max(1e-9, pub["t_end"] - pub["t_start"]),
           "consumer": con["cpu_s"] / max(1e-9, con["t_last"] - pub["t_start"])}
    if server is not None:
        out["server"] = server
    return {k: round(v * 100, 1) for k, v in out.items()}
