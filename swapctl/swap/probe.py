"""Pre-cutover probe: prove a candidate relays correctly before any client moves.

The orchestrator makes two socket pairs, hands one end of each to the candidate
(PROBE) and talks through the other ends: a message split across two writes, a
message of another domain (must not be forwarded) and a second message, then a
message from the other side. Both probe clients must receive exactly the forwarded
messages, byte for byte, in one order (broadcast), the sender included (echo) unless
the release is declared without echo. Then the probe connections are closed and the
candidate must be back in standby.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from swapctl.errors import SwapctlError
from swapctl.handoff.controller import RelayLink
from swapctl.probes.ident import make_sequence, make_tag
from swapctl.protocol import encode_message
from swapctl.protocol.tlv import Trade

PROBE_TAG = make_tag(0x7EED)
ECHO_GRACE = 0.1  # a relay echoes in the same pass as it broadcasts: no need to wait long


class ProbeFailed(SwapctlError):
    """The candidate did not relay the probe messages as the protocol requires."""


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    domain_byte: int = 1
    echo: bool = True
    timeout: float = 2.0


def _message(n: int, domain: int) -> bytes:
    return encode_message(domain, 2, [Trade(n, n, 1, 0, 1, 1).to_tlv()],
                          sequence=make_sequence(PROBE_TAG, 0, n), checksum=True)


def probe(link: RelayLink, settings: ProbeSettings) -> float:
    """Run the probe; returns its duration in ms; raises ProbeFailed."""
    start = time.monotonic()
    pairs = [socket.socketpair(), socket.socketpair()]
    try:
        link.probe([pairs[0][1].fileno(), pairs[1][1].fileno()], settings.timeout)
        for _, theirs in pairs:
            theirs.close()
        left, right = pairs[0][0], pairs[1][0]
        dom = settings.domain_byte
        first, second, third = _message(1, dom), _message(2, dom), _message(3, dom)
        foreign = _message(99, (dom + 1) % 256)
        deadline = start + settings.timeout
        # a split message, a foreign one (must not pass), a whole one: from left
        left.sendall(first[:20])
        left.sendall(first[20:] + foreign + second)
        _expect(right, first + second, deadline, "broadcast to the other client")
        echo_deadline = min(deadline, time.monotonic() + ECHO_GRACE)
        if settings.echo:
            _expect(left, first + second, echo_deadline, "echo to the sender")
        # and back the other way
        right.sendall(third)
        _expect(left, third, deadline, "broadcast to the other client")
        if settings.echo:
            _expect(right, third, min(deadline, time.monotonic() + ECHO_GRACE),
                    "echo to the sender")
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    _wait_standby(link, start + settings.timeout)
    return (time.monotonic() - start) * 1000


def _expect(sock: socket.socket, expect: bytes, deadline: float, what: str) -> None:
    got = _read(sock, len(expect), deadline)
    if got != expect:
        raise ProbeFailed(_mismatch(what, expect, got))


def _read(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            chunk = sock.recv(n - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _mismatch(what: str, expect: bytes, got: bytes) -> str:
    if len(got) < len(expect):
        return (f"{what}: received {len(got)} of {len(expect)} expected bytes before the "
                "deadline (messages dropped or relay too slow)")
    at = next((i for i, (a, b) in enumerate(zip(expect, got, strict=False)) if a != b), -1)
    return f"{what}: bytes differ from offset {at} (altered, reordered or foreign message)"


def _wait_standby(link: RelayLink, deadline: float) -> None:
    while True:
        stats = link.stats(max(0.1, deadline - time.monotonic()))
        if stats["state"] == "standby" and stats["connections_open"] == 0:
            return
        if time.monotonic() > deadline:
            raise ProbeFailed(f"candidate still holds {stats['connections_open']} probe "
                              f"connections ({stats['state']})")
        time.sleep(0.002)
