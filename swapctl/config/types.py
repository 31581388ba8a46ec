"""Value types shared by the configuration models: durations, paths, names, modes.

Each is an `Annotated` type whose validator raises a `PydanticCustomError` with a
message written for the operator ("must be ..., e.g. ..."); `errors.py` puts the
file and the key in front of it.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

SOCKET_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
# The longest duration anything takes: a config key, a CLI option (`--soak`, `--timeout`)
# or a control API request. Longer is a typo (`soak: 99999999999999999999h` was accepted,
# and a soak of 1e308 s ran until aborted).
MAX_DURATION_S = 24 * 3600.0

MAX_COMMAND_WORDS = 1024

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(-?(?:\d+(?:\.\d+)?|\.\d+))\s*(ms|s|m|h)?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _fail(kind: str, message: str, **context: object) -> PydanticCustomError:
    return PydanticCustomError(f"swapctl_{kind}", message, context or None)


def parse_duration(value: object) -> float:
    """Seconds from `30s`, `250ms`, `2m`, `1h` or a bare number of seconds; positive and
    at most `MAX_DURATION_S`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail("duration", "must be a duration such as 30s, 250ms or 2m, not {value}",
                    value=str(value).lower() if isinstance(value, bool) else repr(value))
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise _fail("duration", "must be a duration such as 30s, 250ms or 2m, not {value}",
                        value=repr(value))
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    else:
        seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise _fail("duration", "must be a positive duration such as 30s or 250ms, not {value}",
                    value=value)
    if seconds > MAX_DURATION_S:
        raise _fail("duration", "must be at most {limit}, not {value}",
                    limit=format_duration(MAX_DURATION_S), value=value)
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of `parse_duration`, for docs and summaries: 0.25 -> 250ms, 30.0 -> 30s."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _absolute_path(value: object) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _fail("path", "must be an absolute path")
    if not value.startswith("/"):
        raise _fail("path", "must be an absolute path (starting with /), not {value}",
                    value=repr(value))
    return Path(value)


def _socket_path(path: Path) -> Path:
    size = len(str(path).encode())
    if size > SOCKET_PATH_MAX:
        raise _fail("socket_path", "is {size} bytes long: a Unix socket path is at most "
                    "{limit} bytes; choose a shorter one", size=size, limit=SOCKET_PATH_MAX)
    return path


def _command(value: object) -> list[str]:
    problem = "must be a non-empty list of strings (the argument list; no shell)"
    if isinstance(value, str):
        words = shlex.split(value) if value.strip() else []
        example = "[" + ", ".join(words) + "]" if words else None
        raise _fail("command", problem + ", not one string", **(
            {"example": example} if example else {}))
    if not isinstance(value, list) or not value:
        raise _fail("command", problem)
    if len(value) > MAX_COMMAND_WORDS:
        raise _fail("command", "has {count} words: at most {limit}; a longer argument list is "
                    "a mistake (or belongs in a file the release reads)", count=len(value),
                    limit=MAX_COMMAND_WORDS)
    for index, word in enumerate(value):
        if not isinstance(word, str) or not word:
            raise _fail("command", problem + ": item {index} is {word}",
                        index=index, word=repr(word))
    return value


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise _fail("name", "{value} is not a usable name: use letters, digits, '.', '_' "
                    "and '-' (it names supervisord programs and log files)", value=repr(value))
    return value


def _file_mode(value: object) -> int:
    hint = 'must be a quoted octal mode such as "0600"'
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        if isinstance(value, int) and not isinstance(value, bool):
            hint += " (unquoted, YAML reads 0600 as the number 384 and 600 as decimal)"
        raise _fail("mode", hint)
    mode = int(value, 8)
    if mode & 0o077:
        raise _fail("mode", "{value} lets group or others in: the control socket is "
                    'owner-only (the daemon checks the peer\'s uid); use "0600"', value=value)
    if not mode & 0o200:
        raise _fail("mode", '{value} is not writable by its owner, so nobody could connect; '
                    'use "0600"', value=value)
    return mode


def _listen(value: object) -> str:
    hint = "must be HOST:PORT such as 127.0.0.1:9464 (or null for no metrics endpoint)"
    if not isinstance(value, str):
        raise _fail("listen", hint)
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise _fail("listen", hint + ", not {value}", value=repr(value))
    return value


@dataclass(frozen=True, slots=True)
class Kind:
    """What a value type is called in docs/config.md (pydantic ignores this metadata)."""

    name: str


Duration = Annotated[float, BeforeValidator(parse_duration), Kind("duration: 30s, 250ms, 2m")]
AbsPath = Annotated[Path, BeforeValidator(_absolute_path), Kind("absolute path")]
SocketPath = Annotated[Path, BeforeValidator(_absolute_path), AfterValidator(_socket_path),
                       Kind(f"socket path (absolute, <= {SOCKET_PATH_MAX} bytes)")]
Command = Annotated[list[str], BeforeValidator(_command), Kind("argument list")]
Name = Annotated[str, AfterValidator(_name), Kind("name")]
FileMode = Annotated[int, BeforeValidator(_file_mode), Kind('quoted octal mode ("0600")')]
Listen = Annotated[str, BeforeValidator(_listen), Kind("HOST:PORT")]
