"""Reading one YAML file: the data, the line of every key, and what is wrong with it.

The file is composed into nodes first (they carry line numbers), then constructed
with the safe loader. pyyaml keeps the last of two equal keys without a word; here a
key declared twice is a problem, since one of the two settings would be ignored.

A configuration file is small and shallow, so whatever is not is refused before the
document is built, in time proportional to the file's size:
- a file over `MAX_FILE_BYTES` is not parsed;
- nodes nested deeper than `MAX_DEPTH` stop the composer (pyyaml composes recursively:
  50,000 nested `[` died with a RecursionError);
- aliases may expand to at most `MAX_ALIAS_NODES` nodes in all (a "billion laughs"
  document is a few lines whose aliases expand to 10^9 nodes: everything that walks it
  as a tree, the key walk here and pydantic, would run for ever), and an alias may not
  point into the node that contains it (a cycle).
Every node's expanded size and height are computed as it is composed, so the refusal
comes at the first alias past the budget, never after expanding it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swapctl.config.errors import Problem, key_path

Lines = dict[tuple[str, ...], int]

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32  # the deepest key in a valid configuration is 5 levels down
MAX_ALIAS_NODES = 1000  # nodes reached through aliases, in all


class _Refused(yaml.YAMLError):
    """The document is too large to build: `message` says why and what to do."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, with a depth limit and an alias expansion budget (see above)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes reached through aliases so far
        self._shape: dict[int, tuple[int, int]] = {}  # id(node) -> (size, height)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            return self._alias(super().compose_node(parent, index), mark)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels: a configuration is a few "
                           "levels deep; check the brackets and the indentation there", mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._shape[id(node)] = _shape_of(node, self._shape)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # 2024-02-30, an int of 5,000 digits
            what = "a number too long to read" if "digits" in str(exc) else str(exc)
            raise _Refused(f"a value YAML cannot read ({what}): quote it if it is text, or "
                           "fix it", node.start_mark) from None

    def _alias(self, node: yaml.Node | None, mark: yaml.Mark) -> yaml.Node | None:
        shape = self._shape.get(id(node))
        if shape is None:
            raise _Refused("an alias to the node that contains it (a cycle): a configuration "
                           "is a tree; copy the values instead", mark)
        size, height = shape
        self._expanded += size
        if self._expanded > MAX_ALIAS_NODES:
            raise _Refused(f"aliases expand to more than {MAX_ALIAS_NODES} values (an alias "
                           "bomb?): write the values out, or alias fewer and smaller "
                           "blocks", mark)
        if self._depth + height > MAX_DEPTH:
            raise _Refused(f"this alias nests values deeper than {MAX_DEPTH} levels: check "
                           "what it points to", mark)
        return node


def _shape_of(node: yaml.Node, known: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(nodes in the tree the node stands for, its height), from its children's."""
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        return 1, 0
    shapes = [known.get(id(child), (1, 0)) for child in children]
    return 1 + sum(s for s, _ in shapes), 1 + max((h for _, h in shapes), default=0)


@dataclass(frozen=True, slots=True)
class Document:
    path: Path
    data: Any
    lines: Lines = field(default_factory=dict)


def read_yaml(path: Path) -> tuple[Document | None, list[Problem]]:
    """The document, or None and why it cannot be read; also any duplicate keys."""
    text, problem = _read_text(path)
    if text is None:
        return None, [problem] if problem else []
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        mark = exc.mark
        return None, [Problem(path, "", exc.message, mark.line + 1 if mark else None,
                              mark.column + 1 if mark else None)]
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_problem(path, exc)]
    except yaml.YAMLError as exc:
        return None, [Problem(path, "", f"YAML error: {exc}: fix the file")]
    finally:
        loader.dispose()
    lines: Lines = {}
    problems = list(_walk(path, node, (), lines)) if node is not None else []
    return Document(path, data, lines), problems


def _read_text(path: Path) -> tuple[str | None, Problem | None]:
    try:  # O_NONBLOCK: a FIFO named like a config file is refused, not waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, Problem(path, "", f"cannot read the file: {exc.strerror}: check the path "
                                       "and its permissions")
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, Problem(path, "", "not a regular file: move it away, or point "
                                           "--config-dir at the directory of the files")
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        return None, Problem(path, "", f"larger than {MAX_FILE_BYTES // 1024} KiB: a "
                                       "configuration file is a few KiB; is it the right "
                                       "file?")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, Problem(path, "", "cannot read the file: not UTF-8 text: check the path "
                                       "and its permissions")


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
