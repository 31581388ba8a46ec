"""`swapctl bench handoff`: the pause a hot swap costs, by number of clients and load.

For each client count (idle, then under background load) a service is opened with two
relays of the same release; swaps alternate between them, the previous release kept
warm (so each swap measures the handoff, not a process start). Each swap reports its
server-side pause (old relay stops reading -> new relay resumes) and client-side pause
(largest gap in the canary stream during the swap; its resolution is the canary's
send interval, reported). N idle clients are held by a separate crowd process that
reads and discards everything. Rollback is timed from the decision to canary traffic
arriving through the old release again, warm (old release in standby) and cold (old
release restarted).

Every row also has the real publisher's behaviour: a client that publishes and never
reads (`NeverReader`, its own process). It connects first and bursts until its echo
backlog on the relay is at the bound (`lagging_consumers`), before the canary, crowd
and load join, then publishes at a trickle: every swap carries a full backlog.
(`--no-never-reader` leaves it out: the pause is then the connections' cost alone.)
A p99 from fewer than 100 samples is no percentile: it is reported as the maximum
(`p99` absent, `p99_is_max` true) and goals read it as such. No pause rolls a swap back
(PAUSE_BUDGET_MS): every pause is measured, and the goals judge it.

Relays: the Python reference relay and the Rust example relay (sdk/rust, see
rust_relay.py), each row measured for each relay in turn under the same settings, rows
named by `relay`. Each row has its cost per moved connection (server pause p50 / moved),
held against the kernel's SCM_RIGHTS cost per fd measured at the start of the same run
(fdpass.py). Both relays negotiate pre-copy (fds move before the pause, only the delta
inside it, the bytes owed after the resume); each row's `handoff_mode` says what the
swaps used.
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swapctl.bench.fdpass import measure_scm_rights
from swapctl.bench.report import Goal, conditions, sample_stats, slope, source_revision
from swapctl.bench.rust_relay import rust_relay_binary
from swapctl.probes.config import LoadConfig
from swapctl.probes.crowd import Crowd
from swapctl.probes.latency import percentiles
from swapctl.probes.load import LoadSession
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade
from swapctl.swap import report as swap_report
from swapctl.swap.canary import Canary, summarize
from swapctl.swap.executor import SwapRun, SwapSettings
from swapctl.swap.handoff_actions import HandoffActions
from swapctl.swap.journal import Journal
from swapctl.swap.machine import Deadlines
from swapctl.swap.service import Service
from swapctl.swap.spawner import Release, SubprocessSpawner

RELAY = (sys.executable, "-P", "-m", "swapctl.relay", "--log-level", "warning")
DELIVERY_BUDGET = 1_500_000  # deliveries/s (rate x clients) the bench asks of the relay
BACKLOG_BOUND = 16 * 1024 * 1024  # the relay's default --max-backlog: what "full" means
TRICKLE = 200  # msg/s the never-reading publisher keeps sending once its backlog is full
PERCENTILE_MIN = 100  # fewer samples: the p99 is the maximum, and says so
PAUSE_BUDGET_MS = 60_000.0  # the bench measures every pause; goals judge it, no rollback does


@dataclass(frozen=True, slots=True)
class HandoffBenchSettings:
    clients: tuple[int, ...] = (10, 100, 1000, 5000)
    swaps: int = 50
    load_rate: int = 100_000
    rollbacks: int = 10
    row_rollbacks: int = 10  # warm rollbacks at the end of every row, under its conditions
    loaded: bool = True
    relays: tuple[str, ...] = ("python",)  # of rust_relay.RELAYS, in column order
    never_reader: bool = True  # every row has the never-reading publisher's full backlog
    rust_binary: Path | None = None  # None: rust_relay.default_binary()
    keep: Path | None = None  # copy each row's working directory here (see `_keep`)
    rollback_clients: int | None = None  # None: the client count nearest 100
    pause_priority: int = SwapSettings().pause_priority  # 0: the relays' scheduling alone

    def command(self, relay: str) -> tuple[str, ...]:
        """The command that starts `relay` (UsageError if the Rust binary is missing)."""
        if relay == "python":
            return RELAY
        return (str(rust_relay_binary(self.rust_binary)),)


def canary_rate(clients: int) -> float:
    """Canary messages/s: fine resolution with few clients, bounded fan-out with many."""
    return max(100.0, min(2000.0, 200_000 / clients))


def never_reader(path: str, trickle: float) -> None:
    """The real publisher: burst past the backlog bound, then publish at `trickle`
    msg/s, never reading (`python -c` entry of NeverReader's process)."""
    batch = never_reader_batch()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    burst = burst_bytes() // len(batch)
    for _ in range(burst):
        sock.sendall(batch)
    while True:
        sock.sendall(batch)
        time.sleep(20 / trickle)


def never_reader_batch() -> bytes:
    """20 checksummed trades, one write of the never-reading publisher."""
    return b"".join(encode_message(1, 9, [Trade(i, i * 100, 1, 0, 1, 1).to_tlv()],
                                   sequence=i, checksum=True) for i in range(1, 21))


class NeverReader:
    """A publisher process that never reads: its echo backlog sits at the bound."""

    def __init__(self, public: Path) -> None:
        code = ("import sys; from swapctl.bench.handoff import never_reader; "
                "never_reader(sys.argv[1], float(sys.argv[2]))")
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", code, str(public), str(TRICKLE)],
            start_new_session=True, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def wait_backlog_full(service: Service, timeout: float = 60.0) -> int | None:
    """Until the never-reading publisher's echo backlog is full; its bytes, if reported.

    The Python relay reports a consumer over its byte bound (`lagging_consumers`). The
    Rust relay bounds a consumer's queue in messages (a broadcast channel) and reports no
    backlog: full is its queue overflowing (`lag_drops_frames`) or the whole burst read
    (`bytes_in`; the publisher is the only client yet), all its echo then owed."""
    deadline = time.monotonic() + timeout
    assert service.active is not None
    while time.monotonic() < deadline:
        stats = service.active.link.stats(5.0)
        if stats.get("lagging_consumers"):
            return max((int(c.get("backlog_bytes", 0)) for c in stats.get("connections", [])),
                       default=0)
        if "lagging_consumers" not in stats and (
                stats.get("lag_drops_frames") or int(stats.get("bytes_in", 0)) >= burst_bytes()):
            return None
        time.sleep(0.1)
    raise TimeoutError("the never-reading publisher's backlog did not fill in time")


def open_connections(service: Service) -> int:
    """The active relay's open connections, as it reports them (both relays do)."""
    assert service.active is not None
    return int(service.active.link.stats(5.0).get("connections_open", 0))


def wait_accepted(service: Service, clients: int, timeout: float = 60.0) -> None:
    """Until the relay has at least `clients` connections open (`connections_open`).

    A crowd is ready once its clients connected, which on a Unix socket is before the
    relay accepted them. The Rust relay accepts in one task among the thousands that
    fan out every broadcast: at 5,000 clients it had taken about 1,000 after the first
    swap, so the first measured swap moved the rest as new connections inside its
    pause (11.5 ms, against 0.4 once all were in)."""
    deadline = time.monotonic() + timeout
    while True:
        open_ = open_connections(service)
        if open_ >= clients:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the relay accepted {open_} of the bench's {clients} connections "
                               f"in {timeout:.0f} s")
        time.sleep(0.05)


