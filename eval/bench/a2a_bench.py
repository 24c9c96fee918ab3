"""A2A through Bastion vs direct: SendMessage latency, SendStreamingMessage time to first
and last event.

    bastion bench a2a [--calls 1000] [--streams 100] [--events 5] [--delay-ms 20] [--rounds 5]
                      [--out eval/results/a2a-<UTC time>.json]

One process: the a2a-sdk test agent (bastion.eval.a2a_agent, the agent the A2A tests
use) and the whole stack (policy, verifier, graph, the proxy with the agent in
bastion.yaml as `echo`), all on port 0, and a lean keep-alive HTTP/1.1 client per path
(JSON-RPC, A2A 1.0). The paths alternate for `--rounds` rounds so drift hits both.

* `send`: SendMessage answered whole (a task completed at once): p50/p99 direct and
  through `POST /a2a/echo`, governed (decided, scored, journaled) like any action.
* `stream`: SendStreamingMessage of `burst N MS`: the agent emits the task, `working`,
  N artifacts MS apart, then `completed`. Time to first event and to last event, from
  the request's first byte. A hop that buffered the stream would deliver its first event
  about (N-1)·MS late; a streaming hop adds the same small cost to both figures.

Prints a table and writes the figures as JSON (the table's numbers, in µs).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bastion._appconfig import AgentConfig, AppConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion._logging import configure_logging
from bastion.eval.a2a_agent import a2a_agent
from bastion.eval.bench._stack import stack
from bastion.eval.bench._timing import percentile_us, timed_batch
from bastion.proxy._upstream import UpstreamPool

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "eval" / "results"
CALLER = "a2a-bench"
PATHS = ("direct", "bastion")
POLICY = f"""\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {{name: a2a-bench, version: 1}}
spec:
  default: deny
  rules:
    - id: bench-sends
      match: {{agents: ["{CALLER}"], a2a: ["echo__SendMessage", "echo__SendStreamingMessage"]}}
      effect: allow
