"""Benchmarks behind `swapctl bench`: each returns a report with the conditions it ran under.

report.py   conditions, percentiles, goals, text rendering (shared by every bench)
codec.py    `bench codec`: Framer parsing and message construction, in process
relay.py    `bench relay`: relay vs raw forwarder vs direct link (relay_report.py: its report)
stream.py   prebuilt benchmark traffic and exactness checks
loadgen.py  publisher/consumer processes (publisher.py, consumer.py); rawfwd.py the raw
            forwarder; procs.py child processes that never outlive a run
"""