def burst_bytes() -> int:
    """What never_reader sends before its trickle (at least twice the backlog bound)."""
    batch = len(never_reader_batch())
    return BACKLOG_BOUND * 2 // batch * batch


class Bench:
    """One service with a canary, a crowd and optional load; swaps back and forth.
    Whatever was started is stopped by close(), also when the constructor fails."""

    def __init__(self, root: Path, clients: int, load_rate: int,
                 command: tuple[str, ...] = RELAY, never_reader: bool = True, *,
                 pause_priority: int = SwapSettings().pause_priority) -> None:
        self.stack = ExitStack()
        self.backlog_bytes: int | None = None
        try:
            self._start(root, clients, load_rate, command, never_reader)
        except BaseException:
            self.stack.close()
            raise
        self.settings = SwapSettings(deadlines=Deadlines(soaking=0.0), verify_messages=1,
                                     keep_old=True, pause_budget_ms=PAUSE_BUDGET_MS,
                                     pause_priority=pause_priority)
        self.flip = 1

    def _start(self, root: Path, clients: int, load_rate: int, command: tuple[str, ...],
               never_reader: bool) -> None:
        self.public = root / "md.sock"
        self.journal = Journal(root / "journal.jsonl")  # the production one, fsync'd
        self.stack.callback(self.journal.close)
        self.spawner = SubprocessSpawner(root / "logs")
        self.stack.callback(self.spawner.stop_all)
        self.service = Service(self.public, root / "state", self.spawner)
        self.stack.callback(self.service.close)
        self.releases = (Release("a", command), Release("b", command))
        self.service.open(self.releases[0])
        if never_reader:
            publisher = NeverReader(self.public)
            self.stack.callback(publisher.close)
            self.backlog_bytes = wait_backlog_full(self.service)
        self.canary = Canary(self.public, canary_rate(clients))
        self.stack.callback(self.canary.close)
        self.canary.start()
        before = open_connections(self.service)
        self.crowd = Crowd(self.public, clients)
        self.stack.callback(self.crowd.close)
        wait_accepted(self.service, before + clients)
        self.load: LoadSession | None = None
        if load_rate:
            self.load = LoadSession(LoadConfig(self.public, rate=load_rate, duration=None,
                                               consumers=1, settle=1.0))
            self.stack.callback(self.load.close)
            self.load.start()

    def swap(self, settings: SwapSettings | None = None, **kw: Any) -> dict[str, Any]:
        target = self.releases[self.flip]
        run = SwapRun(self.service, target, settings or self.settings, canary=self.canary,
                      journal=self.journal, **kw, actions=HandoffActions()).run()
        result = swap_report.build(run)
        if result["decision"] == "committed":
            self.flip ^= 1
        return result

    def gap_without_swap(self, window_ms: float) -> float:
        """The canary's largest gap over `window_ms` with no swap: the reference for a
        swap's client pause (the gap its clients see anyway at this load)."""
        self.canary.mark()
        time.sleep(window_ms / 1000)
        return self.canary.health().max_gap_ms

    def rollback_settings(self, cold: bool) -> SwapSettings:
        """A swap that stays in its soak until told to roll back (cold: the old release
        is killed first, so the rollback starts it again)."""
        return replace(self.settings, deadlines=Deadlines(soaking=30.0), keep_old=not cold)

    def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {"canary": summarize(self.canary.stop()),
                               "crowd": self.crowd.finish()}
        if self.load is not None:
            out["load"] = self.load.stop().to_dict()
        return out

    def close(self) -> None:
        self.stack.close()


