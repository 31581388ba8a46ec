"""The suite runs on two pytest-xdist workers with `--dist loadgroup` (./run test): tests
are handed out one by one, so a module whose fixture is shared across its tests (scope
module or class: one stack for many checks) must keep them on one worker with an
`xdist_group` mark, or each worker would build its own copy of the stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# this module's own group: under --dist loadgroup its test ids carry it
pytestmark = pytest.mark.xdist_group("suite_layout")

TESTS = Path(__file__).parents[1]
SHARED = re.compile(r"scope=[\"'](module|class|package)[\"']")


def test_every_module_with_a_shared_fixture_stays_on_one_worker() -> None:
    shared = [p for p in sorted(TESTS.rglob("test_*.py")) if SHARED.search(p.read_text())]
    assert shared, "no module-scoped fixture found: the pattern is stale"
    loose = [str(p.relative_to(TESTS)) for p in shared
             if "xdist_group(" not in p.read_text()]
    assert not loose, f"add pytestmark = pytest.mark.xdist_group(...) to {loose}"


def test_the_test_command_uses_loadgroup() -> None:
    run = (TESTS.parent / "run").read_text()
    assert "--dist loadgroup" in run


def test_a_group_mark_really_groups_under_loadgroup(request: pytest.FixtureRequest) -> None:
    """pytest-xdist groups by suffixing each marked test's id with its group; a pytest that
    ignores the suffix (pytest 9 with xdist 3.8) spread a module's tests over both
    workers, each without the module's stack. Checked where it matters: on a worker of
    a --dist loadgroup run; elsewhere there is nothing to group."""
    if not getattr(request.config.option, "loadgroup", False):  # (set by xdist on workers)
        pytest.skip("not a --dist loadgroup run (./run test is one)")
    assert request.node.nodeid.endswith("@suite_layout"), request.node.nodeid
