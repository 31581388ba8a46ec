"""The orchestrator's control socket waits for a slow relay's HELLO, however it polls."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from swapctl.handoff.controller import ControlServer
from swapctl.handoff.wire import Channel


def test_a_relay_slow_to_say_hello_is_not_dropped(sockdir: Path) -> None:
    control = ControlServer(sockdir / "ctl.sock")
    welcome: list[dict[str, object]] = []

    def slow_relay() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(control.path))
        time.sleep(0.2)  # longer than the orchestrator's 50 ms polling slices
        channel = Channel(sock)
        channel.send({"type": "hello", "versions": [1], "pid": os.getpid(), "token": "slow"})
        welcome.append(channel.recv(timeout=5).msg)
        channel.close()

    thread = threading.Thread(target=slow_relay)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        link = None
        while link is None and time.monotonic() < deadline:
            try:
                link = control.accept("slow", timeout=0.05)  # as Service polls
            except TimeoutError:
                continue
        assert link is not None and link.pid == os.getpid()
    finally:
        thread.join(10)
        control.close()
    assert welcome == [{"type": "welcome", "version": 1}]
