"""`swapctl config reference -o json`: the same keys as the Markdown reference, as data."""

from __future__ import annotations

import json

from click.testing import CliRunner

from swapctl.cli import main
from swapctl.config.model import DaemonConfig, ServiceConfig


def test_reference_json_lists_every_key_of_the_markdown() -> None:
    runner = CliRunner()
    markdown = runner.invoke(main, ["config", "reference"])
    result = runner.invoke(main, ["config", "reference", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"swapctld.yaml", "SERVICE.yaml"}
    for rows in data.values():
        for row in rows:
            assert set(row) == {"key", "type", "default", "meaning", "example"}
            assert f"| `{row['key']}` | {row['type']} | {row['default']} |" in markdown.output
    daemon = {row["key"]: row for row in data["swapctld.yaml"]}
    assert daemon["supervisord.start"]["type"] == "one of systemd, swapctl"
    assert daemon["control.mode"]["default"] == '"0600"'
    top = {row["key"].split(".")[0] for row in data["SERVICE.yaml"]}
    assert top == set(ServiceConfig.model_fields)
    assert {row["key"].split(".")[0] for row in daemon.values()} == \
        set(DaemonConfig.model_fields)


def test_reference_refuses_an_unknown_output() -> None:
    result = CliRunner().invoke(main, ["config", "reference", "-o", "yaml"])
    assert result.exit_code == 2
