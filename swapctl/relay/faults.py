"""Fault injection for drills and tests: drop, corrupt, stall, crash on purpose.

Faults count *units*: frames in FRAME mode, reads in CHUNK and RAW modes.
A crash is abrupt (os._exit without cleanup), like a real relay dying.
"""

from __future__ import annotations

import logging
import os

from swapctl.logs import event
from swapctl.relay.config import Faults
from swapctl.relay.counters import Counters

log = logging.getLogger("swapctl.relay.faults")
CRASH_EXIT_CODE = 70


class FaultInjector:
    def __init__(self, faults: Faults, counters: Counters) -> None:
        self.faults = faults
        self.counters = counters
        self.units = 0
        self.active = faults.per_frame

    def apply(self, data: bytes) -> bytes:
        """Count one unit; returns it (possibly corrupted), or b"" if dropped."""
        f = self.faults
        self.units += 1
        n = self.units
        if f.crash_after is not None and n > f.crash_after:
            self.crash("crash_after")
        if f.drop_every and n % f.drop_every == 0:
            self.counters.fault_dropped += 1
            return b""
        if f.corrupt_every and n % f.corrupt_every == 0:
            self.counters.fault_corrupted += 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def stall_now(self) -> bool:
        after = self.faults.stall_after
        return after is not None and self.units >= after

    def crash_at(self, phase: str) -> None:
        """Die now if told to die in this handoff phase."""
        if self.faults.crash_at == phase:
            self.crash(f"crash_at {phase}")

    def crash(self, reason: str) -> None:
        event(log, logging.ERROR, "relay.crash_injected", reason=reason, units=self.units)
        for handler in logging.getLogger("swapctl").handlers:
            handler.flush()
        os._exit(CRASH_EXIT_CODE)
