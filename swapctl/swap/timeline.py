"""A swap's timeline as a picture: an SVG, alone or in a self-contained HTML page.

How it works: `timeline(report)` reads what a swap report (swap/report.py, as swapctld
files it) says about time into a `Timeline`: the phases in order with their durations
(the report's "phases"; for a swap still running, the journal's transitions so far), where
the server pause fell (the journal's stopped_ns..resumed_ns), the pause's stages, the
largest canary gap, the rollback, the outcome and the key figures. A report with no
phase timing raises `NoTiming`. `render_svg` lays it out top to bottom:
  1. the outcome and the figures (lost, duplicated, ..., disconnects, clients moved);
  2. the whole swap: one <rect class="phase"> per phase, in order, its width proportional
     to its duration, with a legend of every phase's milliseconds (a 1 ms phase is a
     hairline beside a 2 s soak) and a red mark where the server pause fell;
  3. the cutover zoomed (from the first phase that moves clients to the end of verifying),
     on its own scale, with the server pause at its recorded place;
  4. the pauses on one shared scale: server (split into its stages), client (the largest
     gap a canary consumer saw in the cutover window: its length is measured, its moment is
     not, so it is drawn as a length) and, when it rolled back, the rollback.
`render_html` wraps the SVG with the same numbers as tables: no script, no network.
Pure: a dict in, a string out.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from swapctl.errors import UsageError

WIDTH = 960
LEFT = 170  # row labels
PLOT = WIDTH - LEFT - 20
PAUSE_PLOT = PLOT - 80  # room for the value after the longest bar
BAR = 26
FONT = "font-family:system-ui,sans-serif;font-size:12px"
COLORS = {
    "starting": "#9ecae1", "probing": "#6baed6", "releasing": "#fd8d3c",
    "adopting": "#e6550d", "freezing": "#e6550d", "bridging": "#fdae6b",
    "flipping": "#e6550d", "draining": "#fdd0a2", "retiring": "#bcbddc",
    "verifying": "#74c476", "soaking": "#c7e9c0", "committing": "#31a354",
    "rolling_back": "#de2d26",
}
# the phases in which clients move or wait: the zoomed cutover runs from the first of them
# through verifying
CUTOVER = ("releasing", "adopting", "freezing", "bridging", "flipping", "draining",
           "retiring", "verifying")
OUTCOME_COLORS = {"committed": "#31a354", "rolled_back": "#e6a100", "failed": "#de2d26"}
FIGURES = ("lost", "duplicated", "reordered", "corrupted", "disconnects", "dead_consumers")


class NoTiming(UsageError):
    """The report holds no phase timing to draw."""


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    start_ms: float  # from the swap's begin
    ms: float


@dataclass(frozen=True, slots=True)
class Timeline:
    swap_id: str
    title: str  # service, from -> to, strategy
    decision: str
    reason: str
    phases: tuple[Phase, ...]
    running_in: str | None  # the phase a swap still running is in (not drawn: no end yet)
    pending: bool  # drawn from the journal of a swap still running: no figures yet
    pause_window_ms: tuple[float, float] | None  # server pause, from the swap's begin
    server_pause_ms: float | None
    pause_stages_ms: tuple[tuple[str, float], ...]
    client_pause_ms: float | None
    rollback: tuple[str, float | None, float | None] | None  # kind, ms, traffic flowing ms
    figures: tuple[tuple[str, str], ...]  # (name, value as shown)
    clients: str
    canary: str

    @property
    def total_ms(self) -> float:
        return sum(p.ms for p in self.phases)


# ----- reading a report -----------------------------------------------------------------

def timeline(report: Mapping[str, Any]) -> Timeline:
    """The report's timing, or `NoTiming` (with what to do) when it has none."""
    swap_id = str(report.get("swap_id") or "?")
    journal = [r for r in report.get("journal") or [] if isinstance(r, Mapping)]
    phases, running_in = _phases(report.get("phases"), journal)
    if not phases or sum(p.ms for p in phases) <= 0:
        raise NoTiming(
            f"swap {swap_id} has no phase timings to draw (decision "
            f"{report.get('decision', 'unknown')}: the report has no 'phases' and its journal "
            f"no state transitions); `swapctl report {swap_id}` shows what it does hold")
    conns = report.get("connections") or {}
    rollback = report.get("rollback")
    canary = report.get("canary")
    pending = "phases" not in report  # a swap still running: its journal so far, no figures
    held = next((r["server_pause_ms"] for r in journal if "server_pause_ms" in r), None)
    return Timeline(
        swap_id=swap_id, title=_title(report, journal),
        decision=str(report.get("decision") or "?"), reason=str(report.get("reason") or ""),
        phases=phases, running_in=running_in, pending=pending,
        pause_window_ms=_pause_window(journal),
        server_pause_ms=_num(report.get("server_pause_ms", held)),
        pause_stages_ms=tuple((str(k), float(v)) for k, v in
                              (report.get("pause_stages_ms") or {}).items() if _num(v)),
        client_pause_ms=_num(report.get("client_pause_ms")),
        rollback=None if not rollback else (str(rollback.get("kind")),
                                            _num(rollback.get("ms")),
                                            _num(rollback.get("traffic_flowing_ms"))),
        figures=_figures(report),
        clients="clients, canary and figures: in the report once the swap has ended"
        if pending else f"clients {_count(conns.get('before'))} before, "
        f"{_count(conns.get('moved'))} moved, {_count(conns.get('after'))} after",
        canary="" if pending else "canary: none ran" if not canary else
        f"canary {canary.get('sent')} sent at {_num(canary.get('rate')) or 0:.0f}/s",
    )


