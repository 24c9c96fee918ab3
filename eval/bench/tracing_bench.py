"""What tracing and the access log cost per governed `tools/call`.

    .venv/bin/python -m eval.bench.tracing_bench [--calls 2000] [--rounds 5]

Two measurements in one run:

* `hooks`: the exact work the adapter and the enforcer add to every request when both
  features are off (the shared no-op `RequestTrace` and the two `stage()` blocks), next
  to the same hooks on the OpenTelemetry API's own no-op tracer (non-recording spans)
  and on the SDK with a batch exporter — in-process, no network, ns per request.
* `e2e`: policy, verifier, graph and the proxy in this process (their real `serve()`),
  the demo MCP server as a subprocess, a stand-in OTLP collector (a real gRPC server
  implementing TraceService that counts spans, on a thread here), and a keep-alive
  client. The proxy is restarted for each configuration — off, tracing, access log,
  both — and the configurations alternate for `--rounds` rounds; p50/p99 per config and
  the difference from `off`. Everything shares one CPU budget with the client, so the
  differences are the added CPU per call; the collector's own work is counted too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import orjson
import uvloop
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion._logging import configure_logging
from bastion.eval.bench._stack import serving as _serving
from bastion.eval.bench._timing import percentile_us as _pct
from bastion.eval.bench._timing import timed_batch as _batch
from bastion.graph import GraphSettings
from bastion.graph import serve as graph_serve
from bastion.policy import PolicySettings
from bastion.policy import serve as policy_serve
from bastion.proxy import ProxySettings
from bastion.proxy import serve as proxy_serve
from bastion.proxy._tracing import Tracing
from bastion.proxy._upstream import UpstreamPool
from bastion.verifier import VerifierSettings
from bastion.verifier import serve as verifier_serve

ROOT = Path(__file__).resolve().parents[2]
ANY = "127.0.0.1:0"
_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
CONFIGS = ("off", "tracing", "access-log", "both")


# -- hooks: the per-request work in-process -------------------------------------------


def _hook_cost(tracing: Tracing, n: int) -> float:
    """ns per request for the hook sequence of one allowed tools/call."""
    from bastion.proxy._mcp import parse_message

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/mcp/demo", "headers": []}
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "_meta": _META}})
    message = parse_message(body)

    async def send(message: Any) -> None:
        return None

    start = time.perf_counter_ns()
    for _ in range(n):
        request = tracing.request(scope, "demo")
        try:
            request.watch(send)
            request.message(message)
            with tracing.stage("bastion.decide"):
                pass
            with tracing.stage("bastion.journal"):
                pass
        finally:
            request.finish()
    return (time.perf_counter_ns() - start) / n


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _api_noop(tracer: trace.Tracer, n: int) -> float:
    """The alternative: always ask the OpenTelemetry API, whose no-op tracer hands out
    non-recording spans (what an instrumented app pays with no SDK installed)."""
    start = time.perf_counter_ns()
    for _ in range(n):
        server = tracer.start_span("tools/call add", kind=trace.SpanKind.SERVER, attributes={"mcp.method.name": "x"})
        tool = tracer.start_span("execute_tool add", context=trace.set_span_in_context(server))
        with tracer.start_as_current_span("bastion.decide"):
            pass
        with tracer.start_as_current_span("bastion.journal"):
            pass
        tool.set_attributes({"bastion.decision.effect": "ALLOW"})
        tool.end()
        server.end()
    return (time.perf_counter_ns() - start) / n


def bench_hooks(n: int) -> None:
    sdk = TracerProvider(shutdown_on_exit=False)
    sdk.add_span_processor(BatchSpanProcessor(_Drop()))
    rows: dict[str, Callable[[], float]] = {
        "off (shared no-op RequestTrace)": lambda: _hook_cost(Tracing(), n),
        "OTel API no-op tracer (non-recording spans)": lambda: _api_noop(trace.NoOpTracer(), n),
        "tracing on (SDK, batch processor, exporter drops)": lambda: _hook_cost(Tracing(sdk), n),
    }
    for label, run in rows.items():
        run()  # warm up
        best = min(run() for _ in range(5))
        print(f"hooks  {label:52s} {best / 1000:8.2f} µs/request")
    sdk.shutdown()


# -- e2e: the real proxy --------------------------------------------------------------


class _Counter(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        count = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def _collector() -> Iterator[tuple[_Counter, str]]:
    counter = _Counter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield counter, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def _upstream(workdir: Path) -> Iterator[str]:
    port_file = workdir / "demo.port"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo_server.py"), "--port", "0", "--port-file", str(port_file)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the demo server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def bench_e2e(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, _collector() as (counter, endpoint), _upstream(Path(tmp)) as url:
        home = Path(tmp)
        app = AppConfig(
            servers={"demo": ServerConfig(url=url)}, policies=(ROOT / "examples" / "policies" / "demo.yaml",)
        )
        token = issue_token(ensure_dev_key(home), subject="tracing-bench")
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 1, "b": 2}, "_meta": _META},
            }
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"mcp-protocol-version", b"2026-07-28"),
            (b"mcp-method", b"tools/call"),
            (b"mcp-name", b"add"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"bastion-workflow-id", b"tracing-bench"),
        ]
        samples: dict[str, list[float]] = {name: [] for name in CONFIGS}
        async with (
            _serving(policy_serve, PolicySettings(home=home, policy_grpc_addr=ANY, policy_addr=ANY), app) as pol,
            _serving(verifier_serve, VerifierSettings(home=home, verifier_addr=ANY), app) as ver,
            _serving(
                graph_serve,
                GraphSettings(home=home, graph_addr=ANY, graph_grpc_addr=ANY, policy_grpc_addr=pol["grpc"]),
                app,
            ) as gra,
        ):
            for round_no in range(rounds):
                for name in CONFIGS:
                    if name in ("tracing", "both"):
                        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
                    else:
                        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
                    settings = ProxySettings(
                        home=home,
                        proxy_addr=ANY,
                        policy_grpc_addr=pol["grpc"],
                        verifier_addr=ver["grpc"],
                        graph_grpc_addr=gra["grpc"],
                        access_log=name in ("access-log", "both"),
                    )
                    async with _serving(proxy_serve, settings, app) as prx:
                        pool = UpstreamPool(f"http://{prx['http']}/mcp/demo", timeout=10)
                        await _batch(pool, headers, body, 100)  # warm up: catalog, streams, connection
                        samples[name] += await _batch(pool, headers, body, calls // rounds)
                        pool.close()
                print(f"round {round_no + 1}/{rounds} done", file=sys.stderr)
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        base = statistics.median(samples["off"])
        for name in CONFIGS:
            got = samples[name]
            added = (statistics.median(got) - base) * 1e6
            print(
                f"e2e    {name:11s} p50 {_pct(got, 0.5):7.0f} µs  p99 {_pct(got, 0.99):7.0f} µs  "
                f"vs off p50 {added:+6.0f} µs  (n={len(got)})"
            )
        print(f"e2e    collector received {counter.spans} spans")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bastion bench tracing", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--calls", type=int, default=2000, help="governed calls per configuration, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hook-iterations", type=int, default=20000)
    args = parser.parse_args(argv)
    # The services' logs and the access log, formatted as in production, to /dev/null.
    configure_logging("bench", "INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    bench_hooks(args.hook_iterations)
    uvloop.run(bench_e2e(args.calls, args.rounds))


if __name__ == "__main__":
    main()
