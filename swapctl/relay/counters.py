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
    lag_drops_frames: int = 0  # frames shed from consumers' backlogs (drop-oldest)
    lag_drops_bytes: int = 0
    echo_shed_frames: int = 0  # frames shed from publishers' backlogs (their unread echo)
    echo_shed_bytes: int = 0
    lag_episodes: int = 0  # times a connection's backlog crossed the bound and was shed
    lagging_consumers: int = 0  # connections (publishers too) being shed right now
    slow_disconnects: int = 0  # consumers cut for a backlog over the bound (disconnect)
    slow_disconnect_bytes: int = 0  # bytes they were owed, discarded with them
    block_episodes: int = 0  # times a consumer's backlog stopped the publishers (block)
    blocking_consumers: int = 0  # consumers over the bound right now (block)
    blocked_s: float = 0.0  # seconds publishers were not read, all episodes ended
    drained_at_close_bytes: int = 0  # read from a client after its write side failed
    unsent_at_close_bytes: int = 0  # owed to clients that had gone away, discarded
    partial_bytes: int = 0  # bytes held in partial frames, all connections, right now
    partial_refused: int = 0  # connections cut for taking partial_bytes over the bound
    partial_refused_bytes: int = 0  # the partial frames they held
    fault_dropped: int = 0
    fault_corrupted: int = 0
    stalled: bool = False
    adopted: int = 0  # connections taken over from another relay
    handed_over: int = 0  # connections given to another relay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
