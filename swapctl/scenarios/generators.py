"""Traffic generators: each appends the steps of one kind of traffic to a scenario.

A generator is a function of a `Builder` (topology, steps so far, seeded random
generator, message factory) and a few integer parameters. Built-in scenarios and
YAML scenario files are both lists of generator calls, so the edge cases are written
once. Write sizes stay under 32 KiB unless a case needs more, so that one write is
one read at the relay (the kernel may cut larger writes, which only matters to relays
that forward reads rather than frames).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from swapctl.errors import UsageError
from swapctl.protocol import MAX_MESSAGE, Tlv, encode_message
from swapctl.scenarios.model import (
    Client,
    Connect,
    Disconnect,
    Pause,
    Resume,
    Role,
    Scenario,
    Settle,
    Step,
    Write,
)
from swapctl.scenarios.traffic import IDENTIFICATION, Traffic

STANDARD = (Client("adapter-1", Role.PUBLISHER), Client("adapter-2", Role.PUBLISHER),
            Client("dashboard", Role.CONSUMER), Client("strategy", Role.CONSUMER),
            Client("quiet", Role.SILENT))
_SOURCES = (1, 2, 3, 4, 5, 20, 42, 60)
_GARBAGE = (b"ping\n", b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 64, b"\xef\xbe\xad",
            b"\xef\xbe\xad\xdf" + bytes(28), b"hello relay, are you there?\n")
MAX_WRITE = 32 * 1024


@dataclass
class Builder:
    name: str
    seed: int
    domain_byte: int
    clients: list[Client] = field(default_factory=lambda: list(STANDARD))
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.name}/{self.seed}")
        self.traffic = Traffic(self.rng, self.domain_byte)

    def client(self, name: str, role: Role, at_start: bool = True) -> str:
        if all(c.name != name for c in self.clients):
            self.clients.append(Client(name, role, at_start))
        return name

    def source(self, client: str) -> int:
        names = [c.name for c in self.clients]
        return _SOURCES[names.index(client) % len(_SOURCES)] if client in names else 2

    def write(self, client: str, data: bytes, wait: bool = True) -> None:
        self.steps.append(Write(client, data, wait))

    def messages(self, client: str, count: int, kind: str = "mixed") -> list[bytes]:
        return [self.traffic.named(kind, self.source(client)) for _ in range(count)]

    def pub(self, k: int) -> str:
        """The k-th publisher connected from the start (cycling), e.g. adapter-1."""
        pubs = [c.name for c in self.clients if c.role is Role.PUBLISHER and c.at_start]
        if not pubs:
            raise UsageError(f"scenario {self.name}: these steps need a client with role "
                             "publisher connected from the start")
        return pubs[k % len(pubs)]

    def silent(self) -> list[str]:
        return [c.name for c in self.clients if c.role is Role.SILENT and c.at_start]

    def settle(self) -> None:
        if self.steps and not isinstance(self.steps[-1], Settle):
            self.steps.append(Settle())

    def build(self, description: str, params: dict[str, int]) -> Scenario:
        """The scenario; clients in canonical order: at start, then as they connect."""
        self.settle()
        late = [s.client for s in self.steps if isinstance(s, Connect)]
        clients = [c for c in self.clients if c.at_start]
        clients += sorted((c for c in self.clients if not c.at_start),
                          key=lambda c: late.index(c.name) if c.name in late else len(late))
        scenario = Scenario(self.name, self.seed, self.domain_byte, tuple(clients),
                            tuple(self.steps), description,
                            tuple(sorted((k, str(v)) for k, v in params.items())))
        scenario.check()
        return scenario


def identify(b: Builder) -> None:
    """Each publisher's first write: the 32-byte identification header (domain 1, source 2)."""
    for c in b.clients:
        if c.role in (Role.PUBLISHER, Role.SILENT) and c.at_start:
            b.write(c.name, IDENTIFICATION)
    b.settle()


def mix(b: Builder, messages: int = 300) -> None:
    """A realistic mix from two adapters (1-4 messages a write) and silent publishers."""
    left = messages
    writers = [b.pub(0), b.pub(1), *b.silent()]
    weights = [45, 45] + [10] * (len(writers) - 2)
    while left > 0:
        who = b.rng.choices(writers, weights)[0]
        count = min(left, b.rng.randint(1, 4))
        b.write(who, b"".join(b.messages(who, count)))
        left -= count
    b.settle()


def split(b: Builder, messages: int = 24) -> None:
    """Messages cut across writes: inside the header, at 32, inside TLVs, byte by byte."""
    for k in range(messages):
        msg = b.messages(b.pub(0), 1)[0]
        points = sorted({p for p in (b.rng.choice((1, 4, 16, 31, 32, 33, 40)),
                                     b.rng.randrange(1, len(msg))) if p < len(msg)})
        if k % 8 == 7 and len(msg) <= 100:
            points = list(range(1, len(msg)))  # byte by byte
        cuts = [0, *points, len(msg)]
        parts = [msg[x:y] for x, y in itertools.pairwise(cuts)]
        if k % 3 == 2:  # the last part travels with the next two messages
            parts[-1] += b"".join(b.messages(b.pub(0), 2))
        for part in parts:
            b.write(b.pub(0), part)
    b.settle()


