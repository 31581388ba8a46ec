"""deploy/grafana/swapctl.json is a valid Grafana dashboard whose queries name only the
metrics swapctl exports: swapctld's, read from DaemonMetrics' own registry, and the
drills', read from the textfile a drill writes (so renaming a metric without updating
the dashboard fails here)."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.daemon.metrics import DaemonMetrics
from swapctl.playbook.reports import write_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "swapctl.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"stat", "timeseries", "table", "gauge", "bargauge", "heatmap", "text"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created")}
# PromQL words that look like identifiers but are not metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}


def drill_families() -> dict[str, str]:
    """name -> type of every metric in the textfile a drill writes (written for real)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "swapctl_drill_market_data.prom"
        write_metrics(path, {"service": "market_data", "playbook": "rollback-drill",
                             "values": {"rollback_seconds": 0.02, "lost": 0},
                             "result": {"ok": True, "seconds": 15.0}, "ended": 1.0})
        text = path.read_text()
    return dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE))


def families() -> dict[str, str]:
    """name -> type of every metric family swapctl exports (swapctld and drills)."""
    found = {f.name: f.type for f in DaemonMetrics().registry.collect()}
    drills = drill_families()
    assert drills and all(name.startswith("swapctl_drill_") for name in drills), drills
    return {**found, **drills}


def exported() -> set[str]:
    """Every series name swapctl exposes, by metric type."""
    names: set[str] = set()
    for name, kind in families().items():
        names.update(name + suffix for suffix in SUFFIXES[kind])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label
    matchers, ranges, grouping lists, $variables and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)
    found = re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", text)
    return {name for name, call in found if not call and name.lower() not in KEYWORDS}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its own


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            text = query["query"] if isinstance(query, dict) else query
            yield f"variable {var['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1",
                                                    text)


def test_the_name_extraction_catches_unknown_and_ignores_promql_words() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, service) (rate(swapctl_x_bucket'
            '{service=~"$service", le!="a b"}[$__rate_interval]))) / up or vector(0)')
    assert metric_names(expr) == {"swapctl_x_bucket", "up"}
    assert metric_names("time() - swapctl_daemon_start_time_seconds offset 5m") == {
        "swapctl_daemon_start_time_seconds"}
    assert "swapctl_swaps_total" in exported() and "swapctl_swaps" not in exported()
    assert "swapctl_swap_pause_seconds_bucket" in exported()


def test_every_query_names_only_exported_metrics() -> None:
    known = exported()
    checked = 0
    for where, expr in queries(load()):
        names = metric_names(expr)
        assert names, f"{where}: {expr!r} names no metric"
        assert names <= known, f"{where}: {sorted(names - known)} are not exported by swapctl"
        checked += 1
    assert checked >= 10


def test_the_dashboard_covers_every_metric_family() -> None:
    used = set().union(*(metric_names(expr) for _, expr in queries(load())))
    missing = {f for f in families() if not any(u.startswith(f) for u in used)}
    assert not missing, f"metrics swapctl exports that no panel shows: {sorted(missing)}"


def test_the_dashboard_is_a_valid_grafana_model() -> None:
    d = load()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(d):
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys() and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip()


@pytest.mark.parametrize("where", ["panel", "variable"])
def test_an_unknown_metric_is_reported(where: str) -> None:
    d = load()
    if where == "panel":
        target = next(p for p in panels(d) if p["type"] != "row")["targets"][0]
        target["expr"] = "sum(swapctl_drills_total)"
    else:
        variables = [v for v in d["templating"]["list"] if v["type"] == "query"]
        variables[0]["query"]["query"] = "label_values(swapctl_nope, service)"
    bad = [where for where, expr in queries(d) if not metric_names(expr) <= exported()]
    assert len(bad) == 1 and bad[0].startswith(where)
