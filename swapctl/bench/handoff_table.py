"""`bench handoff` for people: the relays' rows side by side, one line per client count.

The report's `idle` and `under_load` rows carry their relay's name; this puts each
client count on one line with a column group per relay (swaps committed of those run,
server pause p50/p99, cost per moved connection, how the fds moved, bytes owed to the
clients at the freeze (p50), what was lost and disconnected), under the SCM_RIGHTS
reference measured in the same run. The full report follows it in the text output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

GROUP = (f"{'swaps':>7} {'p50 ms':>8} {'p99 ms':>8} {'us/conn':>8} {'mode':>8} "
         f"{'owed MB':>8} {'lost':>5} {'disc':>5}")


def side_by_side(report: Mapping[str, Any]) -> str:
    """The pause table of a handoff report (text, no trailing newline)."""
    relays: Sequence[str] = report["conditions"]["relays"]
    scm = report["scm_rights_reference"]
    lines = ["server pause by client count, relays side by side "
             "(us/conn = pause p50 / connections moved)",
             f"kernel SCM_RIGHTS in this run: {scm['us_per_fd']:g} us per fd "
             f"(best {scm['best_us_per_fd']:g}; a handoff passes each fd twice)"]
    for section in ("idle", "under_load"):
        rows = report[section]
        if not rows:
            continue
        lines += ["", f"{section:<17}" + "".join(f"{name:<{len(GROUP) + 3}}" for name in relays),
                  f"{'clients':>8} {'load/s':>8}" + "".join(f"   {GROUP}" for _ in relays)]
        for clients in dict.fromkeys(r["clients"] for r in rows):
            by_relay = {r["relay"]: r for r in rows if r["clients"] == clients}
            load = next(iter(by_relay.values()))["load_msgs_per_s"]
            lines.append(f"{clients:>8,} {load:>8,}" + "".join(
                f"   {_cells(by_relay.get(name))}" for name in relays))
    lines += _client_lines(report, relays)
    lines += _rollback_lines(report, relays)
    slopes = report["per_connection_cost_us"]
    lines += ["", "cost per extra connection (slope of the idle pause p50): " + ", ".join(
        f"{name} {_fmt(slopes.get(name))} us" for name in relays)]
    if any(r["server_pause_ms"].get("p99_is_max") for r in report["idle"] + report["under_load"]):
        lines.append("* p99 is the maximum (fewer than 100 swaps)")
    return "\n".join(line.rstrip() for line in lines)


def _rollback_lines(report: Mapping[str, Any], relays: Sequence[str]) -> list[str]:
    """Each row's warm rollbacks: the hand-back's server pause p50/p99 (rolled back of asked)."""
    rows = [r for section in ("idle", "under_load") for r in report[section]
            if r.get("warm_rollback")]
    if not rows:
        return []
    lines = ["", "warm rollback at the end of each row: hand-back server pause p50/p99 ms "
                 "(rolled back of asked)",
             f"{'':>17}" + "".join(f"{name:>22}" for name in relays)]
    return lines + _by_count(report, relays, 22, lambda row: _back(row.get("warm_rollback")))


def _client_lines(report: Mapping[str, Any], relays: Sequence[str]) -> list[str]:
    """Each row's client pause beside the gap its clients see with no swap, as long."""
    rows = [r for section in ("idle", "under_load") for r in report[section]]
    if not any(r.get("client_gap_without_swap_ms", {}).get("n") for r in rows):
        return []
    lines = ["", "client pause p50/p99 ms (largest canary gap): during a swap | without one, "
                 "as long",
             f"{'':>17}" + "".join(f"{name:>26}" for name in relays)]
    return lines + _by_count(report, relays, 26, _gaps)


def _by_count(report: Mapping[str, Any], relays: Sequence[str], width: int,
              cell: Callable[[Mapping[str, Any]], str]) -> list[str]:
    """One line per client count and section ("10 idle", "10 loaded"), a `cell` of
    `width` per relay ("-" where a relay has no row)."""
    lines = []
    for section in ("idle", "under_load"):
        for clients in dict.fromkeys(r["clients"] for r in report[section]):
            by_relay = {r["relay"]: r for r in report[section] if r["clients"] == clients}
            label = f"{clients:,} {'idle' if section == 'idle' else 'loaded'}"
            lines.append(f"{label:>17}" + "".join(
                f"{cell(by_relay[name]) if name in by_relay else '-':>{width}}"
                for name in relays))
    return lines


def _gaps(row: Mapping[str, Any]) -> str:
    return f"{_p50_p99(row['client_pause_ms'])} | {_p50_p99(row.get('client_gap_without_swap_ms'))}"


def _p50_p99(s: Mapping[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{_fmt(s.get('p50'))}/{_tail(s)}"


def _tail(s: Mapping[str, Any]) -> str:
    """The p99, or the maximum marked * when there were too few samples for one."""
    return _fmt(s.get("p99", s.get("max"))) + ("*" if s.get("p99_is_max") else "")


def _back(back: Mapping[str, Any] | None) -> str:
    if not back:
        return "-"
    pause = back["server_pause_ms"]
    return f"{_fmt(pause.get('p50'))}/{_tail(pause)} ({back['rollbacks']}/{back['asked']})"


def _cells(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return " " * len(GROUP)
    pause = row["server_pause_ms"]
    p99 = _tail(pause)
    load = row.get("load") or {}
    lost = (row["canary"].get("lost") or 0) + (load.get("lost") or 0)
    disc = (row["canary"].get("disconnects") or 0) + (row.get("crowd_disconnects") or 0)
    swaps = f"{row['committed']}/{row['swaps']}"
    return (f"{swaps:>7} {_fmt(pause.get('p50')):>8} {p99:>8} {_fmt(row['per_connection_us']):>8} "
            f"{row['handoff_mode'] or '-':>8} {_mb(row['unsent_bytes_p50']):>8} {lost:>5} "
            f"{disc:>5}")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
