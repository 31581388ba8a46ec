"""`swapctl bench daemon`: swapctld itself, timed on the real stack under independent load.

How it works: a private stack (daemon_stack.py: supervisord, swapctld, three services on
the reference relay, all under a fresh /tmp root) is brought up cold and timed until the
API answers with every service healthy. An independent `swapctl load` session (2
publishers, 2 consumers of which one is a strategy consumer that dies on any EOF) then
runs on market_data for the whole bench, with optional idle clients (a crowd process).
Through the control API, as `swapctl` does it:

- swaps: op swap, wait, a short soak, alternating v1 <-> v2; the report's server pause,
  client pause (largest canary gap) and canary loss, and the call's wall time;
- rollbacks: op swap without waiting and a long soak; once status says soaking, op
  request rollback; the report's rollback.ms and traffic_flowing_ms, and request -> report;
- recoveries: a swap with a soak of a few seconds; while soaking, swapctld is SIGKILLed
  (pid from op ping) and `stack.up()` timed until the API answers and until the swap's
  report exists (the restarted daemon finishes it: verification, the rest of the soak,
  commit).

swapctld's memory: its RSS right before the first swap and after every swap (psutil, the
pid op ping names), and the least-squares slope over the second half of the swaps, per
1,000 swaps: the first swaps warm caches and the allocator up; a leak keeps growing.

At the end the load checker's verdict over the whole run (lost, duplicated, reordered,
corrupted, disconnects) and its largest gap, attributed to the step during which it ended
(every step's wall-clock window is noted). p50/p99 are nearest-rank (report.percentiles).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from swapctl.bench.daemon_stack import BenchStack, private_stack
from swapctl.bench.procs import Interrupted
from swapctl.bench.report import Goal, conditions, sample_stats, slope, source_revision
from swapctl.daemon import stack
from swapctl.errors import SwapctlError
from swapctl.probes.config import ConsumerMode, LoadConfig
from swapctl.probes.crowd import Crowd
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport

SERVICE = "market_data"
RELEASES = ("v1", "v2")
POLL = 0.02  # seconds between status / report polls
STEP_TIMEOUT = 90.0  # seconds any one swap, rollback or recovery may take
# fewer swaps say nothing of a trend (a page more or less is 4 KB a swap at 2 swaps):
# the RSS goal is set from this many swaps on
MEMORY_GOAL_SWAPS = 100


@dataclass(frozen=True, slots=True)
class DaemonBenchSettings:
    swaps: int = 20
    rollbacks: int = 20
    recoveries: int = 5
    rate: int = 5000
    idle_clients: int = 0
    soak: float = 0.2  # seconds, each measured swap
    rollback_soak: float = 30.0  # the window each rollback interrupts
    recovery_soak: float = 3.0  # the window swapctld is killed in


@dataclass
class Record:
    """What the steps measured, and when each ran (wall clock, for the load's gap)."""

    up: dict[str, Any] = field(default_factory=dict)
    swaps: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    load: LoadReport | None = None  # the checker's verdict (None: the run did not end)
    idle: dict[str, Any] | None = None  # the crowd's count of lost connections
    rss: list[tuple[int, int, float]] = field(default_factory=list)  # swaps done, pid, MB
    root: str = ""
    killed_after_down: list[int] = field(default_factory=list)
    wall_s: float = 0.0


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Steps:
    """The measured operations, each through swapctld's control API."""

    def __init__(self, bench: BenchStack, record: Record, settings: DaemonBenchSettings) -> None:
        self.bench = bench
        self.client = bench.client
        self.record = record
        self.settings = settings

    def up(self) -> None:
        started = time.monotonic()
        stack.up(self.bench.config, timeout=STEP_TIMEOUT)
        answered = time.monotonic()
        services = self._wait(self._all_healthy, "every service healthy")
        self.record.up = {"api_answers_ms": _ms(answered - started),
                          "all_healthy_ms": _ms(time.monotonic() - started),
                          "services": len(services)}

    def sample_memory(self, swaps_done: int) -> None:
        """swapctld's RSS now (op ping names its pid: a restarted swapctld is followed)."""
        pid = self.bench.daemon_pid()
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(pid).memory_info().rss
            self.record.rss.append((swaps_done, pid, round(rss / 2**20, 3)))

    def swap(self) -> dict[str, Any]:
        to = self._other_release()
        started = time.monotonic()
        report = self.client.call("swap", service=SERVICE, to=to, soak=self.settings.soak,
                                  wait=True)["report"]
        canary = report.get("canary") or {}
        return {"swap_id": report["swap_id"], "to": to, "decision": report["decision"],
                "reason": report.get("reason"), "total_ms": _ms(time.monotonic() - started),
                "server_pause_ms": report.get("server_pause_ms"),
                "client_pause_ms": report.get("client_pause_ms"),
                "canary_lost": canary.get("lost"), "canary_disconnects": canary.get("disconnects")}

    def rollback(self, soak: float) -> dict[str, Any]:
        swap_id = self._start(soak)
        self._wait(lambda: self._soaking(swap_id), f"swap {swap_id} soaking")
        asked = time.monotonic()
        self.client.call("request", service=SERVICE, request="rollback")
        report = self._follow(swap_id)
        rollback = report.get("rollback") or {}
        return {"swap_id": swap_id, "decision": report["decision"],
                "reason": report.get("reason"), "kind": rollback.get("kind"),
                "rollback_ms": rollback.get("ms"),
                "traffic_flowing_ms": rollback.get("traffic_flowing_ms"),
                "request_to_report_ms": _ms(time.monotonic() - asked)}

    def recovery(self, soak: float) -> dict[str, Any]:
        swap_id = self._start(soak)
        self._wait(lambda: self._soaking(swap_id), f"swap {swap_id} soaking")
        soaking_seen = time.monotonic()
        pid = self.bench.daemon_pid()
        if not self.bench.owns(pid):
            raise SwapctlError(f"pid {pid} from op ping is not this bench's swapctld")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(30)
        restarted = time.monotonic()
        up = stack.up(self.bench.config, timeout=STEP_TIMEOUT)
        ready = time.monotonic()
        report = self._wait(lambda: self._report(swap_id), f"the report of {swap_id}")
        finished = time.monotonic()
        return {"swap_id": swap_id, "decision": report["decision"], "kind": report.get("kind"),
                "reason": report.get("reason"), "old_pid": pid, "new_pid": up.get("pid"),
                "soak_left_at_kill_ms": _ms(max(0.0, soak - (killed - soaking_seen))),
                "kill_to_gone_ms": _ms(restarted - killed),
                "restart_to_ready_ms": _ms(ready - restarted),
                "restart_to_finished_ms": _ms(finished - restarted),
                "finished_past_soak_end_ms": _ms(finished - (soaking_seen + soak)),
                "canary_gap_ms": report.get("client_pause_ms")}

    # ----- helpers ---------------------------------------------------------------

    def _start(self, soak: float) -> str:
        answer = self.client.call("swap", service=SERVICE, to=self._other_release(),
                                  soak=soak, wait=False)
        return str(answer["swap_id"])

    def _other_release(self) -> str:
        active = self.bench.status(SERVICE)["services"][0]["active"] or {}
        return RELEASES[1] if active.get("release") == RELEASES[0] else RELEASES[0]

    def _all_healthy(self) -> list[Any] | None:
        services = self.bench.status()["services"]
        return services if all(s["health"].get("healthy") for s in services) else None

    def _soaking(self, swap_id: str) -> bool | None:
        swap = self.bench.status(SERVICE)["services"][0]["swap"] or {}
        if swap.get("swap_id") == swap_id and not swap.get("running"):
            raise SwapctlError(f"swap {swap_id} ended ({swap.get('decision')}) before soaking")
        return swap.get("state") == "soaking" or None

    def _report(self, swap_id: str) -> dict[str, Any] | None:
        report: dict[str, Any] = self.client.call("report", swap_id=swap_id)["report"]
        return None if report.get("decision") in (None, "running") else report

    def _follow(self, swap_id: str) -> dict[str, Any]:
        for answer in self.client.stream("follow", service=SERVICE):
            if answer.get("type") == "result":
                report: dict[str, Any] = answer["report"]
                if report.get("swap_id") == swap_id:
                    return report
        raise SwapctlError(f"follow ended without the report of {swap_id}")

    def idle(self) -> None:
        """No swap running on the service (after a failed step)."""
        self._wait(lambda: not (self.bench.status(SERVICE)["services"][0]["swap"] or {})
                   .get("running") or None, "no swap running")

    @staticmethod
    def _wait(check: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() >= deadline:
                raise SwapctlError(f"gave up waiting for {what} after {STEP_TIMEOUT:g}s")
            time.sleep(POLL)


def run_daemon_bench(settings: DaemonBenchSettings,
                     progress: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    record = Record()
    # the service file's soak is the recovery swaps' own: a restarted swapctld finishes a
    # recovered swap with the file's window (the soak a swap was asked for is not journaled)
    with private_stack(f"{settings.recovery_soak:g}s") as bench:
        steps = Steps(bench, record, settings)
        progress(f"daemon: cold start of supervisord, swapctld and 3 relays under {bench.root}")
        steps.up()
        record.root = str(bench.root)
        load, crowd = _traffic(bench, settings), None
        try:
            if settings.idle_clients:
                crowd = Crowd(bench.root / "sockets" / f"{SERVICE}.sock", settings.idle_clients)
            time.sleep(0.5)  # steady state before the first step
            _run_steps(steps, settings, progress)
            time.sleep(0.3)  # traffic through whichever relay serves now
            progress("daemon: stopping the load and reading its verdict")
            record.load = load.stop()
            if crowd is not None:  # (the crowd counts them as disconnects)
                counts = crowd.finish()
                record.idle = {"lost": counts.get("disconnects"),
                               "received_bytes": counts.get("received_bytes")}
        finally:
            load.close()
            if crowd is not None:
                crowd.close()
    record.killed_after_down = bench.killed_at_teardown
    record.wall_s = time.monotonic() - started
    return build_report(settings, record)


def _traffic(bench: BenchStack, settings: DaemonBenchSettings) -> LoadSession:
    load = LoadSession(LoadConfig(
        bench.root / "sockets" / f"{SERVICE}.sock", publishers=2, consumers=2,
        rate=settings.rate, duration=None, consumer_mode=ConsumerMode.DASHBOARD,
        strategy_consumers=1))
    load.start()
    return load


def _run_steps(steps: Steps, settings: DaemonBenchSettings,
               progress: Callable[[str], None]) -> None:
    plan: list[tuple[str, int, Callable[[], dict[str, Any]], list[dict[str, Any]]]] = [
        ("swap", settings.swaps, steps.swap, steps.record.swaps),
        ("rollback", settings.rollbacks, lambda: steps.rollback(settings.rollback_soak),
         steps.record.rollbacks),
        ("recovery", settings.recoveries, lambda: steps.recovery(settings.recovery_soak),
         steps.record.recoveries),
    ]
    if settings.swaps:
        steps.sample_memory(0)
    for kind, count, step, rows in plan:
        for number in range(1, count + 1):
            label = f"{kind} {number}"
            began = time.time()
            try:
                row = step()
            except Interrupted:
                raise  # SIGTERM: straight to the teardown
            except (SwapctlError, TimeoutError, OSError) as exc:
                steps.record.failures.append(f"{label}: {exc}")
                progress(f"daemon: {label}/{count} FAILED: {exc}")
                _settle(steps)
                continue
            finally:
                steps.record.windows.append((label, began, time.time()))
            rows.append(row)
            if kind == "swap":
                steps.sample_memory(number)
            progress(f"daemon: {label}/{count}: {_describe(row)}")


def _settle(steps: Steps) -> None:
    try:
        stack.up(steps.bench.config, timeout=STEP_TIMEOUT)  # a daemon killed mid-step
        steps.idle()
    except Interrupted:
        raise
    except (SwapctlError, TimeoutError, OSError) as exc:
        steps.record.failures.append(f"after a failed step the stack did not settle: {exc}")


def _describe(row: dict[str, Any]) -> str:
    keys = ("server_pause_ms", "client_pause_ms", "total_ms", "rollback_ms",
            "traffic_flowing_ms", "restart_to_ready_ms", "restart_to_finished_ms")
    return f"{row['decision']}, " + ", ".join(f"{k} {row[k]}" for k in keys if k in row)


def build_report(settings: DaemonBenchSettings, record: Record) -> dict[str, Any]:
    idle = record.idle
    swaps, rollbacks, recoveries = record.swaps, record.rollbacks, record.recoveries

    def values(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) is not None]

    failures = record.failures + _unexpected(swaps, "committed", "swap") + _unexpected(
        rollbacks, "rolled_back", "rollback") + _unexpected(recoveries, "committed", "recovery")
    if idle is not None and idle.get("lost"):
        failures.append(f"{idle['lost']} idle clients were disconnected")
    verdict = _verdict(record.load, record.windows)
    canary_lost = sum(int(r["canary_lost"] or 0) for r in swaps)
    rss = memory(record.rss)
    report = {
        "benchmark": "daemon",
        "conditions": _conditions(settings, record.load, record.root),
        "up": record.up,
        "swaps": {"run": settings.swaps, "committed": _count(swaps, "committed"),
                  **{k: sample_stats(values(swaps, k)) for k in
                     ("server_pause_ms", "client_pause_ms", "total_ms")},
                  "canary_lost": canary_lost,
                  "canary_disconnects": sum(int(r["canary_disconnects"] or 0) for r in swaps)},
        "rollbacks": {"run": settings.rollbacks, "rolled_back": _count(rollbacks, "rolled_back"),
                      "kind": sorted({str(r["kind"]) for r in rollbacks}),
                      **{k: sample_stats(values(rollbacks, k)) for k in
                         ("rollback_ms", "traffic_flowing_ms", "request_to_report_ms")}},
        "recoveries": {"run": settings.recoveries,
                       "committed": _count(recoveries, "committed"),
                       **{k: sample_stats(values(recoveries, k)) for k in
                          ("restart_to_ready_ms", "restart_to_finished_ms",
                           "finished_past_soak_end_ms", "soak_left_at_kill_ms",
                           "kill_to_gone_ms")},
                       "clients_largest_gap_ms": _largest_gap_in(verdict, "recovery")},
        "swapctld_memory": rss,
        "load": verdict,
        "idle_clients": idle,
        "failures": failures,
        "cleanup": {"root": record.root, "killed_after_down": record.killed_after_down},
        "goals": [g.to_dict() for g in _goals(report_rows=(swaps, rollbacks), load=verdict,
                                              canary_lost=canary_lost,
                                              memory=rss)],
        "wall_s": round(record.wall_s, 1),
    }
    report["ok"] = bool(verdict and verdict["ok"]) and not failures
    return report


def memory(samples: list[tuple[int, int, float]]) -> dict[str, Any]:
    """swapctld's RSS over the swaps (samples of one pid: the one that served most of
    them; op ping names another only if swapctld restarted) and its trend."""
    pids = [pid for _, pid, _ in samples]
    pid = max(set(pids), key=pids.count) if pids else None
    points = [(float(done), mb) for done, p, mb in samples if p == pid]
    half = [p for p in points if p[0] >= points[-1][0] / 2] if points else []
    per_swap, late = slope(points), slope(half)
    return {"pid": pid, "other_pids": sorted(set(pids) - {pid}), "samples": len(points),
            "swaps_sampled": int(points[-1][0]) if points else 0,
            "rss_mb_first": points[0][1] if points else None,
            "rss_mb_last": points[-1][1] if points else None,
            "rss_mb_max": max(mb for _, mb in points) if points else None,
            "growth_mb_per_1000_swaps": None if per_swap is None else round(per_swap * 1000, 3),
            "second_half_growth_mb_per_1000_swaps":
                None if late is None else round(late * 1000, 3)}


def _count(rows: list[dict[str, Any]], decision: str) -> int:
    return sum(1 for r in rows if r["decision"] == decision)


def _unexpected(rows: list[dict[str, Any]], decision: str, kind: str) -> list[str]:
    return [f"{kind} {r['swap_id']}: {r['decision']} ({r.get('reason')})" for r in rows
            if r["decision"] != decision]


def _conditions(settings: DaemonBenchSettings, load: LoadReport | None,
                root: str) -> dict[str, Any]:
    sizes = dict(load.conditions.message_sizes) if load is not None else None
    return conditions(
        **asdict(settings), service=SERVICE, publishers=2, consumers=2,
        strategy_consumers=1, message_sizes_bytes=sizes,
        mix=load.conditions.mix if load is not None else None,
        canary_rate_msgs_per_s=2000.0, pause_budget_ms=250.0,
        stack=("supervisord + swapctld (python -m swapctl daemon) + the reference relay as "
               "v1 and v2 of market_data, signal, execution; under " + root),
        measured=("up: stack.up() call -> API answers / every service healthy; swap: op "
                  "swap wait=True wall time, pauses from the report; rollback: report "
                  "rollback.ms, traffic_flowing_ms, and op request -> report; recovery: "
                  "SIGKILL of swapctld while soaking, then stack.up() -> API answers "
                  "(ready) -> the swap's report exists (finished); finished_past_soak_end: "
                  "finished - (soaking seen by status + the soak window)"),
        source=source_revision("swapctl/daemon", "swapctl/swap", "swapctl/relay"))


def _verdict(load: LoadReport | None,
             windows: list[tuple[str, float, float]]) -> dict[str, Any] | None:
    """The load checker over the whole run, and the step each consumer's largest gap
    ended in (the checker keeps only the largest gap per consumer)."""
    if load is None:
        return None
    total = load.total
    consumers = [{"index": c.index, "mode": c.mode, "dead": c.dead,
                  "disconnects": c.disconnects,
                  "largest_gap_ms": round(c.audit.max_gap_ns / 1e6, 3),
                  "gap_ended_during": _during(c.audit.max_gap_end_ns / 1e9, windows)}
                 for c in load.consumers]
    return {"ok": load.ok, "problems": load.problems(), "warnings": load.warnings(),
            "sent": load.sent, "rate_achieved": round(load.rate_achieved, 1),
            "received": total.received, "lost": total.lost, "duplicated": total.duplicated,
            "reordered": total.reordered, "corrupted": total.corrupted,
            "unexpected": total.unexpected, "disconnects": load.disconnects,
            "largest_gap_ms": round(total.max_gap_ns / 1e6, 3),
            "latency_p99_ms": round(total.latency.p99 / 1e6, 3), "consumers": consumers}


def _during(at: float, windows: list[tuple[str, float, float]]) -> str:
    for label, began, ended in windows:
        if began <= at <= ended:
            return label
    return "between steps" if at else "no gap"


def _largest_gap_in(verdict: dict[str, Any] | None, kind: str) -> float | None:
    """The largest gap a load consumer saw that ended during a step of this kind; None
    when every consumer's largest gap fell elsewhere (then those bound it from above)."""
    if verdict is None:
        return None
    gaps = [c["largest_gap_ms"] for c in verdict["consumers"]
            if str(c["gap_ended_during"]).startswith(kind)]
    return max(gaps) if gaps else None


def _goals(report_rows: tuple[list[dict[str, Any]], list[dict[str, Any]]],
           load: dict[str, Any] | None, canary_lost: int,
           memory: dict[str, Any]) -> list[Goal]:
    swaps, rollbacks = report_rows
    pause = sample_stats([float(r["server_pause_ms"]) for r in swaps
                     if r.get("server_pause_ms") is not None]).get("p99")
    timed = sample_stats([float(r["rollback_ms"]) for r in rollbacks
                          if r.get("rollback_ms") is not None])
    # (nearest rank: under 100 samples the p99 is the maximum, and is named so)
    tail = "p99" if timed["n"] >= 100 else f"max of {timed['n']}"
    rollback = timed.get("p99")
    lost = None if load is None else float(load["lost"] + load["duplicated"]
                                           + load["reordered"] + load["disconnects"])
    return [
        Goal.below(f"rollback during soak, {tail} (SRE: well under 30 s)", rollback, 30_000,
                   "ms"),
        Goal("server pause p99 within the pause budget", "<= 250 ms", pause, "ms",
             pause is not None and pause <= 250),
        Goal.below("load: lost + duplicated + reordered + disconnects", lost, 1, ""),
        Goal.below("canary messages lost in the swaps", float(canary_lost), 1, ""),
    ] + ([  # flat: a leak of 1 KB a swap, the smallest this catches, is 1 MB per 1,000
        Goal.at_most(f"swapctld RSS growth over the second half of "
                     f"{memory['swaps_sampled']:,} swaps, per 1,000 swaps",
                     memory["second_half_growth_mb_per_1000_swaps"], 1, "MB"),
    ] if memory["swaps_sampled"] >= MEMORY_GOAL_SWAPS else [])
