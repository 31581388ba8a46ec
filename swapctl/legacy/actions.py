"""The legacy strategies' phase actions for the one swap engine (swap/executor.py).

Each class implements one path of swap/machine.py; where the relays live (a private
slot layout for a standalone swap, supervisord slots for swapctld) is a `Place`:

  takeover  starting: the handoff-capable candidate starts; probing: a probe through
            it; freezing: the legacy relay's sockets duplicated, the relay stopped while
            idle (takeover.freeze); adopting: the candidate adopts them and resumes
            (clients on the candidate from here); retiring: the legacy relay is killed
            while stopped (no way back from here); verifying: the candidate's resync and
            disconnect counters, less the sockets whose peer had already closed before
            the freeze (they were nobody's client); committing: the place records it.
  bridge    starting, probing; bridging: the bridge client joins the two relays and a
            frame crosses each way; flipping: the public link points at the candidate;
            draining: the old relay's clients leave on their own, or are cut at the
            drain deadline (the soak window), counted; retiring: the bridge drains, the
            old relay stops; verifying: the reconnect window (who of the cut came back).
  restart   starting, probing; flipping; retiring: the old relay's clients counted, then
            it is stopped (they are all cut); verifying: the reconnect window.
Counting a relay's clients: its accepted connections in the kernel's Unix socket table
(legacy/sockets.py), less swapctl's own (the bridge, the canary when it is there).
"""

from __future__ import annotations

import contextlib
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swapctl import sockdiag
from swapctl.errors import SwapctlError
from swapctl.handoff.manifest import ConnState, Transfer
from swapctl.legacy import sockets
from swapctl.legacy import takeover as tk
from swapctl.legacy.bridge import CANNOT_GUARANTEE as BRIDGE_CANNOT
from swapctl.legacy.bridge import BridgeSettings, Drain, check_bridge
from swapctl.legacy.bridge_client import BridgeConfig, BridgeError, BridgeProcess
from swapctl.legacy.restart import CANNOT_GUARANTEE as RESTART_CANNOT
from swapctl.legacy.restart import probe_socket
from swapctl.swap.canary import CanaryError
from swapctl.swap.executor import Failure, SwapRun, Where
from swapctl.swap.machine import Event, State
from swapctl.swap.probe import ProbeSettings, probe
from swapctl.swap.spawner import Release


@dataclass(slots=True)
class Relay:
    """A relay a legacy strategy watches: pid, socket seen from outside, path it bound."""

    pid: int
    socket: Path
    bound: str
    handle: Any = None  # what the place needs to stop it (a slot, a started relay)


class Place(Protocol):
    """Where a swap's relays live and how the public path is pointed."""

    old: Relay

    def start(self, release: Release, timeout: float) -> Relay: ...

    def flip(self, target: Path) -> None: ...

    def stop(self, relay: Relay) -> None: ...

    def committed(self, run: SwapRun, new: Relay | None) -> None: ...


def clients(relay: Relay, own: int = 0) -> int | None:
    """Accepted connections of `relay` that are not swapctl's (None: cannot look). A
    connection whose peer has already closed (a probe just done, a client just gone, the
    relay not yet at its EOF) is nobody's: counted, it made a reconnect window see one
    client fewer come back on a busy machine."""
    try:
        inodes = sockets.fd_inodes(relay.pid)
        found = sockets.classify(inodes, sockets.unix_table(relay.pid), relay.bound)
        conns = {inodes[fd] for fd in found.connections}
        return max(0, len(conns - sockdiag.peer_gone(conns)) - own)
    except (SwapctlError, OSError):
        return None


def canary_clients(run: SwapRun) -> int:
    """Connections the canary holds on the relay it joined (publisher and consumers)."""
    if run.canary is None or run.canary_final is not None:
        return 0
    return 1 + len(run.canary.consumers)


def canary_back(run: SwapRun) -> int:
    """Canary clients that came back after a cut (its streams not stopped for good):
    they reconnected like the others, but are not among the others counted as cut."""
    if run.canary is None or run.canary_final is not None:
        return 0
    try:
        return sum(1 for s in run.canary.snapshot()["streams"] if not s["dead"])
    except CanaryError:
        return 0


def _peer_closed(fd: int) -> bool:
    """A connected socket whose peer has gone (poll says HUP): nobody's client."""
    poller = select.poll()
    poller.register(fd, select.POLLHUP)
    return any(ev & select.POLLHUP for _, ev in poller.poll(0))


RECONNECT_LOOK_S = 0.05