def measure_swaps(clients: int, load_rate: int, settings: HandoffBenchSettings,
                  relay: str) -> dict[str, Any]:
    """One row: `settings.swaps` swaps of `relay` with `clients` idle clients."""
    swaps, never_reader = settings.swaps, settings.never_reader
    with tempfile.TemporaryDirectory(prefix="swb-") as tmp:
        bench = Bench(Path(tmp), clients, load_rate, settings.command(relay), never_reader,
                      pause_priority=settings.pause_priority)
        bench_backlog = bench.backlog_bytes
        results: list[dict[str, Any]] = []
        rollbacks: list[dict[str, Any]] = []
        windows: list[float] = []  # each swap's client pause window, ms
        quiet: list[float] = []  # the canary's largest gap in as long with no swap
        added: list[float] = []  # each swap's client pause less its window's reference
        try:
            bench.swap()  # start the second relay; not measured
            for _ in range(swaps):
                results.append(bench.swap())
                window = cutover_window_ms(results[-1])
                if window is not None:  # the same clients, as long, with no swap
                    windows.append(window)
                    quiet.append(bench.gap_without_swap(window))
                    if results[-1]["client_pause_ms"] is not None:
                        added.append(round(results[-1]["client_pause_ms"] - quiet[-1], 3))
            for _ in range(settings.row_rollbacks):  # same crowd, load and backlog
                rollbacks.append(bench.swap(bench.rollback_settings(cold=False),
                                            requests=_rollback_now(bench, cold=False)))
            final = bench.finish()
        finally:
            bench.close()
            _keep(settings, Path(tmp), f"{relay}-{clients}-{'load' if load_rate else 'idle'}",
                  results + rollbacks)
    committed = [r for r in results if r["decision"] == "committed"]
    server = [r["server_pause_ms"] for r in committed]
    client = [r["client_pause_ms"] for r in committed if r["client_pause_ms"] is not None]
    moved = committed[-1]["connections"]["moved"] if committed else None
    pause = stats(server)
    return {
        "relay": relay, "clients": clients, "connections_moved": moved,
        "handoff_mode": _mode(committed),
        "per_connection_us": round(pause["p50"] * 1000 / moved, 3)
        if moved and pause.get("p50") is not None else None,
        "load_msgs_per_s": load_rate, "canary_msgs_per_s": canary_rate(clients),
        "canary_interval_ms": round(1000 / canary_rate(clients), 3),
        "swaps": swaps, "committed": len(committed),
        "not_committed_reasons": sorted({r["reason"] for r in results
                                         if r["decision"] != "committed"}),
        "never_reader": never_reader, "never_reader_backlog_bytes": bench_backlog,
        "unsent_bytes_p50": percentiles([r["handoff"].get("unsent_bytes") or 0
                                         for r in committed], (50,)).get("p50")
        if committed else None,
        # clients owed the end of a fan-out in flight at the freeze, carried by the
        # `tail` extension (docs/handoff-protocol.md section 12; 0 on the Python relay)
        "tail_records_p50": percentiles([r["handoff"].get("delta_from_tail") or 0
                                         for r in committed], (50,)).get("p50")
        if committed else None,
        # swaps whose delta held every client for the BACKLOG (`defer-all`, section 13)
        "held_all_swaps": sum(bool(r["handoff"].get("delta_held_all")) for r in committed),
        "server_pause_ms": pause, "client_pause_ms": stats(client),
        # the reference, measured in the same row: after each swap, the canary's largest
        # gap over a window as long as that swap's, with no swap (the clients' own
        # gaps at this load: the canary's resolution, the relay's fan-out, the CPU)
        "client_gap_without_swap_ms": stats(quiet),
        "client_pause_window_ms": stats(windows),
        # what a swap added: its client pause less the gap after it (negative when the
        # clients saw a longer gap with no swap)
        "client_pause_added_ms": stats(added),
        "realtime": _realtime(results, "realtime"),
        "pause_stages_p50_ms": _stage_medians(committed),
        "slowest_pause_stages_ms": _slowest_stages(committed),
        "warm_rollback": _rollback_figures(rollbacks) if rollbacks else None,
        "canary": final["canary"], "crowd_disconnects": final["crowd"].get("disconnects"),
        "load": _load_summary(final.get("load")),
    }


