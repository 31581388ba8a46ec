"""Reading a playbook: YAML, ${NAME} parameters, then the model, step by step.

Every problem is collected (not only the first) and worded like the configuration's:
file, where (the step's index and name, then the key), what is wrong, what would be
right, and the line. Parameters are substituted before validation: a string that is
exactly `${NAME}` takes the parameter's value as written (a number stays a number);
`${NAME}` inside a longer string is replaced by its text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from swapctl.config.errors import ConfigError, Problem, did_you_mean, translate
from swapctl.config.yamlfile import Lines, read_yaml
from swapctl.playbook.model import STEP_MODELS, VALUES, GateStep, Header, Playbook

_PARAM = re.compile(r"\$\{([^}]*)\}")
SECTIONS = ("steps", "cleanup")


def load_playbook(path: Path, overrides: Mapping[str, str] | None = None) -> Playbook:
    """The validated playbook, or ConfigError listing every problem."""
    document, problems = read_yaml(path)
    if document is None:
        raise ConfigError(problems)
    data = document.data
    if not isinstance(data, dict):
        raise ConfigError([Problem(path, "", "a playbook is a mapping with name, kind and "
                                             "steps (see playbooks/*.yaml)")])
    params = _params(path, data, dict(overrides or {}), problems)
    data = {k: (v if k == "params" else _substitute(v, params, path, (k,), lines=document.lines,
                                                    problems=problems))
            for k, v in data.items()}
    header = None
    try:
        header = Header.model_validate(data)
    except ValidationError as exc:
        problems += translate(exc, Header, path, document.lines, {})
    steps: dict[str, list[Any]] = {}
    for section in SECTIONS:
        raw = data.get(section)
        if isinstance(raw, list):
            steps[section] = [_step(path, section, i, item, lines=document.lines,
                                  problems=problems)
                              for i, item in enumerate(raw)]
    if problems or header is None:
        raise ConfigError(problems)
    return Playbook(header=header, steps=tuple(steps.get("steps", ())),
                    cleanup=tuple(steps.get("cleanup", ())), source=str(path),
                    params={k: str(v) for k, v in params.items()})


def _params(path: Path, data: dict[str, Any], overrides: dict[str, str],
            problems: list[Problem]) -> dict[str, Any]:
    declared = data.get("params") or {}
    if not isinstance(declared, dict):
        return {}  # the header's validation says what is wrong
    for name in overrides:
        if name not in declared:
            problems.append(Problem(path, "params", f"--param {name}: no such parameter"
                                    f"{did_you_mean(name, list(declared))}: this playbook's "
                                    f"parameters are {', '.join(declared) or 'none'}"))
    merged = dict(declared)
    for name, text in overrides.items():
        if name in declared:
            merged[name] = _typed(path, name, text, declared[name], problems)
    return merged


def _typed(path: Path, name: str, text: str, default: Any, problems: list[Problem]) -> Any:
    """A --param value takes the type of the parameter's default (a number stays one)."""
    if isinstance(default, bool) or not isinstance(default, int | float):
        return text
    try:
        return type(default)(text)
    except ValueError:
        problems.append(Problem(path, "params", f"--param {name}={text}: must be a "
                                f"{'whole ' if isinstance(default, int) else ''}number, like "
                                f"its default {default}"))
        return default


def _substitute(value: Any, params: dict[str, Any], path: Path, loc: tuple[str, ...], *,
                lines: Lines, problems: list[Problem]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, params, path, (*loc, str(k)), lines=lines,
                            problems=problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, path, (*loc, str(i)), lines=lines,
                            problems=problems)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    for name in _PARAM.findall(value):
        if name not in params:
            problems.append(Problem(path, _where(loc), f"${{{name}}} names no parameter"
                                    f"{did_you_mean(name, list(params))}: declare it under "
                                    f"params (there are: {', '.join(params) or 'none'})",
                                    _line(lines, loc)))
    whole = _PARAM.fullmatch(value)
    if whole and whole[1] in params:
        return params[whole[1]]
    return _PARAM.sub(lambda m: str(params.get(m[1], m[0])), value)


def _step(path: Path, section: str, index: int, item: Any, *, lines: Lines,
          problems: list[Problem]) -> Any:
    where = f"{section}[{index}]"
    sub = {k[2:]: v for k, v in lines.items() if k[:2] == (section, str(index))}
    line = lines.get((section, str(index)))
    if not isinstance(item, dict):
        problems.append(Problem(path, where, "a step is a mapping with a kind, e.g. "
                                             "{kind: wait, duration: 5s}", line))
        return None
    kind = item.get("kind")
    title = f"{where} ({item.get('name') or kind})" if isinstance(kind, str) else where
    if kind not in STEP_MODELS:
        kinds = sorted(STEP_MODELS)
        what = "kind is missing" if kind is None else \
            f"kind {kind!r} is unknown{did_you_mean(str(kind), kinds)}"
        problems.append(Problem(path, where, f"{what}: the kinds are {', '.join(kinds)}", line))
        return None
    model = STEP_MODELS[kind]
    try:
        step = model.model_validate(item)
    except ValidationError as exc:
        for p in translate(exc, model, path, sub, {}):
            problems.append(Problem(path, f"{title}: {p.key}" if p.key else title, p.message,
                                    p.line or line))
        return None
    if section == "steps" and step.when != "always":
        problems.append(Problem(path, f"{title}: when", "only cleanup steps have a when: "
                                "move the step under cleanup, or remove when", line))
    if isinstance(step, GateStep) and step.value not in VALUES:
        problems.append(Problem(path, f"{title}: value", f"{step.value!r} is not a measured "
                                f"value{did_you_mean(step.value, list(VALUES))}: use one of "
                                f"{', '.join(VALUES)}", sub.get(("value",), line)))
    return step


def _where(loc: tuple[str, ...]) -> str:
    if len(loc) >= 2 and loc[0] in SECTIONS and loc[1].isdigit():
        rest = ".".join(loc[2:])
        return f"{loc[0]}[{loc[1]}]" + (f": {rest}" if rest else "")
    return ".".join(loc)


def _line(lines: Lines, loc: tuple[str, ...]) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None
