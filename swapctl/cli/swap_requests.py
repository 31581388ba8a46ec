"""`swapctl swap`'s three modes as typed requests, and the refusal of what does not apply.

How it works: the mode follows from what was given: SERVICE -> through swapctld
(`DaemonSwap`); otherwise a legacy flag (--from-legacy/--to-legacy), a legacy strategy
(--strategy takeover|bridge|restart), --old-pid, or --socket without --from (the relay
serving SOCKET now is the old one) -> standalone legacy (`LegacyRequest`); otherwise
standalone handoff (`HandoffRequest`). `NOT_HERE` says, option by option, in which modes
it means nothing, why, and what to use instead. `build` refuses every option the operator
gave (click's parameter source, not its value) that does not apply: all of them in one
`UsageError` (exit 2). Then it returns the mode's frozen request, validated.

A legacy request's strategy is resolved here (`--strategy auto` reads which slot serves
the public link and what kind of relay it is: a read, nothing is written), because which
options apply depends on it: --soak is the bridge's drain deadline, while a takeover or a
restart has no soak at all. So is the relay to adopt: when no slot serves the public
path but a process listens on it (a relay swapctl did not start), it is found here
(legacy/adopt.py: by --old-pid, checked, or by the listener's owner) and only a takeover
into a handoff-capable release may adopt it.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from swapctl.config.paths import check_standalone
from swapctl.errors import UsageError
from swapctl.legacy import adopt as adopting
from swapctl.legacy import layout as lay
from swapctl.legacy.bridge import BridgeSettings
from swapctl.legacy.run import old_relay, pick, steerable_as_legacy
from swapctl.protocol.profiles import Domain, Profile, domain_byte
from swapctl.swap.requests import state_dir_for

Mode = Literal["daemon", "handoff", "legacy"]
MODE_NAMES: dict[Mode, str] = {
    "daemon": "a swap through swapctld (SERVICE given)",
    "handoff": "a standalone handoff swap (--socket --from --to)",
    "legacy": "a standalone legacy swap (--from-legacy/--to-legacy, --strategy "
              "takeover|bridge|restart, --old-pid, or --socket without --from)",
}
LEGACY_STRATEGIES = ("takeover", "bridge", "restart")
DEFAULT_LEGACY_STATE = Path("/var/lib/swapctl/legacy")
STANDALONE_HANDOFF_SOAK = 5.0  # seconds, when --soak is not given

_DAEMON_OWNS = "swapctld takes it from SERVICE's file"
_STANDALONE = "drop SERVICE to swap standalone"
_FOREGROUND = "a standalone swap runs in the foreground and its relays live only as long as " \
              "this command"
_NO_LEGACY_REQUESTS = (
    "a standalone legacy swap takes no operator requests: takeover and restart end the old "
    "relay, so there is nothing to go back to, and bridge's drain is not steerable here",
    "swap back with a second `swapctl swap --strategy ...`, or run the service under "
    "swapctld")
_NO_PAUSE_BUDGET = (
    "the legacy strategies have no pause budget: a takeover's pause (frozen relay -> "
    "candidate resumed) is measured and reported as pause_ms, a bridge pauses no client, "
    "a restart cuts every client",
    "drop it and read pause_ms in the report")

# option -> mode -> (why it does not apply there, what to use instead)
NOT_HERE: dict[str, dict[Mode, tuple[str, str]]] = {
    "socket_path": {"daemon": (f"{_DAEMON_OWNS} (socket:)", f"drop --socket, or {_STANDALONE}")},
    "from_cmd": {"daemon": ("swapctld swaps from the release serving now",
                            f"drop --from (`swapctl status SERVICE` shows it), or {_STANDALONE}")},
    "rollback_after": {
        "daemon": ("a scripted rollback is for standalone drills",
                   "run `swapctl rollback SERVICE` during the soak"),
        "legacy": _NO_LEGACY_REQUESTS},
    "canary_rate": {"daemon": (f"{_DAEMON_OWNS} (canary: rate:)",
                               "set canary.rate in the service file")},
    "pause_budget_ms": {"daemon": (f"{_DAEMON_OWNS} (pause_budget:)",
                                   "set pause_budget in the service file"),
                        "legacy": _NO_PAUSE_BUDGET},
    "domain": {"daemon": (f"{_DAEMON_OWNS} (domain:)", "set domain in the service file")},
    "profile": {"daemon": (f"{_DAEMON_OWNS} (profile:)", "set profile in the service file")},
    "state_dir": {"daemon": ("swapctld keeps its own state (state_dir: in swapctld.yaml)",
                             f"drop --state-dir, or {_STANDALONE}")},
    "compiled": {
        "daemon": (f"{_DAEMON_OWNS} (releases.NAME.compiled_socket:)",
                   "set compiled_socket on the legacy release in the service file"),
        "handoff": ("only a legacy build has a socket path compiled in",
                    "add --from-legacy/--to-legacy or --strategy takeover|bridge|restart "
                    "for a legacy swap, or drop --compiled")},
    "from_legacy": {"daemon": (f"{_DAEMON_OWNS} (releases.NAME.legacy:)",
                               "set legacy: true on the release in the service file")},
    "to_legacy": {"daemon": (f"{_DAEMON_OWNS} (releases.NAME.legacy:)",
                             "set legacy: true on the release in the service file")},
    "yes": {m: ("a standalone swap never asks before it starts",
                "drop --yes (run with --dry-run first to see the plan)")
            for m in ("handoff", "legacy")},
    "no_wait": {m: (f"{_FOREGROUND}, so it cannot return before the swap ends",
                    "swap through swapctld: `swapctl swap SERVICE --no-wait`")
                for m in ("handoff", "legacy")},
    "timeout": {m: (f"{_FOREGROUND}, so it cannot stop following and leave the swap running",
                    "bound the swap with --soak, or swap through swapctld: "
                    "`swapctl swap SERVICE --timeout D`")
                for m in ("handoff", "legacy")},
    "config_dir": {m: ("a standalone swap reads no configuration",
                       "drop --config-dir, or give SERVICE to swap through swapctld")
                   for m in ("handoff", "legacy")},
    "old_pid": {"daemon": ("swapctld adopts a running relay from the service file (adopt:)",
                           "set adopt: on the service (docs/legacy.md), drop --old-pid")},
}
# Options that apply to a legacy swap only for some strategies (resolved first).
NOT_FOR_STRATEGY: dict[str, dict[str, tuple[str, str]]] = {
    "soak": {s: (f"a {s} swap has no soak: the old relay is gone once the clients are "
                 + ("moved" if s == "takeover" else "cut") + ", so nothing stays warm",
                 "drop --soak, or use --strategy bridge (where --soak is the drain deadline)")
             for s in ("takeover", "restart")},
    "old_pid": {s: (f"a relay swapctl did not start is adopted by a takeover only (a {s} "
                    "would cut its clients)",
                    "use --strategy takeover (or auto) with a handoff-capable --to")
                for s in ("bridge", "restart")},
}
FLAGS = {"socket_path": "--socket", "from_cmd": "--from", "from_legacy": "--from-legacy/"
         "--from-handoff", "to_legacy": "--to-legacy/--to-handoff", "yes": "--yes",
         "config_dir": "--config-dir", "old_pid": "--old-pid"}


def flag(name: str) -> str:
    """The option as the operator typed it (--rollback-after for rollback_after)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def refusal(name: str, where: str, why: str, instead: str) -> str:
    return f"{flag(name)} does not apply to {where}: {why}; {instead}"


