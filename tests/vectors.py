"""Loads the golden messages of tests/data/vectors.txt (a copy of shared/protocol/vectors.txt)."""

from __future__ import annotations

import re
from pathlib import Path

VECTORS_FILE = Path(__file__).parent / "data" / "vectors.txt"


def load_vectors() -> dict[str, bytes]:
    """Name ("V1".."V6") -> message bytes."""
    out: dict[str, bytes] = {}
    for block in VECTORS_FILE.read_text().split("\n## ")[1:]:
        lines = block.splitlines()
        name = lines[0].split()[0]
        hexdump = "".join(
            line.split(":", 1)[1] for line in lines[1:] if re.match(r"^[0-9a-f]{4}:", line)
        )
        out[name] = bytes.fromhex(hexdump)
    return out
