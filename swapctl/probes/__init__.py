"""Traffic probes: generated load, canary traffic and the loss auditor.

Pure parts (no I/O): `ident` (message identity), `traffic` (message generation),
`latency` (histogram), `tracker` and `audit` (classification). The I/O runner is
`load` (`LoadSession`, `run_load`) with its child processes in `publisher` and
`consumer`; `crowd` holds N idle client connections in a child process. `bulk` is
the benchmarks' high-throughput stream (prebuilt, compared by memcmp), judged by the
same `PublisherTrack` as the load.
"""
