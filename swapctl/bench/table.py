"""README's table of measured figures, generated from the benchmarks' `-o json` reports.

How it works: each report (docs/bench/NAME.json) is named by its "benchmark" key, or,
for benches that do not write one (codec, diff, relay, drill), by its file name. A
per-benchmark summary turns it into a `Run`: the conditions it ran under, the command
that reproduces it (its recorded "argv" if any, else rebuilt from its conditions) and
its headline rows (case, figure, n). `render` prints three markdown tables (runs,
figures, goals met or not) plus a line naming the benchmarks without a report. A p99
taken from fewer than 100 samples equals the maximum (nearest rank), so it is labelled
`max`, as it is whenever a report says `p99_is_max`. `replace_block` puts the result
between the README's markers; `--check` compares, so README and docs/bench cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.errors import UsageError
from swapctl.swap.executor import SwapSettings

BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
ORDER = ("codec", "relay", "handoff", "strategies", "diff", "daemon", "drill", "soak")
Report = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Row:
    case: str
    figure: str
    n: str


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    conditions: str
    command: str
    rows: tuple[Row, ...]
    goals: tuple[Mapping[str, Any], ...] = field(default=())


def load(paths: Sequence[Path]) -> list[tuple[str, Report]]:
    """(benchmark name, report) per file; a file that is not a report is a UsageError."""
    out: list[tuple[str, Report]] = []
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable benchmark report ({exc}); write it "
                             f"with 'swapctl bench NAME -o json > {path}'") from None
        if not isinstance(report, dict) or "conditions" not in report:
            raise UsageError(f"{path}: no 'conditions' key, so not a 'swapctl bench -o json' "
                             "report")
        out.append((str(report.get("benchmark") or path.stem), report))
    return out


def summarize(name: str, report: Report) -> Run:
    rows = SUMMARIES.get(name, _generic_rows)(report)
    return Run(name, conditions_text(name, report), command(name, report), tuple(rows),
               tuple(report.get("goals") or ()))


def render(reports: Sequence[tuple[str, Report]]) -> str:
    runs = sorted((summarize(n, r) for n, r in reports), key=lambda r: _rank(r.name))
    lines = ["| Benchmark | Conditions | Goals met | Reproduce |", "|---|---|---|---|"]
    for run in runs:
        met = sum(1 for g in run.goals if g.get("met"))
        goals = f"{met} of {len(run.goals)}" if run.goals else "none set"
        lines.append(_cells(run.name, run.conditions, goals, f"`{run.command}`"))
    lines += ["", "| Benchmark | Case | Figure | n |", "|---|---|---|---|"]
    lines += [_cells(run.name, r.case, r.figure, r.n) for run in runs for r in run.rows]
    lines += ["", "| Benchmark | Goal | Target | Measured | Met |", "|---|---|---|---|---|"]
    for run in runs:
        lines += [_cells(run.name, str(g["name"]), str(g["target"]), _measured(g),
                         "met" if g.get("met") else "**not met**") for g in run.goals]
    missing = [n for n in ORDER if n not in {run.name for run in runs}]
    if missing:
        lines += ["", "No report yet for: " + ", ".join(f"`{n}`" for n in missing) + ". To add "
                  "one, run `swapctl bench NAME -o json > docs/bench/NAME.json` on a quiet "
                  "machine, then `swapctl bench table --write README.md`."]
    return "\n".join(lines)


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """`text` with everything between the markers replaced by `block`."""
    begin, end = _markers(text, where)
    return text[: begin + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def current_block(text: str, where: str = "README.md") -> str:
    begin, end = _markers(text, where)
    return text[begin + len(BEGIN) : end].strip("\n")


def _markers(text: str, where: str) -> tuple[int, int]:
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise UsageError(f"{where}: no '{BEGIN}' ... '{END}' markers in this order; put them "
                         "where the table belongs")
    return begin, end


# --- conditions and commands -----------------------------------------------------------

def conditions_text(name: str, report: Report) -> str:
    c = report["conditions"]
    load_avg = c.get("load_average_1m_5m") or [None, None]
    rev = c.get("source") or c.get("revision") or c.get("relay_source") or {}
    commit = f"commit {rev['commit']}" if rev.get("commit") else "commit not recorded"
    if rev.get("uncommitted_changes"):
        commit += " (with uncommitted changes)"
    own = OWN_CONDITIONS[name](c) if name in OWN_CONDITIONS else ""
    machine = (f"{c.get('cores_usable', '?')} of {c.get('cpu_count', '?')} cores "
               f"({c.get('cpu_model', '?')}), {c.get('implementation', '')} "
               f"{c.get('python', '')}, load average {_num(load_avg[0])} / "
               f"{_num(load_avg[1])} (1 / 5 min) as the run ended, {commit}")
    return f"{own}; {machine}" if own else machine


def command(name: str, report: Report) -> str:
    argv = report.get("argv")
    if argv:
        args = " ".join(str(a) for a in argv)
    elif name in COMMANDS:
        args = " ".join(COMMANDS[name](report))
    else:
        return f"swapctl bench {name} (its arguments are not recorded)"
    return f"swapctl bench {name} {args} -o json > docs/bench/{name}.json".replace("  ", " ")


def _handoff_args(r: Report) -> list[str]:
    c = r["conditions"]
    relays = c.get("relays") or ["python"]
    clients = list(dict.fromkeys(row["clients"] for row in r.get("idle", [])))
    rollbacks = next((m.get("asked", m["rollbacks"]) for modes in (r.get("rollback") or {}).values()
                      for m in modes.values()), None)
    args = ["--relay", "both" if len(relays) > 1 else relays[0],
            "--clients", ",".join(str(n) for n in clients),
            "--swaps", str(c["swaps_per_config"]), "--rollbacks", str(rollbacks),
            "--load-rate", str(c["load_rate_asked"])]
    args += [] if r.get("under_load") else ["--no-load"]
    if c.get("row_rollbacks") is not None:  # (None: a report from before the option)
        args += ["--row-rollbacks", str(c["row_rollbacks"])]
    priority = c.get("pause_priority")  # (None: a report from before the setting)
    if priority is not None and priority != SwapSettings().pause_priority:
        args += ["--pause-priority", str(priority)]
    return args + ([] if c.get("never_reader", True) else ["--no-never-reader"])


def _pause_priority(priority: Any) -> str:
    if priority is None:
        return ""
    return (f", the adopter at SCHED_FIFO {priority} through each pause" if priority
            else ", the relays at their own scheduling")


def _strategies_args(r: Report) -> list[str]:
    c = r["conditions"]
    names = list(dict.fromkeys([row["strategy"] for row in r.get("results", [])]
                               + [k.split("@")[0] for k in r.get("skipped") or {}]))
    args = ["--rates", ",".join(str(n) for n in c["rates_asked"]),
            "--clients", str(c["connected_clients"]), "--swaps", str(c["swaps_per_config"]),
            "--canary-rate", _plain(c["canary_msgs_per_s"])]
    everything = {"handoff", "takeover", "bridge", "restart"}
    return args + ([] if set(names) == everything else ["--strategies", ",".join(names)])


def _codec_args(r: Report) -> list[str]:
    c = r["conditions"]
    return ["--messages", str(c["messages_per_repeat"]), "--repeats", str(c["repeats"])]


def _diff_args(r: Report) -> list[str]:
    c, ci = r["conditions"], r.get("ci_scenario") or {}
    return ["--frames", str(c["frames"]), "--repeats", str(c["repeats"]),
            "--scenario", str(ci.get("scenario", "ci"))]


def _relay_args(r: Report) -> list[str]:
    c = r["conditions"]
    servers = c.get("servers") or {}
    relays = [name for name in ("relay", "rust") if name in servers]
    args = ["--duration", _plain(c["throughput"]["duration_s"]),
            "--rate", _plain(c["latency"]["rate_msgs_per_s"]),
            "--relay", {"relay": "python", "rust": "rust"}[relays[0]] if len(relays) == 1
            else "both"]
    if c.get("idle_timeout_s") is not None:
        args += ["--idle-timeout", _plain(c["idle_timeout_s"])]
    return args + [f"--relay-arg={a}" for a in c.get("relay_args") or []]


def _drill_args(r: Report) -> list[str]:
    c = r["conditions"]
    args = ["--drills", str(c["drills"])]
    playbook = Path(str(c.get("playbook", "")))
    if playbook.name != "rollback-drill.yaml" or playbook.parent.name != "playbooks":
        args += ["--playbook", str(playbook)]
    return args + [f"--param {k}={v}" for k, v in (c.get("params") or {}).items()]


def _daemon_args(r: Report) -> list[str]:
    c = r["conditions"]
    args = ["--swaps", str(c["swaps"]), "--rollbacks", str(c["rollbacks"]),
            "--recoveries", str(c["recoveries"]), "--rate", str(c["rate"])]
    if c.get("idle_clients"):
        args += ["--clients", str(c["idle_clients"])]
    return [*args, "--soak", _plain(c["soak"]), "--recovery-soak", _plain(c["recovery_soak"])]


COMMANDS: dict[str, Callable[[Report], list[str]]] = {
    "handoff": _handoff_args, "strategies": _strategies_args, "codec": _codec_args,
    "diff": _diff_args, "relay": _relay_args, "drill": _drill_args, "daemon": _daemon_args,
}

OWN_CONDITIONS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "handoff": lambda c: (f"{c.get('swaps_per_config')} swaps per row, journal "
                          f"{c.get('journal')}, never-reading publisher with a full echo "
                          f"backlog: {'yes' if c.get('never_reader') else 'no'}, load capped "
                          f"at {_num(c.get('delivery_budget_msgs_per_s'))} deliveries/s"
                          f"{_pause_priority(c.get('pause_priority'))}"),
    "strategies": lambda c: (f"message sizes {_sizes(c.get('message_sizes_bytes'))} bytes, "
                             f"{_num(c.get('connected_clients'))} clients, canary "
                             f"{_num(c.get('canary_msgs_per_s'))} msg/s"),
    "codec": lambda c: (f"{c.get('message_bytes')}-byte messages, "
                        f"{_num(c.get('messages_per_repeat'))} per repeat, best of "
                        f"{c.get('repeats')}"),
    "diff": lambda c: (f"{_num(c.get('frames'))} frames of {c.get('message_bytes')} bytes "
                       f"per stream, best of {c.get('repeats')}"),
    "relay": lambda c: (f"{c.get('message_bytes')}-byte messages, "
                        f"{c.get('connections')}, {_num(c['throughput']['duration_s'])} s "
                        f"per throughput window, latency at "
                        f"{_num(c['latency']['rate_msgs_per_s'])} msg/s"),
    "daemon": lambda c: (f"{c.get('stack')}; load {_num(c.get('rate'))} msg/s from "
                         f"{c.get('publishers')} publishers to {c.get('consumers')} consumers "
                         f"({c.get('strategy_consumers')} a strategy consumer that stops for "
                         f"good on EOF), {_num(c.get('idle_clients'))} idle clients, soak "
                         f"{_num(c.get('soak'))} s after each swap"),
    "drill": lambda c: (f"{c.get('drills')} drills of {Path(str(c.get('playbook'))).name} "
                        f"({', '.join(f'{k}={v}' for k, v in (c.get('params') or {}).items())}), "
                        f"{c.get('relay')}, {c.get('stack')}"),
}


# --- headline rows -----------------------------------------------------------------------

def _handoff_rows(r: Report) -> list[Row]:
    rows = []
    for row in [*r.get("idle", []), *r.get("under_load", [])]:
        rate = row.get("load_msgs_per_s") or 0
        load_text = f"load {_num(rate)} msg/s" if rate else "idle"
        canary = row.get("canary") or {}
        disconnects = (canary.get("disconnects") or 0) + (row.get("crowd_disconnects") or 0)
        quiet = row.get("client_gap_without_swap_ms")
        reference = (f" (without a swap, as long: {_stats(quiet, 'ms')})"
                     if quiet and quiet.get("n") else "")
        figure = (f"server pause {_stats(row['server_pause_ms'], 'ms')}; client pause "
                  f"{_stats(row['client_pause_ms'], 'ms')}{reference}; "
                  f"lost {_num(canary.get('lost'))}, "
                  f"disconnects {_num(disconnects)}")
        reasons = row.get("not_committed_reasons") or []  # not one per swap: count apart
        if reasons:
            left = (row.get("swaps") or 0) - (row.get("committed") or 0)
            figure += f"; {_num(left)} not committed (first: {reasons[0]})"
        back = row.get("warm_rollback")
        if back:
            figure += (f"; warm rollback server pause {_stats(back['server_pause_ms'], 'ms')} "
                       f"({_n(back['server_pause_ms'])} of {_num(back.get('asked'))} rolled "
                       "back)")
        rows.append(Row(f"{row['relay']} relay, {_num(row['clients'])} clients, {load_text}",
                        figure, f"{_n(row['server_pause_ms'])} of {_num(row.get('swaps'))} "
                                f"swaps committed"))
    for relay, modes in (r.get("rollback") or {}).items():
        for mode, m in modes.items():
            rows.append(Row(f"{relay} relay, {mode} rollback, {_num(m.get('clients'))} clients",
                            f"decision -> traffic flowing {_stats(m['traffic_flowing_ms'], 'ms')}",
                            f"{_n(m['traffic_flowing_ms'])} rollbacks"))
    costs = r.get("per_connection_cost_us") or {}
    scm = (r.get("scm_rights_reference") or {}).get("us_per_fd")
    if costs:
        text = ", ".join(f"{relay} {_num(us)} us" for relay, us in costs.items())
        rows.append(Row("cost per moved connection", f"{text} (SCM_RIGHTS: {_num(scm)} us "
                                                     "per fd)", "slope over the idle rows"))
    return rows


def _strategies_rows(r: Report) -> list[Row]:
    rows = []
    for row in r.get("results", []):
        case = (f"{row['strategy']}, {_num(row['rate_used'])} msg/s "
                f"({_num(row['rate_asked'])} asked), {_num(row['clients'])} clients")
        if "skipped" in row:
            rows.append(Row(case, f"skipped: {row['skipped']}", "0"))
            continue
        disc = row["disconnects"]
        figure = (f"client pause {_stats(row['pause_ms'], 'ms')}; disconnects "
                  f"{_num(disc['checker'])} (report {_num(disc['report'])}); lost "
                  f"{_num(row['lost'])} ({_num(row['lost_pct'])} %)")
        if row.get("errors"):
            figure += f"; errors: {len(row['errors'])}"
        rows.append(Row(case, figure, f"{_n(row['pause_ms'])} of {row['swaps_asked']} swaps"))
    for key, why in (r.get("skipped") or {}).items():
        if "@" not in key:
            rows.append(Row(key, f"skipped: {why}", "0"))
    lat = r.get("bridge_latency")
    if lat:
        added = lat["added_ms"]
        rows.append(Row(f"bridge, {_num(lat['rate'])} msg/s",
                        f"latency added p50 {_num(added['p50'])} ms / p99 "
                        f"{_num(added['p99'])} ms", f"{_num(lat['messages'])} messages"))
    return rows


def _codec_rows(r: Report) -> list[Row]:
    rows = []
    n = f"best of {r['conditions'].get('repeats')}"
    for section, unit in (("parsing", "frames/s parsed"), ("construction", "msg/s built")):
        for path, m in (r.get(section) or {}).items():
            rows.append(Row(f"{section}: {path}", f"{_num(m['best_msgs_per_s'])} {unit} "
                            f"({_num(m['vs_reference'])} x the relays' baseline)", n))
    return rows


def _diff_rows(r: Report) -> list[Row]:
    n = f"best of {r['conditions'].get('repeats')}"
    rows = [Row(f"compare: {case}", f"{_num(m['best_frames_per_s'])} frames/s "
                f"({_num(m['frames_compared'])} frames compared)", n)
            for case, m in (r.get("compare") or {}).items()]
    ci = r.get("ci_scenario")
    if ci:
        rows.append(Row(f"scenario {ci['scenario']} (seed {ci['seed']}), reference vs "
                        "reference", f"{_num(ci['wall_s'])} s wall, equivalent: "
                        f"{'yes' if ci['equivalent'] else 'no'}", "1 run"))
    return rows


def _generic_rows(r: Report) -> list[Row]:
    """Every sample summary ({n, p50, ...}) one or two levels down, for benches without
    their own summary here."""
    rows = []
    for section, body in r.items():
        if not isinstance(body, Mapping) or section == "conditions":
            continue
        for key, value in body.items():
            if isinstance(value, Mapping) and "p50" in value:
                rows.append(Row(f"{section}: {key}", _stats(value, ""), _n(value)))
    return rows


def _relay_rows(r: Report) -> list[Row]:
    rows = []
    for target, m in (r.get("throughput") or {}).items():
        rows.append(Row(f"throughput: {target}", f"{_num(m['messages_per_s'])} msg/s, lost "
                        f"{_num(m.get('lost'))}, verified: {'yes' if m.get('verified') else 'no'}",
                        f"{_num(m.get('delivered'))} messages"))
    for target, m in (r.get("slow_consumer") or {}).items():
        rows.append(Row(f"slow consumer, block mode: {target}",
                        f"{_num(m['messages_per_s'])} msg/s, lost {_num(m.get('lost'))}",
                        f"{_num(m.get('delivered'))} messages"))
    for target, m in (r.get("latency") or {}).items():
        rows.append(Row(f"latency: {target}", f"p50 {_num(m['p50_us'])} / p99 "
                        f"{_num(m['p99_us'])} us at {_num(m.get('achieved_rate_msgs_per_s'))} "
                        "msg/s", f"{_num(m.get('samples'))} samples"))
    return rows


def _drill_rows(r: Report) -> list[Row]:
    drills = r.get("drills") or {}
    rows = [Row("drills", f"{_num(drills.get('passed'))} of {_num(drills.get('run'))} passed, "
                f"{_num(drills.get('lost_messages'))} messages lost", "")]
    for key, label in (("drill_seconds", "whole drill"), ("rollback_seconds", "rollback"),
                       ("rollback_serving_seconds", "rollback until the baseline serves"),
                       ("rollback_engine_ms", "swapctld's own handoff")):
        s = r.get(key) or {}
        unit = "ms" if key.endswith("_ms") else "s"
        rows.append(Row(label, _stats(s, unit), _n(s)))
    return rows


def _daemon_rows(r: Report) -> list[Row]:
    up, swaps, back = r.get("up") or {}, r.get("swaps") or {}, r.get("rollbacks") or {}
    rec, load = r.get("recoveries") or {}, r.get("load") or {}
    mem = r.get("swapctld_memory") or {}
    rows = [Row("cold start", f"API answers after {_num(up.get('api_answers_ms'))} ms, every "
                f"service healthy after {_num(up.get('all_healthy_ms'))} ms", "1 run")]
    if swaps.get("run"):
        rows += [Row("swap: server pause", _stats(swaps.get("server_pause_ms") or {}, "ms"),
                     f"{_num(swaps.get('committed'))} of {_num(swaps['run'])} committed"),
                 Row("swap: client pause (canary)",
                     _stats(swaps.get("client_pause_ms") or {}, "ms"),
                     _n(swaps.get("client_pause_ms") or {})),
                 Row("swap: op swap, wait (wall)", _stats(swaps.get("total_ms") or {}, "ms"),
                     _n(swaps.get("total_ms") or {}))]
    if back.get("run"):
        rows.append(Row(f"rollback during soak ({', '.join(back.get('kind') or [])})",
                        f"{_stats(back.get('rollback_ms') or {}, 'ms')}; traffic flowing "
                        f"{_stats(back.get('traffic_flowing_ms') or {}, 'ms')}",
                        f"{_num(back.get('rolled_back'))} of {_num(back['run'])} rolled back"))
    if rec.get("run"):
        rows.append(Row("swapctld SIGKILLed mid-swap: restart -> ready / swap finished",
                        f"{_stats(rec.get('restart_to_ready_ms') or {}, 'ms')}; "
                        f"{_stats(rec.get('restart_to_finished_ms') or {}, 'ms')}",
                        f"{_num(rec.get('committed'))} of {_num(rec['run'])} committed"))
    if mem.get("samples"):
        rows.append(Row("swapctld RSS", f"{_num(mem.get('rss_mb_first'))} -> "
                        f"{_num(mem.get('rss_mb_last'))} MB (max "
                        f"{_num(mem.get('rss_mb_max'))}); second half "
                        f"{_num(mem.get('second_half_growth_mb_per_1000_swaps'))} MB per 1,000 "
                        "swaps", f"{_num(mem['samples'])} samples over "
                        f"{_num(mem.get('swaps_sampled'))} swaps"))
    if load:
        rows.append(Row("load checker, whole run", f"lost {_num(load.get('lost'))}, duplicated "
                        f"{_num(load.get('duplicated'))}, reordered {_num(load.get('reordered'))}, "
                        f"disconnects {_num(load.get('disconnects'))}; largest gap "
                        f"{_num(load.get('largest_gap_ms'))} ms",
                        f"{_num(load.get('sent'))} messages"))
    return rows


SUMMARIES: dict[str, Callable[[Report], list[Row]]] = {
    "handoff": _handoff_rows, "strategies": _strategies_rows, "codec": _codec_rows,
    "diff": _diff_rows, "relay": _relay_rows, "drill": _drill_rows, "daemon": _daemon_rows,
}


# --- formatting ----------------------------------------------------------------------------

def _stats(s: Mapping[str, Any], unit: str) -> str:
    """p50 and the tail: p99 when it is one (100 samples or more), else the maximum."""
    if not s.get("n", s.get("samples")):
        return "not measured"
    n = s.get("n", s.get("samples", 0))
    if "p99" in s and not s.get("p99_is_max") and n >= 100:
        tail = f"p99 {_num(s['p99'])}"
    else:
        tail = f"max {_num(s.get('max', s.get('p99')))}"
    return f"p50 {_num(s.get('p50'))} / {tail} {unit}".rstrip()


def _n(s: Mapping[str, Any]) -> str:
    return _num(s.get("n", s.get("samples", 0)))


def _measured(goal: Mapping[str, Any]) -> str:
    if goal.get("measured") is None:
        return "not measured"
    return f"{_num(goal['measured'])} {goal.get('unit', '')}".rstrip()


def _sizes(sizes: Mapping[str, Any] | None) -> str:
    return "/".join(_num(v) for v in sorted(set((sizes or {}).values()))) or "?"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:g}"


def _plain(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _cells(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)