def _phases(listed: Any, journal: list[Mapping[str, Any]]
            ) -> tuple[tuple[Phase, ...], str | None]:
    if listed:
        out, at = [], 0.0
        for p in listed:
            ms = float(p["ms"])
            out.append(Phase(str(p["phase"]), at, ms))
            at += ms
        return tuple(out), None
    moves = [r for r in journal if "from" in r and "to" in r and _num(r.get("at")) is not None]
    if not moves:
        return (), None
    t0 = float(moves[0]["at"])
    phases = tuple(Phase(str(a["to"]), (float(a["at"]) - t0) * 1000,
                         (float(b["at"]) - float(a["at"])) * 1000)
                   for a, b in itertools.pairwise(moves))
    last = str(moves[-1]["to"])
    return phases, None if last in OUTCOME_COLORS else last


def _pause_window(journal: list[Mapping[str, Any]]) -> tuple[float, float] | None:
    begin = next((r for r in journal if r.get("from") == "idle" and "at" in r), None)
    held = next((r for r in journal if "stopped_ns" in r and "resumed_ns" in r), None)
    if begin is None or held is None:
        return None
    t0_ns = float(begin["at"]) * 1e9
    return ((float(held["stopped_ns"]) - t0_ns) / 1e6, (float(held["resumed_ns"]) - t0_ns) / 1e6)


def _title(report: Mapping[str, Any], journal: list[Mapping[str, Any]]) -> str:
    begin = next((r for r in journal if r.get("event") == "begin"), {})
    report = {"service": begin.get("service"), "from": begin.get("old_release"),
              "to": begin.get("release"), "strategy": begin.get("strategy"),
              **{k: v for k, v in report.items() if v is not None}}
    service = f"{report['service']}: " if report.get("service") else ""
    moved = f"  {report.get('from')} -> {report.get('to')}" if report.get("to") else ""
    how = ", ".join(str(report[k]) for k in ("kind", "strategy") if report.get(k))
    return f"{service}{report.get('swap_id', '?')}{moved}" + (f"  ({how})" if how else "")


