"""The one wait for a Unix socket: connects once the path accepts, gives up on time or
at once when the server is gone."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from swapctl.unixsock import connect, open_listener, wait_connectable


def test_connect_returns_once_a_late_listener_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    listeners: list[socket.socket] = []
    timer = threading.Timer(0.2, lambda: listeners.append(open_listener(path)))
    timer.start()
    try:
        sock = connect(path, 10.0)
        sock.close()
    finally:
        timer.cancel()
        timer.join()
        for listener in listeners:
            listener.close()
    assert listeners, "connect returned before anything listened"


def test_a_path_that_never_accepts_raises_the_last_error_after_the_timeout(
        tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(FileNotFoundError):
        wait_connectable(tmp_path / "missing.sock", 0.1)
    assert time.monotonic() - start >= 0.1


def test_timeout_zero_tries_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connect(tmp_path / "missing.sock", 0.0)


def test_a_dead_server_ends_the_wait_at_once(tmp_path: Path) -> None:
    class Gone(Exception):
        pass

    def alive() -> None:
        raise Gone("the server exited")

    start = time.monotonic()
    with pytest.raises(Gone):
        wait_connectable(tmp_path / "missing.sock", 30.0, alive=alive)
    assert time.monotonic() - start < 10.0  # generous: it must not wait the 30 s out


def test_wait_connectable_on_a_live_path(tmp_path: Path) -> None:
    listener = open_listener(tmp_path / "live.sock")
    try:
        assert wait_connectable(tmp_path / "live.sock", 5.0) >= 0.0
    finally:
        listener.close()
