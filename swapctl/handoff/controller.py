"""The orchestrator's side of the handoff protocol: the control socket and relay links.

`ControlServer` listens on a Unix socket (owner-only), accepts relays, checks who they
are (SO_PEERCRED pid against the pid it started, and the token it gave them) and
answers HELLO (granting the extensions both sides speak). `RelayLink` sends one request
at a time and waits for its reply within a deadline; a closed channel means the relay
is gone. `hand_over` pipelines a RELEASE into an ADOPT; with the pre-copy extension,
`pre_copy` first moves every fd while the old relay serves, the RELEASE names it and
carries only the delta, and `forward_backlog` passes the owed bytes' memfd on after
the candidate resumed (fds through here, never the bytes).
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swapctl.handoff.manifest import Assembler, Transfer, to_parts
from swapctl.handoff.messages import (
    ADOPT_RESUME,
    DEFER_ALL,
    PRECOPY,
    PROTOCOL_VERSION,
    TAIL,
    Envelope,
    HandoffError,
    granted,
)
from swapctl.handoff.wire import Channel, close_fds
from swapctl.unixsock import open_listener, peer_credentials

HELLO_TIMEOUT = 5.0
# defer-all: the clients owed the ring's end, then the DEFERRED ones (forward_backlog)
MAX_BACKLOGS = 2


class RelayLink:
    def __init__(self, channel: Channel, hello: dict[str, Any], pid: int) -> None:
        self.channel = channel
        self.hello = hello
        self.pid = pid
        self.token = str(hello.get("token", ""))
        self.ready = False
        self._next_id = 1
        self.extensions = granted(hello.get("extensions"))
        self.backlog_due = False  # a pre-copy RELEASE said bytes are owed: ask OWED
        self.backlogs = 0  # BACKLOGs asked since that RELEASE

    @property
    def precopy(self) -> bool:
        return PRECOPY in self.extensions

    @property
    def adopt_resume(self) -> bool:
        """The relay starts reading at the end of an ADOPT that asks it to (no RESUME)."""
        return ADOPT_RESUME in self.extensions

    @property
    def tail(self) -> bool:
        """The relay's pre-copy freeze may carry a fan-out in flight as a tail section
        (and, adopting, takes one)."""
        return TAIL in self.extensions

    @property
    def defer_all(self) -> bool:
        """The relay's pre-copy freeze may leave what every client is owed to OWED
        (and, adopting, holds every staged client until the BACKLOG)."""
        return DEFER_ALL in self.extensions

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float) -> None:
        while not self.ready:
            env = self.channel.recv(timeout=timeout)
            if env.type != "ready":
                raise HandoffError(f"relay {self.token}: expected ready, got {env.type}")
            self.ready = True

    def request(self, msg: dict[str, Any], timeout: float, blob: bytes = b"",
                fds: list[int] | None = None) -> Envelope:
        rid = self._send(msg, blob, fds)
        return self._reply(rid, timeout)

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _send(self, msg: dict[str, Any], blob: bytes = b"", fds: list[int] | None = None) -> int:
        rid = self._take_id()
        self.channel.send({**msg, "id": rid}, blob, fds)
        return rid

    def _reply(self, rid: int, timeout: float) -> Envelope:
        deadline = time.monotonic() + timeout
        while True:
            env = self.channel.recv(timeout=max(0.001, deadline - time.monotonic()))
            if env.type == "ready":
                self.ready = True
                continue
            re = env.msg.get("re")
            if re != rid:
                close_fds(env)
                if isinstance(re, int) and re < rid:
                    continue  # the late answer to a request that timed out: skip it
                raise HandoffError(f"relay {self.token}: reply to {re}, expected {rid}")
            if env.type == "error":
                raise HandoffError(f"relay {self.token} refused: {env.msg.get('message')}")
            return env

    def release(self, flush_ms: float, timeout: float) -> Transfer:
        """RELEASE: the relay stops reading and hands back its fds and their state."""
        rid = self._send({"type": "release", "flush_ms": flush_ms})
        assembler = Assembler("manifest")
        while not assembler.done:
            assembler.feed(self._reply(rid, timeout))
        return assembler.transfer

    def adopt(self, transfer: Transfer, timeout: float) -> dict[str, Any]:
        """ADOPT: give the relay a listener and connections (it does not read yet)."""
        rid = self._next_id
        self._next_id += 1
        for msg, blob, fds in to_parts(transfer, "adopt"):
            self.channel.send({**msg, "id": rid}, blob, fds)
        return self._reply(rid, timeout).msg

    def resume(self, timeout: float) -> int:
        return int(self.request({"type": "resume"}, timeout).msg["resumed_ns"])

    def close_held(self, timeout: float) -> None:
        self.request({"type": "close"}, timeout)

    def probe(self, fds: list[int], timeout: float) -> None:
        self.request({"type": "probe"}, timeout, fds=fds)

    def listener(self, timeout: float) -> int:
        """A copy of the relay's listening socket (the orchestrator's own to keep)."""
        env = self.request({"type": "listener"}, timeout)
        if len(env.fds) != 1:
            close_fds(env)
            raise HandoffError(f"relay {self.token}: listener reply carried {len(env.fds)} fds")
        return env.fds[0]

    def stats(self, timeout: float) -> dict[str, Any]:
        stats: dict[str, Any] = self.request({"type": "stats"}, timeout).msg["stats"]
        return stats


class HandOverFailed(HandoffError):
    """A pipelined handover failed; `side` says whose fault ("old" or "new")."""

    def __init__(self, side: str, cause: BaseException, transfer: Transfer) -> None:
        super().__init__(f"{side} relay: {cause}")
        self.side = side
        self.cause = cause
        self.transfer = transfer  # what arrived from the old relay (the orchestrator's copy)


def pre_copy(old: RelayLink, new: RelayLink, remaining: Callable[[], float]) -> Transfer:
    """PRECOPY (extension): the old relay, still serving, sends its listener and every
    connection's fd; each part goes on to the new relay as PREADOPT (it stages them, not
    reading). Returns the orchestrator's own copies (its rollback duplicates), with the
    pre-copy's `generation` in meta. On failure raises HandOverFailed; nothing moved."""
    rid_old = old._send({"type": "precopy"})
    rid_new = new._take_id()
    assembler = Assembler("precopied")
    forward_error: BaseException | None = None
    while not assembler.done:
        try:
            env = old._reply(rid_old, remaining())
        except (HandoffError, TimeoutError, OSError) as exc:
            raise HandOverFailed("old", exc, assembler.transfer) from None
        if forward_error is None:
            msg = {k: v for k, v in env.msg.items() if k != "re"}
            try:
                new.channel.send({**msg, "type": "preadopt", "id": rid_new}, env.blob, env.fds)
            except HandoffError as exc:
                forward_error = exc
        assembler.feed(env)
    if forward_error is not None:
        raise HandOverFailed("new", forward_error, assembler.transfer)
    try:
        new._reply(rid_new, remaining())
    except (HandoffError, TimeoutError, OSError) as exc:
        raise HandOverFailed("new", exc, assembler.transfer) from None
    return assembler.transfer


