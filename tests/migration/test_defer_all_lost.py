"""`defer-all` (docs/handoff-protocol.md section 13): the adopter loses the orchestrator
while every staged client is held for the first BACKLOG. It must let them all write
again (without the units it was never sent) and tear no frame.

A crowd of reading clients and a steady publisher make the freeze find a fan-out in
flight, which is what holds them all (`hold: "staged"`). Whether a freeze finds one is
up to timing, so a freeze that did not is retried with a new pair of relays.
"""

from __future__ import annotations

import threading
import time

import pytest

from swapctl.conformance.cases import close_transfer
from swapctl.conformance.rig import Rig, whole_frames
from swapctl.handoff.controller import hand_over, pre_copy
from tests.clients import ReadingCrowd
from tests.rust import example_relay

CROWD = 200
ATTEMPTS = 40  # (each about 0.5 s; in 25 runs the longest needed 13)


class Publisher(threading.Thread):
    """A message every 0.1 ms or so, its echo drained: a fan-out always in flight."""

    def __init__(self, rig: Rig) -> None:
        super().__init__(daemon=True)
        self.rig = rig
        self.peer = rig.peer()
        self.peer.sock.setblocking(False)
        self.stop = threading.Event()

    def run(self) -> None:
        n = 1
        while not self.stop.is_set():
            self.peer.sock.sendall(self.rig.msg(n))
            n += 1
            try:
                while self.peer.sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            time.sleep(0.0001)


def attempt(rig: Rig, seen: list[dict[str, object]]) -> str | None:
    """One swap whose adopter loses the orchestrator; None if its freeze held no one."""
    old = rig.active("a")
    new = rig.ready("b")
    readers = ReadingCrowd(rig.public, CROWD)
    readers.start()
    publisher = Publisher(rig)
    try:
        rig.wait_connections(old, CROWD + 1)
        publisher.start()
        time.sleep(0.5)
        base = pre_copy(old.link, new.link, lambda: 5.0)
        delta = hand_over(old.link, new.link, 0.0, lambda: 5.0, lambda _: None,
                          precopy=int(base.meta["generation"]))
        new.link.resume(5.0)
        close_transfer(base)
        close_transfer(delta)
        if delta.meta.get("hold") != "staged":
            seen.append({k: delta.meta.get(k) for k in ("backlog", "unsent_bytes")}
                        | {"records": len(delta.conns)})
            return None
        new.link.close()  # the orchestrator is gone: no OWED, no BACKLOG
        publisher.stop.set()
        publisher.join(5)
        marker = rig.msg(999_999)
        rig.peer().send(marker)  # accepted and read by the adopter
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            waiting = [s for s, data in readers.data.items() if marker not in data]
            if not waiting:
                break
            time.sleep(0.1)
        assert not waiting, f"{len(waiting)} of {CROWD} held clients never wrote again"
        old.link.close_held(2.0)  # (a client the adopter cut sees its EOF now)
        for data in readers.data.values():
            _, crc, garbage = whole_frames(bytes(data))
            assert (crc, garbage) == (0, 0), f"a torn frame: {crc} CRC errors, {garbage} bytes"
        return f"{len(delta.conns)} records in the delta"
    finally:
        publisher.stop.set()
        readers.close()


@pytest.mark.timeout(180)
def test_a_lost_orchestrator_releases_every_held_client() -> None:
    seen: list[dict[str, object]] = []  # the freezes that held no one
    for _ in range(ATTEMPTS):
        rig = Rig((str(example_relay()),))
        try:
            if attempt(rig, seen) is not None:
                return
        finally:
            rig.close()
    pytest.fail(f"none of {ATTEMPTS} freezes found a fan-out in flight (hold: staged): {seen}")
