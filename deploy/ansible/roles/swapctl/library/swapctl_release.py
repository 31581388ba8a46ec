#!/usr/bin/python
"""Ansible module: make one release entry of a swapctl service file what the play says.

How it works: the service file (CONFIG_DIR/SERVICE.yaml) is read with PyYAML. When
`releases.NAME` already equals {command, handoff[, env]} nothing is written. Otherwise
only that entry's lines are replaced (or a new entry is appended to `releases:`) with one
flow-style line, so the operator's comments and the rest of the file stay as they are.
The edited text is parsed again and must equal the old document with only that entry
changed; if not (a flow-style `releases:`, an odd layout), nothing is written and the
task fails saying which file to edit by hand. Runs under swapctl's venv python, which
has PyYAML (a swapctl dependency).
"""

from __future__ import annotations

import os
import re
import tempfile

import yaml
from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: swapctl_release
short_description: Ensure a release entry in a swapctl service file
options:
  config_dir: {type: path, required: true, description: swapctl's config directory}
  service: {type: str, required: true, description: the service (SERVICE.yaml)}
  name: {type: str, required: true, description: the release name (releases.NAME)}
  command: {type: list, elements: str, required: true, description: the relay's argv}
  handoff: {type: bool, default: true, description: the release speaks the handoff protocol}
  env: {type: dict, description: environment of the relay (releases.NAME.env)}
  backup: {type: bool, default: false, description: keep a timestamped copy before writing}
"""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _releases_block(lines: list[str]) -> tuple[int, int]:
    """(index of the `releases:` line, index after the block's last content line)."""
    start = next((i for i, ln in enumerate(lines)
                  if re.match(r"releases:\s*(#.*)?$", ln.rstrip("\n"))), None)
    if start is None:
        raise ValueError("no block-style 'releases:' key at the top level")
    end = start + 1
    for i in range(start + 1, len(lines)):
        if _content(lines[i]):
            if _indent(lines[i]) == 0:
                break
            end = i + 1
    return start, end


def edit(text: str, name: str, entry: dict[str, object]) -> str:
    """TEXT with releases.NAME set to ENTRY, everything else as it was."""
    lines = text.splitlines(keepends=True)
    start, end = _releases_block(lines)
    body = [i for i in range(start + 1, end) if _content(lines[i])]
    indent = min((_indent(lines[i]) for i in body), default=2)
    flow = yaml.safe_dump(entry, default_flow_style=True, width=10**6).strip()
    new = f"{' ' * indent}{name}: {flow}  # written by the swapctl Ansible role\n"
    first = next((i for i in body if _indent(lines[i]) == indent
                  and re.match(rf"{re.escape(name)}\s*:", lines[i].lstrip(" "))), None)
    if first is None:
        return "".join([*lines[:end], new, *lines[end:]])
    last = first + 1
    while last < end and not (_content(lines[last]) and _indent(lines[last]) <= indent):
        last += 1
    while last - 1 > first and not _content(lines[last - 1]):  # keep the blank lines after it
        last -= 1
    return "".join([*lines[:first], new, *lines[last:]])


def _write(path: str, text: str) -> None:
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".swapctl-release-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(module: AnsibleModule) -> dict[str, object]:
    p = module.params
    path = os.path.join(p["config_dir"], f"{p['service']}.yaml")
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        module.fail_json(msg=f"{path}: cannot read the service file ({exc.strerror}); "
                             f"is swapctl_config_dir right and the service configured?")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("releases"), dict):
        module.fail_json(msg=f"{path}: no 'releases:' mapping; run swapctl config check "
                             f"{p['service']}")
    entry: dict[str, object] = {"command": list(p["command"]), "handoff": p["handoff"]}
    if p["env"]:
        entry["env"] = {k: str(v) for k, v in p["env"].items()}
    result: dict[str, object] = {"changed": False, "path": path, "release": p["name"]}
    if data["releases"].get(p["name"]) == entry:
        return result
    if data.get("active") == p["name"]:
        module.fail_json(msg=f"{path}: releases.{p['name']} is the active release and differs "
                             f"from the play's; give the changed release a new name (v3) "
                             f"and swap to it")
    try:
        new_text = edit(text, p["name"], entry)
    except ValueError as exc:
        module.fail_json(msg=f"{path}: {exc}; add releases.{p['name']} by hand")
    expected = {**data, "releases": {**data["releases"], p["name"]: entry}}
    if yaml.safe_load(new_text) != expected:
        module.fail_json(msg=f"{path}: editing releases.{p['name']} in place would change "
                             f"other keys (unusual layout); add it by hand")
    result.update(changed=True, diff={"before": text, "after": new_text,
                                      "before_header": path, "after_header": path})
    if not module.check_mode:
        if p["backup"]:
            result["backup_file"] = module.backup_local(path)
        _write(path, new_text)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config_dir": {"type": "path", "required": True},
            "service": {"type": "str", "required": True},
            "name": {"type": "str", "required": True},
            "command": {"type": "list", "elements": "str", "required": True},
            "handoff": {"type": "bool", "default": True},
            "env": {"type": "dict", "default": None},
            "backup": {"type": "bool", "default": False},
        },
        supports_check_mode=True)
    module.exit_json(**run(module))


if __name__ == "__main__":
    main()
