"""Evidence of a run, on disk: the journal, a summary, JUnit XML and Prometheus metrics.

    STATE/drills/RUN_ID/journal.json     the whole run (releases, decisions, timings)
    STATE/drills/RUN_ID/report.json      the summary: verdict, values, gates, step times
    STATE/drills/RUN_ID/junit.xml        one testcase per step (CI and dashboards)
    STATE/drills/RUN_ID/metrics.prom     Prometheus textfile of this run
    STATE/drills/textfile/swapctl_drill_SERVICE.prom   the latest drill of the service,
                                         for node_exporter's textfile collector
    STATE/playbooks/RUN_ID/...           the same for runs that are not drills (no .prom)

RUN_ID = UTC time, playbook, service and a random suffix: names sort by time.
"""

from __future__ import annotations

import json
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from swapctl.config.load import Config
from swapctl.daemon.paths import read_json, write_json

TEXTFILE = "textfile"


def runs_dir(config: Config, drill: bool) -> Path:
    return Path(config.daemon.state_dir) / ("drills" if drill else "playbooks")


def new_run_id(playbook: str, service: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{playbook}-{service}-{secrets.token_hex(3)}"


def summary(data: dict[str, Any]) -> dict[str, Any]:
    result = data.get("result") or {}
    releases = data.get("releases") or {}
    steps = [{k: s.get(k) for k in ("section", "index", "name", "kind", "result", "seconds",
                                     "reason")} for s in data.get("steps", [])]
    failed = next((s for s in steps if s["result"] not in ("passed", "skipped")), None)
    gates = list(data.get("gates", []))
    failed_gate = None
    if failed is not None:  # every step is a gate on the run; gate steps compare values
        check: dict[str, Any] = next((g for g in gates if g.get("step") == failed["name"]), {})
        failed_gate = {"step": failed["name"], "kind": failed["kind"],
                       "result": failed["result"], "reason": failed["reason"],
                       **{k: check.get(k) for k in ("value", "measured", "op", "threshold")
                          if check}}
    return {
        "run_id": data.get("run_id"), "playbook": data.get("playbook"),
        "kind": data.get("kind"), "service": data.get("service"),
        "state": data.get("state"), "ok": bool(result.get("ok")),
        "reason": result.get("reason"), "started": data.get("started"),
        "ended": data.get("ended"), "seconds": result.get("seconds"),
        "baseline": (releases.get("baseline") or {}).get("name"),
        "candidate": (releases.get("candidate") or {}).get("name"),
        "values": data.get("values", {}), "gates": gates,
        "failed_step": failed, "failed_gate": failed_gate,
        "steps": steps, "restore_failed": bool(result.get("restore_failed")),
    }


def write_all(run_dir: Path, data: dict[str, Any], config: Config, drill: bool
              ) -> dict[str, str]:
    """Write the journal, summary, JUnit XML and (drills) metrics; returns their paths."""
    files = {"journal": run_dir / "journal.json", "report": run_dir / "report.json",
             "junit": run_dir / "junit.xml"}
    write_json(files["journal"], data)
    write_json(files["report"], summary(data))
    _atomic(files["junit"], junit_xml(data))
    if drill:
        files["metrics"] = run_dir / "metrics.prom"
        write_metrics(files["metrics"], data)
        latest = runs_dir(config, True) / TEXTFILE / f"swapctl_drill_{data.get('service')}.prom"
        latest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_metrics(latest, data)
        files["textfile"] = latest
    return {k: str(v) for k, v in files.items()}


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def junit_xml(data: dict[str, Any]) -> str:
    """A testsuite for the run, a testcase per step (skipped ones marked skipped)."""
    steps = data.get("steps", [])
    result = data.get("result") or {}
    name = f"{data.get('playbook')}.{data.get('service')}"
    suites = ET.Element("testsuites", name="swapctl playbook")
    failures = sum(1 for s in steps if s.get("result") == "failed")
    errors = sum(1 for s in steps if s.get("result") in ("timed_out", "interrupted"))
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(steps)),
                          failures=str(failures), errors=str(errors),
                          skipped=str(sum(1 for s in steps if s.get("result") == "skipped")),
                          time=f"{float(result.get('seconds') or 0):.3f}",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S",
                                                  time.gmtime(float(data.get("started") or 0))))
    props = ET.SubElement(suite, "properties")
    for key in ("run_id", "kind", "state"):
        ET.SubElement(props, "property", name=key, value=str(data.get(key)))
    for role, release in (data.get("releases") or {}).items():
        ET.SubElement(props, "property", name=role,
                      value=f"{release.get('name')} sha256:{release.get('command_sha256')}")
    if data.get("state") in ("refused", "killed", "watchdog"):
        case = ET.SubElement(suite, "testcase", classname=name, name="run", time="0")
        ET.SubElement(case, "failure" if data["state"] != "refused" else "skipped",
                      message=str(result.get("reason")))
    for step in steps:
        case = ET.SubElement(suite, "testcase", classname=f"{name}.{step.get('section')}",
                             name=f"{step.get('index')}: {step.get('name')}",
                             time=f"{float(step.get('seconds') or 0):.3f}")
        outcome = step.get("result")
        if outcome == "failed":
            ET.SubElement(case, "failure", message=str(step.get("reason")),
                          type="gate" if step.get("kind") == "gate" else "step")
        elif outcome in ("timed_out", "interrupted"):
            ET.SubElement(case, "error", message=str(step.get("reason")), type=str(outcome))
        elif outcome == "skipped":
            ET.SubElement(case, "skipped", message=str(step.get("reason")))
    suite.set("tests", str(len(suite.findall("testcase"))))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_metrics(path: Path, data: dict[str, Any]) -> None:
    """Prometheus textfile: success, rollback seconds, lost messages, and when."""
    registry = CollectorRegistry()
    labels = ["service", "playbook"]
    values = data.get("values") or {}
    result = data.get("result") or {}
    key = (str(data.get("service")), str(data.get("playbook")))

    def gauge(name: str, doc: str, value: float | None) -> None:
        g = Gauge(name, doc, labels, registry=registry)
        g.labels(*key).set(float("nan") if value is None else value)

    gauge("swapctl_drill_success", "1 if the last drill passed every step and gate, else 0",
          1.0 if result.get("ok") else 0.0)
    gauge("swapctl_drill_rollback_seconds", "Rollback time of the last drill: request until "
          "the baseline served again (NaN: not measured)", values.get("rollback_seconds"))
    gauge("swapctl_drill_lost_messages", "Messages the independent load session lost in the "
          "last drill (NaN: not measured)", values.get("lost"))
    gauge("swapctl_drill_duration_seconds", "Wall time of the last drill",
          result.get("seconds"))
    gauge("swapctl_drill_last_run_timestamp_seconds", "When the last drill ended (Unix time)",
          data.get("ended"))
    refused = Gauge("swapctl_drill_refused", "1 if the last drill was refused by a window",
                    labels, registry=registry)
    refused.labels(*key).set(1.0 if data.get("state") == "refused" else 0.0)
    write_to_textfile(str(path), registry)


