"""Bytes owed to clients, carried out of band in a memfd (pre-copy extension, backlog-v1).

A relay frozen by a pre-copy RELEASE describes in its manifest only *that* a client is
owed bytes (flag DEFERRED); right after the manifest it writes every such client's
queued output into one memfd and sends it as a `backlog` message (one fd, small JSON).
The orchestrator forwards the fd, never the bytes, once the candidate has resumed; the
candidate maps the memfd and queues the units in front of anything newer for that
client (it writes nothing to a DEFERRED client until then). So the pause never copies a
backlog, and swapctld's memory does not grow with it.

memfd layout, little-endian: the table, then the data.
  per connection: id u64, head_sent u32, units u32, flags u32 (0)   (`<QIII`, 20 bytes)
                  then `units` x (length u32, frames u32)              (`<II`, 8 bytes each)
  data:           each connection's units, in table order, back to back.
The first unit is the one the relay had started writing: its first `head_sent` bytes
already reached the client (the adopter writes from there and never drops that unit);
every other unit is whole frames (`frames` of them) and may be shed as a whole and
counted. Consecutive units are coalesced up to COALESCE bytes to keep the table short.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any

from swapctl.handoff.messages import HandoffError

ENTRY = struct.Struct("<QIII")
UNIT = struct.Struct("<II")
COALESCE = 256 * 1024
_IOV_MAX = 1024
Unit = tuple[Any, int]  # (a bytes-like unit, frames in it)


def coalesce(units: Sequence[Unit]) -> list[tuple[int, int]]:
    """(length, frames) of the units as the table lists them: the first kept alone, the
    others merged while a group stays under COALESCE bytes."""
    if not units:
        return []
    head, frames = units[0]
    out = [(len(head), frames)]
    size = count = 0
    for data, n in units[1:]:
        if size and size + len(data) > COALESCE:
            out.append((size, count))
            size = count = 0
        size += len(data)
        count += n
    if size:
        out.append((size, count))
    return out


def write_backlogs(entries: Sequence[tuple[int, int, Sequence[Unit]]]) -> tuple[dict[str, Any],
                                                                                int | None]:
    """(conn id, head_sent, units) for each owed connection -> (message fields, memfd).
    The memfd is None when nothing is owed; the caller closes it once sent."""
    table: list[bytes] = []
    data: list[Any] = []
    for conn_id, head_sent, given in entries:
        units = _byte_units(given)
        groups = coalesce(units)
        table.append(ENTRY.pack(conn_id, head_sent, len(groups), 0))
        table.extend(UNIT.pack(length, frames) for length, frames in groups)
        data.extend(unit for unit, _ in units)
    head = b"".join(table)
    total = len(head) + sum(len(d) for d in data)
    fields: dict[str, Any] = {"connections": len(entries), "table_bytes": len(head),
                              "data_bytes": total - len(head)}
    if not entries:
        return fields, None
    fd = os.memfd_create("swapctl-backlog", os.MFD_CLOEXEC)
    try:
        _write_all(fd, [head, *data])
    except OSError:
        os.close(fd)
        raise
    return fields, fd


def _is_bytes(unit: Any) -> bool:
    return type(unit) is bytes or (type(unit) is memoryview and unit.itemsize == 1)


def _byte_units(units: Sequence[Unit]) -> Sequence[Unit]:
    """Units whose len() counts bytes: as they are when every one is bytes or a byte
    view (as a relay's queue holds them: a cast per unit cost the old relay 6 ms at
    11,000 units, after the resume), else each other one cast to bytes."""
    if all(type(unit) is bytes for unit, _ in units) or all(_is_bytes(u) for u, _ in units):
        return units
    return [(unit if _is_bytes(unit) else memoryview(unit).cast("B"), frames)
            for unit, frames in units]


def _write_all(fd: int, buffers: list[Any]) -> None:
    """writev every buffer (each counted in bytes by len), IOV_MAX at a time; a view
    is made only of a buffer a short write cut."""
    pending = list(buffers)
    done = 0
    while done < len(pending):
        batch = pending[done:done + _IOV_MAX]
        written = os.writev(fd, batch)
        for buf in batch:
            if written < len(buf):
                pending[done] = memoryview(buf)[written:]
                break
            written -= len(buf)
            done += 1


def read_backlogs(fd: int, msg: dict[str, Any]) -> list[tuple[int, int, list[Unit]]]:
    """Map a backlog memfd: (conn id, head_sent, units as memoryviews of the mapping).
    The views keep the mapping alive; it goes away with the last of them."""
    table_len, data_len = int(msg.get("table_bytes", 0)), int(msg.get("data_bytes", 0))
    size = os.fstat(fd).st_size
    if size != table_len + data_len:
        raise HandoffError(f"backlog memfd holds {size} bytes, the message says "
                           f"{table_len} + {data_len}")
    if size == 0:
        return []
    # no copy: the units are views of the mapping, which lives as long as one of them
    return _parse(memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)),
                  table_len, int(msg.get("connections", 0)))


def _parse(view: memoryview, table_len: int, count: int) -> list[tuple[int, int, list[Unit]]]:
    out = []
    pos, data_pos = 0, table_len
    end = len(view)
    for _ in range(count):
        if pos + ENTRY.size > table_len:
            raise HandoffError("backlog table runs past its length")
        conn_id, head_sent, n_units, _ = ENTRY.unpack_from(view, pos)
        pos += ENTRY.size
        units: list[Unit] = []
        for _ in range(n_units):
            if pos + UNIT.size > table_len:
                raise HandoffError("backlog table runs past its length")
            length, frames = UNIT.unpack_from(view, pos)
            pos += UNIT.size
            if data_pos + length > end:
                raise HandoffError(f"connection {conn_id}: backlog bytes run past the memfd")
            units.append((view[data_pos : data_pos + length], frames))
            data_pos += length
        if head_sent and (not units or head_sent >= len(units[0][0])):
            raise HandoffError(f"connection {conn_id}: head_sent {head_sent} past its unit")
        out.append((conn_id, head_sent, units))
    return out
