"""Captures: record format, pcapng round trips, and tshark reading them with our dissector.

tshark comes from apt (scripts/ensure-tools installs it); these tests fail, not skip,
without it: a capture format nobody checked is not a capture format.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from swapctl.capture.format import (
    LINKTYPE_USER0,
    Kind,
    Record,
    open_data,
    records_to_scenario,
    scenario_records,
)
from swapctl.capture.pcapng import MAX_PIECE, Capture, read_capture, write_capture
from swapctl.capture.replay import expected, streams_of
from swapctl.diff import Stream
from swapctl.errors import UsageError
from swapctl.scenarios import builtin
from swapctl.scenarios.model import Client, Role
from tests.vectors import load_vectors

V = load_vectors()
DISSECTOR = Path(__file__).parents[2] / "tools" / "wireshark" / "protocol_v2.lua"


def tshark(*args: str, timeout: float = 30) -> list[str]:
    """Run tshark; its output lines (fails the test, with its stderr, if it fails)."""
    exe = shutil.which("tshark")
    assert exe, "tshark is missing: run scripts/ensure-tools (apt package tshark)"
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert done.returncode == 0, f"tshark {' '.join(args)} failed: {done.stderr}"
    return done.stdout.splitlines()


def tshark_fields(path: Path, *fields: str, dissector: bool = True) -> list[list[str]]:
    """One row per packet, one column per field (our Lua dissector loaded)."""
    args = ["-X", f"lua_script:{DISSECTOR}"] if dissector else []
    out = []
    for field in fields:
        args += ["-e", field]
    for line in tshark(*args, "-r", str(path), "-T", "fields", "-E", "occurrence=a",
                       "-E", "aggregator=,"):
        out.append(line.split("\t"))
    return out


def assert_tshark_reads(path: Path) -> int:
    """tshark opens the capture, every packet is USER0 and decodes; returns the count."""
    rows = tshark_fields(path, "frame.encap_type", "swapctl.version")
    assert rows, f"tshark sees no packets in {path}"
    assert all(r[0] == "45" and r[1] == "1" for r in rows), rows[:3]  # 45 = WTAP USER0
    return len(rows)


def test_scenario_round_trips_through_pcapng(tmp_path: Path) -> None:
    for name in ("churn", "truncated", "oversize", "slow-consumer"):
        scenario = builtin.build(name, 3, 1, {"writes": 50} if name == "slow-consumer" else None)
        path = tmp_path / f"{name}.pcapng"
        write_capture(path, scenario_records(scenario), {"scenario": name, "seed": 3})
        capture = read_capture(path)
        assert capture.meta == {"scenario": name, "seed": 3}
        again = records_to_scenario(capture.view("scenario"), name, 3, 1)
        assert again.steps == scenario.steps and again.clients == scenario.clients


def test_big_records_are_cut_for_wireshark_and_joined_again(tmp_path: Path) -> None:
    big = bytes(range(256)) * 4097  # just over 1 MiB
    path = tmp_path / "big.pcapng"
    write_capture(path, [Record("tap", Kind.READ, 7, big, 123_456_789_012_345_678)], {})
    capture = read_capture(path)
    assert [(r.kind, r.conn, r.data, r.ts_ns) for r in capture.records] == \
        [(Kind.READ, 7, big, 123_456_789_012_345_678)]
    packets = assert_tshark_reads(path)
    assert packets == -(-len(big) // MAX_PIECE)


def test_timestamps_and_connection_ids_as_tshark_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "t.pcapng"
    records = [
        Record("scenario", Kind.OPEN, 4, open_data(Client("pub", Role.PUBLISHER)), 10**18),
        Record("scenario", Kind.WRITE, 4, V["V1"] + V["V3"] + b"junk" + V["V4"] + V["V5"][:40],
               10**18 + 1_000, 1),
        Record("old", Kind.READ, 9, V["V2"], 10**18 + 123_456_789),
        Record("old", Kind.EOF, 9, b"", 10**18 + 123_456_790),
    ]
    write_capture(path, records, {"kind": "test"})
    rows = tshark_fields(path, "frame.time_epoch", "frame.interface_name", "swapctl.kind",
                         "swapctl.conn", "pv2.sequence", "pv2.tlv.type", "pv2.garbage",
                         "pv2.fragment")
    assert [r[0] for r in rows] == ["1000000000.000000000", "1000000000.000001000",
                                    "1000000000.123456789", "1000000000.123456790"]
    assert [r[1] for r in rows] == ["scenario", "scenario", "old", "old"]
    assert [(r[2], r[3]) for r in rows] == [("3", "4"), ("1", "4"), ("2", "9"), ("5", "9")]
    assert rows[1][4] == "0,2,3" and rows[1][5] == "1,2,32"  # V1, V3, V4 decoded
    assert rows[1][6] == b"junk".hex() and rows[1][7] == V["V5"][:40].hex()
    assert rows[2][4] == "1"


def test_dissector_decodes_every_vector(tmp_path: Path) -> None:
    path = tmp_path / "v.pcapng"
    names = ["V1", "V2", "V3", "V4", "V5", "V6"]
    write_capture(path, [Record("tap", Kind.READ, 1, V[n], 10**18 + k)
                         for k, n in enumerate(names)], {})
    rows = tshark_fields(path, "pv2.source", "pv2.payload_size", "pv2.tlv.type",
                         "pv2.tlv.extended", "pv2.checksum")
    assert [r[1] for r in rows] == ["42", "42", "58", "172", "305", "0"]
    assert [r[2] for r in rows] == ["1", "1", "2", "32", "200", ""]
    assert rows[4][3] == "1" and rows[0][4] == "0x44b03f44"  # extended: true


def test_a_tap_capture_says_what_a_consumer_should_get() -> None:
    tap = [Record("tap", Kind.OPEN, 1, open_data(Client("tap", Role.CONSUMER))),
           Record("tap", Kind.READ, 1, V["V1"]), Record("tap", Kind.READ, 1, V["V2"])]
    assert expected(Capture({}, tap)) == {"observer": Stream(V["V1"] + V["V2"])}
    old = [Record("old", Kind.OPEN, 2, open_data(Client("c", Role.CONSUMER))),
           Record("old", Kind.READ, 2, V["V3"]), Record("old", Kind.EOF, 2)]
    assert streams_of(old) == {"c": Stream(V["V3"], True)}


def test_not_a_capture_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    path.write_bytes(b"this is not pcapng at all")
    with pytest.raises(UsageError, match="not a readable pcapng"):
        read_capture(path)
    with pytest.raises(UsageError, match="cannot read capture"):
        read_capture(tmp_path / "missing.pcapng")


def test_link_type_is_user0() -> None:
    assert LINKTYPE_USER0 == 147
