"""Takeover of an emulated legacy relay (isolated for real) by a handoff-capable relay,
run by the one swap engine (`run_strategy`), under `swapctl load`, judged by the load
checker and the swap canary: the report's top-level figures (swap/evidence.py) must
agree with both, and say "unknown" (None, with the reason) where the takeover itself saw
something it cannot measure (a partial frame, a consumer left mid-frame)."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from swapctl.cli.legacy import swap_legacy
from swapctl.errors import UsageError
from swapctl.handoff.controller import ControlServer
from swapctl.legacy import layout as lay
from swapctl.legacy.run import LegacySwap, ReleaseSpec, run_strategy
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.probes.report import LoadReport
from swapctl.process import signal_group
from swapctl.protocol import encode_message
from swapctl.relay.stats import read_stats
from swapctl.swap.evidence import FIGURES
from swapctl.swap.report import exit_code, render_text
from swapctl.swap.service import Service
from swapctl.swap.spawner import SubprocessSpawner
from tests.clients import Client, trade
from tests.migration.legacy_support import HANDOFF_RELAY, build_legacy

pytestmark = pytest.mark.timeout(90)
RATE = 4000.0


@dataclass
class LegacyBox:
    """A box migrated to the slot layout, a legacy build serving slot a."""

    root: Path
    layout: lay.Layout
    slot: lay.LegacySlot
    service: Service
    spawner: SubprocessSpawner

    def request(self, to: tuple[str, ...], canary_rate: float = 1000.0) -> LegacySwap:
        return LegacySwap(self.layout, ReleaseSpec("v2", to, legacy=False),
                          self.root / "state", canary_rate=canary_rate)

    def load(self, **kw: object) -> LoadSession:
        cfg = LoadConfig(socket=self.layout.public, publishers=2, consumers=3,
                         strategy_consumers=1, rate=RATE, duration=None, settle=1.0,
                         **kw)  # type: ignore[arg-type]
        return LoadSession(cfg)


@pytest.fixture
def box(sockdir: Path, request: pytest.FixtureRequest) -> Iterator[LegacyBox]:
    """The legacy build gets a stats socket (a second listener it holds: the takeover
    must pick the right one) plus any flags the test gives by indirect parametrisation."""
    compiled = sockdir / "c" / "md.sock"
    layout = lay.Layout(public=compiled, compiled=compiled, root=sockdir / "st")
    flags = ["--stats", str(sockdir / "stats.sock"), *getattr(request, "param", [])]
    slot = lay.start_legacy(layout, "a", build_legacy(sockdir, compiled, *flags),
                            sockdir / "logs")
    spawner = SubprocessSpawner(sockdir / "logs")
    (sockdir / "state").mkdir()
    service = Service(layout.public, sockdir / "state", spawner)
    service.control = ControlServer(sockdir / "state" / "control.sock")
    try:
        lay.point(layout, slot.socket)
        yield LegacyBox(sockdir, layout, slot, service, spawner)
    finally:
        service.control.close()
        spawner.stop_all(2.0)
        slot.stop(1.0)
        signal_group(slot.pid, 9)


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def canary_figure(report: dict[str, Any], key: str) -> int:
    """What the swap canary counted for `key` (its summary calls dead consumers `dead`)."""
    canary = report["canary"]
    assert canary is not None, "the swap canary ran: its summary belongs in the report"
    return int(canary["dead" if key == "dead_consumers" else key])


def assert_figures_match(report: dict[str, Any], load: LoadReport) -> None:
    """No client was cut, so each known figure is the canary's plus the load checker's
    (they watch disjoint clients); an unknown one says why."""
    assert report["evidence"]["cut"] == 0, report["evidence"]
    checker = report["checkers"]["load"]
    for key in FIGURES:
        figure = report["figures"][key]
        assert report[key] == figure["value"], key
        if report[key] is None:
            assert figure["unknown_because"], (key, figure)
            continue
        assert report[key] == canary_figure(report, key) + checker[key], (key, figure)
    assert checker["lost"] == load.total.lost
    assert checker["disconnects"] == load.disconnects
    assert checker["dead_consumers"] == sum(1 for c in load.consumers if c.dead)
    clean = report["decision"] == "committed" and report["proven"]
    assert exit_code(report) == (0 if clean else 1)


def test_takeover_moves_every_client_under_load(box: LegacyBox) -> None:
    with box.load() as session:
        time.sleep(0.3)  # traffic through the legacy relay before the swap
        report = run_strategy("takeover", box.request(HANDOFF_RELAY), load=session,
                              service=box.service)
        load = session.stop()  # already stopped by run_strategy: the same report
    assert report["strategy"] == "takeover"
    assert report["decision"] == "committed", render_text(report)
    assert_figures_match(report, load)
    # 2 publishers + 3 consumers of the load, 3 canary clients: all moved, none cut
    moved = report["connections"]["moved"]
    assert moved == 8 == report["evidence"]["confirmed_connections"]
    assert load.disconnects == 0 and report["disconnects"] == 0
    assert not any(c.dead for c in load.consumers)  # the strategy consumer survived
    assert report["dead_consumers"] == 0
    assert report["canary"]["disconnects"] == 0
    assert report["server_pause_ms"] is not None and report["server_pause_ms"] > 0
    assert {"freeze_and_dup", "adopt", "resume"} <= set(report["pause_stages_ms"])
    assert report["rollback"] is None
    assert process_state(box.slot.pid) in ("gone", "Z")  # the legacy relay is over
    assert lay.connectable(box.layout.public)
    assert load.sent > 0 and load.total.received > 0
    # every loss (or unknown) is explained by what the takeover itself saw and counted
    if report["lost"] != 0 or report["corrupted"] != 0:
        e = report["evidence"]
        assert (e["publisher_streams_resynchronised"] or e["consumers_backed_up_at_freeze"]
                or e["unmovable_bytes"] or not e["frozen_idle"]), render_text(report)


@pytest.mark.parametrize("phase", ["adopt", "resume"])
def test_candidate_crash_leaves_the_legacy_relay_serving_everyone(
        box: LegacyBox, phase: str) -> None:
    with box.load() as session:
        time.sleep(0.2)
        report = run_strategy("takeover", box.request((*HANDOFF_RELAY, "--crash-at", phase)),
                              load=session, service=box.service)
        load = session.stop()
    assert report["decision"] == "rolled_back", render_text(report)
    assert report["reason"]  # what went wrong with the candidate
    assert report["connections"]["moved"] == 0
    assert report["rollback"]["kind"].startswith("thawed the legacy relay"), report["rollback"]
    assert process_state(box.slot.pid) in ("S", "R")  # running again, not stopped
    state = lay.read_state(box.layout, "a")
    assert state is not None and state["kind"] == "legacy"  # still the legacy relay's slot
    assert load.disconnects == 0 and not any(c.dead for c in load.consumers)
    assert load.total.lost == 0 and load.total.corrupted == 0 and load.total.duplicated == 0
    assert_figures_match(report, load)
    assert report["lost"] == 0 and report["disconnects"] == 0
    assert report["dead_consumers"] == 0
    assert exit_code(report) == 1  # rolled back: never a clean exit
    # and the legacy relay still serves new clients through the public link
    assert lay.connectable(box.layout.public)


def test_takeover_refuses_a_legacy_candidate(box: LegacyBox) -> None:
    req = LegacySwap(box.layout, ReleaseSpec("v2", tuple(HANDOFF_RELAY), legacy=True),
                     box.root / "state", canary_rate=0)
    with pytest.raises(UsageError, match=r"takeover does not fit .*use --strategy bridge"):
        run_strategy("takeover", req, service=box.service)
    assert process_state(box.slot.pid) in ("S", "R")


def when_stopped(pid: int, action: threading.Thread,
                 states: tuple[str, ...] = ("T", "t", "gone", "Z")) -> threading.Thread:
    """Run `action` as soon as `pid` is stopped (SIGSTOP) or gone (or in `states`)."""
    def watch() -> None:
        deadline = time.monotonic() + 20
        while process_state(pid) not in states and time.monotonic() < deadline:
            time.sleep(0.0002)
        action.run()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_partial_frame_inside_the_legacy_relay_is_skipped_and_counted(box: LegacyBox) -> None:
    """The legacy relay has read the head of a frame (in its memory, unforwardable);
    the tail comes only once the relay is gone (had it come during the freeze, the
    takeover would have let the relay read it: test_legacy_sockets.py); the candidate
    gets the tail, skips exactly it, and the report says how many bytes."""
    stats = box.root / "stats.sock"
    pub, con = Client(box.layout.public), Client(box.layout.public)
    first, second = trade(1), trade(2)
    head = 40
    pub.send(first[:head])
    wait_for(lambda: read_stats(stats)["bytes_in"] >= head)
    tail = threading.Thread(target=lambda: pub.send(first[head:] + second))
    watcher = when_stopped(box.slot.pid, tail, states=("gone", "Z"))
    report = run_strategy("takeover", box.request(HANDOFF_RELAY, canary_rate=0),
                          service=box.service)
    watcher.join(5)
    assert report["decision"] == "committed", render_text(report)
    evidence = report["evidence"]
    assert evidence["publisher_streams_resynchronised"] == 1
    assert evidence["unmovable_bytes"] == len(first) - head
    # the bytes died with the legacy relay: how many messages that cost is not measured
    assert report["lost"] is None
    assert f"{len(first) - head} byte(s)" in report["figures"]["lost"]["unknown_because"]
    assert con.recv_bytes(len(second)) == second  # the cut frame is lost, nothing garbled
    assert pub.recv_bytes(len(second)) == second  # echo
    assert report["disconnects"] == 0 and report["connections"]["moved"] == 2
    assert exit_code(report) == 1  # committed, not proven


def big(seq: int, size: int = 60_000) -> bytes:
    value = bytes([seq % 251]) * size
    tlv = bytes([0xFF, 0x00, 200]) + struct.pack("<H", len(value)) + value
    return encode_message(1, 2, tlv, sequence=seq, checksum=True)


@pytest.mark.parametrize("box", [["--no-echo"]], indirect=True)
def test_consumer_cut_mid_frame_is_reported(box: LegacyBox) -> None:
    """A consumer that stopped reading while the legacy relay was half way through a frame
    for it: the frame's tail dies with the relay. The takeover says so (backed-up
    consumer, not frozen idle), and the consumer's stream shows one truncated frame."""
    stats = box.root / "stats.sock"
    pub, con = Client(box.layout.public), Client(box.layout.public)
    frames = [big(n) for n in range(1, 31)]
    pub.send(b"".join(frames))
    wait_for(lambda: read_stats(stats)["frames_in"] >= len(frames))
    wait_for(lambda: any(c["backlog_bytes"] > 0 for c in read_stats(stats)["connections"]))
    req = LegacySwap(box.layout, ReleaseSpec("v2", HANDOFF_RELAY, legacy=False),
                     box.root / "state", canary_rate=0,
                     extra={"freeze_attempts": 3})
    report = run_strategy("takeover", req, service=box.service)
    assert report["decision"] == "committed", render_text(report)
    evidence = report["evidence"]
    assert evidence["consumers_backed_up_at_freeze"] == 1 == evidence["torn_consumers"]
    assert evidence["frozen_idle"] is False
    # only the first half of the tries waits for it (it may never read again)
    assert evidence["freeze_busy"].get("a client backed up or mid-frame", 0) <= 1, evidence
    # a consumer may have been left mid-frame: its corruption is unknown, never 0
    assert report["corrupted"] is None
    assert "mid-frame by the old relay" in report["figures"]["corrupted"]["unknown_because"]
    assert report["disconnects"] == 0
    after = big(99)
    pub.send(after)
    size = len(frames[0])
    raw = b""
    deadline = time.monotonic() + 10
    while not raw.endswith(after) and time.monotonic() < deadline:
        raw = con.recv_bytes(len(raw) + 1, timeout=1)
    assert raw.endswith(after)
    delivered = len(raw) - len(after)
    assert delivered % size != 0  # a frame cut short: its tail died with the legacy relay
    assert 0 < delivered < len(frames) * size


