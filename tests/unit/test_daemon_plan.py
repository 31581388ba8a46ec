"""swapctld's strategy check (daemon/plan.py): a strategy is refused up front, with the
one that fits, when swapctld cannot run it for the two releases (a restart or bridge into
a handoff release crashed the swap with a bare AssertionError)."""

from __future__ import annotations

import pytest

from swapctl.daemon.plan import strategy
from swapctl.errors import UsageError
from swapctl.swap.spawner import Release

V1 = Release("v1", ("relay",))
V2 = Release("v2", ("relay",))
GENERIC = Release("generic", ("generic",), handoff=False, compiled="/tmp/torq/md.sock")


@pytest.mark.parametrize("asked", ["restart", "bridge"])
def test_restart_or_bridge_into_a_handoff_release_is_refused_naming_the_fit(asked: str
                                                                             ) -> None:
    with pytest.raises(UsageError, match=f"--strategy {asked}: .*v2 is not legacy.*"
                                         "use --strategy handoff"):
        strategy(V1, V2, asked)
    with pytest.raises(UsageError, match="use --strategy takeover"):
        strategy(GENERIC, V2, asked)


@pytest.mark.parametrize(("old", "new", "asked", "chosen"), [
    (V1, V2, "auto", "handoff"), (GENERIC, V2, "auto", "takeover"),
    (V1, GENERIC, "auto", "bridge"), (V1, GENERIC, "restart", "restart"),
    (GENERIC, GENERIC, "restart", "restart"), (GENERIC, GENERIC, "bridge", "bridge")])
def test_the_strategies_swapctld_runs_are_planned(old: Release, new: Release, asked: str,
                                                  chosen: str) -> None:
    assert strategy(old, new, asked)[0] == chosen
