"""The relay's counters, readable while it runs (stats socket, SIGUSR1, exit log)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class Counters:
    connections_open: int = 0
    connections_total: int = 0
    disconnects: int = 0
    reads: int = 0
    bytes_in: int = 0
    frames_in: int = 0  # whole frames accepted for forwarding (FRAME); reads elsewhere
    frames_out: int = 0  # frames (or units) handed to consumers, counted once per receiver
    bytes_out: int = 0  # bytes actually written to consumers
    rejected_domain: int = 0  # complete frames of another domain, dropped
    rejected_checksum: int = 0
    skipped_bytes: int = 0  # garbage skipped while resynchronising
    resyncs: int = 0
    truncated: int = 0  # partial frames left when a publisher disconnected
    chunks_dropped: int = 0  # CHUNK mode: reads whose start failed validation
    lag_drops_frames: int = 0  # frames shed from slow consumers' backlogs
    lag_drops_bytes: int = 0
    lag_episodes: int = 0  # times a consumer crossed the backlog bound
    lagging_consumers: int = 0  # consumers currently over the bound
    fault_dropped: int = 0
    fault_corrupted: int = 0
    stalled: bool = False
    adopted: int = 0  # connections taken over from another relay
    handed_over: int = 0  # connections given to another relay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
