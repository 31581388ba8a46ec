"""Handoff protocol values shared by both sides, with no I/O: limits, errors, envelopes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swapctl.errors import SwapctlError

PROTOCOL_VERSION = 1
# Optional extensions, name -> version, offered in HELLO and granted in WELCOME (a peer
# that does not know the key ignores it and gets the plain version-1 handoff).
PRECOPY = "precopy"
# ADOPT with "resume": true: the adopter starts reading the moment it holds everything,
# without a RESUME round trip inside the pause (docs/handoff-protocol.md section 11)
ADOPT_RESUME = "adopt-resume"
# A pre-copy freeze's delta carries the units of a fan-out in flight once, and each
# client still owed some of them is a record saying how many bytes (section 12): the
# orchestrator asks for it only when both relays speak it (the Python relay does not)
TAIL = "tail"
# A pre-copy freeze describes no client's output: every staged client waits for the
# BACKLOG, which says what each is owed, after the resume (section 13); asked only
# when both relays speak it (the Python relay does not: its freeze finds nothing owed
# but what its clients did not read, which it already defers)
DEFER_ALL = "defer-all"
EXTENSIONS: dict[str, int] = {PRECOPY: 1, ADOPT_RESUME: 1, TAIL: 1, DEFER_ALL: 1}
# what the Python reference relay offers (it writes each broadcast to every client
# before it reads again, so its freeze never finds a fan-out in flight)
RELAY_EXTENSIONS: dict[str, int] = {PRECOPY: 1, ADOPT_RESUME: 1}
MAX_FDS = 253  # the kernel's SCM_MAX_FD: file descriptors in one message


class HandoffError(SwapctlError):
    """The handoff control channel failed or a peer broke the protocol."""


class ChannelClosed(HandoffError):
    """The peer closed the control channel (often: it exited)."""


def granted(offered: object) -> dict[str, int]:
    """The extensions both sides speak, from the peer's offer (a HELLO's `extensions`)."""
    if not isinstance(offered, dict):
        return {}
    return {name: version for name, version in EXTENSIONS.items()
            if offered.get(name) == version}


@dataclass(slots=True)
class Envelope:
    msg: dict[str, Any]
    blob: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def type(self) -> str:
        return str(self.msg.get("type", ""))

