"""The relay's side of the handoff protocol, reusable by any Python relay.

A relay implements `HandoffHost` (five small hooks over its own connection table),
creates a `Participant`, registers `participant.fileno()` in its event loop and calls
`participant.handle()` when it is readable. The participant connects to the
orchestrator's control socket, introduces itself (HELLO), says READY, then answers
requests one at a time: ADOPT, RELEASE, RESUME, CLOSE, PROBE, STATS. If the
orchestrator goes away the relay keeps serving and `reconnect()` tries again later.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from swapctl.handoff.manifest import Assembler, Transfer, to_parts
from swapctl.handoff.messages import PROTOCOL_VERSION, Envelope, HandoffError
from swapctl.handoff.wire import Channel, close_fds
from swapctl.logs import event

log = logging.getLogger("swapctl.handoff")
PART_TIMEOUT = 5.0


class HandoffHost(Protocol):
    def handoff_state(self) -> str: ...
    def handoff_release(self, flush_ms: float) -> Transfer: ...
    def handoff_adopt(self, transfer: Transfer, first: bool) -> None: ...
    def handoff_resume(self) -> int: ...
    def handoff_close(self) -> None: ...
    def handoff_probe(self, fds: list[int]) -> None: ...
    def handoff_listener(self) -> int | None: ...
    def stats(self) -> dict[str, Any]: ...


class Participant:
    def __init__(self, path: Path, host: HandoffHost, token: str, release: str = "") -> None:
        self.path = path
        self.host = host
        self.token = token
        self.release = release
        self.channel: Channel | None = None
        self.ready_sent = False
        self.awaiting_welcome = False

    def fileno(self) -> int:
        return -1 if self.channel is None else self.channel.fileno()

    def connect(self, timeout: float = 10.0) -> None:
        """At start-up: connect, say HELLO and wait for WELCOME (retrying until `timeout`)."""
        deadline = time.monotonic() + timeout
        while not self._try_hello():
            if time.monotonic() >= deadline:
                raise HandoffError(f"cannot reach control socket {self.path}")
            time.sleep(0.02)
        assert self.channel is not None
        self._welcome(self.channel.recv(timeout=max(0.1, deadline - time.monotonic())))

    def _try_hello(self) -> bool:
        """One connect + HELLO; a refused or dropped attempt is retried by the caller."""
        try:
            return self._hello()
        except HandoffError:
            if self.channel is not None:
                self.channel.close()
                self.channel = None
            return False

    def _hello(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            return False
        self.channel = Channel(sock)
        self.channel.send({
            "type": "hello", "versions": [PROTOCOL_VERSION], "pid": os.getpid(),
            "token": self.token, "release": self.release, "state": self.host.handoff_state(),
            "connections": self.host.stats().get("connections_open", 0),
        })
        self.awaiting_welcome = True
        return True

    def _welcome(self, reply: Envelope) -> None:
        if reply.type != "welcome" or reply.msg.get("version") != PROTOCOL_VERSION:
            raise HandoffError(f"orchestrator refused HELLO: {reply.msg}")
        self.awaiting_welcome = False
        event(log, logging.INFO, "handoff.connected", control=str(self.path), token=self.token)
        if self.ready_sent:
            self.send_ready()

    def send_ready(self) -> None:
        self.ready_sent = True
        if self.channel is not None:
            self.channel.send({"type": "ready", "state": self.host.handoff_state()})

    def reconnect(self) -> bool:
        """After the orchestrator went away: say HELLO again without waiting for the
        answer (WELCOME is handled by `handle`), so the data path never blocks on it."""
        try:
            return self._try_hello()
        except OSError:
            self.channel = None
            return False

    def handle(self) -> bool:
        """Serve one request; False if the channel closed (the relay keeps serving)."""
        assert self.channel is not None
        try:
            env = self.channel.recv(timeout=PART_TIMEOUT)
            if self.awaiting_welcome:
                self._welcome(env)
            else:
                self._dispatch(env)
        except (HandoffError, TimeoutError, OSError) as exc:
            event(log, logging.WARNING, "handoff.control_lost", error=str(exc))
            self.channel.close()
            self.channel = None
            return False
        return True

    def _dispatch(self, env: Envelope) -> None:
        assert self.channel is not None
        rid = env.msg.get("id")
        try:
            reply = self._serve(env)
        except HandoffError as exc:
            close_fds(env)
            self.channel.send({"type": "error", "re": rid, "message": str(exc)})
            return
        if reply is not None:
            reply["re"] = rid
            self.channel.send(reply)

    def _serve(self, env: Envelope) -> dict[str, Any] | None:
        kind = env.type
        if kind == "adopt":
            return self._adopt(env)
        if kind == "release":
            self._release(env)
            return None
        if kind == "resume":
            return {"type": "resumed", "resumed_ns": self.host.handoff_resume()}
        if kind == "close":
            self.host.handoff_close()
            return {"type": "closed"}
        if kind == "probe":
            self.host.handoff_probe(env.fds)
            return {"type": "probing", "fds": len(env.fds)}
        if kind == "stats":
            return {"type": "stats", "stats": self.host.stats()}
        if kind == "listener":
            self._send_listener(env)
            return None
        raise HandoffError(f"unknown request type {kind!r}")

    def _adopt(self, first: Envelope) -> dict[str, Any]:
        """Adopt each part as it arrives: the orchestrator forwards parts while the old
        relay is still sending them, so the three processes work in a pipeline."""
        assert self.channel is not None
        assembler = Assembler("adopt")
        self.host.handoff_adopt(assembler.feed(first), first=True)
        while not assembler.done:
            self.host.handoff_adopt(assembler.feed(self.channel.recv(timeout=PART_TIMEOUT)),
                                    first=False)
        transfer = assembler.transfer
        return {"type": "adopted", "connections": len(transfer.conns),
                "listener": transfer.listener is not None}

    def _send_listener(self, env: Envelope) -> None:
        """A copy of the listening socket, for an orchestrator rebuilding its fd store."""
        assert self.channel is not None
        fd = self.host.handoff_listener()
        if fd is None:
            raise HandoffError("no listener here (standby)")
        self.channel.send({"type": "listener", "re": env.msg.get("id")}, fds=[fd])

    def _release(self, env: Envelope) -> None:
        assert self.channel is not None
        flush_ms = float(env.msg.get("flush_ms", 10.0))
        transfer = self.host.handoff_release(flush_ms)
        for msg, blob, fds in to_parts(transfer, "manifest"):
            msg["re"] = env.msg.get("id")
            self.channel.send(msg, blob, fds)
