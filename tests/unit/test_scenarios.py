"""Scenarios: deterministic from a seed, valid, and loadable from YAML with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from swapctl.errors import UsageError
from swapctl.protocol import Framer, Frames, decode_message, split_frames
from swapctl.scenarios import builtin, files
from swapctl.scenarios.model import Connect, Disconnect, Role, Write
from swapctl.scenarios.traffic import IDENTIFICATION
from tests.vectors import load_vectors

SCENARIOS_DIR = Path(__file__).parents[2] / "scenarios"
SMALL = {"soak": {"messages": 3000}, "slow-consumer": {"writes": 300}}


def _build(name: str, seed: int, dbyte: int = 1):  # type: ignore[no-untyped-def]
    return builtin.build(name, seed, dbyte, SMALL.get(name))


@pytest.mark.parametrize("name", builtin.names())
def test_same_seed_same_bytes_other_seed_other_bytes(name: str) -> None:
    a, b, c = _build(name, 5), _build(name, 5), _build(name, 6)
    assert a == b
    assert [w.data for w in a.writes()] != [w.data for w in c.writes()]


@pytest.mark.parametrize("name", builtin.names())
def test_builtin_scenarios_are_valid_and_identify_first(name: str) -> None:
    scenario = _build(name, 1)
    scenario.check()
    first = [w for w in scenario.writes()][:3]
    assert all(w.data == IDENTIFICATION for w in first)
    assert scenario.traffic_bytes > 0 and scenario.clients[0].role is Role.PUBLISHER


def test_identification_header_is_vector_v6() -> None:
    assert load_vectors()["V6"] == IDENTIFICATION


def test_mix_is_realistic_and_sequences_are_unique() -> None:
    scenario = _build("mix", 3)
    framer = Framer()
    frames: list[bytes] = []
    for write in scenario.writes():
        for ev in framer.feed(write.data):
            assert isinstance(ev, Frames)
            frames.extend(split_frames(ev.data))
    types = {t.type for f in frames[3:] for t in decode_message(f).tlvs}
    assert {1, 2, 3, 32} <= types  # trades, quotes, order books, signals
    assert any(t.extended for f in frames for t in decode_message(f).tlvs)
    seqs = [int.from_bytes(f[8:16], "little") for f in frames[3:]]
    assert len(set(seqs)) == len(seqs) and all(f[4] == 1 for f in frames[3:])


def test_the_domain_byte_follows_the_profile() -> None:
    torq = _build("mix", 1, dbyte=0)
    data = b"".join(w.data for w in torq.writes())
    assert data[32 * 3 + 4] == 0  # first message after the three identification headers


def test_edge_cases_are_there() -> None:
    split = _build("split", 1)
    assert any(len(w.data) == 1 for w in split.writes())  # byte by byte
    churn = _build("churn", 1)
    assert sum(isinstance(s, Connect) for s in churn.steps) >= 8
    assert sum(isinstance(s, Disconnect) for s in churn.steps) >= 8
    oversize = _build("oversize", 1)
    sizes = [len(w.data) for w in oversize.writes()]
    assert 1_048_576 in sizes
    claims = [int.from_bytes(w.data[24:28], "little") for w in oversize.writes()
              if w.data[:4] == b"\xef\xbe\xad\xde"]
    assert max(claims) > 1_048_576
    soak = _build("soak", 1)
    assert any(not w.wait for w in soak.writes())


def test_with_writes_keeps_structure() -> None:
    churn = _build("churn", 1)
    small = churn.with_writes({0, 5})
    assert sum(1 for _ in small.writes()) == 2
    assert [s for s in small.steps if not isinstance(s, Write)] == \
        [s for s in churn.steps if not isinstance(s, Write)]
    small.check()


def test_parse_spec() -> None:
    assert builtin.parse_spec("soak:messages=500,per-write=8") == \
        ("soak", {"messages": 500, "per_write": 8})
    with pytest.raises(UsageError, match="key=integer"):
        builtin.parse_spec("soak:messages=lots")
    with pytest.raises(UsageError, match="unknown parameter"):
        builtin.build("soak", 1, 1, {"msgs": 5})
    with pytest.raises(UsageError, match="built-in scenarios are"):
        builtin.build("nope", 1, 1)


@pytest.mark.parametrize("path", sorted(SCENARIOS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenario_files_load(path: Path) -> None:
    scenario = files.load(path, None, 1)
    assert scenario.steps and scenario.traffic_bytes > 0
    assert files.load(path, None, 1) == scenario
    assert files.load(path, 99, 1) != scenario


def test_yaml_explicit_writes_and_splits(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("""
clients: [{name: p, role: publisher}, {name: c, role: consumer}]
steps:
  - write: {client: p, hex: "ef be ad de", text: "!"}
  - write: {client: p, messages: [trade], split: [10, 20], wait: false}
  - settle
""")
    scenario = files.load(path, 4, 1)
    writes = list(scenario.writes())
    assert writes[0].data == b"\xef\xbe\xad\xde!"
    assert [len(w.data) for w in writes[1:]] == [10, 10, 54] and not writes[1].wait
    assert scenario.name == "s" and scenario.seed == 4


@pytest.mark.parametrize(("text", "message"), [
    ("steps: [{write: {client: p, hexx: 00}}]", "steps[0].write: unknown key(s) hexx"),
    ("steps: [bogus]", "steps[0]: unknown step 'bogus'"),
    ("steps: [{mix: {messages: many}}]", "steps[0]: generator mix: messages must be integers"),
    ("clients: [{name: a, role: king}]\nsteps: [settle]", "clients[0].role: 'king'"),
    ("steps: [{write: {client: ghost, text: x}}]", "unknown client 'ghost'"),
    ("steps: [{disconnect: dashboard}, {disconnect: dashboard}]", "not connected"),
    ("steps: [{write: {client: adapter-1, messages: [trade], split: [500]}}]", "split"),
    ("steps: {", "not valid YAML"),
])
def test_yaml_errors_name_file_and_step(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        files.load(path, None, 1)
    assert str(path) in str(err.value) and message in str(err.value)