def forward_backlog(old: RelayLink, new: RelayLink, timeout: float,
                    rounds: int = MAX_BACKLOGS) -> int:
    """After a pre-copy RELEASE, once the new relay resumed: OWED asks the old relay for
    its BACKLOG (a memfd of the bytes owed to clients; written now, so not competing
    for the CPU inside the pause), which goes on to the new relay; returns how many
    connections it covered (0 when nothing was owed).

    A BACKLOG that says `more` (`defer-all`, section 13: the clients owed the end of a
    fan-out come first, so that every client writes again at once, and those owed a
    large backlog after) is followed by one more OWED, in this call or, when `rounds`
    stopped it after the first, in the next (the link remembers it is due). A second
    `more` breaks the protocol (there are two kinds of client to cover, so two BACKLOGs
    at most) and raises `HandoffError` rather than asking a misbehaving relay forever."""
    covered = 0
    for _ in range(rounds):
        if not old.backlog_due:
            break
        old.backlog_due = False  # (asked: a failure below is not asked again)
        old.backlogs += 1
        env = old.request({"type": "owed"}, timeout)
        if env.type != "backlog":
            close_fds(env)
            raise HandoffError(f"relay {old.token}: expected backlog, got {env.type}")
        msg = {k: v for k, v in env.msg.items() if k != "re"}
        try:
            reply = new.request(msg, timeout, fds=env.fds)
        finally:
            close_fds(env)  # our copy of the memfd: the bytes now belong to the new relay
        covered += int(reply.msg.get("connections", 0))
        more = msg.get("more") is True
        if more and old.backlogs == MAX_BACKLOGS:
            raise HandoffError(f"relay {old.token}: backlog {old.backlogs} said `more`: the "
                               f"protocol has {MAX_BACKLOGS} at most (docs/handoff-protocol.md, "
                               "defer-all)")
        old.backlog_due = more
    return covered