@dataclass(frozen=True, slots=True)
class Canary:
    """The proof of a standalone swap: the canary's rate and its messages' domain byte."""

    rate: float  # messages/s; 0: no canary, no proof
    domain: Domain
    profile: Profile

    def __post_init__(self) -> None:
        if not math.isfinite(self.rate) or self.rate < 0:
            raise UsageError(f"--canary-rate {self.rate}: give messages per second, >= 0")

    @property
    def domain_byte(self) -> int:
        return domain_byte(self.domain, self.profile)

    @property
    def proof(self) -> bool:
        return self.rate > 0


NO_PROOF = ("--canary-rate 0: no canary, no proof: the swap runs, but lost, duplicated, "
            "reordered and corrupted read unknown, and a committed swap exits 1 (committed, "
            "unproven)")


@dataclass(frozen=True, slots=True)
class DaemonSwap:
    """`swapctl swap SERVICE`: swapctld runs it (and plans it, with --dry-run)."""

    service: str
    config_dir: Path | None
    to: str | None
    soak: float | None
    strategy: str
    dry_run: bool
    yes: bool
    no_wait: bool
    timeout: float | None
    output: str


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """`swapctl swap --socket S --from CMD --to CMD`: both releases speak the handoff."""

    socket: Path
    state_dir: Path
    from_cmd: tuple[str, ...]
    to_cmd: tuple[str, ...]
    soak: float
    pause_budget_ms: float
    rollback_after: float | None
    canary: Canary
    why: str
    dry_run: bool
    output: str

    def __post_init__(self) -> None:
        _non_negative("--soak", self.soak)
        _non_negative("--pause-budget-ms", self.pause_budget_ms)
        if self.rollback_after is not None:
            _non_negative("--rollback-after", self.rollback_after)

    @property
    def strategy(self) -> str:
        return "handoff"