def coalesced(b: Builder, writes: int = 8) -> None:
    """Many messages in one write (up to 32 KiB), from both adapters in turn."""
    for k in range(writes):
        who = b.pub(k)
        batch: list[bytes] = []
        for _ in range(b.rng.randint(10, 200)):
            msg = b.traffic.named(b.rng.choice(("trade", "quote", "signal")), b.source(who))
            if sum(map(len, batch)) + len(msg) > MAX_WRITE:
                break
            batch.append(msg)
        b.write(who, b"".join(batch))
    b.settle()


def garbage(b: Builder, writes: int = 12) -> None:
    """Non-Protocol bytes alone, before, after and between valid messages."""
    for k in range(writes):
        junk = b.rng.choice(_GARBAGE) if k % 3 else b.rng.randbytes(b.rng.randint(1, 200))
        junk = junk.replace(b"\xef\xbe\xad\xde", b"\xef\xbe\xad\xdd")
        msgs = b.messages(b.pub(1), 2)
        b.write(b.pub(1), [junk, junk + msgs[0], msgs[0] + junk + msgs[1],
                              msgs[0] + junk][k % 4])
    b.settle()


def wrong_domain(b: Builder, messages: int = 30) -> None:
    """Messages of other domains (either numbering), alone and next to valid ones."""
    others = [d for d in (0, 1, 2, 3, 4, 255) if d != b.domain_byte]
    for k in range(messages):
        src = b.source(b.pub(0))
        wrong = b.traffic.message(src, [Tlv(1, b.rng.randbytes(40))], b.rng.choice(others))
        good = b.messages(b.pub(0), 1)[0]
        b.write(b.pub(0), [wrong, wrong + good, good + wrong][k % 3])
    b.settle()


def truncated(b: Builder) -> None:
    """Partial messages: cut then disconnect, header only, and cut then a new message."""
    for n, cut in enumerate((20, 40, 50), 1):
        who = b.client(f"truncator-{n}", Role.PUBLISHER, at_start=False)
        b.steps.append(Connect(who))
        msgs = b.messages(who, 3)
        if n == 3:
            b.write(who, msgs[0] + msgs[1][:cut])
            b.write(who, msgs[2])
        else:
            b.write(who, msgs[0] + msgs[1][:cut])
        b.steps.append(Disconnect(who))  # the driver settles before a disconnect
    b.settle()


def oversize(b: Builder, largest: int = 1) -> None:
    """A header that declares more than 1 MiB, then the largest legal message (if asked)."""
    who = b.pub(1)
    src = b.source(who)
    header = encode_message(b.domain_byte, src, b"")
    claim = header[:24] + (MAX_MESSAGE * 2).to_bytes(4, "little") + header[28:]
    b.write(who, claim + bytes(100))
    b.write(who, b"".join(b.messages(who, 2)))
    if largest:
        room = MAX_MESSAGE - 32
        tlvs: list[Tlv] = []
        while room > 0:
            size = min(65_535, room - 5)
            tlvs.append(Tlv(250, bytes([len(tlvs)]) * size, extended=True))
            room -= size + 5
        b.write(who, b.traffic.message(src, tlvs))
    b.write(who, b"".join(b.messages(who, 2)))
    b.settle()


def slow_consumer(b: Builder, writes: int = 2000) -> None:
    """A consumer that stops reading while `writes` one-message writes go by."""
    slow = b.client("slow", Role.SLOW)
    b.settle()
    b.steps.append(Pause(slow))
    for _ in range(writes):
        b.write(b.pub(0), b.messages(b.pub(0), 1)[0])
    b.steps.append(Resume(slow))
    b.settle()


def churn(b: Builder, cycles: int = 8) -> None:
    """Consumers connect and leave mid-stream; a publisher reconnects and identifies again."""
    for k in range(cycles):
        who = b.client(f"churn-{k + 1}", Role.CONSUMER, at_start=False)
        b.steps.append(Connect(who))  # the driver waits until the relay accepted it
        for _ in range(b.rng.randint(1, 3)):
            b.write(b.pub(k), b"".join(b.messages(b.pub(k), 2)))
        b.steps.append(Disconnect(who))  # after a settle, done by the driver
    again = b.client(f"{b.pub(1)}-reconnected", Role.PUBLISHER, at_start=False)
    b.steps.append(Connect(again))
    b.write(again, IDENTIFICATION)
    b.write(again, b"".join(b.messages(again, 3)))
    b.settle()


def soak(b: Builder, messages: int = 100_000, per_write: int = 64, burst: int = 40) -> None:
    """Full speed: bursts of `burst` writes of `per_write` trades, adapters taking turns.

    Inside a burst writes do not wait for the relay (reads coalesce as under real
    load); a burst ends when the relay has read it, so the order across adapters holds.
    """
    left, turn = messages, 0
    while left > 0:
        who = b.pub(turn)
        for k in range(burst):
            count = min(left, per_write)
            if count <= 0:
                break
            left -= count
            last = k == burst - 1 or left <= 0
            b.write(who, b"".join(b.messages(who, count, "trade")), wait=last)
        turn += 1
    b.settle()


Generator = Callable[..., None]
GENERATORS: dict[str, Generator] = {
    "identify": identify, "mix": mix, "split": split, "coalesced": coalesced,
    "garbage": garbage, "wrong-domain": wrong_domain, "truncated": truncated,
    "oversize": oversize, "slow-consumer": slow_consumer, "churn": churn, "soak": soak,
}