def hand_over(old: RelayLink, new: RelayLink, flush_ms: float,
              remaining: Callable[[], float],
              on_released: Callable[[Transfer], None],
              *, precopy: int | None = None, resume: bool = False) -> Transfer:
    """RELEASE the old relay and forward each manifest part to the new relay as an ADOPT
    part the moment it arrives (old relay, orchestrator and new relay work in a
    pipeline); returns the orchestrator's copy of everything once the new relay adopted.
    The new relay is not resumed here, unless `resume` (the adopt-resume extension,
    `new.adopt_resume`): then it starts reading as soon as it holds everything and its
    `resumed_ns` is in the returned transfer's meta. With `precopy` (a pre-copy's
    generation) the RELEASE asks only for the delta since then; any BACKLOG it owes is
    left for `forward_backlog`; when both relays speak the `tail` extension it asks for
    one (the units of a fan-out in flight, once, in the delta), and when both speak
    `defer-all`, for no client's output at all (all of it comes in the BACKLOG)."""
    request: dict[str, Any] = {"type": "release", "flush_ms": flush_ms}
    if precopy is not None:
        request["precopy"] = precopy
        if old.tail and new.tail:
            request["tail"] = 1
        if old.defer_all and new.defer_all:
            request["defer_all"] = 1
    rid_old = old._send(request)
    rid_new = new._take_id()
    assembler = Assembler("manifest")
    forward_error: BaseException | None = None
    while not assembler.done:
        try:
            env = old._reply(rid_old, remaining())
        except (HandoffError, TimeoutError, OSError) as exc:
            raise HandOverFailed("old", exc, assembler.transfer) from None
        received_ns = time.monotonic_ns()  # (the last part's: the orchestrator has it all)
        if forward_error is None:  # forward first: our own copy is decoded while it works
            msg = {k: v for k, v in env.msg.items() if k != "re"}
            if resume:
                msg["resume"] = True
            try:
                new.channel.send({**msg, "type": "adopt", "id": rid_new}, env.blob, env.fds)
            except HandoffError as exc:
                forward_error = exc  # keep draining: the old relay's parts must all arrive
        assembler.feed(env)
    assembler.transfer.meta["received_ns"] = received_ns
    if precopy is not None:  # (a count of the clients OWED will cover, if any)
        old.backlog_due, old.backlogs = bool(assembler.transfer.meta.get("backlog")), 0
    on_released(assembler.transfer)
    if forward_error is not None:
        raise HandOverFailed("new", forward_error, assembler.transfer)
    try:
        adopted = new._reply(rid_new, remaining())
    except (HandoffError, TimeoutError, OSError) as exc:
        raise HandOverFailed("new", exc, assembler.transfer) from None
    if resume:
        assembler.transfer.meta["resumed_ns"] = int(adopted.msg["resumed_ns"])
    return assembler.transfer


class ControlServer:
    """Listens for relays; hands out `RelayLink`s by the token each relay was given."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = open_listener(path)
        os.chmod(path, 0o600)
        self.unclaimed: dict[str, RelayLink] = {}

    def close(self) -> None:
        for link in self.unclaimed.values():
            link.close()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def accept(self, token: str, timeout: float, pid: int | None = None) -> RelayLink:
        """Wait for the relay introduced by `token` (and, if given, running as `pid`)."""
        deadline = time.monotonic() + timeout
        while token not in self.unclaimed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"relay {token} did not connect to {self.path} in time")
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if readable:
                self._accept_one(deadline)
        link = self.unclaimed.pop(token)
        if pid is not None and link.pid != pid:
            link.close()
            raise HandoffError(f"relay {token} connected from pid {link.pid}, expected {pid}")
        return link

    def _accept_one(self, deadline: float) -> None:
        try:
            sock, _ = self.sock.accept()
        except BlockingIOError:
            return
        pid, uid, _ = peer_credentials(sock)
        if uid != os.getuid():
            sock.close()
            return
        channel = Channel(sock)
        try:
            # a relay that connected gets its own deadline to say HELLO: the caller may be
            # polling in short slices, and a loaded relay can take a while to speak
            hello = channel.recv(timeout=max(HELLO_TIMEOUT, deadline - time.monotonic()))
        except (HandoffError, TimeoutError, OSError):
            channel.close()
            return
        try:
            if hello.type != "hello" or PROTOCOL_VERSION not in hello.msg.get("versions", []):
                channel.send({"type": "error", "message": "expected hello with version 1"})
                channel.close()
                return
            channel.send({"type": "welcome", "version": PROTOCOL_VERSION,
                          "extensions": granted(hello.msg.get("extensions"))})
        except HandoffError:
            channel.close()
            return
        link = RelayLink(channel, hello.msg, pid)
        old = self.unclaimed.pop(link.token, None)
        if old is not None:
            old.close()
        self.unclaimed[link.token] = link
