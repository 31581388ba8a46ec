"""Configuration problems, worded for the operator: file, key, what is wrong, what is right.

`translate` turns pydantic's error list into `Problem`s. pydantic says where (its
`loc` is our key path) and what kind of mistake; the model says what would be right
(the field's example, the names of the keys or choices allowed there).
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from swapctl.errors import UsageError

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    file: Path
    key: str  # dotted key path, "" for the whole file
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        at = ""
        if self.line:
            at = f" (line {self.line}" + (f", column {self.column})" if self.column else ")")
        return where + self.message + at

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.file), "key": self.key, "line": self.line,
                "column": self.column, "message": self.message, "text": str(self)}


class ConfigError(UsageError):
    """The configuration is not valid; `problems` lists every mistake found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        super().__init__("\n".join(map(str, self.problems))
                         + f"\n{count} configuration error{'s' * (count != 1)}")


class BrokenService(ConfigError):
    """A request for the one service whose file is not valid (the others are served)."""

    def __init__(self, service: str, problems: Sequence[Problem]) -> None:
        super().__init__(problems)
        self.service = service
        self.args = (f"{service} cannot be used: its configuration is not valid (the other "
                     f"services are not affected):\n{self.args[0]}; fix it (`swapctl config "
                     f"check`), then restart swapctld (its relays keep serving)",)


class UnknownService(UsageError):
    """No such service in the configuration (exit 4, not 2: README.md, exit codes)."""


def key_path(loc: Sequence[str | int]) -> str:
    """('releases', 'v2', 'command', 0) -> 'releases.v2.command[0]'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


_EXPECTED = {
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "float_type": "a number", "float_parsing": "a number", "int_type": "a whole number",
    "int_parsing": "a whole number", "list_type": "a list", "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
    "path_type": "a path",
}


# the message already says what would be right
_NO_EXAMPLE = ("extra_forbidden", "enum", "literal_error", "swapctl_legacy", "swapctl_active",
               "swapctl_name", "swapctl_mode", "swapctl_env")


def translate(exc: ValidationError, model: type[BaseModel], file: Path,
              lines: Mapping[tuple[str, ...], int], names: Mapping[str, str]) -> list[Problem]:
    """One `Problem` per pydantic error; `names` fills {service}/{release} in examples."""
    problems = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        field, annotation = _field_at(model, loc)
        message = _message(error, loc, model, annotation)
        example = (error.get("ctx") or {}).get("example") or _example(field, loc, names)
        if example and error["type"] == "missing":
            message += f", e.g. {loc[-1]}: {example}"
        elif example and not _has_example(message) and error["type"] not in _NO_EXAMPLE:
            message += f", e.g. {example}"
        if loc and loc[-1] == "[key]":  # the name of a dict entry, not its value
            loc, message = loc[:-1], f"as a name, {message}"
        problems.append(Problem(file, key_path(loc), message, _line(lines, loc)))
    return problems


def _has_example(message: str) -> bool:
    return "e.g." in message or "such as" in message


def _message(error: Any, loc: Loc, model: type[BaseModel], annotation: Any) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "required, but missing: add it"
    if kind == "extra_forbidden":
        known = _keys_at(model, loc[:-1])
        return (f"unknown key{did_you_mean(str(loc[-1]), known)}: "
                f"the keys here are {', '.join(known)}")
    if kind in ("enum", "literal_error"):
        choices = _choices(annotation)
        return (f"must be one of {', '.join(choices)}, not {value!r}"
                f"{did_you_mean(str(value), choices)}")
    if kind in _EXPECTED:
        message = f"must be {_EXPECTED[kind]}, not {_describe(value)}"
        keys = _keys_at(model, loc) if not loc else []
        return message + (f": the keys are {', '.join(keys)}" if keys else "")
    if kind == "finite_number":
        return f"must be a finite number, not {value}"
    if kind == "too_short":
        return f"must not be empty (at least {error['ctx']['min_length']})"
    if kind in ("greater_than_equal", "greater_than"):
        bound = error["ctx"].get("ge", error["ctx"].get("gt"))
        return f"must be at least {bound:g}, not {value}"
    if kind in ("less_than_equal", "less_than"):
        bound = error["ctx"].get("le", error["ctx"].get("lt"))
        return f"must be at most {bound:g}, not {value}"
    if kind == "too_long":
        return (f"has {error['ctx'].get('actual_length', 'too many')} items: at most "
                f"{error['ctx']['max_length']}")
    if kind == "string_too_long":
        return f"is too long: at most {error['ctx']['max_length']} characters"
    return str(error["msg"])


def _describe(value: Any) -> str:
    if value is None:
        return "null (empty)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _line(lines: Mapping[tuple[str, ...], int], loc: Loc) -> int | None:
    path = tuple(str(part) for part in loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _strip(annotation: Any) -> Any:
    """Unwrap Annotated[...] and X | None down to the type that matters."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        else:
            return annotation


def _field_at(model: type[BaseModel], loc: Loc) -> tuple[FieldInfo | None, Any]:
    """The field a location names (through dicts and lists), and its annotation."""
    current: Any = model
    field: FieldInfo | None = None
    for part in loc:
        current = _strip(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None, None
            current = field.annotation
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif origin is list:
            current = typing.get_args(current)[0]
        else:
            return field, current
    return field, _strip(current)


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    _, annotation = _field_at(model, loc)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _choices(annotation: Any) -> list[str]:
    annotation = _strip(annotation)
    if typing.get_origin(annotation) is list:
        annotation = _strip(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(member.value) for member in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return []


def _example(field: FieldInfo | None, loc: Loc, names: Mapping[str, str]) -> str | None:
    if field is None or not field.examples:
        return None
    values = dict(names)
    if len(loc) > 1 and loc[0] == "releases":
        values["release"] = str(loc[1])
    return fill(str(field.examples[0]), values)


def fill(example: str, names: Mapping[str, str]) -> str:
    """Put the service and release names into an example: {service} -> market_data."""
    for name, value in names.items():
        example = example.replace("{" + name + "}", value)
    return example
