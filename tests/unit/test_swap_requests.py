"""`swapctl swap`'s typed requests: every option has a decided place in every mode, the
requests validate what they hold, and a legacy request reaches `LegacySwap` whole
(domain byte, canary rate, the bridge's drain deadline)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from swapctl.cli import swap_run
from swapctl.cli.swap import swap_command
from swapctl.cli.swap_requests import (
    NOT_FOR_STRATEGY,
    NOT_HERE,
    Canary,
    HandoffRequest,
    LegacyRequest,
    build,
    mode_of,
)
from swapctl.errors import UsageError
from swapctl.legacy.run import LegacySwap
from swapctl.protocol.profiles import Domain, Profile, domain_byte

# Options that mean something in every mode.
EVERYWHERE = {"service", "to", "soak", "dry_run", "strategy", "output"}


def options(**given: Any) -> dict[str, Any]:
    """The parsed options of `swapctl swap` at their defaults, with `given` set."""
    ctx = swap_command.make_context("swap", [])
    return {**ctx.params, **given}


def test_every_option_is_decided_for_every_mode() -> None:
    names = {p.name for p in swap_command.params}
    assert set(NOT_HERE) | set(NOT_FOR_STRATEGY) <= names  # no stale or misspelt entry
    undecided = names - set(NOT_HERE) - EVERYWHERE
    assert not undecided, f"decide where {undecided} apply (swap_requests.NOT_HERE)"
    for name, where in NOT_HERE.items():
        for why, instead in where.values():
            assert why and instead, name


@pytest.mark.parametrize(("given", "mode"), [
    ({"service": "md", "socket_path": Path("s")}, "daemon"),
    ({"socket_path": Path("s"), "from_cmd": "old"}, "handoff"),
    ({"socket_path": Path("s")}, "legacy"),  # no --from: the relay serving it now
    ({"strategy": "handoff", "socket_path": Path("s")}, "handoff"),
    ({"strategy": "restart"}, "legacy"),
    ({"to_legacy": True}, "legacy"),
    ({"from_legacy": True, "strategy": "auto"}, "legacy"),
])
def test_mode_follows_from_what_was_given(given: dict[str, Any], mode: str) -> None:
    assert mode_of(options(**given)) == mode


def test_a_default_value_given_explicitly_is_still_refused() -> None:
    with pytest.raises(UsageError, match="--canary-rate does not apply"):
        build(options(service="md", canary_rate=2000.0), {"service", "canary_rate"})
    request = build(options(service="md", canary_rate=2000.0), {"service"})
    assert not isinstance(request, HandoffRequest | LegacyRequest)


def test_handoff_request_carries_the_options(tmp_path: Path) -> None:
    o = options(socket_path=tmp_path / "md.sock", from_cmd="relay --a 'b c'", to="relay",
                soak=2.5, canary_rate=0.0, domain="execution", profile="torq")
    request = build(o, {"socket_path", "from_cmd", "to", "soak", "canary_rate", "domain",
                        "profile"})
    assert isinstance(request, HandoffRequest)
    assert request.from_cmd == ("relay", "--a", "b c") and request.soak == 2.5
    assert request.state_dir == tmp_path / ".md.sock.swapctl"
    assert not request.canary.proof
    assert request.canary.domain_byte == domain_byte(Domain.EXECUTION, Profile.TORQ)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_requests_validate_what_they_hold(tmp_path: Path, bad: float) -> None:
    with pytest.raises(UsageError):
        Canary(bad, Domain.MARKET_DATA, Profile.ALPHAPULSE)
    with pytest.raises(UsageError, match="--soak"):
        HandoffRequest(tmp_path / "s", tmp_path, ("a",), ("b",), bad, 250.0, None,
                       Canary(1.0, Domain.MARKET_DATA, Profile.ALPHAPULSE), "", False, "text")
    with pytest.raises(UsageError, match="empty command"):
        build(options(socket_path=tmp_path / "s", from_cmd="  ", to="b"),
              {"socket_path", "from_cmd", "to"})


def test_legacy_request_reaches_legacy_swap_whole(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Domain and profile work on the legacy path (the domain byte is not hard-wired),
    and --soak is the bridge's drain deadline."""
    seen: list[tuple[str, LegacySwap]] = []
    monkeypatch.setattr(swap_run, "run_strategy",
                        lambda strategy, swap, **_: seen.append((strategy, swap)))
    o = options(socket_path=tmp_path / "md.sock", from_cmd="old", from_legacy=True,
                to="new", to_legacy=True, soak=4.0, canary_rate=300.0, domain="signal",
                profile="torq", state_dir=tmp_path / "st")
    request = build(o, {"socket_path", "from_cmd", "from_legacy", "to", "to_legacy", "soak",
                        "canary_rate", "domain", "profile", "state_dir"})
    assert isinstance(request, LegacyRequest) and request.strategy == "bridge"
    swap_run.execute_legacy(request)
    strategy, swap = seen[0]
    assert strategy == "bridge" and swap.extra == {"drain_deadline": 4.0}
    assert swap.domain_byte == domain_byte(Domain.SIGNAL, Profile.TORQ)
    assert swap.canary_rate == 300.0 and swap.state_dir == tmp_path / "st"
    assert swap.from_ is not None and swap.from_.legacy and swap.to.legacy
    assert not (tmp_path / "st").exists()


