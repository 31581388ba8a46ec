"""Bulk traffic: the high-throughput stream the relay benchmarks push through a relay.

`stream` builds a deterministic stream of 74-byte messages and checks what arrived
(one memcmp per read while it matches; after that the load checker's `PublisherTrack`
judges every message); `publisher` writes it, `consumer` reads it, and `loadgen` runs
either side as a child process (`python -m swapctl.probes.bulk.loadgen`).
"""
