"""`swapctl bench relay`: the reference relay and the Rust example relay against a raw
forwarder and a direct link.

How it works: every process (`python -m swapctl.relay`, the Rust example relay of
sdk/rust as target `rust` (`swapctl-example-relay --legacy --socket P`: no handoff, its
own path; see rust_relay.py), `python -m swapctl.bench.rawfwd`, and the publisher and
consumers of `python -m swapctl.probes.bulk.loadgen`, the probes' bulk traffic) runs in
its own session inside one ProcessScope and a private temporary directory. Both sides
build their traffic before the clock starts; once each consumer is connected (or, for
the direct link, listening) the publisher is told to go.
- Throughput, one target at a time: 74-byte messages written 885 at a time (64 KiB)
  for `duration` seconds; the figure is messages delivered intact divided by the
  time from the first write to the last read.
- Slow consumer, one target at a time (the relay and the raw forwarder, both with
  `--on-slow-consumer block`, as in every mode): the throughput publisher against a
  consumer slower than it, the latency consumer, which splits and checks every
  message in Python.
  Both servers must hold the publisher back to the consumer's pace and lose nothing;
  the figure is again messages delivered / window, and relay / raw is like with like.
  The Rust relay has no block policy (a consumer that falls behind its queue loses
  the oldest messages, as the real relays): it has no run here.
- Latency, all targets in one run: a single publisher sends one message per write
  on one schedule of `rate` msg/s, switching target every `block` seconds, so that
  whatever else the machine is doing falls on every target alike. Each target has
  its own consumer and its own stream; latency is the consumer's read time minus
  the header timestamp.
The servers echo to the publisher, which drains and checks its echo; the direct
link has no echo. Every run checks exactness with the load checker's tracker (lost,
duplicated, reordered, corrupted all 0; see swapctl/probes/bulk/stream.py) and
reports the CPU each process used and what the rest of the machine used meanwhile.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swapctl.bench.cpu import CpuWindow
from swapctl.bench.procs import Child, ProcessScope, wait_connectable
from swapctl.bench.rust_relay import rust_relay_binary
from swapctl.probes.bulk.stream import MESSAGE_SIZE
from swapctl.relay.stats import read_stats

TARGETS = ("direct", "raw", "relay", "rust")  # relay: the Python reference relay
RELAY_TARGETS = ("relay", "rust")  # the relays under test, each compared with raw and direct
SLOW = "slow_consumer"  # the mode of the block-mode runs
SLOW_TARGETS = ("raw", "relay")
# The relay and the raw forwarder run every mode in block mode: a consumer that falls
# 16 MiB behind slows the publisher instead of losing messages. Under drop-oldest (their
# default) a consumer starved of CPU by the rest of the machine lost a run of messages
# to the raw forwarder's shedding (4 of 15 runs beside one busy loop, and twice in CI),
# and the run failed its exactness check; with a consumer that keeps up, block mode
# never engages and the figures are drop-oldest's. (The Rust relay has no block mode:
# its consumers' queues hold 16,384 reads.)
SERVER_POLICY = ("--on-slow-consumer", "block")
RELAY_COUNTERS = ("reads", "frames_in", "frames_out", "bytes_out", "lag_drops_frames",
                  "lag_episodes", "skipped_bytes", "rejected_domain", "echo_shed_frames",
                  "block_episodes", "blocked_s", "slow_disconnects")


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
    rust_binary: Path | None = None  # None: rust_relay.default_binary()
    idle_timeout: float = 2.0  # a stream or echo silent this long is over (some was lost)
    block: float = 0.05  # latency: seconds of traffic to one target before the next

    @property
    def block_messages(self) -> int:
        return max(1, round(self.rate * self.block))

    @property
    def batch_bytes(self) -> int:
        return max(1, self.batch // MESSAGE_SIZE) * MESSAGE_SIZE

    @property
    def slow_targets(self) -> tuple[str, ...]:
        return tuple(t for t in SLOW_TARGETS if t in self.targets)

    def count(self, mode: str) -> int:
        if mode == "latency":
            return max(1, round(self.rate * self.duration))
        return max(1, min(self.max_pool, round(self.pool_rate * self.duration)))

    @property
    def warmup_messages(self) -> int:
        return min(round(self.rate * self.warmup), self.count("latency") // 2)


def server_command(target: str, sock: Path, stats: Path, relay_args: tuple[str, ...] = (), *,
                   rust: Path | None = None) -> list[str] | None:
    """The server's command line; relay and raw run SERVER_POLICY (the Rust relay has
    none); `rust` is its binary (rust_relay_binary checks it)."""
    if target == "rust":
        return [str(rust_relay_binary(rust)), "--legacy", "--socket", str(sock)]
    if target == "relay":
        return [sys.executable, "-P", "-m", "swapctl.relay", "--socket", str(sock),
                "--stats", str(stats), "--log-level", "warning", *relay_args, *SERVER_POLICY]
    if target == "raw":
        return [sys.executable, "-P", "-m", "swapctl.bench.rawfwd", "--socket", str(sock),
                *SERVER_POLICY]
    return None


Results = dict[str, dict[str, dict[str, Any]]]
Event = dict[str, Any]


def run_relay_bench(settings: RelayBenchSettings,
                    progress: Callable[[str], None] | None = None) -> Results:
    """Throughput per target, then latency with all targets interleaved.

    Returns {mode: {target: figures}}."""
    say = progress or (lambda _: None)
    if "rust" in settings.targets:
        rust_relay_binary(settings.rust_binary)  # missing: a usage error before any process
    workdir = Path(tempfile.mkdtemp(prefix="swb-"))
    results: Results = {"throughput": {}}
    try:
        with ProcessScope(workdir) as scope:
            for target in settings.targets:
                say(f"relay: throughput via {target}")
                run = _run(scope, workdir, "throughput", (target,), settings)
                results["throughput"][target] = run[target]
            for target in settings.slow_targets:
                say(f"relay: block mode via {target}, slow consumer")
                run = _run(scope, workdir, SLOW, (target,), settings)
                results.setdefault(SLOW, {})[target] = run[target]
            say(f"relay: latency via {', '.join(settings.targets)}, interleaved")
            results["latency"] = _run(scope, workdir, "latency", settings.targets, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    sock: Path
    stats: Path
    server: Child | None
    consumer: Child


def _run(scope: ProcessScope, workdir: Path, mode: str, names: tuple[str, ...],
         s: RelayBenchSettings) -> dict[str, dict[str, Any]]:
    targets = [_start_target(scope, workdir, mode, name, s) for name in names]
    publisher = scope.start("publisher", _publisher_args(mode, targets, s))
    publisher.read_event(120)
    pids = {"publisher": publisher.pid}
    for t in targets:
        pids[f"consumer-{t.name}"] = t.consumer.pid
        if t.server is not None:
            pids[t.name] = t.server.pid
    window = CpuWindow(pids)
    publisher.send("go")
    pub = publisher.read_event(s.duration * len(targets) * 2 + 60)
    cons = {t.name: t.consumer.read_event(30) for t in targets}
    reported = {f"consumer-{n}": c["cpu_total_s"] for n, c in cons.items()}
    cpu = window.close({"publisher": pub["cpu_total_s"], **reported})
    counters = {t.name: _relay_counters(t.stats) for t in targets if t.name == "relay"}
    for child in (publisher, *(c for t in targets for c in (t.consumer, t.server))):
        if child is not None:
            scope.stop(child)
    return {t.name: _figures(mode, t.name, pub, cons[t.name], cpu=cpu,
                             counters=counters.get(t.name))
            for t in targets}


def _start_target(scope: ProcessScope, workdir: Path, mode: str, name: str,
                  s: RelayBenchSettings) -> _Target:
    """The server (if any) accepting, and a consumer connected (or listening) and ready."""
    sock, stats = workdir / f"{name}-{mode}.sock", workdir / f"{name}-{mode}.stats"
    command = server_command(name, sock, stats, s.relay_args, rust=s.rust_binary)
    server = scope.start(name, command, talks=False) if command else None
    if server is not None:
        wait_connectable(sock, server, 15.0)
    # the slow consumer is the latency consumer (every message split and checked), its
    # latency left out (the stream carries no timestamps): all its samples are warm-up
    consumer_mode = "latency" if mode == SLOW else mode
    warmup = s.count(mode) if mode == SLOW else s.warmup_messages
    consumer = scope.start(f"consumer-{name}", [
        *_LOADGEN, "consume", "--socket", str(sock), "--mode", consumer_mode,
        "--count", str(s.count(mode)), "--idle-timeout", str(s.idle_timeout),
        "--warmup", str(warmup), *(["--listen"] if server is None else [])])
    consumer.read_event(120)
    return _Target(name, sock, stats, server, consumer)


_LOADGEN = (sys.executable, "-P", "-m", "swapctl.probes.bulk.loadgen")


def _publisher_args(mode: str, targets: list[_Target], s: RelayBenchSettings) -> list[str]:
    pub_mode = "throughput" if mode == SLOW else mode
    args = [*_LOADGEN, "publish", "--mode", pub_mode, "--count", str(s.count(mode)),
            "--idle-timeout", str(s.idle_timeout), "--duration", str(s.duration),
            "--batch", str(s.batch_bytes), "--rate", str(s.rate),
            "--block", str(s.block_messages)]
    for t in targets:
        args += ["--target", f"{t.name}={t.sock}"]
        if t.server is not None:
            args += ["--echo", t.name]
    return args


def _relay_counters(stats: Path) -> dict[str, Any]:
    data = read_stats(stats)
    return {k: data[k] for k in RELAY_COUNTERS if k in data}


def _figures(mode: str, name: str, pub: Event, con: Event, *, cpu: dict[str, Any],
             counters: dict[str, Any] | None) -> dict[str, Any]:
    sent = pub["targets"][name]
    out = _latency(pub, sent, con) if mode == "latency" else _throughput(sent, con)
    out.update(_exactness(sent, con))
    out.update(_cpu_figures(mode, name, sent, con, cpu))
    if "echo" in sent:
        out["echo"] = sent["echo"]
    if counters is not None:
        out["relay_counters"] = counters
    return out


def _throughput(sent: Event, con: Event) -> dict[str, Any]:
    window = max(1e-9, con["t_last"] - sent["t_start"])
    return {"messages_per_s": round(con["delivered"] / window),
            "megabytes_per_s": round(con["delivered"] * MESSAGE_SIZE / window / 1e6, 1),
            "window_s": round(window, 3), "publisher_stopped_by": sent["ended_by"]}


def _latency(pub: Event, sent: Event, con: Event) -> dict[str, Any]:
    return {**con["latency"], "achieved_rate_msgs_per_s": round(pub["achieved_rate"]),
            "span_s": round(sent["t_end"] - sent["t_start"], 3),
            "timer_slack_ns": pub["timer_slack_ns"]}


def _exactness(sent: Event, con: Event) -> dict[str, Any]:
    """The consumer's tracker verdict (probes/tracker.py), completed with the publisher's
    count: without END the consumer judged up to the highest number it saw, and the
    numbers from there to `sent` are lost too (what PublisherTrack.result(sent) counts)."""
    count, delivered = sent["sent"], con["delivered"]
    lost = con["lost"] + max(0, count - con["audited_against"])
    verified = (delivered == count and not lost and con["end_count"] == count
                and not any(con[k] for k in ("corrupted", "duplicated", "reordered",
                                             "unexpected")))
    out = {"verified": verified, "sent": count, "delivered": delivered, "lost": lost,
           "corrupted": con["corrupted"], "duplicated": con["duplicated"],
           "reordered": con["reordered"], "unexpected": con["unexpected"],
           "consumer_ended_by": con["ended"]}
    if con["lost_samples"]:  # the first numbers the consumer found missing
        out["lost_samples"] = con["lost_samples"]
    return out


def _cpu_figures(mode: str, name: str, sent: Event, con: Event,
                 cpu: dict[str, Any]) -> dict[str, Any]:
    seconds = cpu["seconds"]
    out: dict[str, Any] = {}
    if name in seconds and con["delivered"]:
        out["server_cpu_us_per_message"] = round(seconds[name] / con["delivered"] * 1e6, 3)
    if mode != "latency":
        window = max(1e-9, con["t_last"] - sent["t_start"])
        share = {"publisher": seconds["publisher"], "consumer": seconds[f"consumer-{name}"]}
        if name in seconds:
            share["server"] = seconds[name]
        out["cpu_percent_of_window"] = {k: round(v / window * 100, 1) for k, v in share.items()}
    out["background_cpu_percent"] = cpu["background_percent"]
    out["steal_percent"] = cpu["steal_percent"]
    return out
