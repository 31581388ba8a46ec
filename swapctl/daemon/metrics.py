"""swapctld's Prometheus metrics: one private registry, one optional HTTP endpoint.

How this works: `DaemonMetrics` owns a `CollectorRegistry` of its own (never the process-wide
default, so tests and embedded daemons can make as many as they like) and turns daemon events
into metric updates. Exposition and the HTTP endpoint are prometheus_client's; `serve` only
parses "HOST:PORT", translates bind failures into a UsageError and keeps the server to close.
Relay gauges are keyed by slot: a slot's release label is remembered so that a new release
in the slot, or the slot stopping, removes the old series instead of leaving stale values.
See docs/daemon-metrics.md for the list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server

from swapctl.errors import SwapctlError, UsageError

Decision = Literal["committed", "rolled_back", "failed"]
DECISIONS: frozenset[str] = frozenset(("committed", "rolled_back", "failed"))

PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0)
ROLLBACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0)
SWAP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_CLOSE_TIMEOUT_S = 5.0


def parse_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' (all interfaces) -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(
            f"metrics listen address {listen!r}: expected HOST:PORT, such as 127.0.0.1:9108 "
            "(port 0 picks a free port)"
        )
    return host or "0.0.0.0", int(port_text)


class DaemonMetrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._slot_release: dict[tuple[str, str], str] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        r = self.registry
        self.swaps = Counter("swapctl_swaps_total", "Swaps finished, by decision.",
                             ["service", "decision"], registry=r)
        self.rollbacks = Counter("swapctl_rollbacks_total", "Swaps that rolled back.",
                                 ["service"], registry=r)
        self.pause = Histogram("swapctl_swap_pause_seconds",
                               "Time clients were paused during the handoff.",
                               ["service"], buckets=PAUSE_BUCKETS, registry=r)
        self.rollback_duration = Histogram("swapctl_rollback_duration_seconds",
                                           "Time from rollback decision to old release serving.",
                                           ["service"], buckets=ROLLBACK_BUCKETS, registry=r)
        self.swap_duration = Histogram("swapctl_swap_duration_seconds",
                                       "Whole swap, start to decision.",
                                       ["service"], buckets=SWAP_BUCKETS, registry=r)
        self.last_swap = Gauge("swapctl_last_swap_timestamp_seconds",
                               "Unix time the last swap finished.", ["service"], registry=r)
        self.in_progress = Gauge("swapctl_swap_in_progress", "1 while a swap runs.",
                                 ["service"], registry=r)
        self.relay_up = Gauge("swapctl_relay_up", "1 if the slot's relay is healthy, else 0.",
                              ["service", "slot", "release"], registry=r)
        self.relay_connections = Gauge("swapctl_relay_connections",
                                       "Client connections the slot's relay reports.",
                                       ["service", "slot", "release"], registry=r)
        self.recoveries = Counter("swapctl_recoveries_total",
                                  "Swaps found unfinished at daemon start, by outcome.",
                                  ["service", "outcome"], registry=r)
        self.info = Gauge("swapctl_daemon_info", "Always 1; the version is the label.",
                          ["version"], registry=r)
        self.start_time = Gauge("swapctl_daemon_start_time_seconds",
                                "Unix time the daemon started.", registry=r)

    def swap_finished(self, service: str, decision: Decision, *, pause_ms: float | None,
                      rollback_ms: float | None, duration_s: float,
                      strategy: str = "handoff") -> None:
        """Record a finished swap. `strategy` is accepted for callers; it is not a label."""
        if decision not in DECISIONS:
            raise ValueError(f"swap decision {decision!r} is not one of {sorted(DECISIONS)}")
        self.swaps.labels(service, decision).inc()
        if decision == "rolled_back" or rollback_ms is not None:
            self.rollbacks.labels(service).inc()
        if pause_ms is not None:
            self.pause.labels(service).observe(pause_ms / 1000)
        if rollback_ms is not None:
            self.rollback_duration.labels(service).observe(rollback_ms / 1000)
        self.swap_duration.labels(service).observe(duration_s)
        self.last_swap.labels(service).set(self._clock())

    def swap_started(self, service: str) -> None:
        self.in_progress.labels(service).set(1)

    def swap_ended(self, service: str) -> None:
        self.in_progress.labels(service).set(0)

    def relay_seen(self, service: str, slot: str, release: str, healthy: bool,
                   connections: int | None) -> None:
        with self._lock:
            previous = self._slot_release.get((service, slot))
            if previous is not None and previous != release:
                self._remove_series(service, slot, previous)
            self._slot_release[(service, slot)] = release
            self.relay_up.labels(service, slot, release).set(1 if healthy else 0)
            if connections is None:
                self.relay_connections.remove(service, slot, release)
            else:
                self.relay_connections.labels(service, slot, release).set(connections)

    def relay_gone(self, service: str, slot: str) -> None:
        with self._lock:
            release = self._slot_release.pop((service, slot), None)
            if release is not None:
                self._remove_series(service, slot, release)

    def _remove_series(self, service: str, slot: str, release: str) -> None:
        self.relay_up.remove(service, slot, release)
        self.relay_connections.remove(service, slot, release)

    def recovered(self, service: str, outcome: str) -> None:
        self.recoveries.labels(service, outcome).inc()

    def daemon_info(self, version: str, started_at: float | None = None) -> None:
        self.info.clear()
        self.info.labels(version).set(1)
        self.start_time.set(self._clock() if started_at is None else started_at)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)

    def serve(self, listen: str | None) -> tuple[str, int] | None:
        """Serve /metrics on `listen` ("HOST:PORT") in a daemon thread; the bound address."""
        if listen is None:
            return None
        if self._server is not None:
            raise SwapctlError(f"metrics endpoint already serving on {self.address}")
        host, port = parse_listen(listen)
        try:
            server, thread = _start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(
                f"metrics listen address {listen!r}: cannot listen there ({exc.strerror or exc}); "
                "pick a free port or a local address, or leave metrics off"
            ) from exc
        self._server, self._thread = server, thread
        return self.address

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(_CLOSE_TIMEOUT_S)
