"""`swapctl relay` refuses option combinations that cannot act as their help says."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from swapctl.cli import main


@pytest.mark.parametrize(("args", "says"), [
    (["--no-reply-at", "adopt"], "--no-reply-at is a handoff fault: it needs --handoff"),
    (["--framing", "chunk", "--sink"], "choose one of --framing chunk, --no-validate, --sink"),
])
def test_a_relay_option_that_cannot_act_is_refused_with_exit_2(
        args: list[str], says: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["relay", "--socket", f"{tmp_path}/r.sock", *args],
                                env={"SWAPCTL_HANDOFF": None})
    assert result.exit_code == 2, result.output
    assert says in result.output
