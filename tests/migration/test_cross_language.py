"""Swaps across languages through the standalone CLI (`swapctl swap --socket S --from CMD
--to CMD`): the Python reference relay and the Rust example relay (sdk/rust) hand every
client to each other.

- Committed swaps, both ways, under an independent `swapctl load` run (its strategy
  consumer included) that connected to the old relay before the handoff, judged by the
  load checker, and a plain client whose half-written frame crosses the handoff.
- Python -> Rust -> Python and Rust -> Python -> Rust by warm rollback
  (`--rollback-after`), judged by the swap's own canary (publisher, dashboard and
  strategy streams). A standalone swap stops its relays as soon as the rollback is
  done, so an independent load run cannot be stopped before that teardown without a
  race: the committed cases carry the independent judgement.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from swapctl.conformance.rig import Peer, message
from swapctl.probes.config import LoadConfig
from swapctl.probes.load import LoadSession
from swapctl.protocol import Framer, Frames, split_frames
from tests.rust import example_relay

SWAPCTL = [sys.executable, "-m", "swapctl"]
PYTHON = f"{shlex.quote(sys.executable)} -m swapctl.relay --log-level warning"
GENEROUS = "10000"  # tests judge loss, not timing: the pause budget only guards against hangs


def relay(name: str) -> str:
    return PYTHON if name == "python" else shlex.quote(str(example_relay()))


class StandaloneSwap:
    """`swapctl swap --socket S --from A --to B -o json`, in its own process group."""

    def __init__(self, root: Path, from_: str, to: str, *extra: str,
                 hold: Path | None = None) -> None:
        """`hold`: the candidate starts only once that file exists (its command waits for
        it), so the test can connect clients to the old relay first while the swap's own
        canary keeps running (stopping the swap process would stall the canary's readers
        and the old relay would rightly shed what they could not read)."""
        self.public = root / "md.sock"
        to_cmd = relay(to)
        if hold is not None:
            wait = f"while [ ! -e {shlex.quote(str(hold))} ]; do sleep 0.02; done"
            to_cmd = f"sh -c {shlex.quote(f'{wait}; exec {to_cmd}')}"
        self.state = root / "state"
        self.err = (root / "swap.err").open("wb")
        self.proc = subprocess.Popen(
            [*SWAPCTL, "swap", "--socket", str(self.public), "--state-dir", str(self.state),
             "--from", relay(from_), "--to", to_cmd, "--pause-budget-ms", GENEROUS,
             "-o", "json", *extra],
            stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def states(self) -> list[str]:
        journal = self.state / "journal.jsonl"
        if not journal.exists():
            return []
        lines = journal.read_text().splitlines()
        return [json.loads(line).get("to", "") for line in lines if line.strip()]

    def wait_state(self, state: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.states():
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else b""
                raise AssertionError(f"swap ended before {state}: {out[-3000:]!r} "
                                     f"{self.stderr()} journal: {self.states()}")
            assert time.monotonic() < deadline, f"no {state} in {self.states()}"
            time.sleep(0.02)

    def result(self, timeout: float = 90.0) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)
        assert out, f"no report (exit {self.proc.returncode}): {self.stderr()}"
        result: dict[str, Any] = json.loads(out)
        return result

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return Path(self.err.name).read_text(errors="replace")[-2000:]

    def request(self, what: str) -> None:
        done = subprocess.run([*SWAPCTL, what, "--socket", str(self.public), "--state-dir",
                               str(self.state)], capture_output=True, text=True, timeout=30,
                              check=False, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.err.close()


def serving(swap: StandaloneSwap, timeout: float = 30.0) -> Peer:
    """A plain client, once the first relay serves (its own frame echoed back)."""
    deadline = time.monotonic() + timeout
    while True:
        assert swap.proc.poll() is None, f"swap ended early: {swap.stderr()}"
        assert time.monotonic() < deadline, "the first relay never served"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(swap.public))
        except OSError:
            sock.close()
            time.sleep(0.005)
            continue
        peer = Peer(sock)
        peer.send(message(1))
        if plain_frames(peer.read(len(message(1)), timeout=2.0)):
            return peer
        peer.close()


def plain_frames(raw: bytes) -> list[bytes]:
    """This test's own frames: canary and load traffic set bit 63 of the sequence."""
    frames: list[bytes] = []
    for ev in Framer().feed(raw):
        if isinstance(ev, Frames):
            frames += [f for f in split_frames(ev.data) if not f[15] & 0x80]
    return frames


