"""The built-in scenarios: one per edge case that separates real relay builds, a realistic
mix, a soak, and `ci`, the standard scenario that runs them all (but the soak).

Every scenario starts with the standard topology (two adapters that read their echo,
a dashboard and a strategy consumer, a silent publisher that never reads) and the
publishers' identification headers; generators add the clients they need.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from swapctl.errors import UsageError
from swapctl.scenarios.generators import GENERATORS, Builder
from swapctl.scenarios.model import Scenario

Call = tuple[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Builtin:
    description: str
    calls: tuple[Call, ...]
    tunable: str = ""  # the generator whose parameters NAME:key=value sets


BUILTIN: dict[str, Builtin] = {
    "mix": Builtin("a realistic mix: trades, quotes, signals, order books, extended TLVs",
                   (("mix", {}),), "mix"),
    "split": Builtin("messages split across writes, byte by byte included", (("split", {}),),
                     "split"),
    "coalesced": Builtin("many messages in one write", (("coalesced", {}),), "coalesced"),
    "garbage": Builtin("garbage and non-Protocol bytes around valid messages",
                       (("garbage", {}),), "garbage"),
    "wrong-domain": Builtin("messages of other domains, alone and with valid ones",
                            (("wrong-domain", {}),), "wrong-domain"),
    "truncated": Builtin("truncated messages, then disconnect or a new message",
                         (("truncated", {}),), "truncated"),
    "oversize": Builtin("a header declaring over 1 MiB, and the largest legal message",
                        (("oversize", {}),), "oversize"),
    "slow-consumer": Builtin("a consumer that stops reading, then catches up",
                             (("slow-consumer", {}),), "slow-consumer"),
    "churn": Builtin("clients connecting and disconnecting mid-stream", (("churn", {}),),
                     "churn"),
    "soak": Builtin("high rate: 100,000 trades in bursts from two adapters",
                    (("soak", {}),), "soak"),
    "ci": Builtin("the standard CI scenario: every edge case and a mix, no soak", (
        ("mix", {"messages": 120}), ("split", {"messages": 12}), ("coalesced", {"writes": 4}),
        ("garbage", {"writes": 8}), ("wrong-domain", {"messages": 12}), ("truncated", {}),
        ("oversize", {}), ("slow-consumer", {"writes": 400}), ("churn", {"cycles": 4}),
        ("mix", {"messages": 40}))),
}


def names() -> list[str]:
    return sorted(BUILTIN)


def build(name: str, seed: int, domain_byte: int, params: dict[str, int] | None = None
          ) -> Scenario:
    """The built-in scenario `name` for `seed`; `params` tune its main generator."""
    spec = BUILTIN.get(name)
    if spec is None:
        raise UsageError(f"unknown scenario {name!r}: built-in scenarios are "
                         f"{', '.join(names())}, or give a YAML file")
    params = params or {}
    if params and not spec.tunable:
        raise UsageError(f"scenario {name} takes no parameters")
    builder = Builder(name, seed, domain_byte)
    run_call(builder, "identify", {})
    for generator, defaults in spec.calls:
        given = params if generator == spec.tunable else {}
        run_call(builder, generator, {**defaults, **given})
    return builder.build(spec.description, params)


def run_call(builder: Builder, generator: str, params: dict[str, int]) -> None:
    """Run one generator, turning a bad parameter into an operator's error."""
    func = GENERATORS.get(generator)
    if func is None:
        raise UsageError(f"unknown generator {generator!r}: use one of "
                         f"{', '.join(sorted(GENERATORS))}")
    accepted = [p for p in inspect.signature(func).parameters if p != "b"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UsageError(f"generator {generator}: unknown parameter(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(accepted) or 'none'}")
    bad = [k for k, v in params.items() if not isinstance(v, int) or v < 0]
    if bad:
        raise UsageError(f"generator {generator}: {', '.join(bad)} must be integers >= 0")
    func(builder, **params)


def parse_spec(text: str) -> tuple[str, dict[str, int]]:
    """`NAME` or `NAME:key=value,key=value` (integer values) from the command line."""
    name, _, rest = text.partition(":")
    params: dict[str, int] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not value.strip().lstrip("-").isdigit():
            raise UsageError(f"scenario {text!r}: parameters are key=integer, got {part!r}")
        params[key.strip().replace("-", "_")] = int(value)
    return name, params
