"""Running the conformance cases against a relay command, and rendering the results.

Each case gets a fresh rig (its own temp dir, control socket and public listener) and
relays started from the command under test; the rig is closed whatever happens. A case
passes when it returns, fails on `CaseFailed` or on any protocol error (a refused
request, a timeout, a closed channel); a command that cannot be run is a usage error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from swapctl.conformance import cases, extension_cases, handoff_cases
from swapctl.conformance.cases import Case
from swapctl.conformance.rig import CaseFailed, Rig
from swapctl.errors import SwapctlError, UsageError
from swapctl.handoff.messages import HandoffError

# every case, in order: cases.py registers its own, then handoff_cases.py and
# extension_cases.py add theirs
ALL_CASES: tuple[Case, ...] = tuple(cases.CASES)
assert handoff_cases.META and extension_cases.__name__  # (imported for their cases)
assert len({c.name for c in ALL_CASES}) == len(ALL_CASES)


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    group: str
    summary: str
    ok: bool
    detail: str
    seconds: float


def select(names: Sequence[str]) -> list[Case]:
    """The cases to run (all when `names` is empty); an unknown name is a usage error."""
    if not names:
        return list(ALL_CASES)
    known = {c.name: c for c in ALL_CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown case {', '.join(unknown)}: see `swapctl conformance --list`")
    return [known[n] for n in names]


def run_case(command: tuple[str, ...], case: Case, domain_byte: int) -> Result:
    start = time.monotonic()
    rig = Rig(command, domain_byte)
    try:
        detail, ok = case.run(rig), True
    except CaseFailed as exc:
        detail, ok = str(exc), False
    except (HandoffError, TimeoutError, OSError) as exc:
        detail, ok = f"{type(exc).__name__}: {exc}", False
    except UsageError:
        raise
    except SwapctlError as exc:
        detail, ok = str(exc), False
    finally:
        tails = [] if "ok" in locals() and ok else [r.log_tail() for r in rig.relays]
        rig.close()
    if not ok:
        tail = next((t for t in tails if t), "")
        if tail:
            detail += f" [relay output ends with: {tail[-200:]}]"
    return Result(case.name, case.group, case.summary, ok, detail, time.monotonic() - start)


def run(command: tuple[str, ...], cases: Sequence[Case], domain_byte: int = 1,
        progress: Callable[[Result], None] | None = None) -> list[Result]:
    if not command:
        raise UsageError("--relay: empty command; give the relay's command line")
    results = []
    for case in cases:
        result = run_case(command, case, domain_byte)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def to_dict(command: tuple[str, ...], results: Sequence[Result]) -> dict[str, Any]:
    passed = sum(r.ok for r in results)
    return {"relay": list(command), "passed": passed, "failed": len(results) - passed,
            "cases": [asdict(r) | {"seconds": round(r.seconds, 3)} for r in results]}


def render_text(command: tuple[str, ...], results: Sequence[Result]) -> str:
    width = max([len(f"{r.group}/{r.name}") for r in results] + [4])
    lines = [f"conformance of: {' '.join(command)}", "",
             f"{'case':<{width}}  result  time     detail"]
    for r in results:
        lines.append(f"{r.group + '/' + r.name:<{width}}  {'PASS' if r.ok else 'FAIL':<6}  "
                     f"{r.seconds:6.2f}s  {r.detail}")
    passed = sum(r.ok for r in results)
    lines += ["", f"{passed} passed, {len(results) - passed} failed"]
    return "\n".join(lines)
