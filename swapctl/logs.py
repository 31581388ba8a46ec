"""Structured logs: one JSON object per line on stderr, `event` naming what happened."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


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