def reconnects(run: SwapRun, relay: Relay, before: int | None, own: int = 0, *,
               cap: int | None = None, others: Callable[[], int] = lambda: 0) -> int | None:
    """How many more clients `relay` has than `before` within the reconnect window: the
    most seen at one look (a look every RECONNECT_LOOK_S, done early once `cap` are
    back), less `others()` at that look (connections that are not the cut clients'). One
    look at the end counted a client that had connected but was not yet accepted, or was
    between two tries, as never back (a CI failure on a busy box: 2 of 4 back)."""
    if before is None:
        return None
    deadline = time.monotonic() + run.settings.reconnect_window_s
    best: int | None = None
    while True:
        after = clients(relay, own)
        if after is not None:
            back = max(0, after - before - others())
            best = back if best is None else max(best, back)
            if cap is not None and best >= cap:
                return best
        left = deadline - time.monotonic()
        if left <= 0:
            return best
        time.sleep(min(RECONNECT_LOOK_S, left))


class _Legacy:
    """What the three legacy strategies share."""

    strategy = ""
    could_not_guarantee = ""

    def __init__(self, place: Place, settings: BridgeSettings | None = None) -> None:
        self.place = place
        self.s = settings or BridgeSettings()
        self.new: Relay | None = None

    def begin(self, run: SwapRun) -> dict[str, Any]:
        return {"release": run.release.name, "command": list(run.release.command),
                "old_release": run.old.release.name, "old_token": run.old.token,
                "old_pid": self.place.old.pid, "strategy": self.strategy,
                "soak": run.settings.deadlines.soaking}

    def connections(self, run: SwapRun) -> int | None:
        relay = self.new if run.where is Where.CANDIDATE and self.new else self.place.old
        return clients(relay)

    def soak_check(self, run: SwapRun) -> None:
        return None

    def _start(self, run: SwapRun) -> dict[str, Any]:
        started = time.monotonic()
        try:
            self.new = self.place.start(run.release, run.timeout())
        except (SwapctlError, OSError) as exc:
            raise Failure(f"candidate not ready: {exc}") from None
        run.details["candidate_ready_ms"] = round((time.monotonic() - started) * 1000, 3)
        return {"pid": self.new.pid, "socket": str(self.new.socket)}

    def _probe(self, run: SwapRun) -> dict[str, Any]:
        assert self.new is not None
        try:
            run.marks.probe_ms = probe_socket(self.new.socket, run.domain_byte,
                                              run.settings.probe_echo, run.timeout())
        except (SwapctlError, OSError) as exc:
            raise Failure(f"candidate failed its probe: {exc}") from None
        return {"probe_ms": round(run.marks.probe_ms, 3)}

    def _stop_new(self) -> None:
        if self.new is not None:
            with contextlib.suppress(SwapctlError, OSError):
                self.place.stop(self.new)
            self.new = None

    def after_rollback(self, run: SwapRun) -> None:
        self._stop_new()


