"""Running a load: publisher and consumer child processes around one relay.

How it works: `LoadSession.start()` spawns every consumer and publisher as its own
process (so a 100k msg/s run is not bound by one GIL, and the swap engine can keep
a canary running in the background), waits until each consumer is connected and
each publisher is ready, then tells the publishers to go (they connect after the
consumers, so no consumer misses their first messages). `stop()` stops the
publishers, collects how many messages each sent (always numbers 1..sent), hands
those counts to every auditor, waits for the verdicts, and closes everything.
Every child belongs to the session: `close()` (also on exceptions, Ctrl-C and at
the end of a `with` block) asks, then terminates, then kills; a child whose parent
dies sees its control pipe close and exits.

    with LoadSession(LoadConfig(socket=path, rate=1000, duration=None)) as canary:
        ...  # swap the relay
        report = canary.stop()

Children are started with multiprocessing's "spawn" method by default (safe from a
threaded daemon); a script that uses it needs the `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from swapctl.probes.config import LoadConfig
from swapctl.probes.consumer import ConsumerSpec, consumer_main
from swapctl.probes.control import (
    Audited,
    Close,
    Connect,
    Failed,
    Go,
    LoadError,
    Published,
    Ready,
    Settle,
    Stop,
    Synced,
)
from swapctl.probes.ident import make_tag
from swapctl.probes.publisher import PublisherSpec, publisher_main
from swapctl.probes.report import (
    Conditions,
    ConsumerReport,
    LoadReport,
    PublisherReport,
)
from swapctl.probes.traffic import MessageFactory

SPAWN_GRACE = 15.0  # seconds a child may take to start (imports on a busy machine)
REPORT_GRACE = 5.0


@dataclass(slots=True)
class _Child:
    role: str
    index: int
    process: BaseProcess
    ctl: Connection
    synced: bool = False

    @property
    def name(self) -> str:
        return f"{self.role} {self.index} (pid {self.process.pid})"


class LoadSession:
    """One load run; see the module docstring. Not reusable once stopped."""

    def __init__(self, config: LoadConfig, *, start_method: str = "spawn") -> None:
        self.config = config
        self.run_tag = config.run_tag if config.run_tag is not None else make_tag(
            secrets.randbits(15))
        self._ctx: Any = multiprocessing.get_context(start_method)  # typeshed lacks Process
        self._publishers: list[_Child] = []
        self._consumers: list[_Child] = []
        self._published: dict[int, PublisherReport] = {}
        self._report: LoadReport | None = None
        self._unsynced: tuple[str, ...] = ()

    def __enter__(self) -> LoadSession:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ----- the life of a run -----------------------------------------------------

    def start(self) -> None:
        """Spawn and connect every client, then let the publishers go."""
        if self._publishers:
            raise RuntimeError("LoadSession.start() called twice")
        try:
            cfg = self.config
            for i, mode in enumerate(cfg.consumer_modes()):
                spec = ConsumerSpec(i, cfg.publishers, str(cfg.consumer_socket(i)), self.run_tag,
                                    mode,
                                    cfg.connect_timeout, cfg.dashboard_retry)
                self._consumers.append(self._spawn("consumer", i, consumer_main, spec))
            for i in range(cfg.publishers):
                self._publishers.append(self._spawn("publisher", i, publisher_main,
                                                    self._publisher_spec(i)))
            self._expect(self._children, Ready, cfg.connect_timeout + SPAWN_GRACE)
            for child in self._publishers:
                child.ctl.send(Connect())
            self._barrier()
            for child in self._publishers:
                child.ctl.send(Go())
        except BaseException:
            self.close()
            raise

    def _barrier(self) -> None:
        """Wait until every auditor has seen every publisher's sync message through the
        relay (so none misses the first messages); past the timeout, go on and say so."""
        try:
            self._expect(self._children, Synced, self.config.connect_timeout)
        except TimeoutError:
            self._unsynced = tuple(c.name for c in self._children if not c.synced)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every publisher has finished its duration; False on timeout."""
        pending = [c for c in self._publishers if c.index not in self._published]
        try:
            got = self._expect(pending, Published, timeout)
        except TimeoutError:
            return False
        self._published.update({i: m.report for (_, i), m in got.items()})
        return True

    def stop(self) -> LoadReport:
        """Stop publishing, let the stream settle, collect every verdict, close."""
        if self._report is not None:
            return self._report
        cfg = self.config
        try:
            pending = [c for c in self._publishers if c.index not in self._published]
            for child in pending:
                child.ctl.send(Stop())
            got = self._expect(pending, Published, cfg.settle + cfg.connect_timeout
                               + REPORT_GRACE)
            self._published.update({i: m.report for (_, i), m in got.items()})
            started = time.monotonic()
            audits = self._settle({i: r.sent for i, r in self._published.items()})
            self._report = self._build(audits, time.monotonic() - started)
            return self._report
        finally:
            self.close()

    def pids(self) -> list[int]:
        """Process ids of the session's children (consumers first)."""
        return [c.process.pid for c in self._children if c.process.pid is not None]

    def close(self) -> None:
        """End every child: ask, then SIGTERM, then SIGKILL. Idempotent."""
        for child in self._children:
            if child.process.is_alive():
                with contextlib.suppress(OSError):
                    child.ctl.send(Close())
        deadline = time.monotonic() + 1.0
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
        for child in self._children:
            if child.process.is_alive():
                child.process.terminate()
        for child in self._children:
            child.process.join(2.0)
            if child.process.is_alive():
                child.process.kill()
                child.process.join()
            child.ctl.close()

    # ----- internals -------------------------------------------------------------

    @property
    def _children(self) -> list[_Child]:
        return [*self._consumers, *self._publishers]

    def _publisher_spec(self, index: int) -> PublisherSpec:
        cfg = self.config
        return PublisherSpec(
            index=index, publishers=cfg.publishers, socket=str(cfg.publisher_socket(index)),
            domain_byte=cfg.domain_byte, source=cfg.source, run_tag=self.run_tag,
            mix=cfg.message_mix(),
            rate=cfg.rate / cfg.publishers, duration=cfg.duration, batch=cfg.batch,
            id_header=cfg.id_header, reconnect=cfg.publisher_reconnect,
            reconnect_attempts=cfg.reconnect_attempts, reconnect_backoff=cfg.reconnect_backoff,
            connect_timeout=cfg.connect_timeout, flush_timeout=cfg.settle,
            audit_echo=cfg.audit_echo,
        )

    def _spawn(self, role: str, index: int, target: Callable[..., None], spec: Any) -> _Child:
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(target=target, args=(spec, child_end), daemon=True,
                                    name=f"swapctl-load-{role}-{index}")
        process.start()
        child_end.close()
        return _Child(role, index, process, parent_end)

    def _settle(self, sent: dict[int, int]) -> dict[tuple[str, int], Any]:
        cfg = self.config
        auditors = [*self._consumers, *(self._publishers if cfg.audit_echo else [])]
        for child in auditors:
            child.ctl.send(Settle(sent, cfg.settle, cfg.settle_limit))
        got = self._expect(auditors, Audited, cfg.settle_limit + REPORT_GRACE)
        return {key: msg.report for key, msg in got.items()}

    def _expect(self, children: Sequence[_Child], kind: type[Any],
                timeout: float | None) -> dict[tuple[str, int], Any]:
        """One message of `kind` from each child, by (role, index).
        A child that crashed or sent Failed raises LoadError; a timeout TimeoutError."""
        got: dict[tuple[str, int], Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(got) < len(children):
            waiting = {id(c.ctl): c for c in children if (c.role, c.index) not in got}
            sentinels = {c.process.sentinel: c for c in waiting.values()}
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([*(c.ctl for c in waiting.values()), *sentinels], left)
            if not ready:
                names = ", ".join(c.name for c in waiting.values())
                raise TimeoutError(f"{names}: no {kind.__name__} within {timeout} s")
            for obj in ready:
                child = sentinels[obj] if isinstance(obj, int) else waiting[id(obj)]
                if (child.role, child.index) in got:
                    continue  # its pipe and its exit were both ready: the message is read
                msg = self._message(child, kind)
                if msg is not None:
                    got[(child.role, child.index)] = msg
        return got

    def _message(self, child: _Child, kind: type[Any]) -> Any:
        """The child's next message if of `kind`; None for a late Synced."""
        if not child.ctl.poll():
            child.process.join(0.5)
            raise LoadError(f"{child.name} exited with code {child.process.exitcode} "
                            "before reporting; see its error output above")
        try:
            msg = child.ctl.recv()
        except EOFError:
            raise LoadError(f"{child.name} closed its control pipe unexpectedly") from None
        if isinstance(msg, Failed):
            raise LoadError(f"{child.name}: {msg.error}")
        if isinstance(msg, Synced):
            child.synced = True
            if kind is not Synced:
                return None
        if not isinstance(msg, kind):
            raise LoadError(f"{child.name} sent {msg!r} while {kind.__name__} was expected")
        return msg

    def _build(self, audits: dict[tuple[str, int], Any], settle_s: float) -> LoadReport:
        cfg = self.config
        publishers = []
        for index, report in sorted(self._published.items()):
            echo = audits.get(("publisher", index))
            publishers.append(replace(report, echo=echo.echo) if echo else report)
        consumers: list[ConsumerReport] = [audits[("consumer", c.index)]
                                           for c in self._consumers]
        sizes = MessageFactory(domain=cfg.domain_byte, source=cfg.source, publisher=0,
                               run_tag=self.run_tag, mix=cfg.message_mix()).sizes()
        conditions = Conditions(
            socket=str(cfg.socket), publishers=cfg.publishers, consumers=cfg.consumers,
            consumer_modes=tuple(m.value for m in cfg.consumer_modes()),
            rate_asked=cfg.rate, duration_s=cfg.duration, domain=cfg.domain.value,
            profile=cfg.profile.value, domain_byte=cfg.domain_byte, source=cfg.source,
            mix=cfg.message_mix().text(),
            message_sizes=tuple((k.value, n) for k, n in sizes.items()),
            id_header=cfg.id_header, publisher_reconnect=cfg.publisher_reconnect,
            run_tag=self.run_tag,
        )
        return LoadReport(conditions, tuple(publishers), tuple(consumers), settle_s,
                          self._unsynced)


def run_load(config: LoadConfig, *, start_method: str = "spawn") -> LoadReport:
    """A whole run: start, publish for `config.duration` seconds, settle, report."""
    if config.duration is None:
        raise LoadError("run_load needs a duration; use LoadSession to run until stop()")
    with LoadSession(config, start_method=start_method) as session:
        session.wait(config.duration + config.connect_timeout + REPORT_GRACE)
        return session.stop()
