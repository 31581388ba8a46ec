"""The drill's rollback step when swapctld ends the swap between the step's status and its
request (its own verification rolls back a candidate that loses messages): the step
fails with why swapctld ended it, not with the daemon's bare "too late"."""

from __future__ import annotations

from typing import Any

import pytest

from swapctl.daemon.api import ApiError
from swapctl.playbook.context import StepFailed
from swapctl.playbook.model import RollbackStep
from swapctl.playbook.steps import rollback

REASON = "relay error counters grew on v2: lag_drops +40 (dropped)"


class Client:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, method: str, **_: Any) -> dict[str, Any]:
        self.calls.append(method)
        if method == "request":
            raise ApiError("market_data: swap swap-1 is over (rolled_back): too late to "
                           "rollback", code="too_late")
        assert method == "report"
        return {"report": {"decision": "rolled_back", "reason": REASON}}


class Ctx:
    """Running at the step's first look; over (rolled back by swapctld) after it."""

    service = "market_data"
    swaps = {"swap-1"}

    def __init__(self) -> None:
        self.client = Client()
        self.looks = 0

    def status(self) -> dict[str, Any]:
        self.looks += 1
        return {"swap": {"swap_id": "swap-1", "running": self.looks <= 2, "state": "soaking"}}

    def sleep(self, seconds: float) -> None:
        pass


def test_a_swap_swapctld_ended_meanwhile_fails_the_step_with_its_reason() -> None:
    ctx = Ctx()
    step = RollbackStep(kind="rollback", via="request")
    with pytest.raises(StepFailed) as failed:
        rollback(step, ctx)  # type: ignore[arg-type]
    assert str(failed.value) == ("no swap of this run is running to roll back: swapctld ended "
                                 f"swap swap-1 rolled_back ({REASON})")
    assert ctx.client.calls == ["request", "report"]
    assert ctx.looks == 3, "it waited until the swap was over before reading its report"
