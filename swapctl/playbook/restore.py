"""Putting the last known good release back: what cleanup, the watchdog and the recovery
of a killed run all do.

The last known good release is the baseline: the release that served when the run
began (recorded in the run's journal and its lease before the first step). Restoring
it: a swap this run started that is still running is aborted (swapctld rolls it back
to the release it came from); then, if another release serves, a swap back to the
baseline is started and committed as soon as the baseline serves. A swap someone
else started is never touched: restore then fails and says so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from swapctl.daemon.api import ApiClient
from swapctl.errors import SwapctlError

SWAP_BACK_SOAK = 1.0  # committed as soon as it serves, so the soak barely matters


class RestoreFailed(SwapctlError):
    """The baseline could not be made to serve again: operator action needed."""


@dataclass
class Restore:
    client: ApiClient
    service: str
    baseline: str
    ours: Collection[str]  # swap ids the run started
    sleep: Callable[[float], None] = time.sleep  # raises to give up (a deadline)
    actions: list[str] = field(default_factory=list)

    def run(self) -> list[str]:
        """What it did (empty: the baseline served already). RestoreFailed if it can't."""
        status = self._status()
        swap = status.get("swap") or {}
        if swap.get("running"):
            self._end_running(swap)
            status = self._status()
        active = (status.get("active") or {}).get("release")
        if active == self.baseline and (status.get("active") or {}).get("alive", True):
            return self.actions
        self._swap_back(active)
        return self.actions

    def _status(self) -> dict[str, Any]:
        return dict(self.client.call("status", service=self.service)["services"][0])

    def _end_running(self, swap: dict[str, Any]) -> None:
        swap_id = swap["swap_id"]
        if swap_id not in self.ours:
            raise RestoreFailed(
                f"{self.service}: swap {swap_id} ({swap.get('from')} -> {swap.get('to')}) is "
                "running and was not started by this run: left alone; see `swapctl status "
                f"{self.service}`")
        try:
            self.client.call("request", service=self.service, request="abort")
            self.actions.append(f"aborted swap {swap_id} in {swap.get('state')}")
        except SwapctlError as exc:
            if getattr(exc, "code", None) != "too_late":
                raise
            # past the point of aborting (committing, or ended and filing its report): it
            # ends by itself, and the swap back below restores the baseline after it
            self.actions.append(f"swap {swap_id} was past aborting in {swap.get('state')}: "
                                "waited for its end")
        self._wait_ended(swap_id)

    def _wait_ended(self, swap_id: str) -> dict[str, Any]:
        while True:
            swap = self._status().get("swap") or {}
            if swap.get("swap_id") != swap_id or not swap.get("running"):
                return swap
            self.sleep(0.02)

    def _swap_back(self, active: str | None) -> None:
        answer = self.client.call("swap", service=self.service, to=self.baseline,
                                  soak=SWAP_BACK_SOAK, wait=False)
        swap_id = str(answer["swap_id"])
        self.actions.append(f"swap {swap_id} back from {active} to {self.baseline}")
        while True:
            swap = self._status().get("swap") or {}
            if swap.get("swap_id") == swap_id and not swap.get("running"):
                break
            if swap.get("state") == "soaking":
                with contextlib.suppress(SwapctlError):  # ended meanwhile: the loop sees how
                    self.client.call("request", service=self.service, request="commit")
            self.sleep(0.02)
        report = self.client.call("report", swap_id=swap_id)["report"]
        if report.get("decision") != "committed":
            raise RestoreFailed(
                f"{self.service}: the swap back to {self.baseline} ended "
                f"{report.get('decision')}: {report.get('reason')}; {active} still serves: "
                f"see `swapctl report {swap_id}`")
