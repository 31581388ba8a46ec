"""Explanations, reports (text, JSON, JUnit) and the minimizer of the pure diff package."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from swapctl.diff import Stream, compare
from swapctl.diff.explain import describe_frame, explain, hex_side_by_side
from swapctl.diff.minimize import minimize
from swapctl.diff.report import DiffReport, RunInfo, junit_error, render_text, to_json, to_junit
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade
from tests.vectors import load_vectors

V = load_vectors()
MSGS = [encode_message(1, 2, [Trade(i, i * 100, 1, 0, 1, 1).to_tlv()], sequence=i)
        for i in range(1, 11)]


def _report(new: bytes, scenario: str = "unit") -> DiffReport:
    old = {"dashboard": Stream(b"".join(MSGS)), "strategy": Stream(b"".join(MSGS))}
    cmp = compare(old, {"dashboard": Stream(new), "strategy": Stream(b"".join(MSGS))})
    return DiffReport(RunInfo(scenario, 7, "reference", "reference:sink", 1, 0.25,
                              ("new: something to note",)), cmp)


def test_explanation_names_client_frame_offset_fields_and_bytes() -> None:
    report = _report(b"".join(MSGS[:4] + MSGS[5:]))
    diff = report.comparison.first
    assert diff is not None
    text = explain(diff)
    assert "client dashboard: missing (old frame 4 at byte 296)" in text
    assert "seq 5" in text and "Trade(1, 40 bytes: asset 5 price 500" in text
    assert "(nothing here)" in text
    assert "000000  ef be ad de 01 01 02 00 05" in text


def test_hex_side_by_side_marks_differing_bytes() -> None:
    a = bytes(range(40))
    b = a[:33] + b"\xff" + a[34:]
    rows = hex_side_by_side(a, b)
    marked = [r for r in rows if "^^" in r]
    assert len(marked) == 1
    assert rows[1].startswith("000010") and rows[1].count("|") == 1


def test_describe_frame_decodes_vectors_and_reports_bad_tlvs() -> None:
    assert "ArbitrageSignal(32, 170 bytes" in describe_frame(V["V4"])
    assert "vendor(200, 300 bytes, extended" in describe_frame(V["V5"])
    assert "TLVs: none" in describe_frame(V["V6"])
    broken = V["V1"][:33] + b"\x50" + V["V1"][34:]
    assert "TLVs do not decode" in describe_frame(broken)


def test_text_report_summarises_then_explains() -> None:
    text = render_text([_report(b"".join(MSGS[:4] + MSGS[5:]))])
    assert text.startswith("DIFFERENT  scenario unit (seed 7, mode frames)")
    assert "dashboard        old      10 frames, new       9 frames: 1 missing" in text
    assert "strategy" in text and "identical" in text
    assert "note: new: something to note" in text


def test_json_report_is_complete() -> None:
    doc = json.loads(json.dumps(to_json([_report(b"".join(MSGS[:4] + MSGS[5:]))])))
    assert doc["equivalent"] is False
    run = doc["runs"][0]
    assert run["totals"] == {"missing": 1} and run["seed"] == 7
    diff = run["clients"][0]["differences"][0]
    assert diff["category"] == "missing" and diff["old"]["frame"] == 4
    assert bytes.fromhex(diff["old"]["hex"]) == MSGS[4] and diff["new"] is None


def test_junit_parses_with_one_case_per_client() -> None:
    reports = [_report(b"".join(MSGS[:4] + MSGS[5:])), _report(b"".join(MSGS), "same")]
    root = ET.fromstring(to_junit(reports))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "0")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["diff.unit.seed7", "diff.same.seed7"]
    failure = suites[0].find("testcase[@name='dashboard']/failure")
    assert failure is not None and "1 missing" in (failure.get("message") or "")
    assert "old frame 4" in (failure.text or "")
    assert suites[1].find("testcase/failure") is None
    props = {p.get("name"): p.get("value") for p in suites[0].iter("property")}
    assert props["new"] == "reference:sink"


def test_junit_error_document() -> None:
    root = ET.fromstring(junit_error("ci", "old relay exited with code 1"))
    assert root.get("errors") == "1"
    error = root.find("testsuite/testcase/error")
    assert error is not None and "code 1" in (error.get("message") or "")


def test_minimizer_finds_the_culprits_and_respects_its_budget() -> None:
    calls: list[int] = []

    def fails(units: Sequence[int]) -> bool:
        calls.append(len(units))
        return 37 in units and 38 in units

    result = minimize(list(range(200)), fails)
    assert result.units == (37, 38) and result.complete
    assert result.trials == len(calls) <= 100
    tight = minimize(list(range(200)), fails, max_trials=5)
    assert tight.trials == 5 and not tight.complete
    assert 37 in tight.units and 38 in tight.units  # what it returns still fails
