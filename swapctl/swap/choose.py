"""The one strategy selector, for swapctld and the standalone CLI alike. Pure.

    handoff   both releases speak the handoff protocol: every connection moves;
    takeover  the old release is legacy, the new one speaks it: the legacy relay's
              sockets are taken over (no client disconnected);
    bridge    the new release is legacy: both relays joined, clients move as they
              reconnect, those left at the drain deadline are cut (counted);
    restart   only when asked: every client of the old release is cut.
"""

from __future__ import annotations

from swapctl.errors import UsageError

CHOICES = ("auto", "handoff", "takeover", "bridge", "restart")


def best(old_legacy: bool, new_legacy: bool, old: str = "the old release",
         new: str = "the new release") -> tuple[str, str]:
    """The best strategy the two releases allow, and why."""
    if not old_legacy and not new_legacy:
        return "handoff", ("both releases speak the handoff protocol: no client is "
                           "disconnected, nothing is lost")
    if old_legacy and not new_legacy:
        return "takeover", (f"{old} is legacy and {new} speaks the handoff protocol: its "
                            "sockets are taken over, no client is disconnected (bytes "
                            "inside the legacy relay cannot move and are counted)")
    return "bridge", (f"{new} is legacy: a bridge between the two relays keeps every client "
                      "connected and loses nothing while clients move as they reconnect; "
                      "those left at the drain deadline (the soak window) are cut, counted")


def choose(old_legacy: bool, new_legacy: bool, asked: str = "auto",
           old: str = "the old release", new: str = "the new release") -> tuple[str, str]:
    """The strategy for old -> new (the best the two allow unless `asked`), and why; a
    strategy that does not fit the two releases is refused (UsageError)."""
    if asked not in CHOICES:
        raise UsageError(f"unknown strategy {asked!r}: use one of {', '.join(CHOICES)}")
    top, why = best(old_legacy, new_legacy, old, new)
    if asked in ("auto", top):
        return top, why
    if asked == "restart":
        return "restart", ("asked for: every client of the old release is disconnected and "
                           "reconnects to the new one")
    if asked == "bridge":
        return "bridge", ("asked for: a bridge between the two relays; clients move as they "
                          "reconnect, those left at the drain deadline are cut, counted")
    raise UsageError(f"--strategy {asked} does not fit {old} -> {new}: {why}; "
                     f"use --strategy {top}")
