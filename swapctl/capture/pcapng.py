"""Reading and writing swapctl captures as pcapng, with the python-pcapng library.

One section; one interface per view (`scenario`, `old`, `new`, `tap`), link type
LINKTYPE_USER0 (147), nanosecond timestamps; one Enhanced Packet Block per record
(format.py). The section comment holds the capture's metadata as JSON (scenario, seed,
domain byte, what was recorded). Wireshark refuses packets over 256 KiB, so a longer
record is cut into pieces of `MAX_PIECE` bytes flagged `FLAG_MORE`; reading joins them.
"""

from __future__ import annotations

import contextlib
import json
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import pcapng  # type: ignore[import-untyped]
from pcapng import blocks

from swapctl import __version__
from swapctl.capture.format import LINKTYPE_USER0, Kind, Record, unpack
from swapctl.errors import UsageError

FLAG_MORE = 0x2  # this record continues in the next one of the same view and connection
MAX_PIECE = 128 * 1024
_TSRESOL_NS = b"\x09"


@dataclass(slots=True)
class Capture:
    meta: dict[str, Any]
    records: list[Record] = field(default_factory=list)

    def view(self, name: str) -> list[Record]:
        return [r for r in self.records if r.view == name]

    @property
    def views(self) -> list[str]:
        return list(dict.fromkeys(r.view for r in self.records))


class CaptureWriter:
    """Writes records to a pcapng file as they come (interfaces are added on first use)."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        try:
            self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise UsageError(f"cannot write capture {path}: {exc}") from None
        self.shb = blocks.SectionHeader(options={
            "shb_userappl": f"swapctl {__version__}",
            "opt_comment": json.dumps(meta, sort_keys=True)})
        self.writer = pcapng.FileWriter(self.file, self.shb)
        self.interfaces: dict[str, int] = {}
        self.count = 0

    def _interface(self, view: str) -> int:
        if view not in self.interfaces:
            idb = self.shb.new_member(blocks.InterfaceDescription, link_type=LINKTYPE_USER0,
                                      snaplen=0, options={
                                          "if_name": view, "if_tsresol": _TSRESOL_NS,
                                          "if_description": "swapctl capture records "
                                          "(Protocol V2 inside), see docs/capture.md"})
            with _quiet():
                self.writer.write_block(idb)
            self.interfaces[view] = idb.interface_id
        return self.interfaces[view]

    def write(self, record: Record) -> None:
        interface = self._interface(record.view)
        data = record.data
        pieces = [data[k : k + MAX_PIECE] for k in range(0, len(data), MAX_PIECE)] or [b""]
        for n, piece in enumerate(pieces):
            more = FLAG_MORE if n < len(pieces) - 1 else 0
            part = Record(record.view, record.kind, record.conn, piece, record.ts_ns,
                          record.flags | more)
            epb = self.shb.new_member(blocks.EnhancedPacket)
            epb.interface_id = interface
            epb.timestamp_high, epb.timestamp_low = divmod(record.ts_ns, 1 << 32)
            epb.packet_data = part.pack()
            self.writer.write_block(epb)
        self.count += 1

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_capture(path: Path, records: Iterable[Record], meta: dict[str, Any]) -> int:
    with CaptureWriter(path, meta) as writer:
        for record in records:
            writer.write(record)
        return writer.count


def read_capture(path: Path) -> Capture:
    """All records of a swapctl capture, pieces joined, in file order."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read capture {path}: {exc}") from None
    with f:
        try:
            with _quiet():
                return _scan(path, pcapng.FileScanner(f))
        except (pcapng.exceptions.PcapngException, ValueError, struct.error) as exc:
            raise UsageError(f"{path} is not a readable pcapng file: {exc}") from None


def _scan(path: Path, scanner: Any) -> Capture:
    capture = Capture({})
    partial: dict[tuple[str, int], Record] = {}
    number = 0
    for block in scanner:
        if isinstance(block, blocks.SectionHeader):
            capture.meta = _meta(block)
        if not isinstance(block, blocks.EnhancedPacket):
            continue
        number += 1
        iface = block.interface
        if iface.link_type != LINKTYPE_USER0:
            raise UsageError(f"{path}: packet {number} has link type {iface.link_type}, "
                             f"not swapctl's {LINKTYPE_USER0} (USER0)")
        view = str(iface.options.get("if_name", f"if{block.interface_id}"))
        record = unpack(view, bytes(block.packet_data), _ns(block), f"{path}: packet {number}")
        key = (view, record.conn)
        if key in partial:
            head = partial.pop(key)
            record = Record(view, head.kind, head.conn, head.data + record.data, head.ts_ns,
                            record.flags)
        if record.flags & FLAG_MORE:
            partial[key] = record
            continue
        capture.records.append(record)
    return capture


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """python-pcapng 2.1 warns that its own if_tsresol option has no declared type; the
    raw byte we write (9: nanoseconds) is what the pcapng specification asks for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Field type should not be", DeprecationWarning)
        yield


def _meta(block: Any) -> dict[str, Any]:
    try:
        meta = json.loads(block.options.get("opt_comment", "{}"))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _ns(block: Any) -> int:
    raw = (block.timestamp_high << 32) | block.timestamp_low
    if block.interface.options.get("if_tsresol", _TSRESOL_NS) == _TSRESOL_NS:
        return int(raw)
    return int(raw * block.timestamp_resolution * 1e9)


__all__ = ["Capture", "CaptureWriter", "Kind", "read_capture", "write_capture"]
