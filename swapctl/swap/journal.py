"""Append-only, fsync'd journal of swaps: one JSON object per line."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swapctl.swap.machine import Transition


class Journal:
    def __init__(self, path: Path | None,
                 watchers: list[Callable[[dict[str, Any]], None]] | None = None,
                 fields: dict[str, Any] | None = None) -> None:
        self.path = path
        self.watchers = watchers or []  # told of every record once it is on disk
        self.fields = fields  # added to every record (e.g. the service), with wall time
        self.records: list[dict[str, Any]] = []
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        if self.fields is not None:
            record = {**self.fields, "time": round(time.time(), 3), **record}
        self.records.append(record)
        if self._fd is not None:
            os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())
            os.fsync(self._fd)
        for watch in self.watchers:
            watch(record)

    def transition(self, swap_id: str, step: Transition) -> None:
        self.write({"swap": swap_id, "at": round(step.at, 6), "from": step.source.value,
                    "event": step.event.value, "to": step.target.value,
                    "reason": step.reason, **step.details})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read(path: Path) -> list[dict[str, Any]]:
    """Every record in a journal file (a torn last line from a crash is ignored)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out
