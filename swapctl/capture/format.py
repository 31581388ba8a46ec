"""swapctl's capture records, and how a scenario becomes records and back.

A capture is a pcapng file (pcapng.py writes it). Every packet is one *record*:

    offset  size  field
    0       1     format version: 1
    1       1     kind: 1 write (client -> relay), 2 read (relay -> client),
                  3 open (a client connects; data = JSON {"name", "role", "at_start"}),
                  4 close (the client closed), 5 eof (the relay closed the client),
                  6 settle (sync point), 7 pause (stops reading), 8 resume
    2       2     flags: bit 0 = the writer waited until the relay had read this write
    4       4     connection id (u32, little-endian), 0 for settle
    8       ...   data (the bytes written or read; JSON for open)

Link type LINKTYPE_USER0 (147); timestamps in nanoseconds (if_tsresol 9). Each pcapng
interface is one view: `scenario` (the traffic that was sent), `old` / `new` (what
each client received from that relay), `tap` (what a recorder received from a live
relay). tools/wireshark/protocol_v2.lua dissects records and Protocol V2 inside.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from swapctl.errors import UsageError
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

VERSION = 1
LINKTYPE_USER0 = 147
RECORD = struct.Struct("<BBHI")
FLAG_WAIT = 0x1


class Kind(enum.IntEnum):
    WRITE = 1
    READ = 2
    OPEN = 3
    CLOSE = 4
    EOF = 5
    SETTLE = 6
    PAUSE = 7
    RESUME = 8


_ONE_CLIENT: dict[Kind, type[Disconnect | Pause | Resume]] = {
    Kind.CLOSE: Disconnect, Kind.PAUSE: Pause, Kind.RESUME: Resume}


@dataclass(frozen=True, slots=True)
class Record:
    view: str  # the pcapng interface name: scenario, old, new, tap
    kind: Kind
    conn: int
    data: bytes = b""
    ts_ns: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        return RECORD.pack(VERSION, self.kind, self.flags, self.conn) + self.data


def unpack(view: str, packet: bytes, ts_ns: int, where: str) -> Record:
    """Parse one record; `where` names the file and packet for the error message."""
    if len(packet) < RECORD.size:
        raise UsageError(f"{where}: a record needs {RECORD.size} header bytes, has "
                         f"{len(packet)}: not a swapctl capture?")
    version, kind, flags, conn = RECORD.unpack_from(packet)
    if version != VERSION:
        raise UsageError(f"{where}: record format version {version}, this swapctl reads "
                         f"{VERSION}")
    try:
        return Record(view, Kind(kind), conn, packet[RECORD.size :], ts_ns, flags)
    except ValueError:
        raise UsageError(f"{where}: unknown record kind {kind}") from None


def open_data(client: Client) -> bytes:
    return json.dumps({"name": client.name, "role": client.role.value,
                       "at_start": client.at_start}, sort_keys=True).encode()


def scenario_records(scenario: Scenario, tick_ns: int = 1_000_000) -> list[Record]:
    """The scenario's traffic as `scenario` records, one tick apart (no real timing)."""
    ids = {c.name: n for n, c in enumerate(scenario.clients, 1)}
    out = [Record("scenario", Kind.OPEN, ids[c.name], open_data(c))
           for c in scenario.clients if c.at_start]
    for step in scenario.steps:
        if isinstance(step, Write):
            out.append(Record("scenario", Kind.WRITE, ids[step.client], step.data,
                              flags=FLAG_WAIT if step.wait else 0))
        elif isinstance(step, Settle):
            out.append(Record("scenario", Kind.SETTLE, 0))
        elif isinstance(step, Connect):
            client = scenario.client(step.client)
            out.append(Record("scenario", Kind.OPEN, ids[client.name], open_data(client)))
        else:
            kind = {Disconnect: Kind.CLOSE, Pause: Kind.PAUSE, Resume: Kind.RESUME}[type(step)]
            out.append(Record("scenario", kind, ids[step.client]))
    base = 1_700_000_000 * 10**9
    return [Record(r.view, r.kind, r.conn, r.data, base + k * tick_ns, r.flags)
            for k, r in enumerate(out)]


def records_to_scenario(records: Iterable[Record], name: str, seed: int, domain_byte: int
                        ) -> Scenario:
    """Rebuild a scenario from `scenario` records (as written by scenario_records)."""
    clients: dict[int, Client] = {}
    steps: list[Step] = []
    for rec in records:
        if rec.kind is Kind.OPEN:
            client = clients[rec.conn] = _client(rec)
            if not client.at_start:
                steps.append(Connect(client.name))
        elif rec.kind is Kind.WRITE:
            steps.append(Write(_name(clients, rec), rec.data, bool(rec.flags & FLAG_WAIT)))
        elif rec.kind is Kind.SETTLE:
            steps.append(Settle())
        elif rec.kind in (Kind.CLOSE, Kind.PAUSE, Kind.RESUME):
            steps.append(_ONE_CLIENT[rec.kind](_name(clients, rec)))
    scenario = Scenario(name, seed, domain_byte, tuple(clients.values()), tuple(steps),
                        "replayed from a capture")
    scenario.check()
    return scenario


def tap_to_scenario(records: Iterable[Record], name: str, domain_byte: int) -> Scenario:
    """A recorded tap replayed: each read becomes one write of a `replay` publisher,
    watched by a consumer; so the consumer should receive what the tap received."""
    steps: list[Step] = [Write("replay", r.data) for r in records if r.kind is Kind.READ]
    steps.append(Settle())
    clients = (Client("replay", Role.PUBLISHER), Client("observer", Role.CONSUMER))
    return Scenario(name, 0, domain_byte, clients, tuple(steps), "replayed from a tap")


def _client(rec: Record) -> Client:
    try:
        info = json.loads(rec.data)
        return Client(str(info["name"]), Role(info["role"]), bool(info.get("at_start", True)))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"capture: open record of connection {rec.conn} is not valid "
                         f"client JSON ({exc})") from None


def _name(clients: dict[int, Client], rec: Record) -> str:
    client = clients.get(rec.conn)
    if client is None:
        raise UsageError(f"capture: record {rec.kind.name.lower()} for connection "
                         f"{rec.conn}, which no open record introduced")
    return client.name


def views(records: Iterable[Record], view: str) -> Iterator[Record]:
    return (r for r in records if r.view == view)
