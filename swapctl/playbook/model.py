"""The playbook model: a migration or drill as data, checked strictly before anything runs.

A playbook is a YAML file (playbooks/*.yaml, docs/playbooks.md):

    name: rollback-drill
    kind: drill                 # migration | drill | ci
    params: {soak: 30s}         # ${soak} anywhere in a string below; --param soak=1s
    steps:    [ {kind: swap, name: to candidate, to: "@candidate", until: serving}, ... ]
    cleanup:  [ {kind: restore}, {kind: load, action: stop} ]

Each step is one of the `STEP_MODELS` below, told apart by `kind`; every step has a
`name` (default: its kind) and a `timeout` (a default per kind). `steps` run in order
and stop at the first failure; `cleanup` steps then always run (after success,
failure, a timeout or a signal), each unless its `when` says otherwise. Releases are
named as in the service file, or `@baseline` (what served when the run began) or
`@candidate` (the run's candidate: --candidate, else the playbook's `candidate`, else
`other`: the first handoff-capable release of the service file that is not the
baseline, never a legacy one).

Pure: no I/O here. load.py reads the file, substitutes parameters and turns pydantic's
findings into operator lines naming the file and the step.
"""

from __future__ import annotations

import enum
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from swapctl.config.types import Duration, Kind, Name, parse_duration

BASELINE = "@baseline"
CANDIDATE = "@candidate"
ROLLBACK_BUDGET = "rollback_budget"  # a gate threshold: the service's rollback.deadline


class PlaybookKind(enum.Enum):
    MIGRATION = "migration"
    DRILL = "drill"  # refused in drills.refuse windows; reports in STATE/drills
    CI = "ci"


def _threshold(value: object) -> float | str:
    """A number, a duration (seconds), a numeric string, or `rollback_budget`."""
    if value == ROLLBACK_BUDGET:
        return ROLLBACK_BUDGET
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return parse_duration(value)
        except PydanticCustomError:
            pass
    raise PydanticCustomError(
        "swapctl_threshold", "must be a number, a duration such as 30s, or rollback_budget "
        "(the service's rollback.deadline), not {value}", {"value": repr(value)})


Threshold = Annotated[float | str, BeforeValidator(_threshold),
                      Kind("number, duration or rollback_budget")]


