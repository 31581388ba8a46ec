"""Settings of a load run, each declared once (name, type, default, help).

`LoadConfig` is what the API takes; the `swapctl load` options are generated from
its fields' metadata (see `options()`), so a default or a help text lives only here.
Fields without help are API-only. Invalid values raise `UsageError` on construction.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from swapctl.errors import UsageError
from swapctl.probes.ident import MAX_PUBLISHERS
from swapctl.probes.traffic import Mix
from swapctl.protocol.profiles import Domain, Profile, domain_byte

MAX_UNIX_PATH = 107
DEFAULT_MIX = "trade=4,quote=4,signal=1,vendor=1"


class ConsumerMode(enum.Enum):
    DASHBOARD = "dashboard"  # frames the stream; reconnects at once on EOF
    STRATEGY = "strategy"  # stops for good on EOF (the real arbitrage strategy)


def meta(help: str, flag: str | None = None) -> dict[str, str | None]:
    """Field metadata that makes a LoadConfig field a CLI option."""
    return {"help": help, "flag": flag}


@dataclass(frozen=True, slots=True)
class LoadConfig:
    socket: Path = field(metadata=meta("Unix socket of the relay under test."))
    publishers: int = field(
        default=1, metadata=meta("Publisher connections (1-255), one process each."))
    consumers: int = field(
        default=1, metadata=meta("Consumer connections, one process each."))
    rate: float = field(
        default=10_000.0, metadata=meta("Messages/s across all publishers; 0 = flat out."))
    duration: float | None = field(
        default=5.0, metadata=meta("Seconds of publishing."))  # None: until stop()
    domain: Domain = field(
        default=Domain.MARKET_DATA, metadata=meta("Relay domain: sets header byte 4."))
    profile: Profile = field(
        default=Profile.ALPHAPULSE,
        metadata=meta("Domain numbering: alphapulse (1,2,3) or torq (0,1,2)."))
    mix: str = field(
        default=DEFAULT_MIX,
        metadata=meta("Message kinds by weight: trade, quote, signal (TLV 32), "
                      "vendor (extended TLV)."))
    vendor_size: int = field(
        default=300, metadata=meta("Value bytes of the vendor TLV (over 255: extended form)."))
    source: int = field(
        default=250, metadata=meta("Header source byte of generated messages."))
    consumer_mode: ConsumerMode = field(
        default=ConsumerMode.DASHBOARD,
        metadata=meta("How consumers react to EOF: dashboard reconnects at once, "
                      "strategy stops for good."))
    strategy_consumers: int = field(
        default=0, metadata=meta("Of the consumers, this many behave as strategy."))
    publisher_reconnect: bool = field(
        default=True,
        metadata=meta("Publishers reconnect on a write error or EOF with backoff and resend "
                      "the failed message once (as the real market-data publisher)."))
    reconnect_attempts: int = field(
        default=10, metadata=meta("Publisher reconnect attempts before giving up."))
    reconnect_backoff: float = field(
        default=0.1, metadata=meta("First publisher reconnect delay in seconds (doubles)."))
    dashboard_retry: float = field(
        default=5.0, metadata=meta("Seconds between a dashboard's connect attempts."))
    id_header: bool = field(
        default=False,
        metadata=meta("Publishers write the 32-byte identification header "
                      "(domain 1, source 2) on every connect."))
    audit_echo: bool = field(
        default=False,
        metadata=meta("Publishers audit their echo instead of discarding it.",
                      flag="--publishers-audit-echo"))
    settle: float = field(
        default=2.0,
        metadata=meta("After publishing, wait until every message arrived or this many "
                      "seconds pass without a new one."))
    settle_limit: float = field(
        default=30.0, metadata=meta("Longest wait in seconds for the stream to settle."))
    connect_timeout: float = field(
        default=5.0, metadata=meta("Seconds to wait for the relay to accept."))
    batch: int = field(default=256, metadata=meta("Most messages per write."))
    run_tag: int | None = None  # API only: random unless given
    # API only: spread clients over several relays (client i uses entry i % len);
    # empty = every client on `socket` (e.g. a bridge test: publishers on one relay,
    # consumers on both)
    consumer_sockets: tuple[Path, ...] = ()
    publisher_sockets: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.publishers < MAX_PUBLISHERS, f"--publishers {self.publishers}: use 1-255"),
            (self.consumers >= 0, f"--consumers {self.consumers}: use 0 or more"),
            (self.consumers > 0 or self.audit_echo,
             "--consumers 0 checks nothing: add consumers or --publishers-audit-echo"),
            (self.rate >= 0, f"--rate {self.rate}: use 0 (flat out) or more"),
            (self.duration is None or self.duration > 0, f"--duration {self.duration}: use > 0"),
            (0 <= self.strategy_consumers <= self.consumers,
             f"--strategy-consumers {self.strategy_consumers}: use 0-{self.consumers}"),
            (0 <= self.source <= 255, f"--source {self.source}: use 0-255"),
            (1 <= self.batch <= 65_536, f"--batch {self.batch}: use 1-65536"),
            (self.settle > 0 and self.settle_limit >= self.settle,
             f"--settle {self.settle} / --settle-limit {self.settle_limit}: "
             "use settle > 0 and settle-limit >= settle"),
            (min(self.reconnect_attempts, self.reconnect_backoff, self.dashboard_retry,
                 self.connect_timeout) >= 0, "reconnect and timeout settings must be >= 0"),
            (len(os.fsencode(self.socket)) <= MAX_UNIX_PATH,
             f"--socket {self.socket} is longer than {MAX_UNIX_PATH} bytes: use a shorter path"),
            (str(self.socket) not in ("", "."), "--socket is required: the relay's Unix socket"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        self.message_mix()  # a bad mix is a usage error now, not in a child process

    def message_mix(self) -> Mix:
        return Mix.parse(self.mix, vendor_size=self.vendor_size)

    @property
    def domain_byte(self) -> int:
        return domain_byte(self.domain, self.profile)

    def consumer_socket(self, index: int) -> Path:
        spread = self.consumer_sockets
        return spread[index % len(spread)] if spread else self.socket

    def publisher_socket(self, index: int) -> Path:
        spread = self.publisher_sockets
        return spread[index % len(spread)] if spread else self.socket

    def consumer_modes(self) -> tuple[ConsumerMode, ...]:
        """Each consumer's mode: the last `strategy_consumers` are strategies."""
        plain = self.consumers - self.strategy_consumers
        return (self.consumer_mode,) * plain + (ConsumerMode.STRATEGY,) * self.strategy_consumers


@dataclass(frozen=True, slots=True)
class Option:
    """One CLI option generated from a LoadConfig field."""

    name: str
    flag: str
    default: Any
    help: str


def options() -> list[Option]:
    out = []
    for f in fields(LoadConfig):
        if "help" in f.metadata:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            out.append(Option(f.name, flag, f.default, f.metadata["help"]))
    return out
