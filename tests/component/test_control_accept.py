"""The orchestrator's control socket: it waits for a slow relay's HELLO however it polls,
and accepts a registration only from the pid the slot runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swapctl.handoff.controller import ControlServer
from swapctl.handoff.messages import HandoffError
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
    assert welcome == [{"type": "welcome", "version": 1, "extensions": {}}]  # it asked for none


def test_a_registration_from_another_pid_is_refused(sockdir: Path) -> None:
    """The token is not enough: the relay must connect from the pid its slot runs (the
    pid supervisord reports). SO_PEERCRED says who really connected."""
    control = ControlServer(sockdir / "ctl.sock")
    impostor = subprocess.Popen(
        [sys.executable, "-c",
         "import os, socket, sys, time\n"
         "from swapctl.handoff.wire import Channel\n"
         "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); c = Channel(s)\n"
         "c.send({'type': 'hello', 'versions': [1], 'pid': int(sys.argv[2]), "
         "'token': 'v2-abc'})\n"
         "c.recv(timeout=5); time.sleep(5)\n", str(control.path), str(os.getpid())],
        start_new_session=True)
    try:
        with pytest.raises(HandoffError, match=f"from pid {impostor.pid}, expected 4242"):
            control.accept("v2-abc", timeout=10, pid=4242)  # the slot's pid: not the impostor
    finally:
        impostor.kill()
        impostor.wait(5)
        control.close()
