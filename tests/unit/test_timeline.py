"""The swap timeline renderer (swap/timeline.py) on reports swapctld filed in a real demo
run (tests/data/reports: one committed swap, one rolled back by an operator's abort)."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from swapctl.errors import UsageError
from swapctl.swap import timeline

DATA = Path(__file__).parent.parent / "data" / "reports"
SVG = "{http://www.w3.org/2000/svg}"


def _report(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


@pytest.fixture(params=["committed", "rolled_back"])
def report(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _report(request.param)


def _svg(report: dict[str, Any]) -> ET.Element:
    return ET.fromstring(timeline.render_svg(report))


def _group(root: ET.Element, cls: str) -> ET.Element:
    found = [g for g in root.iter(f"{SVG}g") if g.get("class") == cls]
    assert len(found) == 1, f"one <g class={cls}>"
    return found[0]


def _phase_rects(root: ET.Element, group: str) -> list[ET.Element]:
    return [r for r in _group(root, group).iter(f"{SVG}rect") if r.get("class") == "phase"]


def _texts(root: ET.Element, cls: str) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def test_one_rect_per_phase_in_order_with_widths_proportional(report: dict[str, Any]) -> None:
    rects = _phase_rects(_svg(report), "phases")
    assert [r.get("data-phase") for r in rects] == [p["phase"] for p in report["phases"]]
    total = sum(p["ms"] for p in report["phases"])
    widths = [float(r.get("width", "nan")) for r in rects]
    for width, phase in zip(widths, report["phases"], strict=True):
        assert width == pytest.approx(phase["ms"] / total * timeline.PLOT, abs=0.002)
    xs = [float(r.get("x", "nan")) for r in rects]
    assert xs[0] == timeline.LEFT
    for i in range(1, len(rects)):  # end to end, no gap, no overlap
        assert xs[i] == pytest.approx(xs[i - 1] + widths[i - 1], abs=0.003)
    assert sum(widths) == pytest.approx(timeline.PLOT, abs=0.01)


def test_the_figures_and_the_outcome_appear(report: dict[str, Any]) -> None:
    root = _svg(report)
    shown = _texts(root, "figure")
    for name, figure in report["figures"].items():
        assert f"{name.replace('_', ' ')} {figure['value']}" in shown
    conns = report["connections"]
    assert any(f"{conns['moved']} moved" in s and f"{report['canary']['sent']} sent" in s
               for s in shown)
    outcome = _group(root, "outcome")
    assert outcome.get("data-decision") == report["decision"]
    assert report["decision"].replace("_", " ").upper() in "".join(outcome.itertext())


def test_the_cutover_zoom_places_the_server_pause_in_releasing(report: dict[str, Any]) -> None:
    root = _svg(report)
    zoomed = _phase_rects(root, "cutover")
    names = [r.get("data-phase") for r in zoomed]
    assert names == ["releasing", "adopting", "verifying"]
    span = sum(float(r.get("data-ms", "nan")) for r in zoomed)
    pause = next(r for r in root.iter(f"{SVG}rect") if r.get("class") == "pause-server")
    released = next(r for r in report["journal"] if r.get("event") == "released")
    held_ms = (released["resumed_ns"] - released["stopped_ns"]) / 1e6
    assert float(pause.get("width", "nan")) == pytest.approx(
        max(held_ms / span * timeline.PLOT, 1.0), abs=0.002)
    releasing = zoomed[0]
    start, end = float(releasing.get("x", "nan")), float(releasing.get("x", "nan")) + float(
        releasing.get("width", "nan"))
    assert start <= float(pause.get("x", "nan")) <= end, "the relay stops reading in releasing"


def test_pauses_on_one_scale_and_the_rollback_when_there_was_one(
        report: dict[str, Any]) -> None:
    root = _svg(report)
    bars = {g.get("class"): float(g.get("data-ms", "nan")) for g in root.iter(f"{SVG}g")
            if g.get("data-ms")}
    assert bars["pause-server-total"] == report["server_pause_ms"]
    assert bars["pause-client"] == report["client_pause_ms"]
    stages = [r.get("data-stage") for r in root.iter(f"{SVG}rect") if r.get("data-stage")]
    assert stages == list(report["pause_stages_ms"])
    if report["rollback"] is None:
        assert "rollback" not in bars
    else:
        assert bars["rollback"] == report["rollback"]["ms"]
        assert bars["rollback-flowing"] == report["rollback"]["traffic_flowing_ms"]


def test_the_html_page_is_self_contained(report: dict[str, Any]) -> None:
    page = timeline.render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert re.findall(r"(?:https?:)?//[\w.-]+", page) == ["http://www.w3.org"], "svg xmlns only"
    svg = page[page.index("<svg"):page.index("</svg>") + len("</svg>")]
    assert len(_phase_rects(ET.fromstring(svg), "phases")) == len(report["phases"])
    for phase in report["phases"]:
        assert f"<td>{phase['phase']}</td>" in page


def test_a_swap_still_running_is_drawn_from_its_journal() -> None:
    full = _report("committed")
    moves = [r for r in full["journal"] if "from" in r][:5]  # idle..verifying: in verifying
    running = {"swap_id": full["swap_id"], "decision": "running", "journal": moves}
    t = timeline.timeline(running)
    assert [p.name for p in t.phases] == [r["to"] for r in moves[:-1]]
    for phase, a, b in zip(t.phases, moves, moves[1:], strict=False):
        assert phase.ms == pytest.approx((b["at"] - a["at"]) * 1000)
    assert t.running_in == moves[-1]["to"]
    begin = moves[0]
    assert f"{begin['old_release']} -> {begin['release']}" in t.title
    assert begin["service"] in t.title
    adopted = next(r for r in moves if "server_pause_ms" in r)
    assert t.server_pause_ms == adopted["server_pause_ms"]
    root = _svg(running)
    assert "RUNNING (in verifying)" in "".join(_group(root, "outcome").itertext())
    shown = _texts(root, "figure")
    assert not any("unknown" in s for s in shown), "no figures yet is not 'unknown'"
    assert any("once the swap has ended" in s for s in shown)


@pytest.mark.parametrize("report", [
    {"swap_id": "swap-x", "decision": "running", "journal": []},
    {"swap_id": "swap-x", "decision": "failed", "phases": []},
    {"swap_id": "swap-x", "decision": "failed", "phases": [{"phase": "starting", "ms": 0}]},
])
def test_no_timing_is_a_usage_error_that_says_so(report: dict[str, Any]) -> None:
    with pytest.raises(timeline.NoTiming, match="swap swap-x has no phase timings") as caught:
        timeline.render_html(report)
    assert isinstance(caught.value, UsageError)
    assert "swapctl report swap-x" in str(caught.value)


def test_unknown_figures_missing_pauses_and_markup_in_the_reason() -> None:
    report = copy.deepcopy(_report("committed"))
    report["figures"]["disconnects"]["value"] = None
    report["server_pause_ms"] = report["client_pause_ms"] = None  # e.g. a restart
    report["pause_stages_ms"] = {}
    report["reason"] = "relay said <b>&\"no\"</b>"
    root = _svg(report)
    assert "disconnects unknown" in _texts(root, "figure")
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert texts.count("not measured for this swap") == 2
    assert 'relay said <b>&"no"</b>' in texts
    assert "<b>" not in timeline.render_html(report)
