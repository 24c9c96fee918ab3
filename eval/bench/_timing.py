"""Timing one kind of request over a keep-alive connection: shared by the benchmarks and
scripts/latency_probe.py, so every figure is taken the same way."""

from __future__ import annotations

import time

from bastion.proxy._upstream import UpstreamPool


async def timed_batch(pool: UpstreamPool, headers: list[tuple[bytes, bytes]], body: bytes, n: int) -> list[float]:
    """Seconds each of `n` identical POSTs took, answer read whole; exits on a JSON-RPC error."""
    path = pool.path.encode()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = await pool.request(b"POST", path, headers, body)
        payload = await response.read()
        samples.append(time.perf_counter() - started)
        if b'"error"' in payload:
            raise SystemExit(f"request failed: {payload[:300]!r}")
    return samples


def percentile_us(samples: list[float], q: float) -> float:
    """The `q` quantile (nearest rank, no interpolation) of `samples` in seconds, in µs;
    0.0 for none (the figure beside it says how many there were)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6
