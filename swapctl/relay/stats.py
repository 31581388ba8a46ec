"""Reading a running relay's counters from its stats socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from swapctl.errors import SwapctlError


def read_stats(path: Path, timeout: float = 2.0) -> dict[str, Any]:
    """Connect to a relay's `--stats` socket and return its counters."""
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise SwapctlError(
            f"cannot read relay stats from {path}: {exc}; is the relay running with --stats?"
        ) from None
    data: dict[str, Any] = json.loads(b"".join(chunks))
    return data
