"""Reports of side-by-side runs: text for people, JSON for tools, JUnit XML for CI.

One `DiffReport` per scenario run. Rendering is pure: the CLI decides where it goes.
The verdict is only ever about bytes; timings are reported but never compared.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swapctl.diff.align import Difference, Item
from swapctl.diff.compare import Comparison
from swapctl.diff.explain import describe, explain, headline

DEFAULT_EXPLAINED = 5


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What was run: the scenario, its seed, the two relays and how long it took."""

    scenario: str
    seed: int
    old: str
    new: str
    domain_byte: int
    seconds: float = 0.0
    notes: tuple[str, ...] = ()  # relay exits, stalls: facts, never verdicts


@dataclass(frozen=True, slots=True)
class DiffReport:
    info: RunInfo
    comparison: Comparison

    @property
    def equivalent(self) -> bool:
        return self.comparison.equivalent


def render_text(reports: Sequence[DiffReport], explained: int = DEFAULT_EXPLAINED) -> str:
    """A summary per run, then up to `explained` differences in full."""
    out: list[str] = []
    for report in reports:
        info, cmp = report.info, report.comparison
        verdict = "EQUIVALENT" if report.equivalent else "DIFFERENT"
        out.append(f"{verdict}  scenario {info.scenario} (seed {info.seed}, mode "
                   f"{cmp.mode.value}): {cmp.frames_compared} frames compared in "
                   f"{info.seconds:.2f}s")
        out.append(f"  old: {info.old}")
        out.append(f"  new: {info.new}")
        for client in cmp.clients:
            counts = ", ".join(f"{n} {c.value}" for c, n in client.counts) or "identical"
            out.append(f"  {client.client:<16} old {client.old_frames:>7} frames, new "
                       f"{client.new_frames:>7} frames: {counts}")
            if client.first_byte_difference is not None:
                out.append(f"  {'':<16} raw bytes first differ at byte "
                           f"{client.first_byte_difference}")
        out.extend(f"  suppressed: {s.count} {s.what} ({s.client}): {s.why}"
                   for s in cmp.suppressed)
        out.extend(f"  note: {n}" for n in info.notes)
        diffs = [d for c in cmp.clients for d in c.differences]
        for diff in diffs[:explained]:
            out.append("")
            out.append(explain(diff))
        if len(diffs) > explained:
            out.append(f"\n  ... {sum(c.total for c in cmp.clients) - explained} more "
                       "differences (-o json lists them)")
        out.append("")
    return "\n".join(out)


def _item(item: Item | None) -> dict[str, Any] | None:
    if item is None:
        return None
    return {"frame": item.frame, "offset": item.offset, "gap": item.gap,
            "length": len(item.data), "decoded": describe(item), "hex": item.data[:4096].hex()}


def _difference(diff: Difference) -> dict[str, Any]:
    return {"category": diff.category.value, "client": diff.client, "lane": diff.lane,
            "detail": diff.detail, "old": _item(diff.old), "new": _item(diff.new)}


def to_json(reports: Sequence[DiffReport]) -> dict[str, Any]:
    runs = []
    for report in reports:
        info, cmp = report.info, report.comparison
        runs.append({
            "scenario": info.scenario, "seed": info.seed, "old": info.old, "new": info.new,
            "domain_byte": info.domain_byte, "mode": cmp.mode.value,
            "equivalent": report.equivalent, "seconds": round(info.seconds, 4),
            "frames_compared": cmp.frames_compared,
            "totals": {c.value: n for c, n in cmp.totals().items()},
            "clients": [{
                "client": c.client, "old_frames": c.old_frames, "new_frames": c.new_frames,
                "equivalent": c.equivalent, "counts": {k.value: n for k, n in c.counts},
                "first_byte_difference": c.first_byte_difference,
                "differences": [_difference(d) for d in c.differences],
            } for c in cmp.clients],
            "suppressed": [{"what": s.what, "count": s.count, "why": s.why, "client": s.client}
                           for s in cmp.suppressed],
            "notes": list(info.notes),
        })
    return {"equivalent": all(r.equivalent for r in reports), "runs": runs}


def to_junit(reports: Sequence[DiffReport], explained: int = DEFAULT_EXPLAINED) -> str:
    """JUnit XML: a testsuite per scenario run, a testcase per client."""
    root = ET.Element("testsuites", name="swapctl diff")
    total = failures = 0
    for report in reports:
        info, cmp = report.info, report.comparison
        suite = ET.SubElement(root, "testsuite", name=f"diff.{info.scenario}.seed{info.seed}",
                              tests=str(len(cmp.clients)),
                              failures=str(sum(not c.equivalent for c in cmp.clients)),
                              errors="0", skipped="0", time=f"{info.seconds:.3f}")
        props = ET.SubElement(suite, "properties")
        for name, value in (("old", info.old), ("new", info.new), ("mode", cmp.mode.value),
                            ("seed", str(info.seed)), ("domain_byte", str(info.domain_byte))):
            ET.SubElement(props, "property", name=name, value=value)
        for client in cmp.clients:
            total += 1
            case = ET.SubElement(suite, "testcase", classname=f"swapctl.diff.{info.scenario}",
                                 name=client.client, time="0")
            if client.equivalent:
                continue
            failures += 1
            counts = ", ".join(f"{n} {c.value}" for c, n in client.counts)
            first = client.differences[0] if client.differences else None
            fail = ET.SubElement(case, "failure", type="difference",
                                 message=f"{counts}; first: {headline(first)}" if first
                                 else counts)
            fail.text = "\n\n".join(explain(d) for d in client.differences[:explained])
        lines = [f"suppressed: {s.count} {s.what} ({s.client}): {s.why}" for s in cmp.suppressed]
        lines += [f"note: {n}" for n in info.notes]
        if lines:
            ET.SubElement(suite, "system-out").text = "\n".join(lines)
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def junit_error(scenario: str, message: str) -> str:
    """JUnit XML for a run that could not be carried out (exit code 2)."""
    root = ET.Element("testsuites", name="swapctl diff", tests="1", failures="0", errors="1")
    suite = ET.SubElement(root, "testsuite", name=f"diff.{scenario}", tests="1",
                          failures="0", errors="1")
    case = ET.SubElement(suite, "testcase", classname=f"swapctl.diff.{scenario}", name="run")
    ET.SubElement(case, "error", type="error", message=message).text = message
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
