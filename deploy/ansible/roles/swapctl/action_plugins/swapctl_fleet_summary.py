"""Action swapctl_fleet_summary: the fleet summary, written on the controller.

How it works: it runs in the controller's ansible-playbook process (an action plugin, no
module shipped to a host), reads every host's record (the fact swapctl_fleet_record set
by the role's swap and drill tasks) from hostvars, and writes into `dir`:
summary.json (every host of `hosts` in inventory order, with its outcome and what that
means), junit.xml (one test case per host) and hosts/HOST.json (the record with the full
`swapctl ... -o json` report). A host with no record was not reached: the play stopped
before its batch, so nothing ran on it. The role calls it after every batch with
run_once, so the files always describe the fleet as it is when the play ends or stops.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

from ansible.plugins.action import ActionBase

MEANING = {
    "swapped": "swapped, committed and proven clean (swapctl exit 0)",
    "already": "already serving the release; no swap run",
    "rolled_back": "the swap failed and swapctl rolled it back (exit 1): the previous "
                   "release serves",
    "failed": "the swap ended in a failure that was not a clean rollback",
    "rollback_failed": "the swap failed and its rollback failed too (exit 6): look at "
                       "the host now",
    "error": "swapctl could not run (see rc and stderr)",
    "rolled_back_by_fleet": "swapped, then rolled back because a later host failed "
                            "(swapctl_rollback_on_failure)",
    "fleet_rollback_failed": "swapped; its rollback after a later host's failure failed",
    "not_reached": "not reached: the play stopped before this host; untouched",
    "passed": "drill passed",
    "drill_failed": "drill failed (its report names the step or gate)",
}


def summarize(records: dict[str, Any], hosts: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Every host of HOSTS with its record, or not_reached; the full reports stay out."""
    rows = []
    for host in hosts:
        record = records.get(host) or {"host": host, "outcome": "not_reached", "ok": True}
        row = {k: v for k, v in record.items() if k not in ("report", "rollback_argv")}
        if isinstance(row.get("fleet_rollback"), dict):
            row["fleet_rollback"] = {k: v for k, v in row["fleet_rollback"].items()
                                     if k != "report"}
        rows.append({**row, "meaning": MEANING.get(row["outcome"], row["outcome"]),
                     "report_file": f"hosts/{host}.json" if host in records else None})
    failed = [r["host"] for r in rows if not r["ok"]]
    return {**meta, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ok": not failed, "failed_hosts": failed,
            "stopped_at": failed[0] if failed and meta.get("kind") == "rollout" else None,
            "counts": dict(Counter(r["outcome"] for r in rows)), "hosts": rows}


def junit(summary: dict[str, Any]) -> str:
    """SUMMARY as JUnit XML: one test case per host."""
    kind, service = summary.get("kind"), summary.get("service")
    suite = ET.Element("testsuite", name=f"swapctl {kind} {service}",
                       tests=str(len(summary["hosts"])))
    counts: Counter[str] = Counter()
    for row in summary["hosts"]:
        case = ET.SubElement(suite, "testcase", name=row["host"],
                             classname=f"swapctl.{kind}.{service}",
                             time=str(row.get("seconds") or 0))
        text = f"{row['outcome']}: {row['meaning']}" + \
            (f" ({row['reason']})" if row.get("reason") else "")
        if row["outcome"] == "not_reached":
            ET.SubElement(case, "skipped", message=text)
            counts["skipped"] += 1
        elif not row["ok"]:
            tag = "error" if row["outcome"] == "error" else "failure"
            ET.SubElement(case, tag, message=text).text = row.get("stderr") or ""
            counts["errors" if tag == "error" else "failures"] += 1
        ET.SubElement(case, "system-out").text = text
    for key in ("failures", "errors", "skipped"):
        suite.set(key, str(counts[key]))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".swapctl-")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        out_dir, hosts = str(args["dir"]), list(args["hosts"])
        hostvars = (task_vars or {})["hostvars"]
        records = {h: hostvars[h]["swapctl_fleet_record"] for h in hosts
                   if "swapctl_fleet_record" in hostvars[h]}
        summary = summarize(records, hosts, dict(args.get("meta") or {}))
        os.makedirs(os.path.join(out_dir, "hosts"), exist_ok=True)
        for host, record in records.items():
            _write(os.path.join(out_dir, "hosts", f"{host}.json"),
                   json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        _write(os.path.join(out_dir, "summary.json"),
               json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        _write(os.path.join(out_dir, "junit.xml"), junit(summary))
        result.update(changed=True, dir=out_dir, ok=summary["ok"],
                      counts=summary["counts"], failed_hosts=summary["failed_hosts"])
        return result
