"""Scenario files (YAML): a topology and a list of steps, generators or explicit bytes.

    name: split-then-garbage            # default: the file name
    description: what it shows
    seed: 7                             # used when --seed is not given
    clients:                            # default: the standard topology
      - {name: adapter-1, role: publisher}
      - {name: dashboard, role: consumer}
      - {name: late, role: consumer, at_start: false}
    steps:
      - identify                        # a generator with its defaults
      - mix: {messages: 50}             # a generator with parameters
      - write: {client: adapter-1, messages: [trade, quote], split: [10, 40]}
      - write: {client: adapter-1, hex: "efbeadde"}    # or text: "ping\\n"
      - connect: late
      - disconnect: late
      - pause: slow
      - resume: slow
      - settle

Generators are those of the built-in scenarios (swapctl.scenarios.generators); errors
name the file and the step (`scenarios/x.yaml: steps[3].write: ...`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml

from swapctl.errors import UsageError
from swapctl.scenarios.builtin import run_call
from swapctl.scenarios.generators import GENERATORS, Builder
from swapctl.scenarios.model import Client, Connect, Disconnect, Pause, Resume, Role, Scenario
from swapctl.scenarios.traffic import MESSAGE_KINDS

_TOP = {"name", "description", "seed", "clients", "steps"}
_WRITE = {"client", "hex", "text", "messages", "split", "wait"}
_ONE_CLIENT: dict[str, type[Connect | Disconnect | Pause | Resume]] = {
    "connect": Connect, "disconnect": Disconnect, "pause": Pause, "resume": Resume}


def load(path: Path, seed: int | None, domain_byte: int) -> Scenario:
    """The scenario in `path` for `seed` (the file's own seed if None, else 1)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read scenario file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a mapping with name, clients and steps")
    unknown = set(doc) - _TOP
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"use {', '.join(sorted(_TOP))}")
    file_seed = doc.get("seed", 1)
    if not isinstance(file_seed, int):
        raise UsageError(f"{path}: seed: expected an integer, got {file_seed!r}")
    builder = Builder(str(doc.get("name", path.stem)), file_seed if seed is None else seed,
                      domain_byte)
    if "clients" in doc:
        builder.clients = _clients(path, doc["clients"])
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise UsageError(f"{path}: steps: expected a non-empty list")
    for index, step in enumerate(steps):
        _step(builder, step, f"{path}: steps[{index}]")
    try:
        return builder.build(str(doc.get("description", "")), {})
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _clients(path: Path, raw: Any) -> list[Client]:
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{path}: clients: expected a non-empty list")
    out = []
    roles = ", ".join(r.value for r in Role)
    for index, item in enumerate(raw):
        where = f"{path}: clients[{index}]"
        if not isinstance(item, dict) or "name" not in item or "role" not in item:
            raise UsageError(f"{where}: expected {{name: ..., role: ...}}")
        try:
            role = Role(item["role"])
        except ValueError:
            raise UsageError(f"{where}.role: {item['role']!r} is not one of {roles}") from None
        out.append(Client(str(item["name"]), role, bool(item.get("at_start", True))))
    return out


def _step(b: Builder, step: Any, where: str) -> None:
    if isinstance(step, str):
        step = {step: {}}
    if not isinstance(step, dict) or len(step) != 1:
        raise UsageError(f"{where}: expected one key (a generator, write, connect, ...)")
    ((key, value),) = step.items()
    if key == "settle":
        b.settle()
    elif key in _ONE_CLIENT:
        if not isinstance(value, str):
            raise UsageError(f"{where}.{key}: expected a client name")
        b.steps.append(_ONE_CLIENT[key](value))
    elif key == "write":
        _write(b, value, f"{where}.write")
    elif key in GENERATORS:
        if not isinstance(value, dict):
            raise UsageError(f"{where}.{key}: expected a mapping of parameters")
        try:
            run_call(b, key, dict(value))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    else:
        raise UsageError(f"{where}: unknown step {key!r}; use settle, write, connect, "
                         f"disconnect, pause, resume or a generator: "
                         f"{', '.join(sorted(GENERATORS))}")


def _write(b: Builder, spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or "client" not in spec:
        raise UsageError(f"{where}: expected a mapping with client and hex, text or messages")
    unknown = set(spec) - _WRITE
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"use {', '.join(sorted(_WRITE))}")
    client = str(spec["client"])
    data = b""
    try:
        data += bytes.fromhex(str(spec.get("hex", "")))
    except ValueError as exc:
        raise UsageError(f"{where}.hex: {exc}") from None
    data += str(spec.get("text", "")).encode()
    for kind in spec.get("messages", []):
        if kind not in MESSAGE_KINDS:
            raise UsageError(f"{where}.messages: unknown kind {kind!r}; use "
                             f"{', '.join(MESSAGE_KINDS)}")
        data += b.traffic.named(kind, b.source(client))
    if not data:
        raise UsageError(f"{where}: nothing to write (give hex, text or messages)")
    cuts = spec.get("split", [])
    if not isinstance(cuts, list) or not all(isinstance(c, int) and 0 < c < len(data)
                                             for c in cuts):
        raise UsageError(f"{where}.split: expected offsets between 1 and {len(data) - 1}")
    points = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(points):
        b.write(client, data[start:end], bool(spec.get("wait", True)))