class TakeoverActions(_Legacy):
    strategy = "takeover"
    could_not_guarantee = tk.CANNOT_GUARANTEE

    def __init__(self, place: Place, settings: tk.TakeoverSettings | None = None) -> None:
        super().__init__(place)
        self.t = settings or tk.TakeoverSettings()
        self.frozen: tk.Frozen | None = None
        self.baseline: dict[str, Any] = {}
        self.peer_closed = 0

    def connections(self, run: SwapRun) -> int | None:
        if run.where is Where.CANDIDATE and run.cand is not None:
            try:
                return int(run.cand.link.stats(1.0).get("connections_open", 0))
            except (SwapctlError, TimeoutError, OSError):
                return None
        return clients(self.place.old)

    def act(self, run: SwapRun, state: State) -> dict[str, Any]:
        if state is State.STARTING:
            try:
                run.cand = run.service.start_slot(run.release, run.clock() + run.timeout())
            except (SwapctlError, OSError) as exc:
                raise Failure(f"candidate not ready: {exc}") from None
            return {"pid": run.cand.handle.pid, "token": run.cand.token}
        assert run.cand is not None
        if state is State.PROBING:
            settings = ProbeSettings(run.domain_byte, run.settings.probe_echo, run.timeout())
            try:
                run.marks.probe_ms = probe(run.cand.link, settings)
                self.baseline = run.cand.link.stats(run.timeout())  # includes the probe
            except (SwapctlError, TimeoutError, OSError) as exc:
                raise Failure(f"probe failed: {exc}") from None
            return {"probe_ms": round(run.marks.probe_ms, 3)}
        if state is State.FREEZING:
            return self._freeze(run)
        if state is State.ADOPTING:
            return self._adopt(run)
        if state is State.RETIRING:
            assert self.frozen is not None
            tk.end_relay(self.place.old.pid)
            self.frozen.close()  # the candidate holds its own copies
            self.place.stop(self.place.old)
            return {}
        if state is State.VERIFYING:
            self._account(run)
            return {}
        self.place.committed(run, None)
        return {}

    def _freeze(self, run: SwapRun) -> dict[str, Any]:
        run.mark_cutover()
        old = self.place.old
        try:
            self.frozen = frozen = tk.freeze(old.pid, old.bound, self.t)
        except (SwapctlError, OSError) as exc:
            raise Failure(f"could not freeze the legacy relay: {exc}") from None
        run.where = Where.RELEASED  # it is stopped: a rollback lets it run again
        tk._make_nonblocking(frozen)
        self.peer_closed = sum(1 for fd in frozen.conns if _peer_closed(fd))
        run.marks.stopped_ns = frozen.stopped_ns
        run.details["freeze_stages_ms"] = frozen.stages_ms
        return {"connections": len(frozen.conns), "attempts": frozen.attempts,
                "idle": frozen.quiescent}

    def _adopt(self, run: SwapRun) -> dict[str, Any]:
        assert self.frozen is not None and run.cand is not None
        frozen = self.frozen
        frozen_ns = time.monotonic_ns()
        transfer = Transfer(frozen.listener,
                            [(ConnState(i + 1), fd) for i, fd in enumerate(frozen.conns)],
                            {"source": "takeover", "legacy_pid": self.place.old.pid})
        try:
            run.cand.link.adopt(transfer, run.timeout())
            adopted_ns = time.monotonic_ns()
            run.marks.resumed_ns = run.cand.link.resume(run.timeout())
            run.where = Where.CANDIDATE
            stats = run.cand.link.stats(run.timeout())
        except (SwapctlError, TimeoutError, OSError) as exc:
            raise Failure(f"candidate did not adopt: {exc}") from None
        if stats.get("state") != "active" or not run.cand.alive():
            raise Failure(f"candidate did not confirm: state {stats.get('state')}")
        run.marks.moved = len(frozen.conns)
        run.marks.stages = {"freeze_and_dup": tk._ms(frozen_ns - frozen.stopped_ns),
                            "adopt": tk._ms(adopted_ns - frozen_ns),
                            "resume": tk._ms(run.marks.resumed_ns - adopted_ns)}
        run.details["confirmed_connections"] = int(stats["connections_open"])
        return {"server_pause_ms": round(run.server_pause_ms or 0, 3)}

    def _account(self, run: SwapRun) -> None:
        """What could not be moved, as far as it can be known (legacy/takeover.py)."""
        assert self.frozen is not None and run.cand is not None
        f = self.frozen
        time.sleep(self.t.settle_s)  # let every publisher's next frame arrive
        stats: dict[str, Any] = {}
        with contextlib.suppress(SwapctlError, TimeoutError, OSError):
            stats = run.cand.link.stats(2.0)

        def grown(key: str) -> int | None:
            """How much counter `key` grew since the probe; None if the candidate does
            not keep it (the handoff protocol's stats do not require skipped_bytes or
            resyncs: a relay that does not count them cannot vouch for every byte)."""
            if key not in stats:
                return None
            return int(stats[key]) - int(self.baseline.get(key, 0))

        ev = run.evidence
        ev.cut_by = "takeover (sockets whose peer had closed before the freeze excluded)"
        cut = grown("disconnects")
        ev.cut = None if cut is None else max(0, cut - self.peer_closed)
        ev.unmovable_bytes = grown("skipped_bytes")
        if stats and ev.unmovable_bytes is None:
            ev.notes.append(f"the candidate ({stats.get('implementation', 'its stats')}) does "
                            "not count skipped_bytes: a partial frame the legacy relay held "
                            "and the candidate skipped would go unseen, so lost is unknown "
                            "unless an independent checker ran")
        ev.torn_consumers = f.backed_up
        if not f.threads_idle:
            # (a backed-up client alone does not make lost unknown: real publishers never
            # read their echo, so one is backed up at every takeover, and what the relay
            # held for it is echo nobody reads; a backed-up consumer is `torn_consumers`)
            ev.busy_at_cutover = (
                f"the legacy relay was frozen busy (a thread not idle in {f.attempts} "
                "tries): a message it had read and not yet written to every consumer died "
                "with it, seen only by clients")
        run.details.update({
            "legacy_pid": self.place.old.pid, "candidate_pid": run.cand.handle.pid,
            "freeze_attempts": f.attempts, "frozen_idle": f.quiescent, "freeze_busy": f.busy,
            "peer_closed_before_freeze": self.peer_closed,
            "publisher_streams_resynchronised": grown("resyncs"),
            "consumers_backed_up_at_freeze": f.backed_up,
            "clients_mid_frame_at_freeze": f.mid_frame,
            "kernel_bytes_moved_in": f.inq, "kernel_bytes_moved_out": f.outq,
            "accepted_since_scan": f.accepted_since_scan,
            "closed_since_scan": f.closed_since_scan})
        if run.canary is not None and run.canary_final is None:
            with contextlib.suppress(Failure):
                run.canary_health(record_gap=True)

    def roll_back(self, run: SwapRun) -> str:
        if run.cand is not None:
            run.cand.stop(1.0)  # first: it must read nothing more
        if self.frozen is None:
            return "not needed (no client moved)"
        tk._restore_flags(self.frozen)
        self.frozen.close()
        tk.signal_relay(self.place.old.pid, signal.SIGCONT)
        run.where = Where.OLD
        return "thawed the legacy relay (it kept every socket and byte)"

    def after_rollback(self, run: SwapRun) -> None:
        if run.cand is not None:
            run.cand.stop(1.0)


