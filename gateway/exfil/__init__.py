"""Exfiltration detection at the gateway: the state and policy around the scanning engine.

`gateway.detect` finds things in bytes; this package knows sessions, hosts and
time: what a session's known values are (`known.py`), which hits count and
what to do about them (`verdict.py`), values split over several requests
(`split.py`) and upload budgets (`budget.py`). Nothing here imports mitmproxy:
`gateway/addons/detection.py` is the only place these meet a flow.
"""
