"""Append-only journal of swaps: one JSON object per line, fsync'd unless told otherwise.

How it works:
- Open: the directory must be private (swapctl.fsutil), the file is opened with O_NOFOLLOW
  (a symbolic link is refused) and, when this open created it, the directory is fsync'd
  so the file survives a crash. A torn tail (a last line with no newline: a crash
  mid-write) is repaired before anything is appended: cut away (its size and first bytes
  in `Journal.repaired`, and a `journal.repaired` warning in the log), or, when the line
  is a whole record that only lacks its newline, completed. Appending onto a torn line
  would glue the next record to it.
- Write: every record is one `write` looped until all of its bytes are down (a short
  write is continued; a failed one is cut back so no torn line stays), then fsync'd.
  `write(record, sync=False)` leaves the fsync to a later `sync()` (e.g. after a pause):
  the record is in the kernel already, so it survives the process being killed, only
  not a machine crash before `sync()`.
- Read: `scan()` skips and counts lines that are not a JSON object instead of stopping at
  the first one, so a damaged line never hides the records after it. A whole record
  glued behind a torn prefix (journals written before the repair existed) is recovered.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError, UsageError
from swapctl.fsutil import ensure_private_dir
from swapctl.logs import event
from swapctl.swap.machine import Transition

log = logging.getLogger("swapctl.journal")
HEAD = 200  # characters of a cut tail kept in the report
_TAIL_CHUNK = 64 * 1024
_APPEND = threading.RLock()  # one record (or repair) at a time in a process: the daemon
# has one Journal per service on the same file


class JournalError(SwapctlError):
    """The journal could not be written: the swap cannot be recorded."""


class Journal:
    def __init__(self, path: Path | None,
                 watchers: list[Callable[[dict[str, Any]], None]] | None = None,
                 fields: dict[str, Any] | None = None) -> None:
        self.path = path
        self.watchers = watchers or []  # told of every record once the kernel has it
        self.fields = fields  # added to every record (e.g. the service), with wall time
        self.records: list[dict[str, Any]] = []
        self.repaired: dict[str, Any] | None = None  # the torn tail found on open
        self._fd: int | None = None
        self._unsynced = False
        if path is not None:
            ensure_private_dir(path.parent)
            self._fd = _open(path)
            try:
                with _APPEND:
                    self.repaired = _repair(self._fd, path)
            except OSError as exc:
                os.close(self._fd)
                raise JournalError(f"cannot repair the journal {path}: {exc.strerror}") \
                    from None
            if self.repaired is not None:
                event(log, logging.WARNING, "journal.repaired", **self.repaired)

    def write(self, record: dict[str, Any], sync: bool = True) -> None:
        """Append `record`; fsync now unless `sync` is False (then `sync()` later)."""
        if self.fields is not None:
            record = {**self.fields, "time": round(time.time(), 3), **record}
        self.records.append(record)
        if self._fd is not None:
            _append(self._fd, (json.dumps(record, default=str) + "\n").encode(), self.path)
            self._unsynced = True
            if sync:
                self.sync()
        for watch in self.watchers:
            watch(record)

    def sync(self) -> None:
        """fsync what `write(..., sync=False)` left in the kernel (nothing: no syscall)."""
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False

    def transition(self, swap_id: str, step: Transition, sync: bool = True) -> None:
        self.write({"swap": swap_id, "at": round(step.at, 6), "from": step.source.value,
                    "event": step.event.value, "to": step.target.value,
                    "reason": step.reason, **step.details}, sync)

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None


def _open(path: Path) -> int:
    """O_NOFOLLOW, O_NONBLOCK (a FIFO planted there fails instead of hanging), a regular
    file only; fsync the directory when the file is new."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            created = False
            fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise UsageError(f"journal {path} is a symbolic link (to {os.readlink(path)}): "
                             "swapctl does not follow links in its state directory; remove "
                             "the link (keep its target if it is an old journal)") from None
        raise JournalError(f"cannot open the journal {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"journal {path} is not a regular file: move it away and start "
                         "again")
    if created:
        _fsync_dir(path.parent)
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(fd: int, data: bytes, path: Path | None) -> None:
    """All of `data` at the end of the file, or none of it (a failed write is cut back)."""
    with _APPEND:
        start = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(0, "the kernel wrote nothing")
                view = view[written:]
        except OSError as exc:
            if len(view) < len(data):
                os.ftruncate(fd, start)  # no torn line left behind for the next record
            raise JournalError(
                f"cannot write the journal {path}: {exc.strerror}; free space on its file "
                "system (the swap cannot be recorded)") from None


def _repair(fd: int, path: Path) -> dict[str, Any] | None:
    """Cut a torn last line (or complete a whole record that only lacks its newline)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    start = _line_start(fd, size)
    tail = os.pread(fd, size - start, start)
    head = tail[:HEAD].decode("utf-8", errors="replace")
    report = {"path": str(path), "offset": start, "bytes": len(tail), "head": head}
    if _record(tail) is not None:
        _append(fd, b"\n", path)
        os.fsync(fd)
        return {**report, "action": "completed: a whole record lacked its newline"}
    os.ftruncate(fd, start)
    os.fsync(fd)
    return {**report, "action": "cut: a torn last line (a crash while writing it)"}


def _line_start(fd: int, size: int) -> int:
    """Offset just after the last newline before `size` (0 if there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - _TAIL_CHUNK)
        at = os.pread(fd, end - begin, begin).rfind(b"\n")
        if at >= 0:
            return begin + at + 1
        end = begin
    return 0


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def _salvage(line: bytes) -> dict[str, Any] | None:
    """A whole record glued behind a torn prefix: the first '{' from which one JSON
    object runs exactly to the end of the line."""
    text = line.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    at = text.find("{", 1)
    while at > 0:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            value, end = None, -1
        if isinstance(value, dict) and end == len(text):
            return value
        at = text.find("{", at + 1)
    return None


@dataclass(slots=True)
class Scan:
    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # 1-based, skipped (or salvaged)
    salvaged: int = 0  # whole records recovered from behind a torn prefix


def scan(path: Path) -> Scan:
    """Every record in a journal file; damaged lines are skipped and counted."""
    out = Scan()
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            out.bad_lines.append(number)
            record = _salvage(line)
            out.salvaged += record is not None
        if record is not None:
            out.records.append(record)
    return out


def read(path: Path) -> list[dict[str, Any]]:
    """Every record in a journal file (damaged lines skipped: see `scan` for the count)."""
    return scan(path).records