def _release_ref(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise PydanticCustomError("swapctl_release", "must be a release name, @baseline or "
                                  "@candidate, not {value}", {"value": repr(value)})
    if value.startswith("@") and value not in (BASELINE, CANDIDATE):
        raise PydanticCustomError("swapctl_release", "{value} is not a release reference: use "
                                  "@baseline, @candidate or a release name", {"value": value})
    return value


ReleaseRef = Annotated[str, BeforeValidator(_release_ref),
                       Kind("release name, @baseline or @candidate")]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    kind: str
    name: str | None = Field(default=None, description="Shown in plans, journals and reports "
                             "(default: the step's kind).", examples=["swap to the candidate"])
    timeout: Duration | None = Field(default=None, description="Longest the step may take; "
                                     "past it the step fails and cleanup runs (default: "
                                     "per kind).", examples=["60s"])
    when: Literal["always", "failure", "success"] = Field(
        default="always", description="Cleanup steps only: run always, only after a failed "
                                      "(or interrupted) run, or only after a successful one.")

    DEFAULT_TIMEOUT: ClassVar[float] = 60.0

    @property
    def title(self) -> str:
        return self.name or self.kind

    @property
    def deadline_s(self) -> float:
        return self.timeout if self.timeout is not None else self.default_timeout()

    def default_timeout(self) -> float:
        return self.DEFAULT_TIMEOUT


class ConfigCheckStep(_Step):
    """The configuration directory is valid, the service and both releases exist."""

    kind: Literal["config_check"]
    DEFAULT_TIMEOUT: ClassVar[float] = 30.0


class DiffStep(_Step):
    """`swapctl diff`: both releases side by side on identical scripted traffic."""

    kind: Literal["diff"]
    old: ReleaseRef = Field(default=BASELINE, description="The old side.")
    new: ReleaseRef = Field(default=CANDIDATE, description="The new side.")
    scenarios: list[str] = Field(default_factory=lambda: ["ci"], min_length=1,
                                 description="Scenarios (as `swapctl diff --scenario`).",
                                 examples=["[ci]"])
    mode: Literal["frames", "strict", "per-publisher"] = "frames"
    DEFAULT_TIMEOUT: ClassVar[float] = 180.0


class ShadowStep(_Step):
    """`swapctl shadow`: the live service's traffic mirrored into the candidate, diffed."""

    kind: Literal["shadow"]
    candidate: ReleaseRef = Field(default=CANDIDATE, description="The release mirrored into.")
    duration: Duration = Field(default=10.0, description="How long to mirror.",
                               examples=["10s"])

    def default_timeout(self) -> float:
        return self.duration + 60.0


class SwapStep(_Step):
    """A swap through swapctld, followed until the candidate serves or the swap ends."""

    kind: Literal["swap"]
    to: ReleaseRef = Field(default=CANDIDATE, description="The release to swap to.")
    soak: Duration | None = Field(default=None, description="Soak window (default: the "
                                  "service's soak).", examples=["30s"])
    until: Literal["serving", "done"] = Field(
        default="done", description="serving: go on once the candidate serves (soaking, the "
                                    "old release warm); done: wait until it is committed.")
    DEFAULT_TIMEOUT: ClassVar[float] = 120.0


class VerifyStep(_Step):
    """`release` serves and is healthy; with `load`, an independent load session through
    the public socket for that long is clean (no loss, duplicate, reorder, disconnect).
    steady_state also requires that no swap is running."""

    kind: Literal["verify", "steady_state"]
    release: ReleaseRef | None = Field(default=None, description="Expected to serve (default"
                                       ": @candidate for verify, @baseline for steady_state).")
    load: Duration | None = Field(default=None, description="Length of the independent load "
                                  "check (default: 1s for steady_state, none for verify).",
                                  examples=["1s"])
    rate: float = Field(default=1000.0, gt=0, allow_inf_nan=False,
                        description="Messages/s of that load check.")

    @property
    def expected(self) -> str:
        if self.release is not None:
            return self.release
        return CANDIDATE if self.kind == "verify" else BASELINE

    @property
    def load_s(self) -> float | None:
        if self.load is not None:
            return self.load
        return 1.0 if self.kind == "steady_state" else None

    def default_timeout(self) -> float:
        return 30.0 + 2 * (self.load_s or 0.0)


class RollbackStep(_Step):
    """Force a rollback to the baseline and time it (value rollback_seconds: from the
    request until the baseline serves again, as seen by this client)."""

    kind: Literal["rollback"]
    via: Literal["request", "abort", "swap_back"] = Field(
        default="request", description="request: the running swap's rollback (during soak);"
                                       " abort: abort it; swap_back: a new swap to the baseline"
                                       " (after a commit).")


class CommitStep(_Step):
    """Commit the running swap now (before its soak window ends); wait for the commit."""

    kind: Literal["commit"]


class GateStep(_Step):
    """Compare a measured value with a threshold; a failed gate fails the run."""

    kind: Literal["gate"]
    value: str = Field(description="A measured value (docs/playbooks.md lists them).",
                       examples=["rollback_seconds"])
    op: Literal["<=", "<", "==", ">=", ">"] = Field(description="Comparison.", examples=["<="])
    threshold: Threshold = Field(description="A number, a duration in seconds, or "
                                 "rollback_budget.", examples=["rollback_budget"])
    DEFAULT_TIMEOUT: ClassVar[float] = 5.0


class WaitStep(_Step):
    kind: Literal["wait"]
    duration: Duration = Field(description="How long.", examples=["5s"])

    def default_timeout(self) -> float:
        return self.duration + 5.0


class LoadStep(_Step):
    """Start (or stop) the run's independent load session: publishers and consumers of
    their own on the public socket, judged by the loss checker (values lost, duplicated,
    reordered, corrupted, disconnects, received; stopped by cleanup too)."""

    kind: Literal["load"]
    action: Literal["start", "stop"] = Field(description="start or stop.", examples=["start"])
    rate: float = Field(default=2000.0, gt=0, allow_inf_nan=False, description="Messages/s.")
    publishers: int = Field(default=1, ge=1, le=255)
    consumers: int = Field(default=2, ge=1, description="Consumers (the last is a strategy: "
                                                         "it stops for good on EOF).")
    DEFAULT_TIMEOUT: ClassVar[float] = 60.0


class RestoreStep(_Step):
    """Make the baseline serve again: abort a swap this run started, swap back if another
    release serves (value restored: 1 if anything had to be done)."""

    kind: Literal["restore"]
    DEFAULT_TIMEOUT: ClassVar[float] = 90.0


STEP_MODELS: dict[str, type[_Step]] = {
    "config_check": ConfigCheckStep, "diff": DiffStep, "shadow": ShadowStep,
    "swap": SwapStep, "verify": VerifyStep, "steady_state": VerifyStep,
    "rollback": RollbackStep, "commit": CommitStep, "gate": GateStep, "wait": WaitStep,
    "load": LoadStep, "restore": RestoreStep,
}

Step = Annotated[ConfigCheckStep | DiffStep | ShadowStep | SwapStep | VerifyStep
                 | RollbackStep | CommitStep | GateStep | WaitStep | LoadStep | RestoreStep,
                 Field(discriminator="kind")]


class Header(BaseModel):
    """Everything but the steps (validated one by one, so errors name each step)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Name = Field(description="The playbook's name.", examples=["rollback-drill"])
    kind: Annotated[PlaybookKind, Field(strict=False)] = Field(
        description="migration, drill (refused in drill windows; reports in STATE/drills) "
                    "or ci.", examples=["drill"])
    description: str = Field(default="", description="One line for people.")
    service: str | None = Field(default=None, description="The service (--service wins).",
                                examples=["market_data"])
    candidate: str = Field(default="other", description="The release @candidate names "
                           "(--candidate wins); other: the first handoff-capable release of "
                           "the service file that is not the baseline (never a legacy one).",
                           examples=["other"])
    params: dict[str, str | float | int] = Field(
        default_factory=dict, description="Defaults of ${NAME} substitutions (--param "
                                          "NAME=VALUE wins).", examples=["{soak: 30s}"])
    watchdog_grace: Duration = Field(
        default=30.0, description="The watchdog restores the baseline and ends the run when a "
                                  "step overruns its timeout by this much.", examples=["30s"])
    steps: list[dict[str, Any]] = Field(min_length=1, description="What to do, in order.")
    cleanup: list[dict[str, Any]] = Field(default_factory=list,
                                          description="Always run afterwards.")

    @field_validator("params")
    @classmethod
    def _param_names(cls, params: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in params if not k.isidentifier()]
        if bad:
            raise PydanticCustomError("swapctl_param", "{bad}: a parameter name is letters, "
                                      "digits and '_'", {"bad": ", ".join(bad)})
        return params


class Playbook(BaseModel):
    model_config = ConfigDict(frozen=True)

    header: Header
    steps: tuple[Step, ...]
    cleanup: tuple[Step, ...]
    source: str = ""
    params: dict[str, str] = Field(default_factory=dict)  # as substituted

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def kind(self) -> PlaybookKind:
        return self.header.kind

    def plan(self) -> dict[str, Any]:
        """What would run, in order (the --dry-run output)."""
        def one(step: _Step, index: int, section: str) -> dict[str, Any]:
            data = step.model_dump(exclude_none=True, exclude={"name", "timeout"})
            if section == "steps":
                data.pop("when", None)
            return {"section": section, "index": index, "name": step.title,
                    "timeout_s": step.deadline_s, **data}
        return {"playbook": self.name, "kind": self.kind.value, "source": self.source,
                "description": self.header.description, "params": self.params,
                "steps": [one(s, i, "steps") for i, s in enumerate(self.steps)],
                "cleanup": [one(s, i, "cleanup") for i, s in enumerate(self.cleanup)]}


# The values steps measure, which gates may compare (docs/playbooks.md has the table).
VALUES: dict[str, str] = {
    "rollback_seconds": "rollback step: from the request until the swap ended with the "
                        "baseline serving, as seen by the client running the playbook",
    "rollback_serving_seconds": "rollback step: from the request until swapctld first said "
                                "the baseline is the active release again",
    "rollback_engine_ms": "rollback step: swapctld's own handoff time of the rollback",
    "rollback_traffic_ms": "rollback step: until traffic flowed through the baseline again "
                           "(swapctld's measure)",
    "swap_seconds": "swap step: from the request until the candidate served (or the swap "
                    "ended)",
    "server_pause_ms": "swap step: server-side pause of the handoff",
    "client_pause_ms": "swap step: largest gap of swapctld's canary stream",
    "canary_lost": "swap/rollback step: messages swapctld's canary lost, duplicated, "
                   "reordered or corrupted (summed)",
    "lost": "load stop: messages the independent load session lost",
    "duplicated": "load stop: messages it received twice",
    "reordered": "load stop: messages it received out of order",
    "corrupted": "load stop: messages it received damaged",
    "disconnects": "load stop: unexpected disconnects of its clients",
    "received": "load stop: messages its consumers received",
    "steady_lost": "steady_state/verify: loss of the short load check (all kinds summed)",
    "diff_different": "diff step: scenarios whose outputs differed",
    "shadow_differences": "shadow step: differences found while mirroring",
    "restored": "restore step: 1 if the baseline had to be restored, else 0",
}
