"""The relay bounds the bytes it holds in partial frames, all clients together.

Issue 16: 300 clients each holding 1 MiB of a partial frame took the relay to 416 MB.
With `--max-partial-total`, the client whose read takes the total past the bound is
cut and counted (`partial_refused`); the relay's memory stays near the bound and it
goes on serving everyone else.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from swapctl.protocol import HEADER_SIZE
from swapctl.relay.stats import read_stats
from tests.clients import Client, trade
from tests.conftest import Processes

CLIENTS = 50
HELD = 512 * 1024  # bytes of one unfinished frame each client sends
BOUND = 4 * 1024 * 1024
DECLARED = 1_000_000  # the frame's payload size: it never completes


def _unfinished_frame() -> bytes:
    head = bytearray(trade(1)[:HEADER_SIZE])
    struct.pack_into("<I", head, 24, DECLARED)  # payload_size
    return bytes(head) + b"\x5a" * (HELD - HEADER_SIZE)


@pytest.mark.timeout(60)
def test_partial_frames_are_bounded_in_total_and_refusals_counted(procs: Processes,
                                                                  sockdir: Path) -> None:
    sock, stats = sockdir / "r.sock", sockdir / "s.sock"
    relay = procs.relay(sock, "--stats", str(stats), "--max-partial-total", str(BOUND))
    rss_before = psutil.Process(relay.pid).memory_info().rss
    frame, holders = _unfinished_frame(), []
    for _ in range(CLIENTS):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(sock))
        with contextlib.suppress(OSError):  # refused while sending: the relay closed it
            client.sendall(frame)
        holders.append(client)
    deadline = time.monotonic() + 10
    while _accounted(counters := read_stats(stats)) < CLIENTS:
        assert time.monotonic() < deadline, f"the relay did not read every client: {counters}"
        time.sleep(0.05)
    grown = psutil.Process(relay.pid).memory_info().rss - rss_before
    fit = BOUND // HELD  # that many whole partial frames fit under the bound
    assert counters["partial_refused"] >= CLIENTS - fit
    assert counters["partial_refused_bytes"] > 0 and counters["truncated"] == 0
    assert counters["partial_bytes"] <= BOUND
    assert counters["connections_open"] == CLIENTS - counters["partial_refused"]
    offered = CLIENTS * HELD
    assert grown < (BOUND + offered) / 2, f"RSS grew {grown} bytes; clients offered {offered}"
    # the refused got EOF; everyone else is still served
    refused = sum(_closed_by_relay(c) for c in holders)
    assert refused == counters["partial_refused"]
    pub, sub = Client(sock), Client(sock)
    pub.send(trade(7))
    assert sub.recv_frames(1) == [trade(7)]
    for client in holders:
        client.close()
    deadline = time.monotonic() + 10
    while read_stats(stats)["partial_bytes"] != 0:  # released with their connections
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _accounted(counters: dict[str, Any]) -> int:
    """Clients refused, plus those whose whole unfinished frame the relay holds."""
    held = sum(c["bytes_in"] == HELD for c in counters["connections"])
    return int(counters["partial_refused"]) + held


def _closed_by_relay(client: socket.socket) -> bool:
    client.settimeout(0.05)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
