"""The configuration model: every setting declared once, with its type, default and help.

One directory (`configs/` in the repository, `/etc/swapctl` in production) holds
`swapctld.yaml` for the daemon and one `SERVICE.yaml` per relay service, the file name
being the service name. pydantic checks them (strict types: `handoff: "no"` is an
error, not a truthy string); `errors.py` turns its findings into operator lines.
Defaults are read from the swap engine's own dataclasses, never repeated here. An
example may name {service} and {release}: error messages fill them in. Checks that
involve two keys run as field validators on the later key, so that one load reports
every mistake at once.
"""

from __future__ import annotations

import difflib
import enum
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from swapctl.config.types import (
    AbsPath,
    Command,
    Duration,
    FileMode,
    Listen,
    Name,
    SocketPath,
)
from swapctl.protocol.profiles import Domain, Profile
from swapctl.swap.canary import Canary
from swapctl.swap.executor import SwapSettings
from swapctl.swap.machine import Deadlines

# Ranges of every count (durations: types.MAX_DURATION_S). A value past them is a typo.
MAX_RELEASES = 64
MAX_ENV = 256
MAX_CANARY_RATE = 100_000.0  # messages per second
MAX_CANARY_CONSUMERS = 8
MAX_DRILL_WINDOWS = 64

_DEADLINES = Deadlines()
_SETTINGS = SwapSettings()
_CANARY = inspect.signature(Canary).parameters


class Trigger(enum.Enum):
    """What makes a swap roll back on its own (docs/swap.md, "Rollback")."""

    NOT_READY = "not_ready"  # the candidate did not say ready in time
    PROBE_FAILED = "probe_failed"  # the pre-cutover probe failed
    CRASH = "crash"  # the candidate exited in any phase
    DEADLINE = "deadline"  # a phase took longer than its deadline
    CANARY = "canary"  # canary traffic lost, duplicated, reordered, corrupted, disconnected
    PAUSE_BUDGET = "pause_budget"  # the server-side pause exceeded pause_budget
    ERROR_COUNTERS = "error_counters"  # the candidate's error counters grew


