"""A scenario: the clients of a relay and the exact traffic they send, as data.

A scenario is a topology (named clients with a role) and a list of steps. It is fully
determined by its generator and seed, so the old and the new relay can be given
byte-identical traffic, and a difference can be replayed. The driver
(swapctl.scenarios.driver) executes the steps against real sockets.

Roles:
- publisher: writes, and reads what the relay sends it (its echo included);
- consumer: only reads;
- silent: a publisher that never reads its echo (what it was sent is read at the end);
- slow: a consumer with a small receive buffer that stops reading between `pause`
  and `resume` steps.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from swapctl.errors import UsageError


class Role(enum.Enum):
    PUBLISHER = "publisher"
    CONSUMER = "consumer"
    SILENT = "silent"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    role: Role
    at_start: bool = True  # connected before the first step (else by a Connect step)

    @property
    def reads(self) -> bool:
        return self.role is not Role.SILENT


@dataclass(frozen=True, slots=True)
class Write:
    """One write() of `data` by `client`; the relay reads it before the next step."""

    client: str
    data: bytes
    wait: bool = True  # wait until the relay has read it (keeps reads = writes)


@dataclass(frozen=True, slots=True)
class Connect:
    client: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    client: str


@dataclass(frozen=True, slots=True)
class Pause:
    """A slow client stops reading."""

    client: str


@dataclass(frozen=True, slots=True)
class Resume:
    client: str


@dataclass(frozen=True, slots=True)
class Settle:
    """Wait until every reading client has stopped receiving (a sync point)."""


Step = Write | Connect | Disconnect | Pause | Resume | Settle


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    seed: int
    domain_byte: int
    clients: tuple[Client, ...]
    steps: tuple[Step, ...]
    description: str = ""
    params: tuple[tuple[str, str], ...] = field(default=())

    def client(self, name: str) -> Client:
        for client in self.clients:
            if client.name == name:
                return client
        raise UsageError(f"scenario {self.name}: no client named {name!r}")

    def writes(self) -> Iterator[Write]:
        return (s for s in self.steps if isinstance(s, Write))

    @property
    def traffic_bytes(self) -> int:
        return sum(len(w.data) for w in self.writes())

    def with_writes(self, keep: set[int]) -> Scenario:
        """The same scenario keeping only the writes whose index (among writes) is in `keep`."""
        steps: list[Step] = []
        index = 0
        for step in self.steps:
            if isinstance(step, Write):
                if index in keep:
                    steps.append(step)
                index += 1
            else:
                steps.append(step)
        return replace(self, steps=tuple(steps))

    def check(self) -> None:
        """Raise UsageError if a step names an unknown client or the steps cannot run."""
        names = {c.name for c in self.clients}
        if len(names) != len(self.clients):
            raise UsageError(f"scenario {self.name}: client names must be unique")
        connected = {c.name for c in self.clients if c.at_start}
        ever = set(connected)
        for number, step in enumerate(self.steps, 1):
            if isinstance(step, Settle):
                continue
            where = f"scenario {self.name}: step {number} ({type(step).__name__.lower()})"
            if step.client not in names:
                raise UsageError(f"{where}: unknown client {step.client!r}; "
                                 f"clients are {', '.join(sorted(names))}")
            if isinstance(step, Connect):
                if step.client in ever:
                    raise UsageError(f"{where}: {step.client} connects a second time; "
                                     "a new connection needs a new client name")
                connected.add(step.client)
                ever.add(step.client)
            elif step.client not in connected:
                raise UsageError(f"{where}: {step.client} is not connected at that point")
            elif isinstance(step, Disconnect):
                connected.discard(step.client)
