"""A relay's clients as swapctl counts them: connections whose peer has closed are nobody's.

A holder process accepts and never reads (a relay that has not yet reached a client's
EOF, as a busy machine makes any relay): /proc/net/unix still shows a closed client's
socket connected, sock_diag says its peer is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swapctl import sockdiag
from swapctl.legacy import sockets
from swapctl.legacy.actions import Relay, clients

HOLDER = """
import signal, socket, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
print("listening", flush=True)
held = [s.accept()[0] for _ in range(int(sys.argv[2]))]
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(30)
def test_a_closed_client_is_not_counted_before_the_relay_reads_its_eof(sockdir: Path) -> None:
    path = sockdir / "r.sock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "3"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True,
                              stdin=subprocess.DEVNULL)
    peers: list[socket.socket] = []
    try:
        # (the path exists from bind on, but a connect before listen is refused: CI saw it)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "listening"
        for _ in range(3):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(str(path))
            peers.append(peer)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        relay = Relay(holder.pid, path, str(path))
        assert clients(relay) == 3
        peers.pop().close()  # the holder never reads: its socket stays open, connected
        inodes = sockets.fd_inodes(holder.pid)
        found = sockets.find(holder.pid, str(path))
        assert len(found.connections) == 3, "/proc/net/unix still shows it connected"
        gone = sockdiag.peer_gone({inodes[fd] for fd in found.connections})
        assert len(gone) == 1
        assert clients(relay) == 2
        assert clients(relay, own=1) == 1
    finally:
        for peer in peers:
            peer.close()
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