# The engine cannot go on after these: there is nothing to do but roll back.
ALWAYS_AUTOMATIC = (Trigger.NOT_READY, Trigger.PROBE_FAILED, Trigger.CRASH, Trigger.DEADLINE,
                    Trigger.CANARY)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ReleaseConfig(_Model):
    command: Command = Field(
        description="The release's argument list, run by its supervisord slot (no shell).",
        examples=["[/opt/relay/{release}/{service}_relay]"])
    handoff: bool = Field(
        description="Whether the release speaks the handoff protocol (docs/handoff-protocol.md)"
                    "; only such releases can be swapped with no client disconnected.",
        examples=["true"])
    env: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_ENV,
        description="Extra environment of the release (the Rust relays log only with "
                    "RUST_LOG=info); SWAPCTL_* variables are set by swapctl.",
        examples=["{RUST_LOG: info}"])
    legacy: bool = Field(
        default=False,
        description="The release binds a socket path compiled into it and cannot be told "
                    "another (it is run in a private mount namespace).",
        examples=["true"])
    compiled_socket: SocketPath | None = Field(
        default=None, validate_default=True,
        description="The path compiled into a legacy release; required when legacy is true.",
        examples=["/tmp/torq/{service}.sock"])

    @field_validator("env")
    @classmethod
    def _env_leaves_swapctl_alone(cls, env: dict[str, str]) -> dict[str, str]:
        ours = sorted(name for name in env if name.startswith("SWAPCTL_"))
        if ours:
            raise PydanticCustomError(
                "swapctl_env", "{names}: swapctl sets SWAPCTL_* for each start of a release "
                "(docs/handoff-protocol.md); remove them", {"names": ", ".join(ours)})
        return env

    @field_validator("legacy")
    @classmethod
    def _legacy_is_not_handoff(cls, legacy: bool, info: ValidationInfo) -> bool:
        if legacy and info.data.get("handoff") is True:
            raise PydanticCustomError(
                "swapctl_legacy", "a legacy release binds its compiled-in path itself, so it "
                "cannot also speak the handoff protocol: set handoff: false or legacy: false")
        return legacy

    @field_validator("compiled_socket")
    @classmethod
    def _compiled_socket_iff_legacy(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        legacy = info.data.get("legacy")
        if legacy and path is None:
            raise PydanticCustomError(
                "swapctl_required", "required when legacy is true: the socket path compiled "
                "into the release")
        if legacy is False and path is not None:
            raise PydanticCustomError(
                "swapctl_legacy", "only a legacy release has a compiled-in path: set "
                "legacy: true, or remove compiled_socket")
        return path


class ProbeConfig(_Model):
    timeout: Duration = Field(
        default=_DEADLINES.probing,
        description="Deadline of the pre-cutover probe through the candidate.",
        examples=["2s"])
    echo: bool = Field(
        default=_SETTINGS.probe_echo,
        description="The probe expects the sender to get its own messages back (false for "
                    "a release that does not echo).",
        examples=["true"])


class RollbackConfig(_Model):
    auto_on: list[Annotated[Trigger, Field(strict=False)]] = Field(
        default_factory=lambda: list(Trigger), max_length=2 * len(Trigger),
        description="Triggers that roll a swap back on their own; "
                    + ", ".join(t.value for t in ALWAYS_AUTOMATIC)
                    + " cannot be left out (the engine cannot go on after them).",
        examples=["[" + ", ".join(t.value for t in Trigger) + "]"])
    deadline: Duration = Field(
        default=_DEADLINES.rolling_back,
        description="Longest a rollback may take before the swap is marked failed.",
        examples=["30s"])

    @field_validator("auto_on")
    @classmethod
    def _keeps_the_unavoidable(cls, triggers: list[Trigger]) -> list[Trigger]:
        left_out = [t.value for t in ALWAYS_AUTOMATIC if t not in triggers]
        if left_out:
            raise PydanticCustomError(
                "swapctl_trigger", "leaves out {left_out}: a swap always rolls back on these "
                "(there is nothing else to do after them); list them too",
                {"left_out": ", ".join(left_out)})
        return triggers


class CanaryConfig(_Model):
    rate: float = Field(
        default=_CANARY["rate"].default, ge=0, le=MAX_CANARY_RATE, allow_inf_nan=False,
        description="Canary messages per second during a swap (0: no canary).",
        examples=["2000"])
    consumers: list[Literal["strategy", "dashboard"]] = Field(
        default_factory=lambda: list(_CANARY["consumers"].default), min_length=1,
        max_length=MAX_CANARY_CONSUMERS,
        description="Canary consumers: strategy stops for good on EOF (like the arbitrage "
                    "strategy), dashboard reconnects.",
        examples=["[strategy, dashboard]"])


class ServiceConfig(_Model):
    socket: SocketPath = Field(
        description="The public socket the service's clients connect to.",
        examples=["/tmp/torq/{service}.sock"])
    domain: Annotated[Domain, Field(strict=False)] = Field(
        description="Protocol V2 relay domain of the service's messages.",
        examples=["market_data"])
    profile: Annotated[Profile, Field(strict=False)] = Field(
        description="Numbering of header byte 4 (market_data is 1 under alphapulse, 0 under "
                    "torq).",
        examples=["alphapulse"])
    releases: dict[Name, ReleaseConfig] = Field(
        min_length=1, max_length=MAX_RELEASES, description="Release name -> how to run it.",
        examples=["{v2: {command: [/opt/relay/v2/{service}_relay], handoff: true}}"])
    active: str = Field(
        description="The release serving now (one of releases).", examples=["v2"])
    adopt: bool = Field(
        default=False,
        description="The active release already runs outside swapctl, serving socket itself "
                    "(a box running today's relays): at start, when supervisord runs none of "
                    "the service's relays, swapctld adopts the process whose listener serves "
                    "socket instead of starting one, and the first swap to a handoff-capable "
                    "release takes it over with no client cut (docs/legacy.md). active must "
                    "be a legacy release.",
        examples=["true"])
    start_timeout: Duration = Field(
        default=_DEADLINES.starting,
        description="Time a candidate has to start and say ready.", examples=["10s"])
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="Pre-cutover probe.")
    soak: Duration = Field(
        default=_DEADLINES.soaking,
        description="Soak window: the candidate is watched while the old release stays warm.",
        examples=["60s"])
    pause_budget: Duration = Field(
        default=_SETTINGS.pause_budget_ms / 1000,
        description="Server-side pause (old relay stops reading -> candidate resumes) allowed.",
        examples=["250ms"])
    pause_priority: int = Field(
        default=_SETTINGS.pause_priority, ge=0, le=98,
        description="SCHED_FIFO priority of the adopting relay's threads (and swapctl's, "
                    "one above; of the releasing relay, only a thread named "
                    "swapctl-handoff, a relay's own handoff control thread) while a "
                    "handoff's pause lasts (a swap's, or a rollback's hand-back), at most "
                    "0.5 s, so that the pause does not wait behind the clients for a CPU; "
                    "a thread already real-time keeps its own. The legacy "
                    "strategies (takeover, bridge, restart) leave scheduling alone. 0 leaves "
                    "the relays' scheduling alone. Needs CAP_SYS_NICE (the systemd unit "
                    "grants it); without it the report says so.",
        examples=[10])
    rollback: RollbackConfig = Field(default_factory=RollbackConfig, description="Rollback.")
    canary: CanaryConfig = Field(default_factory=CanaryConfig, description="Canary traffic.")

    _name: str = PrivateAttr(default="")
    _source: Path | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if isinstance(context, dict):
            self._name = str(context.get("service", ""))
            self._source = context.get("source")

    @property
    def name(self) -> str:
        """The service name (its file name without .yaml)."""
        return self._name

    @property
    def source(self) -> Path | None:
        """The file this service was read from."""
        return self._source

    @field_validator("active")
    @classmethod
    def _active_is_a_release(cls, active: str, info: ValidationInfo) -> str:
        releases = info.data.get("releases")
        problem = None if releases is None else unknown_release(active, list(releases))
        if problem:
            raise PydanticCustomError("swapctl_active", problem)
        return active

    @field_validator("adopt")
    @classmethod
    def _adopts_a_legacy_release(cls, adopt: bool, info: ValidationInfo) -> bool:
        release = (info.data.get("releases") or {}).get(info.data.get("active"))
        if adopt and release is not None and not release.legacy:
            raise PydanticCustomError(
                "swapctl_adopt", "adopt: true adopts a relay swapctl did not start, which "
                "binds its own socket: the active release ({active}) must be declared legacy "
                "(legacy: true, handoff: false, compiled_socket:)",
                {"active": info.data.get("active")})
        return adopt


