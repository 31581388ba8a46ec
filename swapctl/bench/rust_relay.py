"""The Rust example relay (sdk/rust) as a relay under test in the benchmarks.

`bench handoff` and `bench relay` run it beside the Python reference relay. The binary
is built by scripts/ensure-tools (`./run test` calls it) into
sdk/rust/target/release/swapctl-example-relay of the checkout; `--rust-relay PATH` or
SWAPCTL_RUST_RELAY points elsewhere. A missing binary is the operator's to fix: a
UsageError (exit 2) that says how.
"""

from __future__ import annotations

import os
from pathlib import Path

from swapctl.errors import UsageError

ENV = "SWAPCTL_RUST_RELAY"
CHECKOUT_BINARY = (Path(__file__).resolve().parents[2] / "sdk" / "rust" / "target" / "release"
                   / "swapctl-example-relay")
RELAYS = ("python", "rust")


def default_binary() -> Path:
    """Where the binary is looked for without an option: SWAPCTL_RUST_RELAY, else the checkout."""
    return Path(os.environ.get(ENV) or CHECKOUT_BINARY)


def rust_relay_binary(path: str | Path | None = None) -> Path:
    """The example relay's binary (`path`, else `default_binary()`), checked to be runnable."""
    binary = Path(path) if path else default_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise UsageError(
            f"{binary}: the Rust example relay is not built (or not executable): build it "
            f"with scripts/ensure-tools (cargo build --release --offline in sdk/rust), point "
            f"--rust-relay or {ENV} at it, or measure the Python relay alone (--relay python)")
    return binary


def relays_asked(choice: str, rust_binary: Path | None = None) -> tuple[str, ...]:
    """`--relay python|rust|both` as the relay names to measure, in column order. A Rust
    binary named while the Rust relay is not measured is refused (exit 2), not ignored."""
    relays = RELAYS if choice == "both" else (choice,)
    if rust_binary is not None and "rust" not in relays:
        raise UsageError(f"--rust-relay {rust_binary} names the Rust relay's binary, but "
                         f"--relay {choice} does not measure it: drop --rust-relay, or ask "
                         "for --relay rust or both")
    return relays
