"""The canary's final audit when other clients' traffic still flows as it stops.

A canary's consumers receive everything the relay broadcasts. When the canary stops,
other traffic goes on, and a stream's last read can end inside someone else's
message. That message was cut by the canary's own stop: it is not a torn frame, and
counting it as one made a swap's `corrupted` figure 1 with nothing corrupted. A relay
that stops inside a message and sends nothing more still counts (truncated).

The relay here is a stand-in that splits every message of the other traffic in two
writes with a pause between them, so a read often ends inside one. The real relays
write whole frames; under back-pressure a client's read can still end inside one. The
canary over the real relays is exercised by the migration tests and `bench handoff`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swapctl.probes.ident import make_tag
from swapctl.probes.traffic import MessageFactory, Mix
from swapctl.swap.canary import Canary


class SplittingRelay:
    """Every byte a client sends goes to every client, itself included (as the relays
    echo); a feeder sends other traffic to every client, each message in two writes.
    `stall()`: write the first half of one more message, then nothing to anyone."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.stalled = threading.Event()
        self.stall_now = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True),
                        threading.Thread(target=self._feed, daemon=True)]
        for thread in self.threads:
            thread.start()

    def stall(self, timeout: float = 5.0) -> None:
        self.stall_now.set()
        assert self.stalled.wait(timeout), "the feeder did not stall"

    def close(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(5)
        with self.lock:
            for conn in self.clients:
                conn.close()
        self.listener.close()

    def _send_all(self, data: bytes) -> None:
        for conn in self.clients:
            with contextlib.suppress(OSError):
                conn.sendall(data)

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.05)
            with self.lock:
                self.clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        while not self.done.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            with self.lock:
                if not self.stalled.is_set():
                    self._send_all(data)

    def _feed(self) -> None:
        factory = MessageFactory(domain=1, source=250, publisher=0, run_tag=make_tag(0x0777),
                                 mix=Mix())
        while not self.done.is_set():
            message = bytes(factory.build(1, time.time_ns()).data)
            half = len(message) // 2
            with self.lock:
                self._send_all(message[:half])
                if self.stall_now.is_set():
                    self.stalled.set()
                    return
                time.sleep(0.0005)
                self._send_all(message[half:])
            time.sleep(0.0005)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[SplittingRelay]:
    stand_in = SplittingRelay(tmp_path / "relay.sock")
    yield stand_in
    stand_in.close()


def run_canary(path: Path, before_stop: Callable[[], None] | None = None) -> dict[str, Any]:
    canary = Canary(path, rate=500.0)
    try:
        canary.start()
        time.sleep(1.0)
        if before_stop is not None:
            before_stop()
        return canary.stop()
    finally:
        canary.close()


@pytest.mark.timeout(60)
def test_a_read_cut_by_the_canarys_own_stop_is_not_a_torn_frame(relay: SplittingRelay,
                                                                 tmp_path: Path) -> None:
    for _ in range(3):  # each stop is another chance to end a read inside a message
        final = run_canary(tmp_path / "relay.sock")
        for stream in final["streams"]:
            assert stream["foreign"] > 0, stream  # the other traffic reached it
            assert (stream["corrupted"], stream["truncated"], stream["lost"]) == (0, 0, 0), stream


@pytest.mark.timeout(60)
def test_a_relay_that_stops_inside_a_message_still_counts_truncated(relay: SplittingRelay,
                                                                   tmp_path: Path) -> None:
    final = run_canary(tmp_path / "relay.sock", before_stop=relay.stall)
    for stream in final["streams"]:
        assert stream["truncated"] == 1 and stream["corrupted"] >= 1, stream