def measure_rollbacks(clients: int, cold: bool, settings: HandoffBenchSettings,
                      relay: str) -> dict[str, Any]:
    """Swap, then roll back at once; cold kills the warm old release first."""
    with tempfile.TemporaryDirectory(prefix="swb-") as tmp:
        bench = Bench(Path(tmp), clients, 0, settings.command(relay), settings.never_reader,
                      pause_priority=settings.pause_priority)
        results: list[dict[str, Any]] = []
        try:
            for _ in range(settings.rollbacks):
                results.append(bench.swap(bench.rollback_settings(cold),
                                          requests=_rollback_now(bench, cold)))
            final = bench.finish()
        finally:
            bench.close()
            _keep(settings, Path(tmp), f"{relay}-rollback-{'cold' if cold else 'warm'}",
                  results)
    return {"clients": clients, **_rollback_figures(results), "canary": final["canary"]}


def _rollback_figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What swaps asked to roll back at once measured: decision -> handed back, ->
    traffic flowing again, and the hand-back's own server pause."""
    back = [r for r in results if r["decision"] == "rolled_back"]
    pauses = [r["handoff"]["rollback_pause_ms"] for r in back
              if r["handoff"].get("rollback_pause_ms") is not None]  # (pre-copy hand-back)
    flowing = [r["rollback"]["traffic_flowing_ms"] for r in back
               if r["rollback"]["traffic_flowing_ms"] is not None]
    return {"rollbacks": len(back), "asked": len(results),
            "kind": sorted({r["rollback"]["kind"] for r in back}),
            "handoff_back_ms": stats([r["rollback"]["ms"] for r in back]),
            "traffic_flowing_ms": stats(flowing), "server_pause_ms": stats(pauses),
            "realtime": _realtime(results, "rollback_realtime")}