def _figures(report: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    figures = report.get("figures") or {}
    out = []
    for name in FIGURES:
        if name in figures:
            value = figures[name].get("value")
        elif name in report:
            value = report[name]
        else:
            continue
        out.append((name.replace("_", " "), _count(value)))
    return tuple(out)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> str:
    return "unknown" if value is None else str(value)


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    if ms >= 1000:
        return f"{ms / 1000:.3f} s"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


# ----- drawing --------------------------------------------------------------------------

def render_svg(report: Mapping[str, Any]) -> str:
    """The timeline as one standalone SVG document (NoTiming without phase timing)."""
    t = timeline(report)
    parts: list[str] = []
    y = _header(t, parts)
    y = _whole(t, parts, y + 14)
    y = _cutover(t, parts, y + 14)
    y = _pauses(t, parts, y + 14)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y + 10}" '
            f'viewBox="0 0 {WIDTH} {y + 10}" style="{FONT}" role="img">'
            f"<title>{_e(f'swap {t.swap_id} timeline')}</title>"
            + "".join(parts) + "</svg>")


def _header(t: Timeline, out: list[str]) -> int:
    color = OUTCOME_COLORS.get(t.decision, "#888")
    outcome = t.decision.replace("_", " ").upper()
    if t.running_in:
        outcome += f" (in {t.running_in})"
    out.append(_text(10, 22, t.title, size=16, weight="bold"))
    out.append(f'<g class="outcome" data-decision="{_e(t.decision)}">'
               f'<rect x="10" y="34" width="{len(outcome) * 9 + 16}" height="22" rx="4" '
               f'fill="{color}"/>' + _text(18, 50, outcome, fill="#fff", weight="bold")
               + "</g>")
    out.append(_text(len(outcome) * 9 + 36, 50, t.reason))
    x = 10
    for name, value in t.figures:
        label = f"{name} {value}"
        bad = value not in ("0", "unknown")
        out.append(_text(x, 76, label, cls="figure", data={"name": name},
                         fill="#de2d26" if bad else "#222", weight="bold" if bad else None))
        x += len(label) * 7 + 18
    out.append(_text(10, 96, "; ".join(filter(None, (t.clients, t.canary))), cls="figure",
                     data={"name": "clients"}))
    return 96


def _whole(t: Timeline, out: list[str], y: int) -> int:
    out.append(_text(10, y + 12, f"whole swap: {fmt_ms(t.total_ms)}", weight="bold"))
    y += 20
    out.append(_text(10, y + 17, "phases"))
    out.append(_bar(t.phases, 0.0, t.total_ms, y, "phases"))
    if t.pause_window_ms is not None:
        x = LEFT + t.pause_window_ms[0] / t.total_ms * PLOT
        out.append(f'<line class="pause-mark" x1="{x:.3f}" x2="{x:.3f}" y1="{y - 4}" '
                   f'y2="{y + BAR + 4}" stroke="#de2d26" stroke-width="2"><title>server pause '
                   f'at +{fmt_ms(t.pause_window_ms[0])}</title></line>')
    y = _axis(t.total_ms, y + BAR, out)
    return _legend(t, out, y + 6)


def _cutover(t: Timeline, out: list[str], y: int) -> int:
    names = [p.name for p in t.phases]
    inside = [i for i, n in enumerate(names) if n in CUTOVER]
    if not inside:
        return y
    chosen = t.phases[inside[0]:inside[-1] + 1]
    start, span = chosen[0].start_ms, sum(p.ms for p in chosen)
    if span <= 0:
        return y
    out.append(_text(10, y + 12, f"cutover, zoomed: {fmt_ms(span)} from +{fmt_ms(start)} "
                     "(ticks from its start)", weight="bold"))
    y += 20
    out.append(_text(10, y + 17, "phases"))
    out.append(_bar(chosen, start, span, y, "cutover"))
    y += BAR + 6
    window = t.pause_window_ms
    if window is not None and start <= window[0] <= start + span:
        x = LEFT + (window[0] - start) / span * PLOT
        w = max(min(window[1], start + span) - window[0], 0.0) / span * PLOT
        out.append(_text(10, y + 13, "server pause"))
        out.append(f'<rect class="pause-server" x="{x:.3f}" y="{y}" width="{max(w, 1.0):.3f}" '
                   f'height="16" fill="#de2d26"><title>server pause {fmt_ms(window[1] - window[0])}'
                   f" at +{fmt_ms(window[0])}</title></rect>")
        out.append(_text(x + max(w, 1.0) + 6, y + 13, fmt_ms(window[1] - window[0])))
        y += 22
    return _axis(span, y - 6, out)


