"""The bulk consumer: receives until END, checks exactness, measures latency.

How it works: a blocking socket with a timeout (`start_timeout` until the first
byte, then `idle_timeout`), so a lost END or a dead relay ends the run instead of
hanging it. Throughput mode compares each read with the expected stream (one
memcmp) and only parses after a difference (`StreamCheck`). Latency mode splits
every read into messages and records `time.time_ns()` at the read minus each
message's header timestamp; the first `warmup` samples are left out.
"""

from __future__ import annotations

import socket
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from swapctl.probes.bulk.stream import Classifier, Reassembler, StreamCheck
from swapctl.probes.latency import percentiles

RECV_SIZE = 262_144
LATENCY_POINTS = (50, 90, 99, 99.9)


@dataclass(slots=True)
class Received:
    ended: str = "end"  # "end" (END message), "eof", or "idle" (timeout)
    bytes: int = 0
    t_first: float = 0.0  # time.monotonic() of the first read
    t_last: float = 0.0  # of the last read
    cpu_s: float = 0.0
    latency_ns: array[int] = field(default_factory=lambda: array("q"))


class Consumer:
    def __init__(self, sock: socket.socket, start_timeout: float, idle_timeout: float) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.start_timeout = start_timeout
        self.idle_timeout = idle_timeout

    def _first(self) -> bytes:
        self.sock.settimeout(self.start_timeout)
        data = self.sock.recv(RECV_SIZE)
        self.sock.settimeout(self.idle_timeout)
        return data

    def throughput(self, check: StreamCheck) -> Received:
        out = Received()
        recv, clock = self.sock.recv, time.monotonic
        cpu0 = time.process_time()
        try:
            data = self._first()
            out.t_first = clock()
            while data:
                out.bytes += len(data)
                check.feed(data)
                out.t_last = clock()
                if check.done:
                    break
                data = recv(RECV_SIZE)
            else:
                out.ended = "eof"
        except TimeoutError:
            out.ended = "idle"
        out.cpu_s = time.process_time() - cpu0
        return out

    def latency(self, classifier: Classifier) -> Received:
        out = Received()
        reassembler = Reassembler(classifier)
        recv, wall, clock = self.sock.recv, time.time_ns, time.monotonic
        samples = out.latency_ns
        cpu0 = time.process_time()
        try:
            data = self._first()
            out.t_first = clock()
            while data:
                now = wall()
                out.bytes += len(data)
                for msg in reassembler.feed(data):
                    ts = classifier.message(msg)
                    if ts is not None:
                        samples.append(now - ts)
                out.t_last = clock()
                if classifier.end is not None:
                    break
                data = recv(RECV_SIZE)
            else:
                out.ended = "eof"
        except TimeoutError:
            out.ended = "idle"
        out.cpu_s = time.process_time() - cpu0
        return out


def latency_summary(samples_ns: array[int], warmup: int) -> dict[str, Any]:
    """Microsecond percentiles of the samples after the first `warmup`."""
    kept = samples_ns[warmup:]
    if not kept:
        return {"samples": 0, "warmup_left_out": min(warmup, len(samples_ns))}
    us = sorted(v / 1000 for v in kept)
    out: dict[str, Any] = {"samples": len(us), "warmup_left_out": warmup}
    for key, value in percentiles(us, LATENCY_POINTS).items():  # exact: every sample kept
        out[f"{key}_us"] = round(value, 1)
    out["min_us"] = round(us[0], 1)
    out["max_us"] = round(us[-1], 1)
    out["mean_us"] = round(sum(us) / len(us), 1)
    return out
