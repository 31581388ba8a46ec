"""Feeding a capture back into a relay, and what the relay should then deliver.

A capture replays as a scenario (the same driver as `diff`):
- a `scenario` view (written by `diff --save` or `--minimize`) replays exactly: same
  clients, same writes, same connects and disconnects;
- a `tap` view (written by `record`) replays as one publisher, `replay`, writing each
  recorded read as one write, watched by a consumer, `observer`.
What to expect: for a tap, the observer should receive what the tap received; for a
scenario capture with an `old` view, each client should receive what it received
from the old relay. `--check` compares with the diff engine.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from swapctl.capture.format import Kind, Record, records_to_scenario, tap_to_scenario
from swapctl.capture.pcapng import Capture, read_capture
from swapctl.diff import Comparison, Mode, Stream, compare
from swapctl.errors import UsageError
from swapctl.scenarios.driver import Driver, Timing
from swapctl.scenarios.model import Scenario


@dataclass(frozen=True, slots=True)
class ReplayResult:
    scenario: Scenario
    streams: dict[str, Stream]
    comparison: Comparison | None
    notes: tuple[str, ...]


def load_traffic(path: Path, domain_byte: int) -> tuple[Scenario, Capture]:
    """The scenario a capture replays as (see the module docstring)."""
    capture = read_capture(path)
    meta = capture.meta
    scenario_view = capture.view("scenario")
    if scenario_view:
        name = str(meta.get("scenario", path.stem))
        seed = int(meta.get("seed", 0))
        scenario = records_to_scenario(scenario_view, name, seed,
                                       int(meta.get("domain_byte", domain_byte)))
        return scenario, capture
    if capture.view("tap"):
        return tap_to_scenario(capture.view("tap"), path.stem, domain_byte), capture
    views = ", ".join(capture.views) or "none"
    raise UsageError(f"{path}: no scenario or tap records to replay (views: {views}); "
                     "record one with `swapctl record` or `swapctl diff --save`")


def expected(capture: Capture) -> dict[str, Stream] | None:
    """What each client should receive, from the capture; None if it does not say."""
    tap = capture.view("tap")
    if tap and not capture.view("scenario"):
        data = b"".join(r.data for r in tap if r.kind is Kind.READ)
        return {"observer": Stream(data)}
    old = capture.view("old")
    return streams_of(old) if old else None


def streams_of(records: list[Record]) -> dict[str, Stream]:
    """Per client name, the bytes it read and whether the relay closed it."""
    names: dict[int, str] = {}
    data: defaultdict[int, bytearray] = defaultdict(bytearray)
    eof: set[int] = set()
    for rec in records:
        if rec.kind is Kind.OPEN:
            names[rec.conn] = _name(rec)
            data.setdefault(rec.conn, bytearray())  # reading nothing is still a stream
        elif rec.kind is Kind.READ:
            data[rec.conn] += rec.data
        elif rec.kind is Kind.EOF:
            eof.add(rec.conn)
    return {names.get(c, f"conn-{c}"): Stream(bytes(d), c in eof) for c, d in data.items()}


def _name(rec: Record) -> str:
    try:
        return str(json.loads(rec.data)["name"])
    except (ValueError, KeyError, TypeError):
        return f"conn-{rec.conn}"


def replay(path: Path, socket: Path, domain_byte: int, *, timing: Timing | None = None,
           check: bool = False, mode: Mode = Mode.FRAMES) -> ReplayResult:
    """Drive the capture's traffic into the relay at `socket`; compare if `check`."""
    scenario, capture = load_traffic(path, domain_byte)
    want = expected(capture) if check else None
    if check and want is None:
        raise UsageError(f"{path}: the capture does not say what a relay delivered "
                         "(no tap or old view): nothing to check against")
    driver = Driver([socket], timing)
    result = driver.run(scenario)[0]
    comparison = None
    if want is not None:
        got = {name: result.streams.get(name, Stream(b"")) for name in want}
        comparison = compare(want, got, mode)
    return ReplayResult(scenario, result.streams, comparison,
                        (*driver.shared, *result.notes))