def _keep(settings: HandoffBenchSettings, work: Path, name: str,
          reports: list[dict[str, Any]]) -> None:
    """With `settings.keep`: what a row leaves behind, copied to KEEP/NAME before its
    working directory goes (relay logs, the journal, slot state; not its sockets) and
    every measured swap's report, one JSON line each, as swaps.jsonl. The row runs in a
    short temporary path all the same: a Unix socket's path is at most 107 bytes."""
    if settings.keep is None:
        return
    dest = settings.keep / name

    def sockets(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if stat.S_ISSOCK(Path(folder, n).lstat().st_mode)]

    shutil.copytree(work, dest, ignore=sockets, symlinks=True)
    with (dest / "swaps.jsonl").open("w") as out:
        for report in reports:
            out.write(json.dumps(report, default=str) + "\n")


def stats(samples: list[float]) -> dict[str, Any]:
    """sample_stats, but a p99 of fewer than PERCENTILE_MIN samples is the maximum."""
    out = sample_stats(samples)
    if out["n"] and out["n"] < PERCENTILE_MIN:
        del out["p99"]
        out["p99_is_max"] = True
    return out


def cutover_window_ms(report: dict[str, Any]) -> float | None:
    """How long a committed swap's client pause was measured: from just before the
    release (after the pre-copy) to the end of its verification."""
    if report["decision"] != "committed":
        return None
    phases = {p["phase"]: p["ms"] for p in report["phases"]}
    window = (phases.get("releasing", 0.0) - (report["handoff"].get("precopy_ms") or 0.0)
              + phases.get("adopting", 0.0) + phases.get("verifying", 0.0))
    return round(window, 3) if window > 0 else None


def p99(row: dict[str, Any] | None) -> float | None:
    """The p99 of a stats dict, or its maximum when there were too few samples."""
    if not row or not row.get("n"):
        return None
    value = row.get("p99", row.get("max"))
    return None if value is None else float(value)


def _rollback_now(bench: Bench, cold: bool) -> Any:
    def ask() -> str:
        warm = bench.service.warm
        if cold and warm is not None and warm.alive():
            warm.handle.kill()
        return "rollback"
    return ask


