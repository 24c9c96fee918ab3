"""Rough added latency of the proxy against a running stack (e.g. `make up`).

    .venv/bin/python scripts/latency_probe.py [--calls 500] [--proxy URL] [--upstream URL]

Sends the same 2026-07 stateless MCP request to the upstream directly and through
Bastion, alternating batches in one run over keep-alive connections, and prints the
p50/p99 of each and the difference: `tools/call add` (the full governed path: auth,
Decide + Score, journal, forward) and `tools/list` (not yet governed, so
pass-through: auth, journal, forward).
This is a probe, not the benchmark: `bastion bench` (eval/) is the rigorous one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections.abc import Mapping

import orjson
import uvloop

from bastion.eval.bench._timing import timed_batch as _batch
from bastion.proxy._upstream import UpstreamPool

_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def _request(method: str, params: Mapping[str, object]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": _META}})
    headers = [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", method.encode()),
    ]
    if "name" in params:
        headers.append((b"mcp-name", str(params["name"]).encode()))
    return body, headers


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3


async def _probe(args: argparse.Namespace, token: str) -> None:
    direct = UpstreamPool(args.upstream, timeout=10)
    proxied = UpstreamPool(args.proxy, timeout=10)
    auth = [(b"authorization", f"Bearer {token}".encode()), (b"bastion-workflow-id", b"latency-probe")]
    for label, method, params in (
        ("tools/call", "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}),
        ("tools/list", "tools/list", {}),
    ):
        body, headers = _request(method, params)
        await _batch(direct, headers, body, 50)  # warm up both paths
        await _batch(proxied, headers + auth, body, 50)
        a: list[float] = []
        b: list[float] = []
        for _ in range(10):
            a += await _batch(direct, headers, body, args.calls // 10)
            b += await _batch(proxied, headers + auth, body, args.calls // 10)
        added = (statistics.median(b) - statistics.median(a)) * 1e3
        print(
            f"{label:10s} direct p50 {_pct(a, 0.5):.2f} ms p99 {_pct(a, 0.99):.2f} ms | "
            f"via Bastion p50 {_pct(b, 0.5):.2f} ms p99 {_pct(b, 0.99):.2f} ms | added p50 {added:.2f} ms"
        )
    direct.close()
    proxied.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--proxy", default="http://127.0.0.1:7070/mcp/demo")
    parser.add_argument("--upstream", default="http://127.0.0.1:9001/mcp")
    parser.add_argument("--token", help="agent JWT (default: `bastion token issue --agent latency-probe`)")
    args = parser.parse_args()
    token = (
        args.token
        or subprocess.run(
            [sys.executable, "-m", "bastion", "token", "issue", "--agent", "latency-probe"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    uvloop.run(_probe(args, token))


if __name__ == "__main__":
    main()