class BridgeActions(_Legacy):
    strategy = "bridge"
    could_not_guarantee = BRIDGE_CANNOT

    def __init__(self, place: Place, settings: BridgeSettings | None = None) -> None:
        super().__init__(place, settings)
        self.bridge: BridgeProcess | None = None
        self.flipped_at = 0.0
        self.drains: list[Drain] = []
        self.before_cut: int | None = None

    def _own(self, relay: Relay, run: SwapRun) -> int:
        own = 1 if self.bridge is not None else 0
        return own + (canary_clients(run) if relay is self.place.old else 0)

    def act(self, run: SwapRun, state: State) -> dict[str, Any]:
        if state is State.STARTING:
            return self._start(run)
        if state is State.PROBING:
            return self._probe(run)
        assert self.new is not None
        if state is State.BRIDGING:
            return self._bridge(run)
        if state is State.FLIPPING:
            run.mark_cutover()
            self.place.flip(self.new.socket)
            self.flipped_at = time.monotonic()
            run.where = Where.CANDIDATE  # new clients reach the candidate from here
            return {}
        if state is State.DRAINING:
            drain = self._drain(run, self.place.old, run.settings.deadlines.soaking, True)
            return {"left": drain.disconnected, "deadline_hit": drain.deadline_hit}
        if state is State.RETIRING:
            run.stop_canary()  # our own client: its verdict before the old relay goes
            self._stop_bridge(run)
            self.place.stop(self.place.old)
            return {}
        if state is State.VERIFYING:
            self._reconnects(run)
            return {}
        self.place.committed(run, self.new)
        return {}

    def _bridge(self, run: SwapRun) -> dict[str, Any]:
        assert self.new is not None
        old, echo = self.place.old, run.settings.probe_echo
        try:
            self.bridge = BridgeProcess(BridgeConfig(old.socket, self.new.socket, echo_a=echo,
                                                     echo_b=echo))
            run.details["bridge_pid"] = self.bridge.start()
            run.details["bridge_check_ms"] = round(check_bridge(
                old.socket, self.new.socket, run.domain_byte, run.timeout()), 3)
        except (SwapctlError, OSError) as exc:
            raise Failure(f"bridge not established: {exc}") from None
        return {"bridge_pid": run.details["bridge_pid"]}

    def _drain(self, run: SwapRun, relay: Relay, limit: float, steer: bool) -> Drain:
        """Until no client of `relay` is left (held for accept_settle after the flip) or
        `limit` seconds; those left then are cut when it is retired."""
        drain = Drain("old" if relay is self.place.old else "candidate")
        self.drains.append(drain)
        start = time.monotonic()
        while True:
            left = clients(relay, self._own(relay, run))
            since = time.monotonic() - self.flipped_at
            drain.samples.append((since, -1 if left is None else left))
            if left == 0 and since >= self.s.accept_settle:
                break
            if time.monotonic() - start >= limit:
                drain.deadline_hit = True
                drain.disconnected = left if left is not None else 0
                if left is None:
                    run.evidence.cut = None
                break
            if steer and run.poll_request() in ("rollback", "abort"):
                raise Failure("operator asked for a rollback", Event.ROLLBACK)
            time.sleep(self.s.drain_interval)
        if drain.deadline_hit and run.evidence.cut is not None:
            run.evidence.cut += drain.disconnected
            run.evidence.cut_by = f"the drain deadline ({limit:g}s) retired a relay with " \
                                  "clients still on it"
            target = self.new if relay is self.place.old else self.place.old
            if target is not None:
                self.before_cut = clients(target, self._own(target, run))
        run.details["drains"] = [d.to_dict() for d in self.drains]
        return drain

    def _reconnects(self, run: SwapRun) -> None:
        ev = run.evidence
        if not ev.cut or self.new is None:
            return
        ev.reconnect_window_s = run.settings.reconnect_window_s
        ev.reconnected = reconnects(run, self.new, self.before_cut, cap=ev.cut)
        if ev.reconnected is not None:
            ev.reconnected = min(ev.reconnected, ev.cut)

    def _stop_bridge(self, run: SwapRun) -> None:
        if self.bridge is None:
            return
        try:
            run.details["bridge"] = self.bridge.stop(self.s.bridge_drain)
        except BridgeError as exc:
            run.details["bridge"] = {"error": str(exc)}
        self.bridge = None

    def roll_back(self, run: SwapRun) -> str:
        if self.new is None or not self.flipped_at:
            if self.bridge is not None:
                self.bridge.close()
                self.bridge = None
            return "not needed (no client moved)"
        self.place.flip(self.place.old.socket)
        self.flipped_at = time.monotonic()
        run.where = Where.OLD
        self._drain(run, self.new, min(self.s.drain_deadline or 5.0, 5.0), False)
        self._stop_bridge(run)
        self._reconnects_to_old(run)
        return "link flipped back; the candidate drained and retired"

    def _reconnects_to_old(self, run: SwapRun) -> None:
        ev = run.evidence
        if ev.cut:
            ev.reconnect_window_s = run.settings.reconnect_window_s
            ev.reconnected = reconnects(run, self.place.old, self.before_cut,
                                        canary_clients(run), cap=ev.cut)


