"""`swapctl conformance`: the handoff protocol's conformance suite, run against any relay
command (docs/handoff-protocol.md; docs/conformance.md for the operator's view).

swapctl plays the orchestrator (the real controller and wire code): it starts the
command with SWAPCTL_HANDOFF and friends set, and checks every message, deadline and
failure case of the protocol, plus the frame semantics every relay must keep (whole
frames, echo to the sender, broadcast in one order). Cases are in cases.py (start-up,
frames) and handoff_cases.py (handoff, failures); suite.py runs and renders them.
"""
