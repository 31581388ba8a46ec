"""swapctl: zero-downtime swaps of Protocol V2 message relays."""

__version__ = "0.1.0"