class RestartActions(_Legacy):
    strategy = "restart"
    could_not_guarantee = RESTART_CANNOT

    def __init__(self, place: Place, settings: BridgeSettings | None = None) -> None:
        super().__init__(place, settings)
        self.flipped = False
        self.before: int | None = None

    def act(self, run: SwapRun, state: State) -> dict[str, Any]:
        if state is State.STARTING:
            return self._start(run)
        if state is State.PROBING:
            return self._probe(run)
        assert self.new is not None
        if state is State.FLIPPING:
            self.place.flip(self.new.socket)
            self.flipped = True
            return {}
        if state is State.RETIRING:
            return self._retire(run)
        if state is State.VERIFYING:
            ev = run.evidence
            if ev.cut:
                ev.reconnect_window_s = run.settings.reconnect_window_s
                back = reconnects(run, self.new, self.before, cap=ev.cut,
                                  others=lambda: canary_back(run))  # (it came back too)
                ev.reconnected = None if back is None else min(back, ev.cut)
            run.stop_canary()
            return {}
        self.place.committed(run, self.new)
        return {}

    def _retire(self, run: SwapRun) -> dict[str, Any]:
        assert self.new is not None
        old = self.place.old
        own = canary_clients(run)  # the canary is cut too: it counts itself
        self.before = clients(self.new)
        cut = clients(old, own)
        run.mark_cutover()
        stopped = time.monotonic()
        self.place.stop(old)
        run.where = Where.CANDIDATE
        run.details["old_stop_ms"] = round((time.monotonic() - stopped) * 1000, 3)
        ev = run.evidence
        ev.cut, ev.cut_by = cut, "restart stopped the old relay"
        ev.unmovable_bytes = None
        return {"cut": cut}

    def roll_back(self, run: SwapRun) -> str:
        if self.flipped:
            self.place.flip(self.place.old.socket)
        return "link left on the old relay; candidate stopped" if self.flipped else \
            "not needed (no client moved)"


def actions_for(strategy: str, place: Place, *, takeover: tk.TakeoverSettings | None = None,
                bridge: BridgeSettings | None = None) -> _Legacy:
    """The actions of a legacy strategy (takeover, bridge, restart)."""
    if strategy == "takeover":
        return TakeoverActions(place, takeover)
    if strategy == "bridge":
        return BridgeActions(place, bridge)
    if strategy == "restart":
        return RestartActions(place, bridge)
    raise SwapctlError(f"no legacy strategy {strategy!r}")
