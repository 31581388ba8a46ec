"""Strategy `restart`: today's practice (stop the old relay, clients reconnect), made safe.

The phases are `RestartActions` in legacy/actions.py, run by the one swap engine
(swap/executor.py); this module holds what they use (also the bridge's and standalone
swaps' candidates: `start_candidate`, `probe_socket`, `stop_relay`):
1. starting, probing: the candidate starts in a free slot, side by side with the old
   relay (a legacy build in its own mount namespace; a handoff-capable one is given a
   fresh listener bound at the slot's socket, `start_candidate`) and is validated
   there: two probe clients, a message through it byte for byte, echo included
   (`probe_socket`). The old relay serves throughout.
2. flipping: the public link is flipped to the candidate's socket (only once it
   accepts), so every reconnect lands on the candidate.
3. retiring: the old relay's connections are counted (they are about to be cut: the
   report's evidence), then it is stopped (`stop_relay`: SIGTERM to its group, SIGKILL
   after a grace period); verifying: who of the cut came back. Readiness is always a
   probe, never a sleep.
Clients see EOF: publishers reconnect with backoff and lose what was in flight, a
dashboard reconnects at once, a strategy consumer stops for good.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from swapctl.errors import SwapctlError
from swapctl.legacy import layout as lay
from swapctl.legacy import sockets
from swapctl.legacy.takeover import signal_relay
from swapctl.probes.ident import make_sequence, make_tag
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade
from swapctl.swap.service import Service, Slot
from swapctl.swap.spawner import Release
from swapctl.unixsock import open_listener

CANNOT_GUARANTEE = (
    "every client connected to the old relay is disconnected: bytes in flight in its "
    "connections and in its memory are lost, publishers lose what they wrote before "
    "noticing, and a consumer that stops on EOF (the arbitrage strategy) stays down.")


PROBE_TAG = make_tag(0x7EEE)  # not the swap probe's, not a load run's


class RestartError(SwapctlError):
    """A candidate could not be started in its slot, or failed its probe."""


@dataclass(frozen=True, slots=True)
class RestartSettings:
    ready_timeout: float = 10.0
    probe_timeout: float = 2.0
    stop_grace: float = 2.0  # SIGTERM, then SIGKILL after this
    domain_byte: int = 1
    echo: bool = True


@dataclass(slots=True)
class Started:
    """The candidate, running in its slot."""

    slot: str
    legacy: lay.LegacySlot | None = None
    handoff: Slot | None = None
    listener: socket.socket | None = None  # our copy of a handoff candidate's listener

    @property
    def pid(self) -> int:
        if self.legacy is not None:
            return self.legacy.pid
        assert self.handoff is not None
        return self.handoff.handle.pid

    def stop(self) -> None:
        if self.legacy is not None:
            self.legacy.stop(1.0)
        if self.handoff is not None:
            self.handoff.stop(1.0)
        if self.listener is not None:
            self.listener.close()


def start_candidate(layout: lay.Layout, release: Release, *, legacy: bool,
                    service: Service | None, settings: RestartSettings,
                    log_dir: Path | None = None) -> Started:
    """Start `release` in a free slot and wait until its slot socket accepts."""
    name = layout.free_slot()
    if legacy:
        return Started(name, legacy=lay.start_legacy(layout, name, list(release.command),
                                                     log_dir, settings.ready_timeout))
    if service is None:
        raise RestartError("a handoff-capable candidate needs a control socket (service)")
    layout.slot_dir(name).mkdir(parents=True, exist_ok=True)
    listener = open_listener(layout.slot_socket(name))
    try:
        slot = service.start_serving(release, listener.fileno(), settings.ready_timeout)
    except BaseException:
        listener.close()
        raise
    lay.write_state(layout, name, {"pid": slot.handle.pid,
                                   "started_s": slot.handle.started_s,
                                   "command": list(release.command), "kind": "handoff"})
    return Started(name, handoff=slot, listener=listener)


def probe_socket(path: Path, domain_byte: int, echo: bool, timeout: float) -> float:
    """Two clients on `path`: a message from one must reach the other byte for byte (and
    come back to its sender when the relay echoes). Returns the time taken in ms."""
    start = time.monotonic()
    msg = encode_message(domain_byte, 2, [Trade(7, 7, 1, 0, 1, 1).to_tlv()],
                         sequence=make_sequence(PROBE_TAG, 0, 1), checksum=True)
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        for sock in (a, b):
            sock.settimeout(timeout)
            sock.connect(str(path))
        deadline = start + timeout
        # the relay may not have registered b yet: resend until b sees one
        got = b""
        while len(got) < len(msg) and time.monotonic() < deadline:
            a.sendall(msg)
            b.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                got += b.recv(len(msg) - len(got))
        if got[:len(msg)] != msg:
            raise RestartError(f"probe through {path}: the message did not arrive intact")
        if echo:
            a.settimeout(max(0.01, deadline - time.monotonic()))
            if a.recv(len(msg), socket.MSG_WAITALL) != msg:
                raise RestartError(f"probe through {path}: no echo to the sender")
    return (time.monotonic() - start) * 1000


def stop_relay(pid: int, grace: float) -> None:
    """SIGTERM the relay (its group), SIGKILL after `grace`; return once it is gone."""
    signal_relay(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _gone(pid):
        if time.monotonic() > deadline:
            signal_relay(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace
        time.sleep(0.001)


def _gone(pid: int) -> bool:
    return sockets.proc_state(pid) in ("Z", "X", "gone")