@dataclass(frozen=True, slots=True)
class LegacyRequest:
    """A standalone swap where one side is a legacy build (takeover, bridge, restart)."""

    layout: lay.Layout  # public link, compiled-in path, slots root (= state dir)
    from_cmd: tuple[str, ...] | None  # started in a slot only on a fresh box
    from_legacy: bool
    to_cmd: tuple[str, ...]
    to_legacy: bool
    strategy: str  # resolved: takeover | bridge | restart
    why: str
    drain_deadline: float | None  # bridge only: --soak, else BridgeSettings' default
    canary: Canary
    dry_run: bool
    output: str
    adopt: adopting.Adopted | None = None  # the running relay swapctl did not start

    def __post_init__(self) -> None:
        if self.adopt is not None and self.strategy != "takeover":
            raise UsageError(f"adopting pid {self.adopt.pid} needs a takeover, not a "
                             f"{self.strategy}")
        if self.strategy not in LEGACY_STRATEGIES:
            raise UsageError(f"strategy {self.strategy!r} is not a legacy strategy: use one "
                             f"of {', '.join(LEGACY_STRATEGIES)}")
        if self.drain_deadline is not None:
            _non_negative("--soak", self.drain_deadline)

    @property
    def state_dir(self) -> Path:
        return self.layout.root


Request = DaemonSwap | HandoffRequest | LegacyRequest


