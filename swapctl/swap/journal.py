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
- Rotate: once the file passes `Rotation.max_bytes`, it is compacted (`compact`): every
  record of a swap with no terminal record, of the last swap of each service (recovery
  reads the last one: attach._unfinished), of the last `keep_finished` finished swaps
  (older ones live on in their reports, STATE/reports/ID.json) and the last `keep_events`
  records of no swap, in their order. The compacted file is written beside the journal,
  fsync'd, renamed over it and the directory fsync'd: a crash leaves the old journal or
  the new one, never a mix. Every Journal open on the path (swapctld has one per service)
  notices the rename before its next write and moves its descriptor to the new file
  (dup2 onto the same number, so a concurrent fsync never meets a closed descriptor).
  The records kept in memory (`records`, read by the swap reports) are compacted the
  same way, so a long-lived daemon holds a bounded number.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError, UsageError
from swapctl.fsutil import ensure_private_dir
from swapctl.logs import event
from swapctl.swap.machine import State, Transition

log = logging.getLogger("swapctl.journal")
HEAD = 200  # characters of a cut tail kept in the report
_TERMINAL = frozenset(s.value for s in State if s.terminal)
_MEMORY_RECORDS = 2000  # records kept in memory before they are compacted
_TAIL_CHUNK = 64 * 1024
_APPEND = threading.RLock()  # one record (or repair) at a time in a process: the daemon
# has one Journal per service on the same file


class JournalError(SwapctlError):
    """The journal could not be written: the swap cannot be recorded."""


@dataclass(frozen=True, slots=True)
class Rotation:
    """When the journal file is compacted and what it keeps (see the module's comment)."""

    max_bytes: int = 4 * 1024 * 1024  # ~2,000 swaps at ~1.8 KB each
    keep_finished: int = 200
    keep_events: int = 500
    memory_finished: int = 32  # finished swaps whose records stay in `records`


def compact(records: list[dict[str, Any]], keep_finished: int,
            keep_events: int) -> list[dict[str, Any]]:
    """The records worth keeping, in their order: every record of an unfinished swap, of
    the last swap of each service and of the last `keep_finished` finished swaps, and the
    last `keep_events` records that belong to no swap."""
    finished: set[str] = set()
    last_at: dict[str, int] = {}  # swap -> index of its last record
    last_of_service: dict[Any, str] = {}
    events: list[int] = []
    for index, record in enumerate(records):
        swap = record.get("swap")
        if not isinstance(swap, str):
            events.append(index)
            continue
        last_at[swap] = index
        if record.get("event") == "begin":
            last_of_service[record.get("service")] = swap
        if record.get("to") in _TERMINAL:
            finished.add(swap)
    done = sorted((s for s in last_at if s in finished), key=last_at.__getitem__)
    keep = {s for s in last_at if s not in finished} | set(last_of_service.values()) \
        | set(done[max(0, len(done) - keep_finished):])
    kept_events = set(events[max(0, len(events) - keep_events):])
    return [r for i, r in enumerate(records) if i in kept_events or r.get("swap") in keep]


class Journal:
    def __init__(self, path: Path | None,
                 watchers: list[Callable[[dict[str, Any]], None]] | None = None,
                 fields: dict[str, Any] | None = None,
                 rotation: Rotation | None = None) -> None:
        self.path = path
        self.watchers = watchers or []  # told of every record once the kernel has it
        self.fields = fields  # added to every record (e.g. the service), with wall time
        self.records: list[dict[str, Any]] = []
        self.repaired: dict[str, Any] | None = None  # the torn tail found on open
        self.rotation = rotation or Rotation()
        self.compactions: list[dict[str, Any]] = []  # what each rotation by this one did
        self._fd: int | None = None
        self._unsynced = False
        self._rotate_at = self.rotation.max_bytes  # raised if compaction cannot get below
        self._memory_limit = _MEMORY_RECORDS
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
        if len(self.records) > self._memory_limit:
            self._compact_memory()
        if self._fd is not None and self.path is not None:
            with _APPEND:
                self._follow(self._fd, self.path)
                size = _append(self._fd, (json.dumps(record, default=str) + "\n").encode(),
                               self.path)
                self._unsynced = True
                if size > self._rotate_at:
                    self._rotate(self._fd, self.path)
            if sync:
                self.sync()
        for watch in self.watchers:
            watch(record)

    def _compact_memory(self) -> None:
        keep = compact(self.records, self.rotation.memory_finished, self.rotation.keep_events)
        self.records = keep  # a new list: a report iterating the old one is undisturbed
        self._memory_limit = max(_MEMORY_RECORDS, 2 * len(keep))

    def _follow(self, fd: int, path: Path) -> None:
        """Move `fd` onto the file now at `path` if a rotation renamed a new one there."""
        try:
            now = os.stat(path)
        except OSError:
            return  # removed under us: keep writing where we were, as before rotation
        mine = os.fstat(fd)
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            new = _open(path)
            try:
                os.dup2(new, fd, inheritable=False)
            finally:
                os.close(new)

    def _rotate(self, fd: int, path: Path) -> None:
        """Compact the file (under _APPEND): write, fsync, rename, fsync the directory."""
        before = os.fstat(fd).st_size
        found = scan(path)
        kept = compact(found.records, self.rotation.keep_finished, self.rotation.keep_events)
        data = b"".join((json.dumps(r, default=str) + "\n").encode() for r in kept)
        spare = path.with_name(path.name + ".compact")
        try:
            out = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            try:
                _append(out, data, spare)
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(spare, path)
            _fsync_dir(path.parent)
        except (OSError, JournalError) as exc:
            event(log, logging.WARNING, "journal.rotate_failed", path=str(path),
                  error=str(exc))
            self._rotate_at = 2 * before  # try again later, not at every record
            return
        self._follow(fd, path)
        self._rotate_at = max(self.rotation.max_bytes, 2 * len(data))
        done = {"path": str(path), "bytes_before": before, "bytes_after": len(data),
                "records_before": len(found.records), "records_after": len(kept),
                "bad_lines": len(found.bad_lines)}
        self.compactions.append(done)
        event(log, logging.INFO, "journal.compacted", **done)

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


def _append(fd: int, data: bytes, path: Path | None) -> int:
    """All of `data` at the end of the file, or none of it (a failed write is cut back);
    the file's size after it."""
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
        return start + len(data)


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


def _parsed(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, bool]]:
    """(line number, record or None, damaged) for each non-blank line, read one at a time."""
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            line = raw.rstrip(b"\n")
            if not line.strip():
                continue
            record = _record(line)
            if record is not None:
                yield number, record, False
            else:
                yield number, _salvage(line), True


def scan(path: Path) -> Scan:
    """Every record in a journal file; damaged lines are skipped and counted."""
    out = Scan()
    for number, record, damaged in _parsed(path):
        if damaged:
            out.bad_lines.append(number)
            out.salvaged += record is not None
        if record is not None:
            out.records.append(record)
    return out


def read(path: Path) -> list[dict[str, Any]]:
    """Every record in a journal file (damaged lines skipped: see `scan` for the count)."""
    return scan(path).records


def stream(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a journal file one at a time, as `read` gives them: for a reader
    that keeps a few (recovery, a running swap's report). Holding every record of a full
    journal costs ~17 MB per 10,000 records, and a restarted swapctld that read it for
    each service started ~20 MB larger per hour of swaps."""
    for _number, record, _damaged in _parsed(path):
        if record is not None:
            yield record
