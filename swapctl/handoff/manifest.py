"""What moves in a handoff: the listener and every connection with its in-flight state.

Pure data and (de)serialisation; fds are plain ints here. A transfer is split into
parts of at most 253 fds each (the listener, if any, is fd 0 of part 0). Each
connection names its fd by index within its part and its byte state by
[offset, length] in that part's blob:
- `pending_in`: bytes read from the client but not yet forwarded (a partial frame);
- `unsent_out`: bytes owed to the client (frames the old relay had queued, possibly a
  frame's tail when a write stopped mid-frame); the adopter writes them first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swapctl.handoff.messages import MAX_FDS, Envelope, HandoffError


@dataclass(frozen=True, slots=True)
class ConnState:
    id: int
    pending_in: bytes = b""
    unsent_out: bytes = b""
    counters: dict[str, int] = field(default_factory=dict)


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
        fds: list[int] = []
        msg: dict[str, Any] = {"type": kind, "part": index, "parts": len(chunks)}
        if index == 0:
            msg.update(transfer.meta)
            msg["listener"] = None
            if transfer.listener is not None:
                msg["listener"] = 0
                fds.append(transfer.listener)
        blob = bytearray()
        entries = []
        for state, fd in chunk:
            entries.append({
                "id": state.id,
                "fd": len(fds),
                "pending_in": [len(blob), len(state.pending_in)],
                "unsent_out": [len(blob) + len(state.pending_in), len(state.unsent_out)],
                "counters": state.counters,
            })
            blob += state.pending_in + state.unsent_out
            fds.append(fd)
        msg["connections"] = entries
        out.append((msg, bytes(blob), fds))
    return out


_ENVELOPE_KEYS = frozenset({"type", "part", "parts", "listener", "connections", "id", "re"})


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

    def feed(self, env: Envelope) -> None:
        msg = env.msg
        if env.type != self.kind or msg.get("part") != self.received:
            raise HandoffError(
                f"expected {self.kind} part {self.received}, got {env.type} part {msg.get('part')}"
            )
        if self.parts is None:
            self.parts = int(msg["parts"])
            self.transfer.meta = {k: v for k, v in msg.items()
                                  if k not in _ENVELOPE_KEYS}
            if msg.get("listener") is not None:
                self.transfer.listener = env.fds[int(msg["listener"])]
        for entry in msg["connections"]:
            self.transfer.conns.append((_state(entry, env.blob), env.fds[int(entry["fd"])]))
        self.received += 1


def _state(entry: dict[str, Any], blob: bytes) -> ConnState:
    def piece(key: str) -> bytes:
        offset, length = entry.get(key, (0, 0))
        if offset + length > len(blob):
            raise HandoffError(f"connection {entry.get('id')}: {key} runs past the blob")
        return blob[offset : offset + length]

    return ConnState(int(entry["id"]), piece("pending_in"), piece("unsent_out"),
                     dict(entry.get("counters", {})))
