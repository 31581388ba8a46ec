"""Settings of the reference relay: forwarding mode, bounds and injected faults."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from swapctl.protocol import MAX_MESSAGE
from swapctl.protocol.profiles import Domain, Profile, domain_byte

READ_SIZE = 65_536  # the real relays' read buffer per connection
DEFAULT_MAX_BACKLOG = 16 * 1024 * 1024  # bytes queued for one slow consumer before shedding
DEFAULT_MAX_PARTIAL_TOTAL = 64 * 1024 * 1024  # bytes of partial frames held, all clients
MAX_DRAIN_READS = 64  # reads of what a closing client had sent (4 MiB) before closing it


class SlowConsumer(enum.Enum):
    """What the relay does with a consumer whose backlog passes `max_backlog`
    (docs/relay.md: "Bounds and the slow consumer")."""

    DROP_OLDEST = "drop-oldest"  # shed its oldest whole units, counted (the real relays)
    DISCONNECT = "disconnect"  # cut it, counted
    BLOCK = "block"  # stop reading publishers until it has caught up (lossless)


class Forwarding(enum.Enum):
    """How a relay turns what it reads into what it forwards."""

    FRAME = "frame"  # whole frames only, split/coalesced reads handled (the reference)
    CHUNK = "chunk"  # each read forwarded as one unit if its start is valid (generic Rust relay)
    RAW = "raw"  # each read forwarded as is, nothing checked (old market-data relay)
    SINK = "sink"  # read and count, forward nothing (old signal/execution relays)


@dataclass(frozen=True, slots=True)
class Faults:
    """Misbehaviour on purpose, for drills and tests. 0 / None = off."""

    drop_every: int = 0  # drop every Nth unit received (frames, or reads outside FRAME)
    corrupt_every: int = 0  # flip the last byte of every Nth unit
    stall_after: int | None = None  # stop reading after N units
    crash_after: int | None = None  # exit abruptly after N units
    crash_after_seconds: float | None = None
    slow_start: float = 0.0  # seconds to wait before listening
    never_ready: bool = False  # never listen at all (never say ready, with --handoff)
    crash_at: str | None = None  # handoff phase to die in: ready, probe, adopt, resume
    no_reply_at: str | None = None  # handoff request served but never answered: adopt

    @property
    def per_frame(self) -> bool:
        return bool(
            self.drop_every
            or self.corrupt_every
            or self.stall_after is not None
            or self.crash_after is not None
        )


@dataclass(frozen=True, slots=True)
class RelayConfig:
    socket: Path
    domain: Domain = Domain.MARKET_DATA
    profile: Profile = Profile.ALPHAPULSE
    forwarding: Forwarding = Forwarding.FRAME
    echo: bool = True
    max_message: int = MAX_MESSAGE
    max_backlog: int = DEFAULT_MAX_BACKLOG
    on_slow_consumer: SlowConsumer = SlowConsumer.DROP_OLDEST
    max_partial_total: int = DEFAULT_MAX_PARTIAL_TOTAL
    stats_socket: Path | None = None
    listen_fd: int | None = None
    handoff: Path | None = None  # orchestrator's control socket: listener and clients come from it
    token: str = ""  # how this relay introduces itself to the orchestrator
    release: str = ""  # the release name it reports
    faults: Faults = field(default_factory=Faults)

    @property
    def domain_byte(self) -> int:
        return domain_byte(self.domain, self.profile)
