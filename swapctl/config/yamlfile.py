"""Reading one YAML file: the data, the line of every key, and what is wrong with it.

The file is composed into nodes first (they carry line numbers), then constructed
with the safe loader. pyyaml keeps the last of two equal keys without a word; here a
key declared twice is a problem, since one of the two settings would be ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swapctl.config.errors import Problem, key_path

Lines = dict[tuple[str, ...], int]


@dataclass(frozen=True, slots=True)
class Document:
    path: Path
    data: Any
    lines: Lines = field(default_factory=dict)


def read_yaml(path: Path) -> tuple[Document | None, list[Problem]]:
    """The document, or None and why it cannot be read; also any duplicate keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return None, [Problem(path, "", f"cannot read the file: {reason}: check the path "
                                        "and its permissions")]
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_problem(path, exc)]
    except yaml.YAMLError as exc:
        return None, [Problem(path, "", f"YAML error: {exc}: fix the file")]
    finally:
        loader.dispose()
    lines: Lines = {}
    problems = list(_walk(path, node, (), lines)) if node is not None else []
    return Document(path, data, lines), problems


def _syntax_problem(path: Path, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or "cannot parse"
    if exc.context:
        started = exc.context_mark
        where = f" (from line {started.line + 1}, column {started.column + 1})" \
            if started is not None and mark is not None and started.line != mark.line else ""
        what = f"{exc.context}{where}, {what}"
    message = (f"YAML syntax error: {what}: fix the syntax there (indentation, a missing ':' "
               "or space after it, an unclosed quote or bracket)")
    if mark is None:
        return Problem(path, "", message)
    return Problem(path, "", message, mark.line + 1, mark.column + 1)


def _walk(path: Path, node: yaml.Node, loc: tuple[str | int, ...],
          lines: Lines) -> Iterator[Problem]:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                yield Problem(path, key_path((*loc, key)),
                              f"declared twice (first on line {seen[key]}): keep one", line)
            seen[key] = line
            lines.setdefault(tuple(map(str, (*loc, key))), line)
            yield from _walk(path, value_node, (*loc, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault(tuple(map(str, (*loc, index))), item.start_mark.line + 1)
            yield from _walk(path, item, (*loc, index), lines)