def test_cli_auto_picks_takeover_and_prints_why_first(box: LegacyBox) -> None:
    to = " ".join(HANDOFF_RELAY)
    try:
        result = CliRunner().invoke(swap_legacy, [
            "--public", str(box.layout.public), "--state-dir", str(box.layout.root),
            "--to", to, "--to-handoff", "--strategy", "auto", "--canary-rate", "500",
            "-o", "json"])
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith("plan: strategy takeover: the old release is legacy")
        report = json.loads(result.stdout)
        assert report["strategy"] == "takeover" and report["decision"] == "committed"
        assert report["disconnects"] == 0 and report["lost"] == 0
        assert report["connections"]["moved"] == 3  # the canary's three clients
        assert report["could_not_guarantee"]
        assert process_state(box.slot.pid) in ("gone", "Z")
        assert lay.read_state(box.layout, "a")["kind"] == "handoff"  # type: ignore[index]
        assert lay.connectable(box.layout.public)
    finally:
        state = lay.read_state(box.layout, "a")
        if state is not None and state["kind"] == "handoff":
            signal_group(int(state["pid"]), 9)


def test_swap_command_strategy_takeover_through_the_main_cli(box: LegacyBox) -> None:
    """`swapctl swap --socket PUBLIC --from-legacy --strategy takeover`: the operator's
    command reaches the same strategy as swap-legacy."""
    from swapctl.cli import main  # noqa: PLC0415 (the whole CLI, only for this test)
    try:
        result = CliRunner().invoke(main, [
            "swap", "--socket", str(box.layout.public), "--state-dir", str(box.layout.root),
            "--from-legacy", "--to", " ".join(HANDOFF_RELAY), "--strategy", "takeover",
            "--canary-rate", "500", "-o", "json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["strategy"] == "takeover" and report["decision"] == "committed"
        assert report["disconnects"] == 0 and report["lost"] == 0
        assert lay.connectable(box.layout.public)
    finally:
        state = lay.read_state(box.layout, "a")
        if state is not None and state["kind"] == "handoff":
            signal_group(int(state["pid"]), 9)


def test_clients_connecting_and_leaving_throughout_a_takeover_all_move(box: LegacyBox) -> None:
    """New clients connect (and some leave) every few ms before, during and after the
    takeover: whether the legacy relay accepted them before the early scan, between it and
    the freeze, or never (queued on the listener), every one still connected is served
    by the candidate afterwards, and none saw EOF."""
    clients: list[Client] = []
    left: list[Client] = []
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            clients.append(Client(box.layout.public))
            if (len(clients) + len(left)) % 4 == 0:  # one in four leaves again
                left.append(clients.pop(len(clients) // 2))
                left[-1].close()
            time.sleep(0.002)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        time.sleep(0.2)
        report = run_strategy("takeover", box.request(HANDOFF_RELAY, canary_rate=0),
                              service=box.service)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join(5)
    assert report["decision"] == "committed", render_text(report)
    # only the clients that left on their own may count, never one still connected
    assert report["disconnects"] is not None and report["disconnects"] <= len(left)
    assert process_state(box.slot.pid) in ("gone", "Z")
    assert len(clients) > 50 and left
    message = trade(7)
    pub = Client(box.layout.public)
    pub.send(message)
    for client in clients:  # every client still connected receives through the candidate
        assert client.recv_bytes(len(message)) == message
    for client in [pub, *clients]:
        client.close()