def test_takeover_to_a_legacy_build_is_refused_before_anything_runs(tmp_path: Path) -> None:
    o = options(socket_path=tmp_path / "md.sock", from_legacy=True, to="new",
                to_legacy=True, strategy="takeover", state_dir=tmp_path / "st")
    with pytest.raises(UsageError, match="takeover needs"):
        build(o, {"socket_path", "from_legacy", "to", "to_legacy", "strategy", "state_dir"})


def test_without_from_the_relay_serving_the_socket_is_the_old_one() -> None:
    """--socket with no --from cannot be a standalone handoff (which starts --from): the
    relay serving the socket now is the old one, a legacy swap (adopting it if needed)."""
    assert mode_of(options(socket_path=Path("s"), to="new")) == "legacy"
    assert mode_of(options(socket_path=Path("s"), to="new", old_pid=7)) == "legacy"
    assert mode_of(options(socket_path=Path("s"), to="new", from_cmd="old")) == "handoff"
    assert mode_of(options(socket_path=Path("s"), to="new", strategy="handoff")) == "handoff"
    assert mode_of(options(old_pid=7, from_cmd="old")) == "legacy"


def test_old_pid_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--old-pid does not apply to a swap through "
                                         r"swapctld.*adopt:"):
        build(options(service="md", old_pid=7), {"service", "old_pid"})
    for strategy in ("bridge", "restart"):  # refused before any process is looked up
        o = options(socket_path=tmp_path / "none.sock", to="new", old_pid=7,
                    strategy=strategy, state_dir=tmp_path / "st")
        with pytest.raises(UsageError, match=rf"--old-pid does not apply.*a {strategy} "
                                             r"would cut its clients"):
            build(o, {"socket_path", "to", "old_pid", "strategy", "state_dir"})
    o = options(socket_path=tmp_path / "none.sock", to="new", old_pid=7,
                state_dir=tmp_path / "st")
    with pytest.raises(UsageError, match=r"no relay to adopt at .*none\.sock: nothing is there"):
        build(o, {"socket_path", "to", "old_pid", "state_dir"})
    assert not (tmp_path / "st").exists()


def test_adopting_needs_a_handoff_capable_release_and_no_from(tmp_path: Path) -> None:
    """A listener this test holds stands for a relay swapctl did not start."""
    public = tmp_path / "md.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(public))
        sock.listen()
        given = {"socket_path", "to", "state_dir"}
        base = {"socket_path": public, "to": "new", "state_dir": tmp_path / "st"}
        request = build(options(**base), given)
        assert isinstance(request, LegacyRequest) and request.strategy == "takeover"
        assert request.adopt is not None and request.adopt.pid == os.getpid()
        assert request.adopt.found_by == "the listener's owner" and request.from_legacy
        assert request.adopt.bound == str(public)
        with pytest.raises(UsageError, match="adopted by a takeover, which moves its clients "
                                             "only into a release that speaks the handoff"):
            build(options(**base, to_legacy=True), given | {"to_legacy"})
        with pytest.raises(UsageError, match="--from does not apply to adopting"):
            build(options(**base, from_cmd="old", from_legacy=True),
                  given | {"from_cmd", "from_legacy"})
        with pytest.raises(UsageError, match="--from-handoff does not apply"):
            build(options(**base, from_legacy=False), given | {"from_legacy"})
        with pytest.raises(UsageError, match=rf"--old-pid 1 does not hold the listener.*pid "
                                             rf"{os.getpid()} .*does"):
            build(options(**base, old_pid=1), given | {"old_pid"})
    assert not (tmp_path / "st").exists()
