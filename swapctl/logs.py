"""Structured logs: one JSON object per line on stderr, `event` naming what happened;
and `tail`, the last whole lines of a log file (what `swapctl logs -n N` shows)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

TAIL_BLOCK = 64 * 1024  # bytes read per step backwards from a log file's end


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:  # log.exception: the traceback is what a bug report needs
            entry["error"] = repr(record.exc_info[1])
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: str = "info", stream: Any = None) -> None:
    """Route swapctl's logs to `stream` (stderr by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("swapctl")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log `name` with structured `fields` (skipped cheaply when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


class RateLimit:
    """At most one log line per key per `interval` seconds; counts what it suppressed."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[object, float] = {}
        self.suppressed: dict[object, int] = {}

    def allow(self, key: object) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            self._last[key] = now
            return True
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return False


def tail(path: Path, lines: int, limit: int = 16 * 1024 * 1024) -> str:
    """The last `lines` whole lines of `path` (all of them when it has fewer), read
    backwards from its end in blocks until one more line start is in hand, so the first
    line is never cut however long the lines are. At most `limit` bytes are read: a
    single line longer than that comes back as its last `limit` bytes. A missing or
    unreadable file is empty."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            start, data = end, b""
            # a final newline ends the last line; it does not start another
            while start > 0 and data.count(b"\n", 0, len(data) - 1) < lines \
                    and end - start < limit:
                step = min(TAIL_BLOCK, start, limit - (end - start))
                start -= step
                f.seek(start)
                data = f.read(step) + data
    except OSError:
        return ""
    kept = data.decode(errors="replace").splitlines()
    if start > 0 and len(kept) > 1:
        kept = kept[1:]  # the first piece may begin before what was read: never show it cut
    return "\n".join(kept[-lines:])