def unknown_release(active: str, names: list[str]) -> str | None:
    """Why `active` is not one of the release `names`, or None if it is."""
    if active in names:
        return None
    if not names:
        return f"{active!r} is not one of the releases: there are none; add it under releases"
    names = sorted(names)
    close = difflib.get_close_matches(active, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{active!r} is not one of the releases{hint}: use one of {', '.join(names)}"


class ControlConfig(_Model):
    socket: SocketPath = Field(
        description="swapctld's control API socket (the CLI connects to it); each service's "
                    "relays join SERVICE.handoff.sock in the same directory.",
        examples=["/run/swapctld/control.sock"])
    mode: FileMode = Field(
        default=0o600, description="Permissions of the control socket (owner-only).",
        examples=['"0600"'])


class SupervisordConfig(_Model):
    start: Literal["systemd", "swapctl"] = Field(
        description="Who starts supervisord: systemd (the swapctl-supervisord unit, in "
                    "production) or swapctl (`swapctl up`, on a development box).",
        examples=["systemd"])
    config: AbsPath = Field(
        description="supervisord's configuration file (a blue and a green program per service).",
        examples=["/etc/swapctl/supervisord.conf"])
    socket: SocketPath = Field(
        description="supervisord's XML-RPC Unix socket.",
        examples=["/run/swapctl-supervisord/supervisord.sock"])


class MetricsConfig(_Model):
    listen: Listen | None = Field(
        default="127.0.0.1:9464",
        description="Prometheus metrics endpoint, HOST:PORT (port 0: any free port, shown by "
                    "`swapctl status`; null: none).",
        examples=["127.0.0.1:9464"])


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class DrillWindow(_Model):
    """A time of the week in which rollback drills are refused (docs/playbooks.md)."""

    days: list[Day] = Field(
        default_factory=lambda: list(_DAYS), min_length=1, max_length=len(_DAYS),
        description="Days the window opens on (its start's day).", examples=["[mon, tue, wed]"])
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                       description="Local time the window opens, HH:MM.", examples=['"09:30"'])
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                     description="Local time it closes, HH:MM (before start: the next day).",
                     examples=['"16:00"'])
    timezone: str = Field(default="UTC", description="IANA time zone of start and end.",
                          examples=["America/New_York"])
    reason: str = Field(default="", max_length=500, description="Said when a drill is refused.",
                        examples=["US equity market hours"])

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError("swapctl_zone", "{zone} is not a known time zone: use "
                                      "an IANA name such as UTC or America/New_York",
                                      {"zone": repr(zone)}) from None
        return zone


class DrillsConfig(_Model):
    refuse: list[DrillWindow] = Field(
        default_factory=list, max_length=MAX_DRILL_WINDOWS,
        description="Windows in which `swapctl drill` refuses to run "
        "(unless --override-window), e.g. market hours.",
        examples=['[{days: [mon, tue, wed, thu, fri], start: "09:30", end: "16:00", '
                  'timezone: America/New_York}]'])


class DaemonConfig(_Model):
    state_dir: AbsPath = Field(
        description="Journal, swap reports and relay state.", examples=["/var/lib/swapctl"])
    log_dir: AbsPath = Field(
        description="swapctld's and the relays' logs.", examples=["/var/log/swapctl"])
    control: ControlConfig = Field(description="Control API socket.")
    supervisord: SupervisordConfig = Field(description="The relays' owner.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Metrics.")
    drills: DrillsConfig = Field(default_factory=DrillsConfig, description="Rollback drills.")
