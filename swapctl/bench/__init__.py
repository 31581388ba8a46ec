"""Benchmarks behind `swapctl bench`: each returns a report with the conditions it ran under.

report.py   conditions, percentiles, goals, text rendering (shared by every bench)
codec.py    `bench codec`: Framer parsing and message construction, in process
relay.py    `bench relay`: relay vs raw forwarder vs direct link (relay_report.py: its report)
rawfwd.py   the raw forwarder; procs.py child processes that never outlive a run
The traffic (prebuilt stream, publisher/consumer processes, exactness checks) is
swapctl/probes/bulk/, judged by the load checker's own tracker.
"""
