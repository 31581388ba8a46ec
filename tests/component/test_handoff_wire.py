"""Handoff framing over a real socket pair: fds travel with the header, limits hold."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from swapctl.handoff.messages import ChannelClosed, HandoffError
from swapctl.handoff.wire import HEADER, MAGIC, Channel


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    yield Channel(a), Channel(b)
    a.close()
    b.close()


def test_message_blob_and_fds_arrive_together(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    r, w = os.pipe()
    try:
        left.send({"type": "adopt", "n": 1}, b"\x00" * 70_000, [w])
        left.send({"type": "resume"})
        env = right.recv(timeout=5)
        assert env.msg == {"type": "adopt", "n": 1} and len(env.blob) == 70_000
        (fd,) = env.fds
        os.write(fd, b"hi")  # the received fd is the same pipe
        assert os.read(r, 2) == b"hi"
        os.close(fd)
        assert right.recv(timeout=5).fds == []
    finally:
        os.close(r)
        os.close(w)


def test_at_most_253_fds_per_message(pair: tuple[Channel, Channel]) -> None:
    left, _ = pair
    with pytest.raises(HandoffError, match="limit is 253"):
        left.send({"type": "adopt"}, fds=[0] * 254)


def test_garbage_header_is_refused(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.sock.sendall(HEADER.pack(b"HTTP", 2, 0, 0, 0) + b"{}")
    with pytest.raises(HandoffError, match="not protocol v1"):
        right.recv(timeout=5)


def test_fd_count_must_match_the_header(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    body = b'{"type":"x"}'
    left.sock.sendall(HEADER.pack(MAGIC, len(body), 0, 2, 0) + body)
    with pytest.raises(HandoffError, match="announced 2 fds, 0 arrived"):
        right.recv(timeout=5)


def test_eof_and_timeout(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    with pytest.raises(TimeoutError):
        right.recv(timeout=0.05)
    left.close()
    with pytest.raises(ChannelClosed):
        right.recv(timeout=5)