def until_plain(peer: Peer, count: int, timeout: float = 10.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while len(plain_frames(bytes(peer.raw))) < count and time.monotonic() < deadline:
        peer.read(len(peer.raw) + 1, timeout=max(0.01, deadline - time.monotonic()))
    return plain_frames(bytes(peer.raw))


def load_config(public: Path) -> LoadConfig:
    return LoadConfig(public, publishers=2, consumers=3, strategy_consumers=1, rate=2000.0,
                      duration=None, settle=1.0, connect_timeout=10.0)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("from_", "to"), [("python", "rust"), ("rust", "python")])
def test_committed_swap_under_independent_load(sockdir: Path, from_: str, to: str) -> None:
    go = sockdir / "go"
    swap = StandaloneSwap(sockdir, from_, to, "--soak", "120", hold=go)
    load: LoadSession | None = None
    try:
        plain = serving(swap)
        # the candidate waits for `go`: the load run connects to the old relay first
        load = LoadSession(load_config(swap.public))
        load.start()
        plain.send(message(2)[:45])  # half a frame: carried as pending_in
        go.touch()
        swap.wait_state("soaking")
        plain.send(message(2)[45:] + message(3))
        assert until_plain(plain, 3) == [message(1), message(2), message(3)]
        verdict = load.stop()
        swap.request("commit")
        result = swap.result()
    finally:
        if load is not None:
            load.close()
        swap.close()
    assert result["decision"] == "committed", (result.get("reason"), swap.stderr())
    canary = result["canary"]
    assert swap.proc.returncode == 0, (result.get("proven"), result.get("evidence"),
                                       {k: v for k, v in canary.items() if k != "streams"},
                                       [{k: v for k, v in s.items() if k != "publishers"}
                                        for s in canary["streams"]])
    assert verdict.ok, verdict.problems()
    assert verdict.sent > 0 and verdict.disconnects == 0 and verdict.total.lost == 0
    strategy = [c for c in verdict.consumers if c.mode == "strategy"]
    assert strategy and not any(c.dead for c in strategy)
    # the load's 5 clients and the plain one were on the old relay and moved
    assert result["connections"]["moved"] >= 6
    assert canary["lost"] == canary["disconnects"] == canary["dead"] == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("from_", "to"), [("python", "rust"), ("rust", "python")])
def test_warm_rollback_across_languages(sockdir: Path, from_: str, to: str) -> None:
    swap = StandaloneSwap(sockdir, from_, to, "--soak", "60", "--rollback-after", "1")
    try:
        result = swap.result(timeout=120)
    finally:
        swap.close()
    assert swap.proc.returncode == 1, swap.stderr()  # rolled back: not a clean commit
    assert result["decision"] == "rolled_back", result
    assert result["reason"].startswith("operator"), (result["reason"], swap.stderr())
    assert result["rollback"]["kind"] == "warm handoff"
    assert result["connections"]["moved"] >= 3  # the canary's publisher and consumers
    canary = result["canary"]
    bad = {k: canary[k] for k in ("lost", "duplicated", "reordered", "corrupted",
                                  "disconnects", "dead")}
    assert not any(bad.values()), bad
    assert canary["received_min"] == canary["sent"] > 0
    modes = {s["mode"] for s in canary["streams"]}
    assert "strategy" in modes  # a consumer that stops for good on EOF is still alive
