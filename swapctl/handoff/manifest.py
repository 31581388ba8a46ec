"""What moves in a handoff: the listener and every connection with its in-flight state.

Pure data and (de)serialisation; fds are plain ints here. A transfer is split into
parts of at most 253 fds each (the listener, if any, is fd 0 of part 0). Each part's
blob starts with a table of fixed 56-byte records, one per connection of that part
(little-endian `<QIIIIQQQQ`):

    id u64, fd index u32, pending_in length u32, unsent_out length u32, flags u32 (0),
    bytes_in u64, frames_in u64, frames_out u64, lag_drops u64

followed by each connection's `pending_in` then `unsent_out` bytes, in table order:
- `pending_in`: bytes read from the client but not yet forwarded (a partial frame);
- `unsent_out`: bytes owed to the client (frames the old relay had queued, possibly a
  frame's tail when a write stopped mid-frame); the adopter writes them first.
A binary table keeps a 5,000-connection handoff to a few milliseconds in Python and is
a plain struct in any other language (docs/handoff-protocol.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from swapctl.handoff.messages import MAX_FDS, Envelope, HandoffError

RECORD = struct.Struct("<QIIIIQQQQ")
TABLE_FORMAT = "conn-v1"
_ENVELOPE_KEYS = frozenset({"type", "part", "parts", "listener", "connections", "table",
                            "id", "re"})


class ConnState(NamedTuple):
    """One connection's handed-over state (a tuple: thousands are built per handoff)."""

    id: int
    pending_in: bytes = b""
    unsent_out: bytes = b""
    bytes_in: int = 0
    frames_in: int = 0
    frames_out: int = 0
    lag_drops: int = 0


@dataclass(slots=True)
class Transfer:
    """A listener fd (or None) and connections with their fds, plus metadata."""

    listener: int | None
    conns: list[tuple[ConnState, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fds(self) -> list[int]:
        head = [] if self.listener is None else [self.listener]
        return head + [fd for _, fd in self.conns]


def to_parts(transfer: Transfer, kind: str) -> list[tuple[dict[str, Any], bytes, list[int]]]:
    """Split a transfer into messages of type `kind` with at most 253 fds each."""
    room = MAX_FDS - (transfer.listener is not None)
    chunks: list[list[tuple[ConnState, int]]] = [transfer.conns[:room]]
    rest = transfer.conns[room:]
    chunks += [rest[i : i + MAX_FDS] for i in range(0, len(rest), MAX_FDS)]
    out = []
    for index, chunk in enumerate(chunks):
        msg: dict[str, Any] = {"type": kind, "part": index, "parts": len(chunks),
                               "table": TABLE_FORMAT, "connections": len(chunk)}
        fds: list[int] = []
        if index == 0:
            msg.update(transfer.meta)
            msg["listener"] = None
            if transfer.listener is not None:
                msg["listener"] = 0
                fds.append(transfer.listener)
        table, data = [], []
        pack = RECORD.pack
        for state, fd in chunk:
            table.append(pack(state.id, len(fds), len(state.pending_in), len(state.unsent_out),
                              0, state.bytes_in, state.frames_in, state.frames_out,
                              state.lag_drops))
            fds.append(fd)
            if state.pending_in or state.unsent_out:
                data.append(state.pending_in + state.unsent_out)
        out.append((msg, b"".join(table) + b"".join(data), fds))
    return out


class Assembler:
    """Collects the parts of one transfer, in order; `done` once the last arrived."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.transfer = Transfer(None, [])
        self.parts: int | None = None
        self.received = 0

    @property
    def done(self) -> bool:
        return self.parts is not None and self.received == self.parts

    def feed(self, env: Envelope) -> Transfer:
        """Add the next part; returns that part alone as a Transfer (for pipelining)."""
        msg = env.msg
        if env.type != self.kind or msg.get("part") != self.received:
            raise HandoffError(
                f"expected {self.kind} part {self.received}, got {env.type} part {msg.get('part')}"
            )
        part = decode_part(env)
        if self.parts is None:
            self.parts = int(msg["parts"])
            self.transfer.meta = part.meta
            self.transfer.listener = part.listener
        self.transfer.conns.extend(part.conns)
        self.received += 1
        return part


def decode_part(env: Envelope) -> Transfer:
    """One part of a transfer: its listener (part 0 only), connections and metadata."""
    msg = env.msg
    if msg.get("table") != TABLE_FORMAT:
        raise HandoffError(f"unknown connection table format {msg.get('table')!r}")
    listener = None
    if msg.get("listener") is not None:
        listener = env.fds[int(msg["listener"])]
    meta = {k: v for k, v in msg.items() if k not in _ENVELOPE_KEYS}
    return Transfer(listener, _decode(int(msg["connections"]), env), meta)


def _decode(count: int, env: Envelope) -> list[tuple[ConnState, int]]:
    blob, fds = env.blob, env.fds
    end = count * RECORD.size
    if end > len(blob):
        raise HandoffError(f"connection table of {count} records runs past the blob")
    out = []
    pos = end
    for rec in RECORD.iter_unpack(blob[:end]):
        conn_id, fd_index, n_in, n_out, _, b_in, f_in, f_out, drops = rec
        if fd_index >= len(fds) or pos + n_in + n_out > len(blob):
            raise HandoffError(f"connection {conn_id}: fd index or byte lengths out of range")
        pending = blob[pos : pos + n_in] if n_in else b""
        unsent = blob[pos + n_in : pos + n_in + n_out] if n_out else b""
        pos += n_in + n_out
        out.append((ConnState(conn_id, pending, unsent, b_in, f_in, f_out, drops), fds[fd_index]))
    return out
