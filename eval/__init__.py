"""bastion.eval — efficacy and performance harnesses (`bastion bench`, `bastion eval`).

Not built yet: they arrive with the benchmark issue. `scripts/latency_probe.py` gives a
rough same-run figure of the proxy's added latency meanwhile.
"""
