"""Journal rotation: the file is compacted past its size bound and nothing recovery,
`swapctl report` or a running swap needs is lost (issue 16: ~1.8 KB a swap, never rotated).

Two services write through two Journal objects on one file, as swapctld does. The same
records go to a reference journal that never rotates; what the daemon reads from the
rotated one (attach._unfinished for recovery, the records of a swap for `report`) must
equal what it reads from the reference.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swapctl.daemon.attach import _unfinished
from swapctl.swap.journal import Journal, Rotation, compact, read, scan

pytestmark = pytest.mark.timeout(60)

PATH = ("starting", "probing", "releasing", "adopting", "verifying", "soaking", "committing",
        "committed")
SMALL = Rotation(max_bytes=16_000, keep_finished=5, keep_events=10, memory_finished=3)


class Pair:
    """The same records to a rotating journal and to a reference that never rotates."""

    def __init__(self, root: Path, service: str) -> None:
        self.service = service
        self.live = Journal(root / "live" / "journal.jsonl", rotation=SMALL)
        self.ref = Journal(root / "ref" / "journal.jsonl", rotation=Rotation(max_bytes=1 << 40))
        self.at = 0.0
        self.written = 0

    def write(self, record: dict[str, Any]) -> None:
        self.at += 0.5
        self.written += 1
        record = {"service": self.service, "time": 1e9 + self.at, "at": self.at, **record}
        self.live.write(dict(record), sync=False)
        self.ref.write(dict(record), sync=False)

    def begin(self, swap: str) -> None:
        self.write({"swap": swap, "event": "begin", "release": "v2", "old_token": "a",
                    "soak": 1.0, "command": ["relay", "--x"]})

    def go(self, swap: str, states: tuple[str, ...]) -> None:
        previous = "idle"
        for state in states:
            self.write({"swap": swap, "from": previous, "event": "e", "to": state,
                        "reason": "", "token": "b" if state == "adopting" else ""})
            previous = state


def unfinished(path: Path, service: str) -> dict[str, Any] | None:
    rt = SimpleNamespace(name=service, paths=SimpleNamespace(journal=path))
    return _unfinished(rt)  # type: ignore[arg-type]


def of_swap(path: Path, swap: str) -> list[dict[str, Any]]:
    """What `swapctl report SWAP` reads from the journal while a swap runs."""
    return [r for r in read(path) if r.get("swap") == swap]


def test_rotation_keeps_what_recovery_and_report_need(tmp_path: Path) -> None:
    a, b = Pair(tmp_path, "svc_a"), Pair(tmp_path, "svc_b")
    b.begin("b-long")
    b.go("b-long", PATH[:5])  # b's swap stays unfinished through all of a's swaps
    for n in range(300):
        a.begin(f"a-{n}")
        a.go(f"a-{n}", PATH)
        a.write({"event": "lease_taken", "holder": f"h{n}"})
    a.begin("a-last")
    a.go("a-last", PATH[:5])
    b.write({"swap": "b-long", "from": "verifying", "event": "verified", "to": "soaking",
             "reason": ""})  # b's Journal writes after a's rotations: into the new file
    live, ref = a.live.path, a.ref.path
    assert live is not None and ref is not None
    assert a.live.compactions, "the journal never rotated"
    assert live.stat().st_size <= SMALL.max_bytes + 4_000
    assert ref.stat().st_size > 10 * SMALL.max_bytes
    assert scan(live).bad_lines == []
    for service in ("svc_a", "svc_b"):  # recovery: the same swap, phase and records
        found, expected = unfinished(live, service), unfinished(ref, service)
        assert found is not None and found == expected
    assert unfinished(live, "svc_b")["state"] == "soaking"  # type: ignore[index]
    for swap in ("b-long", "a-last", *(f"a-{n}" for n in range(295, 300))):
        assert of_swap(live, swap) == of_swap(ref, swap), swap
    assert of_swap(live, "a-0") == []  # its report (STATE/reports) tells it
    events = [r for r in read(live) if "swap" not in r]
    assert 0 < len(events) < 100 and events[-1]["holder"] == "h299"  # 300 written
    assert len(a.live.records) < a.written / 2  # memory is compacted too
    assert [r for r in a.live.records if r.get("swap") == "a-last"] == of_swap(ref, "a-last")


def test_recovery_ignores_a_stale_unfinished_swap_after_rotation(tmp_path: Path) -> None:
    """An old swap left without a terminal record (a torn journal) is followed by a
    finished one: recovery sees the last swap of the service, before and after."""
    pair = Pair(tmp_path, "svc")
    pair.begin("stale")
    pair.go("stale", PATH[:3])
    for n in range(200):
        pair.begin(f"s-{n}")
        pair.go(f"s-{n}", PATH)
    assert pair.live.compactions
    assert pair.live.path is not None and pair.ref.path is not None
    assert unfinished(pair.live.path, "svc") is None is unfinished(pair.ref.path, "svc")


def test_compact_keeps_order_and_last_of_each_service() -> None:
    records = [
        {"service": "x", "swap": "1", "event": "begin"}, {"swap": "1", "to": "committed"},
        {"event": "restarted"},
        {"service": "y", "swap": "2", "event": "begin"}, {"swap": "2", "to": "rolled_back"},
        {"service": "x", "swap": "3", "event": "begin"}, {"swap": "3", "to": "committed"},
        {"service": "x", "swap": "4", "event": "begin"}, {"swap": "4", "to": "soaking"},
    ]
    kept = compact(records, keep_finished=1, keep_events=0)
    assert [r.get("swap") for r in kept] == ["2", "2", "3", "3", "4", "4"]


def test_a_second_journal_follows_the_rename(tmp_path: Path) -> None:
    """Two Journals on one path: after one rotates, the other's records land in the new
    file, none in the renamed-away one."""
    path = tmp_path / "st" / "journal.jsonl"
    one = Journal(path, rotation=SMALL)
    two = Journal(path, rotation=SMALL)
    n = 0
    while not one.compactions:
        one.write({"swap": f"s{n}", "event": "begin"}, sync=False)
        one.write({"swap": f"s{n}", "to": "committed"}, sync=False)
        n += 1
    two.write({"swap": "t", "event": "begin"})
    one.write({"swap": "u", "event": "begin"})
    assert [r["swap"] for r in read(path)[-2:]] == ["t", "u"]
    one.close()
    two.close()