"""
# sse-starlette ends events with CRLF CRLF; any SSE line ending is accepted.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Params:
    calls: int = 1000
    streams: int = 100
    events: int = 5
    delay_ms: float = 20.0
    rounds: int = 5


def _rpc(method: str, text: str) -> bytes:
    message = {"messageId": "bench-1", "role": "ROLE_USER", "parts": [{"text": text}]}
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message}})


async def _stream_once(pool: UpstreamPool, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[float, float, int]:
    """(seconds to the first event, seconds to the last event, events) of one streamed send."""
    started = time.perf_counter()
    response = await pool.request(b"POST", pool.path.encode(), headers, body)
    if response.status != 200:
        raise SystemExit(f"stream answered HTTP {response.status}: {(await response.read())[:300]!r}")
    first = last = 0.0
    events = 0
    pending = b""
    async for chunk in response.stream(_TIMEOUT_S):
        now = time.perf_counter() - started
        *complete, pending = _EVENT_END.split(pending + chunk)
        for event in complete:
            if b"data:" not in event:
                continue  # a comment (keep-alive ping)
            if b'"error"' in event:
                raise SystemExit(f"stream failed: {event[:300]!r}")
            events += 1
            first = first or now
            last = now
    return first, last, events


def _figures(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_us": round(percentile_us(samples, 0.5), 1),
        "p99_us": round(percentile_us(samples, 0.99), 1),
    }


async def bench(params: Params) -> dict[str, Any]:
    """Both measurements, as the JSON document `main` writes."""
    # Whatever else runs on the machine shares its CPUs with every path measured here:
    # the load average is kept with the figures so a noisy run can be recognised.
    load_before = os.getloadavg()[0]
    send_samples: dict[str, list[float]] = {path: [] for path in PATHS}
    first: dict[str, list[float]] = {path: [] for path in PATHS}
    last: dict[str, list[float]] = {path: [] for path in PATHS}
    event_counts: dict[str, set[int]] = {path: set() for path in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        policy_file = home / "a2a-bench.yaml"
        policy_file.write_text(POLICY)
        async with a2a_agent() as agent:
            app = AppConfig(agents={"echo": AgentConfig(url=agent.url)}, policies=(policy_file,))
            async with stack(home, app) as proxy:
                common = [(b"content-type", b"application/json"), (b"a2a-version", b"1.0")]
                token = issue_token(ensure_dev_key(home), subject=CALLER)
                governed = [(b"authorization", f"Bearer {token}".encode()), (b"bastion-workflow-id", b"a2a-bench")]
                headers = {"direct": common, "bastion": common + governed}
                pools = {
                    "direct": UpstreamPool(f"{agent.url}/", timeout=_TIMEOUT_S),
                    "bastion": UpstreamPool(f"http://{proxy}/a2a/echo", timeout=_TIMEOUT_S),
                }
                send = _rpc("SendMessage", "hello")
                streamed = _rpc("SendStreamingMessage", f"burst {params.events} {params.delay_ms:g}")
                stream_headers = {path: [*headers[path], (b"accept", b"text/event-stream")] for path in PATHS}
                try:
                    for round_no in range(params.rounds):
                        for path in PATHS:
                            pool = pools[path]
                            # Warm-up, untimed: a fresh connection (idle ones expire after 2 s).
                            await timed_batch(pool, headers[path], send, 5)
                            calls = params.calls // params.rounds
                            send_samples[path] += await timed_batch(pool, headers[path], send, calls)
                            for _ in range(max(1, params.streams // params.rounds)):
                                to_first, to_last, events = await _stream_once(pool, stream_headers[path], streamed)
                                first[path].append(to_first)
                                last[path].append(to_last)
                                event_counts[path].add(events)
                        print(f"round {round_no + 1}/{params.rounds} done", file=sys.stderr)
                finally:
                    for pool in pools.values():
                        pool.close()
    result: dict[str, Any] = {
        "suite": "a2a",
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_1m": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "params": asdict(params),
        "send": {path: _figures(send_samples[path]) for path in PATHS},
        "stream": {
            path: {
                "events": sorted(event_counts[path]),
                "first_event": _figures(first[path]),
                "last_event": _figures(last[path]),
            }
            for path in PATHS
        },
    }
    result["send"]["added_p50_us"] = round(result["send"]["bastion"]["p50_us"] - result["send"]["direct"]["p50_us"], 1)
    for figure in ("first_event", "last_event"):
        added = result["stream"]["bastion"][figure]["p50_us"] - result["stream"]["direct"][figure]["p50_us"]
        result["stream"][f"added_{figure}_p50_us"] = round(added, 1)
    return result


def _table(result: dict[str, Any]) -> str:
    params = result["params"]
    lines = [
        f"A2A JSON-RPC, µs; SendMessage x{params['calls']}, SendStreamingMessage x{params['streams']} "
        f"(task, working, {params['events']} artifacts {params['delay_ms']:g} ms apart, completed)",
        f"{'':34} {'direct':>9} {'bastion':>9} {'added':>9}",
    ]
    rows = [
        ("SendMessage p50", result["send"], "p50_us"),
        ("SendMessage p99", result["send"], "p99_us"),
        ("stream first event p50", {p: result["stream"][p]["first_event"] for p in PATHS}, "p50_us"),
        ("stream first event p99", {p: result["stream"][p]["first_event"] for p in PATHS}, "p99_us"),
        ("stream last event p50", {p: result["stream"][p]["last_event"] for p in PATHS}, "p50_us"),
        ("stream last event p99", {p: result["stream"][p]["last_event"] for p in PATHS}, "p99_us"),
    ]
    for label, figures, key in rows:
        direct, governed = figures["direct"][key], figures["bastion"][key]
        lines.append(f"{label:34} {direct:9.0f} {governed:9.0f} {governed - direct:+9.0f}")
    counts = {path: result["stream"][path]["events"] for path in PATHS}
    lines.append(f"events per stream: direct {counts['direct']}, bastion {counts['bastion']}")
    load = result["machine"]["load_1m"]
    lines.append(f"load average (1 min) before {load['before']:.2f}, after {load['after']:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bastion bench a2a", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Params()
    parser.add_argument("--calls", type=int, default=defaults.calls, help="SendMessage per path, over all rounds")
    parser.add_argument("--streams", type=int, default=defaults.streams, help="streamed sends per path")
    parser.add_argument("--events", type=int, default=defaults.events, help="artifacts per stream")
    parser.add_argument("--delay-ms", type=float, default=defaults.delay_ms, help="between two artifacts")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--out", type=Path, help="JSON file (default eval/results/a2a-<UTC time>.json)")
    args = parser.parse_args(argv)
    params = Params(args.calls, args.streams, args.events, args.delay_ms, max(1, args.rounds))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or RESULTS / f"a2a-{stamp}.json"
    # The services' logs, formatted as in production, to /dev/null: their cost is counted.
    configure_logging("bench", "INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    result = uvloop.run(bench(params))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(_table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