def list_runs(config: Config, drill: bool, service: str | None = None, limit: int = 20
              ) -> list[dict[str, Any]]:
    """Summaries of past runs, newest first (the running ones too)."""
    root = runs_dir(config, drill)
    rows = []
    for path in sorted(root.glob("*/journal.json"), reverse=True):
        data = read_json(path)
        if data is None or (service and data.get("service") != service):
            continue
        rows.append(summary(data))
        if len(rows) >= limit:
            break
    return rows


def render_text(report: dict[str, Any]) -> str:
    values = report.get("values") or {}
    head = (f"{report['playbook']} {report['service']} ({report['run_id']}): "
            f"{str(report['state']).upper()}")
    lines = [head, f"  {report.get('reason')}"]
    if report.get("baseline"):
        lines.append(f"  baseline {report['baseline']}, candidate {report['candidate']}")
    for step in report.get("steps", []):
        mark = {"passed": "ok", "skipped": "--"}.get(str(step["result"]), "XX")
        line = f"  {mark} {step['section']:<7} {step['name']:<34} {step['result']:<11} " \
               f"{float(step.get('seconds') or 0):7.3f}s"
        if step.get("reason") and step["result"] != "skipped":
            line += f"  {step['reason']}"
        lines.append(line)
    for gate in report.get("gates", []):
        lines.append(f"  gate {gate['value']} {gate['measured']} {gate['op']} "
                     f"{gate['threshold']:g}: {'ok' if gate['ok'] else 'FAILED'}")
    if values:
        lines.append("  values: " + ", ".join(f"{k}={v:g}" if isinstance(v, int | float)
                                             else f"{k}={v}" for k, v in values.items()))
    return "\n".join(lines)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
