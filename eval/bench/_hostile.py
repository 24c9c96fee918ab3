"""Hostile input under load (issue #24, "Bad input under load"): while ordinary clients
call back to back through Bastion, one more client sends, back to back, a wide argument
(just under the 4 MiB body cap: ~2 million `0,` in one array) and a deep one (10,000
nested arrays), alternating. Each must be refused before any conversion, in bounded
time, and must never break the shared policy or verifier streams: the ordinary callers'
throughput, latency and errors during that slice are compared with the plain slice of
the same run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bastion._errors import UpstreamError
from bastion.eval.bench._fast_http import TOOL
from bastion.eval.bench._timing import percentile_us
from bastion.proxy._upstream import UpstreamPool

_TIMEOUT_S = 30.0
_HEAD = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"' + TOOL.encode() + b'","arguments":'
_TAIL = b',"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
#: ~4.0 MB, under the default 4 MiB body cap: the argument bounds, not the cap, refuse it.
WIDE = _HEAD + b'{"text":[' + b"0," * 1_999_999 + b"0]}" + _TAIL
#: 10,000 nested arrays: what a recursive converter or a naive JSON parser chokes on.
DEEP = _HEAD + b'{"text":' + b"[" * 10_000 + b"]" * 10_000 + b"}" + _TAIL
BODIES = {"wide": WIDE, "deep": DEEP}


@dataclass
class Attacker:
    """What the hostile client saw: how long each refusal took and what it answered."""

    samples: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in BODIES})
    answers: dict[str, dict[str, int]] = field(default_factory=lambda: {name: {} for name in BODIES})

    def figures(self) -> dict[str, Any]:
        return {
            name: {
                "sent": len(samples),
                "answers": self.answers[name],
                "p50_us": round(percentile_us(samples, 0.5), 1),
                "max_us": round(max(samples) * 1e6, 1) if samples else 0.0,
            }
            for name, samples in self.samples.items()
        }


async def attack(pool: UpstreamPool, headers: list[tuple[bytes, bytes]], stop: asyncio.Event, seen: Attacker) -> None:
    """Send the hostile bodies, alternating, back to back until `stop` is set, and each at
    least once: on a loaded machine the first wide body's refusal once outlasted `--quick`'s
    0.2 s slice, the deep one was never sent, and the run had no figure for it."""
    path = pool.path.encode()
    names = list(BODIES)
    turn = 0
    while not stop.is_set() or turn < len(names):
        name = names[turn % len(names)]
        turn += 1
        started = time.perf_counter()
        answer = await _answer(pool, path, headers, BODIES[name])
        seen.samples[name].append(time.perf_counter() - started)
        counts = seen.answers[name]
        counts[answer] = counts.get(answer, 0) + 1


async def _answer(pool: UpstreamPool, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> str:
    """`HTTP <status> <JSON-RPC error code>`, or what failed."""
    try:
        response = await pool.request(b"POST", path, headers, body)
        payload = await response.read(_TIMEOUT_S)
    except UpstreamError as exc:
        return f"no answer: {type(exc).__name__}"
    try:
        code = orjson.loads(payload).get("error", {}).get("code", "none")
    except (orjson.JSONDecodeError, AttributeError):
        code = "not JSON-RPC"
    return f"HTTP {response.status} {code}"
