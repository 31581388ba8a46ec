"""Keeping Python's cyclic garbage collector out of a stretch of work.

A collection runs whenever allocations cross a threshold, and a full one scans every
tracked object: with thousands of connections that is milliseconds, at whatever moment
the threshold falls. Code that must not be interrupted (a timed loop, the handoff's
pause) defers collections to after it; reference counting still frees everything that
is not in a cycle.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_gc(*, collect_first: bool = False) -> Iterator[None]:
    """No cyclic collection inside the block (nested blocks are fine: the state found on
    entry is put back). `collect_first` starts from a clean heap, for timed runs."""
    if collect_first:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
