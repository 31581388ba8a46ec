"""The root of every error swapctl raises on purpose.

Errors are translated to exit codes and operator messages only at the CLI boundary.
Each carries a message that says what failed, where, and what to do next.
"""


class SwapctlError(Exception):
    """Base class for every error swapctl raises deliberately."""


class UsageError(SwapctlError):
    """The operator asked for something that cannot work (bad option, bad path)."""
