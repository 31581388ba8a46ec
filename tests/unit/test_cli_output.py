"""-o json wherever a command produces a result, and -o's help true of each command
(issue 15: it promised a --watch that logs, drill and up do not have)."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
from click.testing import CliRunner

from swapctl.cli import main
from swapctl.swap.report import render_any


def _commands(group: click.Group, path: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path}{name} ")
        else:
            yield f"{path}{name}", command


def test_output_help_promises_only_what_the_command_has() -> None:
    checked = 0
    for name, command in _commands(main):
        output = next((p for p in command.params if "--output" in getattr(p, "opts", ())),
                      None)
        if output is None:
            continue
        checked += 1
        names = {o for p in command.params for o in getattr(p, "opts", ())}
        help_text = getattr(output, "help", None) or ""
        for option in ("--watch", "--check"):
            if option in help_text:
                assert option in names, f"{name}: -o help mentions {option}: {help_text}"
    assert checked > 20  # every command with -o was looked at


def test_record_and_replay_and_standalone_requests_take_json() -> None:
    for name in ("record", "replay", "rollback", "commit", "up", "down", "logs", "swap"):
        command = main.commands[name]
        assert any("--output" in getattr(p, "opts", ()) for p in command.params), name
    with tempfile.TemporaryDirectory(prefix="swj-") as tmp:
        state = Path(tmp)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as inbox:
            inbox.bind(str(state / "requests.sock"))
            inbox.settimeout(5)
            done = CliRunner().invoke(main, ["rollback", "--socket", str(state / "m.sock"),
                                             "--state-dir", str(state), "-o", "json"])
            assert done.exit_code == 0, done.output
            assert json.loads(done.stdout) == {"requested": "rollback",
                                               "socket": str(state / "m.sock")}
            assert inbox.recv(64) == b"rollback"


def test_an_unknown_service_exits_4_from_every_command_that_looks_it_up() -> None:
    """`history --drills` looked the service up in the config itself and said 2; every
    unknown service now says 4, with the services that exist."""
    configs = str(Path(__file__).parents[2] / "configs")
    for args in (["history", "--drills", "nosuch"], ["drill", "nosuch", "--dry-run"]):
        result = CliRunner().invoke(main, [*args, "--config-dir", configs])
        assert result.exit_code == 4, (args, result.output)
        assert "unknown service 'nosuch'" in result.output
        assert "market_data" in result.output


def test_a_report_without_phases_says_its_reason_only_when_it_has_one() -> None:
    assert render_any({"swap_id": "swap-1", "decision": "running", "reason": None}) == \
        "swap swap-1: running"
    assert render_any({"swap_id": "swap-1", "decision": "failed", "reason": "why"}) == \
        "swap swap-1: failed (why)"