def _pauses(t: Timeline, out: list[str], y: int) -> int:
    rows: list[tuple[str, float | None, str]] = [
        ("server pause", t.server_pause_ms, "pause-server-total"),
        ("client pause", t.client_pause_ms, "pause-client")]
    if t.rollback is not None:
        rows += [(f"rollback ({t.rollback[0]})", t.rollback[1], "rollback"),
                 ("traffic flowing after", t.rollback[2], "rollback-flowing")]
    scale = max((v for _, v, _ in rows if v), default=0.0)
    out.append(_text(10, y + 12, "pauses, on one scale (client pause: the largest gap a canary "
                     "consumer saw during the cutover)", weight="bold"))
    y += 20
    for label, value, cls in rows:
        out.append(_text(10, y + 13, label))
        stages = t.pause_stages_ms if cls == "pause-server-total" and value is not None else ()
        if value is None:
            out.append(_text(LEFT, y + 13, "not in the report yet (the swap is running)"
                             if t.pending else "not measured for this swap", fill="#888"))
        else:
            w = value / scale * PAUSE_PLOT if scale else 0.0
            out.append(_pause_bar(cls, value, w, y, stages=stages, scale=scale))
            out.append(_text(LEFT + w + 6, y + 13, fmt_ms(value)))
        y += 22
        if stages:
            out.append(_text(LEFT, y + 8, "stages: " + ", ".join(
                f"{name} {fmt_ms(ms)}" for name, ms in stages), size=10, fill="#666"))
            y += 16
    return y


def _pause_bar(cls: str, value: float, w: float, y: int, *,
               stages: tuple[tuple[str, float], ...], scale: float) -> str:
    color = {"pause-client": "#3182bd", "pause-server-total": "#de2d26"}.get(cls, "#e6a100")
    inner = f'<rect x="{LEFT}" y="{y}" width="{w:.3f}" height="16" fill="{color}"/>'
    x = float(LEFT)
    for i, (name, ms) in enumerate(stages):
        sw = ms / scale * PAUSE_PLOT
        shade = ("#a50f15", "#de2d26", "#fb6a4a", "#fcae91")[i % 4]
        inner += (f'<rect class="stage" data-stage="{_e(name)}" x="{x:.3f}" y="{y}" '
                  f'width="{sw:.3f}" height="16" fill="{shade}"><title>{_e(name)} '
                  f"{fmt_ms(ms)}</title></rect>")
        x += sw
    return (f'<g class="{cls}" data-ms="{value}"><title>{_e(cls)} {fmt_ms(value)}</title>'
            f"{inner}</g>")


def _bar(phases: Iterable[Phase], start: float, span: float, y: int, group: str) -> str:
    rects = []
    for p in phases:
        x = LEFT + (p.start_ms - start) / span * PLOT
        w = p.ms / span * PLOT
        rects.append(f'<rect class="phase" data-phase="{_e(p.name)}" data-ms="{p.ms}" '
                     f'x="{x:.3f}" y="{y}" width="{w:.3f}" height="{BAR}" '
                     f'fill="{COLORS.get(p.name, "#bbb")}" stroke="#fff" stroke-width="0.5">'
                     f"<title>{_e(p.name)} {fmt_ms(p.ms)} (+{fmt_ms(p.start_ms)})</title></rect>")
        label = p.name.replace("_", " ")
        if w > len(label) * 7 + 8:
            rects.append(_text(x + 4, y + 17, label))
    return f'<g class="{group}">' + "".join(rects) + "</g>"


