"""The control API's requests, typed: one pydantic model per op, and the refusals.

`parse(raw)` turns a decoded request line into its op's model or raises `Invalid` (code
`usage` for a line that names no known op, `invalid` for a field that is wrong), with
every mistake in one operator line: `bad history request: limit: must be a whole number
from 1 to 10000, not 'abc'`. The models are strict (JSON types only: "5" is not a number,
1 is not true) and forbid unknown keys, so a typo is refused rather than ignored.

A soak is a duration like the CLI's `--soak` and the service file's `soak:` (seconds as
a number, or "30s", "250ms", "2m"), finite, at least 0 (0: commit once verified) and at
most `MAX_SOAK_S`.

`Refusal` is the root of every typed "no" the daemon answers with: its `code` becomes
the error line's code (the CLI's exit code) and its `details` go into the line too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from swapctl.config.errors import did_you_mean, key_path
from swapctl.config.types import MAX_DURATION_S, parse_duration
from swapctl.errors import UsageError

MAX_SOAK_S = MAX_DURATION_S  # one bound with the CLI and the configs (1e308 soaked for ever)
MAX_TTL_S = 3600.0
MAX_TEXT = 256  # names, holders, swap ids
STRATEGIES = ("auto", "handoff", "takeover", "bridge", "restart")


class Refusal(UsageError):
    """The daemon says no, with a code the CLI maps to its exit code (2 unless the code
    says otherwise) and details for scripts (`-o json`)."""

    code = "usage"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details

    def answer(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": str(self), **self.details}


class BadRequest(Refusal):
    """A line that is not a request: not JSON, not an object, no known op."""


class Invalid(Refusal):
    """A request whose fields do not fit its op's model."""

    code = "invalid"


def _soak(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("soak", "must be seconds or a duration such as 30s, 250ms "
                                  "or 2m, not {value}", {"value": _describe(value)})
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except (PydanticCustomError, ValueError):
            raise PydanticCustomError("soak", "must be seconds or a duration such as 30s, "
                                      "250ms or 2m, not {value}",
                                      {"value": _describe(value)}) from None
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SOAK_S:
        raise PydanticCustomError("soak", f"must be from 0 to {MAX_SOAK_S:g} seconds (24h), "
                                  "not {value}", {"value": _describe(value)})
    return seconds


Soak = Annotated[float, BeforeValidator(_soak)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
SwapId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Ping(_Request):
    op: Literal["ping"]


class Status(_Request):
    op: Literal["status"]
    service: Text | None = None


class Swap(_Request):
    op: Literal["swap"]
    service: Text
    to: Text | None = None
    soak: Soak | None = None
    strategy: Literal["auto", "handoff", "takeover", "bridge", "restart"] = "auto"
    dry_run: bool = False
    wait: bool = True
    rollback: bool = False  # `swapctl rollback SERVICE` with no swap running: swap back


class Follow(_Request):
    op: Literal["follow"]
    service: Text


class Steer(_Request):
    op: Literal["request"]
    service: Text
    request: Literal["rollback", "commit", "abort"]


class History(_Request):
    op: Literal["history"]
    service: Text | None = None
    limit: int = Field(default=20, ge=1, le=10_000)


class Report(_Request):
    op: Literal["report"]
    swap_id: SwapId


class Logs(_Request):
    op: Literal["logs"]
    service: Text
    lines: int = Field(default=50, ge=1, le=10_000)


class Lease(_Request):
    op: Literal["lease"]
    service: Text
    holder: Text
    ttl_s: float = Field(gt=0, le=MAX_TTL_S, allow_inf_nan=False)
    restore_to: Text
    replaces: str | None = Field(default=None, max_length=MAX_TEXT)


class LeaseRenew(_Request):
    op: Literal["lease_renew"]
    service: Text
    holder: Text


class LeaseRelease(_Request):
    op: Literal["lease_release"]
    service: Text
    holder: Text


class Down(_Request):
    op: Literal["down"]


Request = (Ping | Status | Swap | Follow | Steer | History | Report | Logs | Lease | LeaseRenew
           | LeaseRelease | Down)
MODELS: dict[str, type[_Request]] = {
    "ping": Ping, "status": Status, "swap": Swap, "follow": Follow, "request": Steer,
    "history": History, "report": Report, "logs": Logs, "lease": Lease,
    "lease_renew": LeaseRenew, "lease_release": LeaseRelease, "down": Down,
}


def parse(raw: object) -> Request:
    """The typed request of a decoded request line, or `Invalid` saying what is wrong."""
    if not isinstance(raw, Mapping):
        raise BadRequest(f"bad request: expected a JSON object with an op, not {_describe(raw)}",
                      errors=[{"field": "", "problem": "not a JSON object"}])
    op = raw.get("op")
    if not isinstance(op, str) or op not in MODELS:
        ops = sorted(MODELS)
        what = f"unknown op {_describe(op)}{did_you_mean(op, ops) if isinstance(op, str) else ''}" \
            if op is not None else "no op"
        raise BadRequest(f"bad request: {what}: the ops are {', '.join(ops)}",
                         errors=[{"field": "op", "problem": what}])
    try:
        request: Request = MODELS[op].model_validate(dict(raw))  # type: ignore[assignment]
    except ValidationError as exc:
        problems = [{"field": key_path(tuple(e["loc"])), "problem": _problem(e)}
                    for e in exc.errors(include_url=False)]
        lines = "; ".join(f"{p['field']}: {p['problem']}" if p["field"] else p["problem"]
                          for p in problems)
        raise Invalid(f"bad request (op {op}): {lines}", errors=problems) from None
    return request


_EXPECTED = {"string_type": "a string", "bool_type": "true or false", "int_type":
             "a whole number", "float_type": "a number", "int_from_float": "a whole number",
             "literal_error": "one of {choices}", "dict_type": "a JSON object"}


def _problem(error: Any) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return "unknown key: leave it out"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the allowed values')}, not " \
               f"{_describe(value)}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, not {_describe(value)}"
    if kind in ("greater_than", "greater_than_equal", "less_than_equal", "less_than",
                "finite_number"):
        return f"{error['msg'].lower()}, not {_describe(value)}"
    if kind == "string_pattern_mismatch":
        return f"must be a swap id such as swap-20260101T120000-0a1b2c, not {_describe(value)}"
    if kind in ("string_too_short", "string_too_long"):
        return f"{error['msg'].lower()}, not {_describe(value)}"
    return str(error["msg"])


def _describe(value: object) -> str:
    """A short, safe description of what the client sent (never the whole of it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