def _non_negative(option: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{option} {value}: must be a finite number >= 0")


def command(option: str, text: str) -> tuple[str, ...]:
    argv = tuple(shlex.split(text))
    if not argv:
        raise UsageError(f"{option}: empty command; give the relay's command line")
    return argv


def mode_of(o: dict[str, Any]) -> Mode:
    if o["service"] is not None:
        return "daemon"
    if o["from_legacy"] or o["to_legacy"] or o["strategy"] in LEGACY_STRATEGIES \
            or o.get("old_pid") is not None:
        return "legacy"
    if o["socket_path"] and not o["from_cmd"] and o["strategy"] == "auto":
        return "legacy"  # no --from: the relay serving the socket now is the old one
    return "handoff"


def build(o: dict[str, Any], given: set[str]) -> Request:
    """The typed request for the parsed options `o` (`given`: the ones the operator set,
    not left at their default). Raises UsageError naming every option that does not apply."""
    mode = mode_of(o)
    _refuse([refusal(name, MODE_NAMES[mode], *NOT_HERE[name][mode])
             for name in sorted(given) if mode in NOT_HERE.get(name, {})])
    if mode == "daemon":
        return DaemonSwap(o["service"], o["config_dir"], o["to"], o["soak"], o["strategy"],
                          o["dry_run"], o["yes"], o["no_wait"], o["timeout"], o["output"])
    _require(o, mode)
    canary = Canary(float(o["canary_rate"]), Domain(o["domain"]), Profile(o["profile"]))
    if mode == "handoff":
        return _handoff(o, canary)
    return _legacy(o, given, canary)


def _refuse(problems: list[str]) -> None:
    if len(problems) == 1:
        raise UsageError(problems[0])
    if problems:
        raise UsageError("these options do not apply:\n  " + "\n  ".join(problems))


def _require(o: dict[str, Any], mode: Mode) -> None:
    needed = ["socket_path", "to"] + (["from_cmd"] if mode == "handoff" else [])
    missing = [flag(n) for n in needed if not o[n]]
    if missing:
        raise UsageError(f"give SERVICE (swap through swapctld), or {', '.join(missing)} "
                         f"for {MODE_NAMES[mode]}")


def _handoff(o: dict[str, Any], canary: Canary) -> HandoffRequest:
    why = ("asked for with --strategy handoff" if o["strategy"] == "handoff" else
           "both releases speak the handoff protocol, so no client is disconnected")
    socket: Path = o["socket_path"].absolute()
    state_dir = (o["state_dir"] or state_dir_for(socket)).absolute()
    check_standalone(state_dir, given=o["state_dir"] is not None)  # before anything starts
    return HandoffRequest(
        socket=socket, state_dir=state_dir,
        from_cmd=command("--from", o["from_cmd"]), to_cmd=command("--to", o["to"]),
        soak=STANDALONE_HANDOFF_SOAK if o["soak"] is None else float(o["soak"]),
        pause_budget_ms=float(o["pause_budget_ms"]), rollback_after=o["rollback_after"],
        canary=canary, why=why, dry_run=o["dry_run"], output=o["output"])


def legacy_layout(public: Path, compiled: Path | None, state_dir: Path | None) -> lay.Layout:
    """The slot layout of a standalone legacy swap (state dir = slots root)."""
    public = public.absolute()
    root = (state_dir or DEFAULT_LEGACY_STATE / public.stem).absolute()
    return lay.Layout(public=public, compiled=(compiled or public).absolute(), root=root)


def resolve(strategy: str, layout: lay.Layout, from_legacy: bool,
            to_legacy: bool) -> tuple[str, str]:
    """The strategy a legacy swap will run, and why. `auto` asks `pick` with the kind of
    relay serving the public link (the --from flag only on a fresh box)."""
    if strategy == "handoff":
        raise UsageError("--strategy handoff needs two handoff-capable releases: drop "
                         "--from-legacy/--to-legacy, or choose takeover, bridge or restart")
    current = old_relay(layout)
    orphan = None if current is None else steerable_as_legacy(*current)
    if current is not None:
        from_legacy = current[1].get("kind") == "legacy" or orphan is not None
    if strategy == "auto":
        strategy, why = pick(from_legacy, to_legacy)
        if strategy == "handoff":
            raise UsageError(f"--strategy auto: {why}; drop --from-legacy/--to-legacy")
        if orphan is not None and strategy == "takeover":
            why = orphan
    else:
        why = f"asked for with --strategy {strategy}"
    if strategy == "takeover" and (to_legacy or not from_legacy):
        raise UsageError("takeover needs a legacy old relay and a handoff-capable new release "
                         "(--to-handoff); use bridge or restart")
    return strategy, why


def drain_deadline(strategy: str, soak: float | None) -> float | None:
    """A bridge's drain deadline: --soak, else the bridge's default; None for the others."""
    if strategy != "bridge":
        return None
    return BridgeSettings().drain_deadline if soak is None else float(soak)


def adoption(layout: lay.Layout, old_pid: int | None,
             from_cmd: str | None) -> adopting.Adopted | None:
    """The relay to adopt: none when a slot serves the public link (an --old-pid must then
    be its pid) or on a fresh box; else the process serving the public path (a read of
    /proc and the kernel's socket table; nothing is touched)."""
    current = old_relay(layout)
    if current is not None:
        pid = current[1].get("pid")
        if old_pid is not None and old_pid != pid:
            raise UsageError(f"--old-pid {old_pid}: {layout.public} is served by swapctl's "
                             f"slot {current[0]} (pid {pid}), not by pid {old_pid}; drop "
                             "--old-pid")
        return None
    public = layout.public
    if old_pid is None and not (public.exists() or public.is_symlink()):
        return None  # a fresh box: --from is started in a slot (or refused later)
    adopted = adopting.find(public, old_pid)
    if from_cmd:
        raise UsageError(f"--from does not apply to adopting the relay serving {public} "
                         f"(pid {adopted.pid}): it is already running (--from starts the old "
                         "release only on a fresh box); drop --from")
    return adopted


def _legacy(o: dict[str, Any], given: set[str], canary: Canary) -> LegacyRequest:
    layout = legacy_layout(o["socket_path"], o["compiled"], o["state_dir"])
    check_standalone(layout.root, given=o["state_dir"] is not None)
    asked = o["strategy"]  # refused before anything is looked up, when asked for
    _refuse([refusal(name, f"this standalone legacy swap (strategy {asked})",
                     *NOT_FOR_STRATEGY[name][asked])
             for name in sorted(given) if asked in NOT_FOR_STRATEGY.get(name, {})])
    adopt = adoption(layout, o.get("old_pid"), o["from_cmd"])
    from_legacy = o["from_legacy"]
    if adopt is not None:
        if "from_legacy" in given and not from_legacy:
            raise UsageError(f"--from-handoff does not apply to adopting pid {adopt.pid}: "
                             "a relay swapctl did not start has no control link, so it is "
                             "taken over as a legacy relay; drop --from-handoff")
        from_legacy = True
        if o["to_legacy"]:
            raise UsageError(
                f"{layout.public} is served by pid {adopt.pid}, which swapctl did not start: "
                "it is adopted by a takeover, which moves its clients only into a release "
                "that speaks the handoff protocol; give a handoff-capable --to (then swap "
                "to the legacy build from the slot layout)")
    strategy, why = resolve(o["strategy"], layout, from_legacy, o["to_legacy"])
    where = f"this standalone legacy swap (strategy {strategy})"
    _refuse([refusal(name, where, *NOT_FOR_STRATEGY[name][strategy])
             for name in sorted(given) if strategy in NOT_FOR_STRATEGY.get(name, {})])
    if adopt is not None and strategy != "takeover":
        raise UsageError(
            f"{layout.public} is served by pid {adopt.pid}, which swapctl did not start: it "
            f"is adopted by a takeover only (a {strategy} would cut its clients); use "
            "--strategy takeover (or auto) with a handoff-capable --to")
    if adopt is not None:
        why = f"{why}; adopting pid {adopt.pid} (found by {adopt.found_by}), which " \
              "swapctl did not start"
    return LegacyRequest(
        layout=layout, from_cmd=command("--from", o["from_cmd"]) if o["from_cmd"] else None,
        from_legacy=from_legacy, to_cmd=command("--to", o["to"]),
        to_legacy=o["to_legacy"], strategy=strategy, why=why,
        drain_deadline=drain_deadline(strategy, o["soak"]),
        canary=canary, dry_run=o["dry_run"], output=o["output"], adopt=adopt)
