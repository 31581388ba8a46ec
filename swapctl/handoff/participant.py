"""The relay's side of the handoff protocol, reusable by any Python relay.

A relay implements `HandoffHost` (five small hooks over its own connection table),
creates a `Participant`, registers `participant.fileno()` in its event loop and calls
`participant.handle()` when it is readable. The participant connects to the
orchestrator's control socket, introduces itself (HELLO), says READY, then answers
requests one at a time: ADOPT, RELEASE, RESUME, CLOSE, PROBE, STATS. If the
orchestrator goes away the relay keeps serving and `reconnect()` tries again later.

A host that also implements `PreCopyHost` offers the pre-copy extension in its HELLO
(docs/handoff-protocol.md section 10): PRECOPY (send every fd ahead, keep serving),
PREADOPT (stage them, not reading), a RELEASE naming the pre-copy (send the delta),
OWED (the frozen relay's owed bytes as a BACKLOG memfd, asked after the candidate
resumed) and BACKLOG (the adopter queues them in front and resumes writing).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from swapctl.handoff.manifest import DELTA_FORMAT, Assembler, Transfer, to_parts
from swapctl.handoff.messages import (
    ADOPT_RESUME,
    PRECOPY,
    PROTOCOL_VERSION,
    RELAY_EXTENSIONS,
    Envelope,
    HandoffError,
    granted,
)
from swapctl.handoff.wire import Channel, close_fds
from swapctl.logs import event

log = logging.getLogger("swapctl.handoff")
PART_TIMEOUT = 5.0
_PAUSING = frozenset({"release", "adopt", "preadopt"})  # requests that start a pause
_IN_A_PAUSE = frozenset({"released", "adopted", "paused"})  # host states inside one


class HandoffHost(Protocol):
    def handoff_state(self) -> str: ...
    def handoff_release(self, flush_ms: float) -> Transfer: ...
    def handoff_adopt(self, transfer: Transfer, first: bool) -> None: ...
    def handoff_resume(self) -> int: ...
    def handoff_close(self) -> None: ...
    def handoff_probe(self, fds: list[int]) -> None: ...
    def handoff_listener(self) -> int | None: ...
    def stats(self) -> dict[str, Any]: ...


@runtime_checkable
class PreCopyHost(Protocol):
    """The hooks of the pre-copy extension (a host without them gets version 1)."""

    def handoff_precopy(self) -> Transfer: ...
    def handoff_preadopt(self, transfer: Transfer, first: bool) -> None: ...
    def handoff_freeze(self, generation: int) -> Transfer: ...
    def handoff_adopt_delta(self, transfer: Transfer, first: bool) -> None: ...
    def handoff_backlog_export(self) -> tuple[dict[str, Any], int | None]: ...
    def handoff_backlog_import(self, fd: int | None, msg: dict[str, Any]) -> int: ...
    def handoff_control_lost(self) -> None: ...


class Participant:
    def __init__(self, path: Path, host: HandoffHost, token: str, release: str = "",
                 *, no_reply_at: str | None = None) -> None:
        self.path = path
        self.no_reply_at = no_reply_at  # fault: this request is served, its reply never sent
        self.host = host
        self.token = token
        self.release = release
        self.channel: Channel | None = None
        self.ready_sent = False
        self.awaiting_welcome = False
        self.precopy = isinstance(host, PreCopyHost)
        self.extensions: dict[str, int] = {}  # granted by the orchestrator's WELCOME

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
            "extensions": dict(RELAY_EXTENSIONS) if self.precopy else {},
        })
        self.awaiting_welcome = True
        return True

    def _welcome(self, reply: Envelope) -> None:
        if reply.type != "welcome" or reply.msg.get("version") != PROTOCOL_VERSION:
            raise HandoffError(f"orchestrator refused HELLO: {reply.msg}")
        self.awaiting_welcome = False
        self.extensions = granted(reply.msg.get("extensions")) if self.precopy else {}
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
            if isinstance(self.host, PreCopyHost):
                self.host.handoff_control_lost()
            return False
        return True

    def _dispatch(self, env: Envelope) -> None:
        assert self.channel is not None
        rid = env.msg.get("id")
        if env.type in _PAUSING:
            gc.disable()
        try:
            reply = self._serve(env)
        except HandoffError as exc:
            close_fds(env)
            self.channel.send({"type": "error", "re": rid, "message": str(exc)})
            return
        finally:
            self._collector_after(env.type)  # before the reply: see there
        if reply is not None and env.type == self.no_reply_at:
            event(log, logging.WARNING, "handoff.reply_withheld", request=env.type)
        elif reply is not None:
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
        if kind in ("precopy", "preadopt", "backlog", "owed"):
            return self._precopy_request(env)
        raise HandoffError(f"unknown request type {kind!r}")

    def _collector_after(self, kind: str) -> None:
        """No cyclic collection while this relay is part of a pause: from the RELEASE or
        the first ADOPT/PREADOPT part until it serves again (resumed, closed, or back to
        standby), so none lands between freeze and resume: a full one over 5,000
        connections takes about 5 ms. A standby relay that just staged a pre-copy
        collects before it answers, so the collection deferred is not due the moment it
        resumes. Not after: the freeze follows the answer at once, and an ADOPT that
        found the relay collecting waited (10 clients, pause p50 0.3 -> 0.9 ms)."""
        if self.host.handoff_state() in _IN_A_PAUSE:
            if kind == "preadopt":
                gc.collect()
            gc.disable()
        else:
            gc.enable()

    def _precopy_host(self) -> PreCopyHost:
        if PRECOPY not in self.extensions or not isinstance(self.host, PreCopyHost):
            raise HandoffError("the precopy extension was not negotiated on this channel")
        return self.host

    def _precopy_request(self, env: Envelope) -> dict[str, Any] | None:
        assert self.channel is not None
        host = self._precopy_host()
        if env.type == "precopy":
            transfer = host.handoff_precopy()
            for msg, blob, fds in to_parts(transfer, "precopied"):
                msg["re"] = env.msg.get("id")
                self.channel.send(msg, blob, fds)
            return None
        if env.type == "preadopt":
            return self._adopt(env, "preadopt", host.handoff_preadopt)
        if env.type == "owed":  # asked once the candidate resumed: no copy in the pause
            fields, memfd = host.handoff_backlog_export()
            try:
                self.channel.send({"type": "backlog", "re": env.msg.get("id"), **fields},
                                  fds=[memfd] if memfd is not None else [])
            finally:
                if memfd is not None:
                    os.close(memfd)
            return None
        fd = env.fds[0] if env.fds else None
        try:
            count = host.handoff_backlog_import(fd, env.msg)
        finally:
            close_fds(env)
        return {"type": "backlogged", "connections": count}

    def _adopt(self, first: Envelope, kind: str = "adopt",
               take: Callable[[Transfer, bool], None] | None = None) -> dict[str, Any]:
        """Adopt each part as it arrives: the orchestrator forwards parts while the old
        relay is still sending them, so the three processes work in a pipeline."""
        assert self.channel is not None
        if first.msg.get("resume") and (kind != "adopt" or ADOPT_RESUME not in self.extensions):
            close_fds(first)
            raise HandoffError("resume on adopt needs the adopt-resume extension, "
                               "negotiated on this channel, and an adopt")
        assembler = Assembler(kind)
        part = assembler.feed(first)
        if take is None:
            take = self.host.handoff_adopt
            if part.table == DELTA_FORMAT:
                take = self._precopy_host().handoff_adopt_delta
        take(part, True)
        while not assembler.done:
            take(assembler.feed(self.channel.recv(timeout=PART_TIMEOUT)), False)
        transfer = assembler.transfer
        reply: dict[str, Any] = {"type": "adopted" if kind == "adopt" else "preadopted",
                                 "connections": len(transfer.conns),
                                 "listener": transfer.listener is not None}
        if kind == "adopt" and first.msg.get("resume"):
            reply["resumed_ns"] = self.host.handoff_resume()  # (adopt-resume, checked above)
        return reply

    def _send_listener(self, env: Envelope) -> None:
        """A copy of the listening socket, for an orchestrator rebuilding its fd store."""
        assert self.channel is not None
        fd = self.host.handoff_listener()
        if fd is None:
            raise HandoffError("no listener here (standby)")
        self.channel.send({"type": "listener", "re": env.msg.get("id")}, fds=[fd])

    def _release(self, env: Envelope) -> None:
        assert self.channel is not None
        rid = env.msg.get("id")
        generation = env.msg.get("precopy")
        if generation is None:
            transfer = self.host.handoff_release(float(env.msg.get("flush_ms", 10.0)))
        else:
            transfer = self._precopy_host().handoff_freeze(int(generation))
        for msg, blob, fds in to_parts(transfer, "manifest"):
            msg["re"] = rid
            self.channel.send(msg, blob, fds)