def _realtime(results: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """How the pauses of `results` ran (swap/priority.py): None when pause_priority was 0."""
    seen = [r["handoff"][key] for r in results if r["handoff"].get(key)]
    if not seen:
        return None
    return {"priority": seen[0]["priority"], "pauses": len(seen),
            "boosted": sum(1 for s in seen if s["threads"] and not s["denied"]),
            "denied": sorted({s["denied"] for s in seen if s["denied"]}),
            "cut_by_watchdog": sum(1 for s in seen if s["cut_by_watchdog"])}


def _mode(results: list[dict[str, Any]]) -> str | None:
    """How the connections moved: `precopy` (fds ahead of the pause, the delta inside)
    or `v1` (every fd inside the pause); None when no swap committed."""
    if not results:
        return None
    return "precopy" if results[-1]["handoff"].get("precopy_ms") is not None else "v1"


def _stage_medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median of each stage of the server-side pause (see SwapRun.pause_stages_ms)."""
    stages = [r["pause_stages_ms"] for r in results if r.get("pause_stages_ms")]
    if not stages:
        return {}
    return {name: percentiles([s[name] for s in stages], (50,))["p50"] for name in stages[0]}


def _slowest_stages(results: list[dict[str, Any]]) -> dict[str, float] | None:
    """The stages of the swap with the longest server pause: where the tail came from."""
    timed = [r for r in results if r.get("pause_stages_ms") and r.get("server_pause_ms")]
    if not timed:
        return None
    return dict(max(timed, key=lambda r: r["server_pause_ms"])["pause_stages_ms"])


def _load_summary(load: dict[str, Any] | None) -> dict[str, Any] | None:
    """The independent load checker's verdict over all the swaps of one configuration."""
    if load is None:
        return None
    total = load["total"]
    return {"ok": load["ok"], "problems": load["problems"], "sent": load["sent"],
            "rate_achieved": load["conditions"]["rate_achieved"],
            **{k: total[k] for k in ("received", "lost", "duplicated", "reordered",
                                     "corrupted", "unexpected")}}


def per_connection_us(rows: list[dict[str, Any]]) -> float | None:
    """Slope of median server pause against clients moved (least squares), in us."""
    points = [(r["connections_moved"], r["server_pause_ms"]["p50"]) for r in rows
              if r["connections_moved"] and r["server_pause_ms"].get("p50") is not None]
    ms_per_connection = slope(points, min_points=2)
    return None if ms_per_connection is None else round(ms_per_connection * 1000, 3)


def run_handoff_bench(settings: HandoffBenchSettings, progress: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    commands = {relay: settings.command(relay) for relay in settings.relays}  # checked first
    progress("handoff: SCM_RIGHTS reference (kernel cost of passing one fd)")
    scm = measure_scm_rights()
    idle: list[dict[str, Any]] = []
    loaded: list[dict[str, Any]] = []
    for clients in settings.clients:
        for relay in commands:
            progress(f"handoff: {relay} relay, {clients} clients idle, {settings.swaps} swaps")
            idle.append(measure_swaps(clients, 0, settings, relay))
    if settings.loaded:
        for clients in settings.clients:
            rate = min(settings.load_rate, DELIVERY_BUDGET // (clients + 3))
            for relay in commands:
                progress(f"handoff: {relay} relay, {clients} clients, load {rate} msg/s, "
                         f"{settings.swaps} swaps")
                loaded.append(measure_swaps(clients, rate, settings, relay))
    rb_clients = (settings.rollback_clients
                  or min(settings.clients, key=lambda c: abs(c - 100)))
    rollback: dict[str, dict[str, Any]] = {}
    for relay in commands:
        progress(f"rollback: {relay} relay, {settings.rollbacks} warm and "
                 f"{settings.rollbacks} cold")
        rollback[relay] = {mode: measure_rollbacks(rb_clients, mode == "cold", settings, relay)
                           for mode in ("warm", "cold")}
    slopes = {relay: per_connection_us([r for r in idle if r["relay"] == relay])
              for relay in commands}
    goals = [goal for relay in commands for goal in _goals(
        relay, [r for r in idle if r["relay"] == relay],
        [r for r in loaded if r["relay"] == relay], rollback[relay], slopes[relay])]
    return {
        "benchmark": "handoff",
        "conditions": conditions(
            relays=list(commands), relay_commands={k: list(v) for k, v in commands.items()},
            swaps_per_config=settings.swaps, row_rollbacks=settings.row_rollbacks,
            journal="on", pause_budget_ms=PAUSE_BUDGET_MS,
            pause_priority=settings.pause_priority,
            never_reader=settings.never_reader,
            kept=None if settings.keep is None else str(settings.keep),
            load_rate_asked=settings.load_rate, delivery_budget_msgs_per_s=DELIVERY_BUDGET,
            note=("every relay broadcasts to every client: background load is capped at "
                  f"{DELIVERY_BUDGET:,} deliveries/s (rate x clients) so the 2-core machine "
                  "keeps up; the rate used is in each row. Each client count is measured "
                  "for each relay in turn, same settings"),
            source=source_revision("swapctl", "sdk/rust")),
        "scm_rights_reference": {**scm, "note": "a handoff passes each moved fd twice "
                                 "(old relay -> swapctl -> new relay)"},
        "idle": idle, "under_load": loaded,
        "rollback": rollback,
        "per_connection_cost_us": slopes,
        "goals": [g.to_dict() for g in goals],
        "wall_s": round(time.monotonic() - started, 1),
    }


def _goals(relay: str, idle: list[dict[str, Any]], loaded: list[dict[str, Any]],
           rollback: dict[str, Any], slope: float | None) -> list[Goal]:
    def row(rows: list[dict[str, Any]], clients: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["clients"] == clients), None)

    def pause(rows: list[dict[str, Any]], clients: int, back: bool = False) -> float | None:
        """A row's server pause p99: its swaps', or (back) its warm rollbacks' hand-back."""
        found = row(rows, clients)
        if found and back:
            found = found.get("warm_rollback")
        return p99(found["server_pause_ms"]) if found else None

    def ratio(big: float | None, small: float | None) -> float | None:
        return round(big / small, 2) if big is not None and small else None

    rows = loaded or idle
    client_1000 = row(loaded, 1000)
    warm, cold = rollback["warm"], rollback["cold"]
    name = f"{relay} relay: "
    goals = [
        Goal.at_most(name + "server pause p99 at 1,000 clients under load, full echo backlog",
                pause(loaded, 1000), 2, "ms"),
        Goal.at_most(name + "server pause p99 at 5,000 clients, full echo backlog",
                pause(loaded, 5000), 5, "ms"),
        Goal.at_most(name + "server pause p99 at 5,000 clients / at 10 clients",
                ratio(pause(rows, 5000), pause(rows, 10)), 2, "x"),
        Goal.at_most(name + "client pause p99 at 1,000 clients under load",
                p99(client_1000["client_pause_ms"]) if client_1000 else None, 5, "ms"),
        # the same, less what the clients see with no swap (the canary sends every 5 ms
        # at 1,000 clients: the figure above cannot go below that)
        Goal.at_most(name + "client pause a swap adds, p99 at 1,000 clients under load",
                p99(client_1000.get("client_pause_added_ms")) if client_1000 else None, 5, "ms"),
        Goal(name + "cost per extra connection", "<= 2 us", slope, "us",  # (< 0: noise)
             slope is not None and 0 <= slope <= 2),
        Goal.below(name + "warm rollback (decision -> traffic flowing)",
                   p99(warm["traffic_flowing_ms"]), 100, "ms"),
        Goal.below(name + "cold rollback (decision -> traffic flowing)",
                   p99(cold["traffic_flowing_ms"]), 2000, "ms"),
    ]
    if any(r.get("warm_rollback") for r in rows):  # the same figures for the hand-back
        goals += [
            Goal.at_most(name + "warm rollback server pause p99 at 1,000 clients under load",
                    pause(loaded, 1000, back=True), 2, "ms"),
            Goal.at_most(name + "warm rollback server pause p99 at 5,000 clients",
                    pause(loaded, 5000, back=True), 5, "ms"),
            Goal.at_most(name + "warm rollback server pause p99 at 5,000 clients / at 10 clients",
                    ratio(pause(rows, 5000, back=True), pause(rows, 10, back=True)), 2, "x"),
        ]
    return goals
