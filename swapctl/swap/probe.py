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
        left.sendall(first[:20])
        left.sendall(first[20:] + foreign + second)
        right.sendall(third)
        expect = first + second + third
        deadline = start + settings.timeout
        got_right = _read(right, len(expect), deadline)
        if got_right != expect:
            raise ProbeFailed(_mismatch("broadcast", expect, got_right))
        if settings.echo:
            got_left = _read(left, len(expect), deadline)
            if got_left != expect:
                raise ProbeFailed(_mismatch("echo", expect, got_left))
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    _wait_standby(link, start + settings.timeout)
    return (time.monotonic() - start) * 1000


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