def _axis(span: float, y: int, out: list[str]) -> int:
    step = _nice_step(span / 6)
    tick = 0.0
    while tick <= span + 1e-9:
        x = LEFT + tick / span * PLOT
        out.append(f'<line x1="{x:.3f}" x2="{x:.3f}" y1="{y}" y2="{y + 5}" stroke="#666"/>')
        out.append(_text(x, y + 17, f"+{fmt_ms(tick)}", anchor="middle", size=10,
                         fill="#666"))
        tick += step
    return y + 22


def _nice_step(raw: float) -> float:
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _legend(t: Timeline, out: list[str], y: int) -> int:
    per_column = math.ceil(len(t.phases) / 3)
    for i, p in enumerate(t.phases):
        x, row = LEFT + (i // per_column) * (PLOT // 3), y + (i % per_column) * 16
        share = p.ms / t.total_ms * 100
        out.append(f'<rect x="{x}" y="{row}" width="10" height="10" '
                   f'fill="{COLORS.get(p.name, "#bbb")}"/>')
        out.append(_text(x + 14, row + 9, f"{p.name} {fmt_ms(p.ms)} ({share:.1f}%)",
                         cls="legend", data={"phase": p.name}))
    return y + per_column * 16


def _text(x: float, y: float, text: str, *, cls: str | None = None,
          data: Mapping[str, str] | None = None, size: int | None = None,
          fill: str | None = None, weight: str | None = None, anchor: str | None = None) -> str:
    attrs = [f'x="{x:.1f}"', f'y="{y:.1f}"']
    for name, value in (("class", cls), ("font-size", size), ("fill", fill),
                        ("font-weight", weight), ("text-anchor", anchor)):
        if value is not None:
            attrs.append(f'{name}="{_e(str(value))}"')
    attrs += [f'data-{k}="{_e(v)}"' for k, v in (data or {}).items()]
    return f"<text {' '.join(attrs)}>{_e(text)}</text>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


# ----- the page -------------------------------------------------------------------------

def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained page: the SVG and the same numbers as tables (no script, no
    network: it opens from a file, a mail or a ticket)."""
    t = timeline(report)
    svg = render_svg(report)
    phases = "".join(f"<tr><td>{_e(p.name)}</td><td>+{fmt_ms(p.start_ms)}</td>"
                     f"<td>{fmt_ms(p.ms)}</td></tr>" for p in t.phases)
    pauses = [("server pause", fmt_ms(t.server_pause_ms)),
              *((f"  {name}", fmt_ms(ms)) for name, ms in t.pause_stages_ms),
              ("client pause (largest canary gap)", fmt_ms(t.client_pause_ms))]
    if t.rollback is not None:
        pauses += [(f"rollback ({t.rollback[0]})", fmt_ms(t.rollback[1])),
                   ("traffic flowing after", fmt_ms(t.rollback[2]))]
    figures = [*t.figures, ("", t.clients), ("", t.canary)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        f"<title>{_e(f'swap {t.swap_id}: {t.decision}')}</title><style>"
        "body{font:14px system-ui,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;margin:8px 0 16px}"
        "td,th{padding:2px 12px 2px 0;text-align:left}td+td{text-align:right}"
        "</style></head><body>\n"
        f"<h1>{_e(t.title)}</h1>\n{svg}\n"
        "<h2>Phases</h2><table><tr><th>phase</th><th>start</th><th>duration</th></tr>"
        f"{phases}</table>\n<h2>Pauses</h2>{_table(pauses)}\n"
        f"<h2>Outcome</h2><p>{_e(t.decision)}{_e(': ' + t.reason if t.reason else '')}</p>"
        f"{_table(figures)}\n</body></html>\n")


def _table(rows: Iterable[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td></tr>"
                               for a, b in rows) + "</table>"
