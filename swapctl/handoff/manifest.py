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

The pre-copy extension (docs/handoff-protocol.md section 10) adds a second layout,
`delta-v1`: the blob starts with `closed` connection ids (u64 each: connections the
relay closed since the pre-copy), then the same records, where fd index 0xFFFFFFFF
means "pre-copied, no fd in this message" and flag DEFERRED means the record's
unsent_out length is owed to the client but its bytes follow out of band (backlog.py),
not in this blob. Flag HEAD_STARTED: the relay stopped mid-frame in that client's stream.
With the `tail` extension (section 12), flag TAIL means the record's unsent_out length
is owed and is the last that many bytes of part 0's tail section, which ends its blob
(the part's `tail` names its units and bytes); those bytes are not inline either.
The orchestrator's own copy (`decode_part`) takes each such record's bytes from the
section, so the copy it keeps for a rollback stands alone, as a record with inline bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from swapctl.handoff.messages import MAX_FDS, Envelope, HandoffError

RECORD = struct.Struct("<QIIIIQQQQ")
CLOSED_ID = struct.Struct("<Q")
TABLE_FORMAT = "conn-v1"
DELTA_FORMAT = "delta-v1"
NO_FD = 0xFFFFFFFF  # delta-v1: the connection was pre-copied; no fd travels with it
DEFERRED = 1  # flag: the unsent_out bytes follow out of band (a `backlog` message)
HEAD_STARTED = 2  # flag: the client's stream stopped mid-frame (never drop what is owed)
TAIL = 4  # flag: the unsent_out bytes are the end of part 0's tail section
_ENVELOPE_KEYS = frozenset({"type", "part", "parts", "listener", "connections", "table",
                            "id", "re", "closed", "tail"})


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
    """A listener fd (or None) and connections with their fds, plus metadata. In a
    delta (`table` == delta-v1) an fd of -1 means the connection was pre-copied, and
    `closed` lists the ids the relay closed since the pre-copy and `owed` the flags
    (DEFERRED, HEAD_STARTED) and out-of-band byte count of a connection, by id."""

    listener: int | None
    conns: list[tuple[ConnState, int]]
    meta: dict[str, Any] = field(default_factory=dict)
    table: str = TABLE_FORMAT
    closed: list[int] = field(default_factory=list)
    owed: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def fds(self) -> list[int]:
        head = [] if self.listener is None else [self.listener]
        return head + [fd for _, fd in self.conns if fd >= 0]


def to_parts(transfer: Transfer, kind: str) -> list[tuple[dict[str, Any], bytes, list[int]]]:
    """Split a transfer into messages of type `kind` with at most 253 fds each (a delta's
    fd-less records and its closed ids ride in part 0)."""
    room = MAX_FDS - (transfer.listener is not None)
    with_fd = [c for c in transfer.conns if c[1] >= 0]
    chunks: list[list[tuple[ConnState, int]]] = [with_fd[:room]]
    rest = with_fd[room:]
    chunks += [rest[i : i + MAX_FDS] for i in range(0, len(rest), MAX_FDS)]
    delta = transfer.table == DELTA_FORMAT
    if delta:
        chunks[0] = [c for c in transfer.conns if c[1] < 0] + chunks[0]
    out = []
    for index, chunk in enumerate(chunks):
        msg: dict[str, Any] = {"type": kind, "part": index, "parts": len(chunks),
                               "table": transfer.table, "connections": len(chunk)}
        fds: list[int] = []
        head = b""
        if index == 0:
            msg.update(transfer.meta)
            msg["listener"] = None
            if transfer.listener is not None:
                msg["listener"] = 0
                fds.append(transfer.listener)
            if delta:
                msg["closed"] = len(transfer.closed)
                head = b"".join(CLOSED_ID.pack(i) for i in transfer.closed)
        elif delta:
            msg["closed"] = 0
        table, data = [head], []
        pack = RECORD.pack
        owed = transfer.owed
        for state, fd in chunk:
            flags, n_out = owed.get(state.id, (0, 0)) if delta else (0, 0)
            if not flags & DEFERRED:
                n_out = len(state.unsent_out)
            table.append(pack(state.id, len(fds) if fd >= 0 else NO_FD, len(state.pending_in),
                              n_out, flags, state.bytes_in, state.frames_in,
                              state.frames_out, state.lag_drops))
            if fd >= 0:
                fds.append(fd)
            if state.pending_in:
                data.append(state.pending_in)
            if state.unsent_out and not flags & DEFERRED:
                data.append(state.unsent_out)
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
            self.transfer.table = part.table
        self.transfer.conns.extend(part.conns)
        self.transfer.closed.extend(part.closed)
        self.transfer.owed.update(part.owed)
        self.received += 1
        return part


def decode_part(env: Envelope) -> Transfer:
    """One part of a transfer: its listener (part 0 only), connections and metadata."""
    msg = env.msg
    table = msg.get("table")
    if table not in (TABLE_FORMAT, DELTA_FORMAT):
        raise HandoffError(f"unknown connection table format {table!r}")
    listener = None
    if msg.get("listener") is not None:
        listener = env.fds[int(msg["listener"])]
    meta = {k: v for k, v in msg.items() if k not in _ENVELOPE_KEYS}
    start = 0
    closed: list[int] = []
    if table == DELTA_FORMAT:
        start = int(msg.get("closed", 0)) * CLOSED_ID.size
        if start > len(env.blob):
            raise HandoffError("closed-id list runs past the blob")
        closed = [i for (i,) in CLOSED_ID.iter_unpack(env.blob[:start])]
    owed: dict[int, tuple[int, int]] = {}
    delta = table == DELTA_FORMAT
    conns = _decode(int(msg["connections"]), env, start, owed if delta else None,
                    _tail_section(env) if delta else None)
    return Transfer(listener, conns, meta, str(table), closed, owed)


def _tail_section(env: Envelope) -> bytes | None:
    """Part 0's tail section's bytes (`tail` extension): unit lengths (u32 each) then
    the units, at the very end of the blob."""
    tail = env.msg.get("tail")
    if not isinstance(tail, dict):
        return None
    units, size = int(tail.get("units", 0)), int(tail.get("bytes", 0))
    if units < 0 or size < 0 or 4 * units + size > len(env.blob):
        raise HandoffError(f"a tail of {units} units and {size} bytes runs past the blob")
    return env.blob[len(env.blob) - size:]


def _decode(count: int, env: Envelope, start: int = 0,
            owed: dict[int, tuple[int, int]] | None = None,
            tail: bytes | None = None) -> list[tuple[ConnState, int]]:
    """The records (and, for a delta, `owed` filled in from their flags; a TAIL
    record's bytes taken from `tail`, the part's tail section, and made inline)."""
    if tail is None:
        tail = b""
    delta = owed is not None
    blob, fds = env.blob, env.fds
    end = start + count * RECORD.size
    if end > len(blob):
        raise HandoffError(f"connection table of {count} records runs past the blob")
    out = []
    pos = end
    for rec in RECORD.iter_unpack(blob[start:end]):
        conn_id, fd_index, n_in, n_out, flags, b_in, f_in, f_out, drops = rec
        deferred = n_out if owed is not None and flags & (DEFERRED | TAIL) else 0
        inline = 0 if deferred else n_out
        fd_ok = fd_index < len(fds) or (delta and fd_index == NO_FD)
        if not fd_ok or pos + n_in + inline > len(blob):
            raise HandoffError(f"connection {conn_id}: fd index or byte lengths out of range")
        pending = blob[pos : pos + n_in] if n_in else b""
        unsent = blob[pos + n_in : pos + n_in + inline] if inline else b""
        pos += n_in + inline
        if delta and flags & TAIL:
            if not 0 < n_out <= len(tail):
                raise HandoffError(f"connection {conn_id}: owes {n_out} bytes "
                                   f"of a tail of {len(tail)}")
            unsent, deferred, flags = tail[len(tail) - n_out:], 0, flags & ~TAIL
        fd = -1 if fd_index == NO_FD else fds[fd_index]
        if owed is not None and flags:
            owed[conn_id] = (flags, deferred)
        out.append((ConnState(conn_id, pending, unsent, b_in, f_in, f_out, drops), fd))
    return out
