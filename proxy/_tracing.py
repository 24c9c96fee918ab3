"""What the proxy tells operators about each request: OpenTelemetry spans and the access log.

`Tracing` is built once (`_server.py`); the MCP adapter asks it for a `RequestTrace` per
HTTP request and calls a handful of hooks on it (message parsed, decided, forwarded,
result, finished). Both features are off by default, and then every hook is a method of
one shared no-op object: no span, no context switch, no dict — the hot path pays a few
attribute lookups (see eval/bench/tracing_bench.py for the figures).

Spans follow the OpenTelemetry GenAI/MCP semantic conventions
(open-telemetry/semantic-conventions-genai, docs/gen-ai/mcp.md and execute-tool.md):

    {mcp.method.name} {target}   SERVER  e.g. `tools/call add`; parent from params._meta
     └─ execute_tool {tool}      INTERNAL tools/call only: the decision and the execution
         ├─ bastion.decide       policy + verifier (the enforcer's decision stage)
         ├─ bastion.journal      the durable append before forwarding
         └─ POST                 CLIENT   the upstream exchange (HTTP conventions)

Trace context comes from `params._meta.traceparent`/`tracestate` (the MCP convention),
else from the HTTP `traceparent` header, which is then kept as a link. The proxy never
rewrites the body it forwards, so the upstream learns the proxy's span through the HTTP
`traceparent` header of the upstream request instead of `params._meta`.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; the
SDK reads those, `OTEL_SERVICE_NAME` (default here `bastion-proxy`), the sampler and
batch variables itself. The access log (`BASTION_ACCESS_LOG`) writes one JSON line per
request on the logger `bastion.proxy.access`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bastion._errors import UpstreamError, UpstreamTimeout
from bastion.v1 import graph_pb2, policy_pb2

from ._asgi import Headers, Message, Scope, Send

if TYPE_CHECKING:
    from ._enforcer import Decided
    from ._mcp import Message as McpMessage
    from ._recorder import Record
    from ._upstream import UpstreamPool

log = logging.getLogger("bastion.proxy")
access_log = logging.getLogger("bastion.proxy.access")

DEFAULT_SERVICE_NAME = "bastion-proxy"
#: Span names of the enforcer's stages.
DECIDE_SPAN = "bastion.decide"
JOURNAL_SPAN = "bastion.journal"
#: How long stopping the proxy waits for the last spans to be exported.
SHUTDOWN_S = 5.0
# W3C trace context only: it is what the MCP convention's examples and the upstream's
# HTTP header carry; a client's `baggage` is forwarded untouched, never re-injected.
_W3C = TraceContextTextMapPropagator()
_TRACE_KEYS = ("traceparent", "tracestate")
# A traceparent is 55 characters and a tracestate at most 32 members of ~256: anything
# longer is not a trace context, and a hostile client must not make us parse it.
_MAX_TRACE_VALUE = 8192
# MCP limits tool and prompt names to 128 characters; a longer one is not a name to put
# in a span name (span names must stay low-cardinality).
_MAX_TARGET = 128
_NAMED = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
_RESULT_OUTCOMES = {
    graph_pb2.COMPLETED: "forwarded",
    graph_pb2.UPSTREAM_ERROR: "upstream_error",
    graph_pb2.TIMEOUT: "timeout",
    graph_pb2.CLIENT_GONE: "client_gone",
}


class Tracing:
    """Spans (when an OTLP endpoint is configured) and the access log (when asked for)."""

    def __init__(self, provider: TracerProvider | None = None, *, access_log: bool = False) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("bastion.proxy") if provider is not None else None
        self.access_log = access_log

    @classmethod
    def from_env(cls, *, access_log: bool, environ: Mapping[str, str] = os.environ) -> Tracing:
        """Tracing on when the standard OTLP endpoint variable is set (and the SDK not disabled)."""
        endpoint = environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or environ.get(OTEL_EXPORTER_OTLP_ENDPOINT)
        if not endpoint or environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
            return cls(access_log=access_log)
        # Imported only when used: the exporter pulls in its own gRPC/protobuf modules.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # The SDK reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; ours is only the default.
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing on: spans exported over OTLP/gRPC", extra={"fields": {"endpoint": endpoint}})
        return cls(provider, access_log=access_log)

    def request(self, scope: Scope, server: str) -> RequestTrace:
        """The watcher of one HTTP request: the shared no-op when both features are off."""
        if self.tracer is None and not self.access_log:
            return OFF
        return _Watched(self.tracer, self.access_log, scope, server)

    def stage(self, name: str) -> AbstractContextManager[object]:
        """A child span of the current one around a stage of the enforcer."""
        if self.tracer is None:
            return _NO_STAGE
        return self.tracer.start_as_current_span(name, record_exception=False)

    async def shutdown(self, timeout_s: float = SHUTDOWN_S) -> None:
        """Export what is queued and stop, waiting at most `timeout_s`: an unreachable
        collector must not hold the proxy's stop (the SDK's own wait is 30 s per exporter)."""
        if self.provider is None:
            return
        worker = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        worker.start()
        await asyncio.to_thread(worker.join, timeout_s)
        if worker.is_alive():
            log.warning("spans not exported within %.1fs of stopping; dropped", timeout_s)


_NO_STAGE: AbstractContextManager[object] = nullcontext()


class RequestTrace:
    """The hooks the adapter calls; this base class is the no-op used when all is off."""

    __slots__ = ()

    def watch(self, send: Send) -> Send:
        return send

    def message(self, message: McpMessage) -> None:
        """The JSON-RPC message is parsed: start the MCP spans."""

    def refused(self, code: str, agent_id: str = "") -> None:
        """Refused before any decision (bad token, malformed message, unknown tool …)."""

    def decided(self, decided: Sequence[Decided]) -> None:
        """The enforcer decided and journaled every action of the message."""

    def upstream(self, headers: Headers, pool: UpstreamPool, method: str, record: Record) -> Headers:
        """About to forward: returns the headers to send (with the proxy's traceparent)."""
        return headers

    def upstream_failed(self, exc: UpstreamError) -> None:
        """The upstream could not be reached, failed or timed out."""

    def result(self, result: graph_pb2.ActionResult) -> None:
        """How a forwarded action ended (the result event)."""

    def finish(self) -> None:
        """The request is over: end the spans, write the access log line."""


OFF = RequestTrace()


class _Watched(RequestTrace):
    __slots__ = (
        "_access",
        "_headers",
        "_send",
        "_server_span",
        "_spans",
        "_start_ns",
        "_t0",
        "_token",
        "_tool_span",
        "_tracer",
        "_upstream_span",
        "agent_id",
        "code",
        "http_method",
        "node_id",
        "outcome",
        "path",
        "rpc_method",
        "server",
        "status",
        "workflow_id",
    )

    def __init__(self, tracer: trace.Tracer | None, access: bool, scope: Scope, server: str) -> None:
        self._tracer = tracer
        self._access = access
        self._t0 = time.perf_counter()
        self._start_ns = time.time_ns()
        self._headers: Headers = scope["headers"]
        self._send: Send | None = None
        self._server_span: Span | None = None
        self._tool_span: Span | None = None
        self._upstream_span: Span | None = None
        self._spans: list[Span] = []
        self._token: contextvars.Token[otel_context.Context] | None = None
        self.http_method: str = scope["method"]
        self.path: str = scope["path"]
        self.server = server
        self.rpc_method = ""
        self.status = 0
        self.outcome = ""
        self.code = ""
        self.workflow_id = ""
        self.node_id = ""
        self.agent_id = ""

    def watch(self, send: Send) -> Send:
        self._send = send
        return self._relay

    async def _relay(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        assert self._send is not None
        await self._send(message)

    def message(self, message: McpMessage) -> None:
        # Not validated yet (a refused message is traced too): bound what a client chose.
        method = _short(message.method or "response") or "_OTHER"
        self.rpc_method = method
        if self._tracer is None:
            return
        attributes: dict[str, Any] = {
            "mcp.method.name": method,
            "network.transport": "tcp",
            "network.protocol.name": "http",
            "bastion.server": self.server,
        }
        if message.id is not None and (request_id := _short(str(message.id))):
            attributes["jsonrpc.request.id"] = request_id
        session = _short(_header(self._headers, b"mcp-session-id"))
        if session:
            attributes["mcp.session.id"] = session
        version = _short(_header(self._headers, b"mcp-protocol-version"))
        if version:
            attributes["mcp.protocol.version"] = version
        name = message.params.get("name")
        target = name if method in _NAMED and isinstance(name, str) and 0 < len(name) <= _MAX_TARGET else ""
        if target:
            attributes[_NAMED[method]] = target
        uri = message.params.get("uri")
        if method.startswith("resources/") and isinstance(uri, str) and len(uri) <= 2048:
            attributes["mcp.resource.uri"] = uri
        tool = target if method == "tools/call" else ""
        if tool:
            attributes["gen_ai.operation.name"] = "execute_tool"
        parent, links = self._parent(message.meta)
        span = self._tracer.start_span(
            f"{method} {target}" if target else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            links=links,
            start_time=self._start_ns,
            record_exception=False,
        )
        self._server_span = span
        self._spans.append(span)
        current = trace.set_span_in_context(span)
        if tool:
            # The execution of the tool as seen from here: decided, journaled, forwarded.
            self._tool_span = self._tracer.start_span(
                f"execute_tool {tool}",
                context=current,
                kind=SpanKind.INTERNAL,
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": tool,
                    "mcp.method.name": method,
                    **{k: attributes[k] for k in ("mcp.session.id", "jsonrpc.request.id") if k in attributes},
                },
                record_exception=False,
            )
            self._spans.append(self._tool_span)
            current = trace.set_span_in_context(self._tool_span)
        # Current until finish(): the enforcer's stage spans nest under it by context.
        self._token = otel_context.attach(current)

    def _parent(self, meta: Mapping[str, Any]) -> tuple[otel_context.Context, list[Link]]:
        """The MCP convention: `params._meta` is the parent; the HTTP header's context, if
        it differs, becomes a link; without a `_meta` context the header is the parent."""
        from_meta = _extract({key: meta.get(key) for key in _TRACE_KEYS})
        from_http = _extract({key: _header(self._headers, key.encode()) for key in _TRACE_KEYS})
        meta_span = trace.get_current_span(from_meta).get_span_context()
        http_span = trace.get_current_span(from_http).get_span_context()
        if not meta_span.is_valid:
            return from_http, []
        return from_meta, [Link(http_span)] if http_span.is_valid and http_span != meta_span else []

    def refused(self, code: str, agent_id: str = "") -> None:
        self.outcome = "rejected"
        self.code = code
        if agent_id:
            self.agent_id = agent_id
        for span in self._spans:
            _fail(span, code)

    def decided(self, decided: Sequence[Decided]) -> None:
        blocked = next((item for item in decided if not item.outcome.allowed), None)
        first = (blocked or decided[0]).record
        self._record(first)
        self.outcome = "forwarded" if blocked is None else "blocked"
        if blocked is not None:
            self.code = blocked.outcome.block_code
        if self._server_span is None:
            return
        outcome = (blocked or decided[0]).outcome
        attributes: dict[str, Any] = {"bastion.workflow_id": first.workflow_id, "bastion.node_id": first.node_id}
        if outcome.decision is not None:
            attributes["bastion.decision.effect"] = policy_pb2.Effect.Name(outcome.decision.effect)
            attributes["bastion.decision.rule_id"] = outcome.decision.rule_id
        if blocked is not None:
            attributes["bastion.block.code"] = blocked.outcome.block_code
        for span in self._spans:
            span.set_attributes(attributes)
        if blocked is not None:
            # The client gets the -32003 envelope: a JSON-RPC error (MCP convention: error.type
            # is its code); the tool span says why in the block code.
            _fail(self._server_span, "-32003", "POLICY_VIOLATION")
            self._server_span.set_attribute("rpc.response.status_code", "-32003")
            if self._tool_span is not None:
                _fail(self._tool_span, blocked.outcome.block_code or "blocked")

    def _record(self, record: Record) -> None:
        self.workflow_id = record.workflow_id
        self.node_id = record.node_id
        self.agent_id = record.agent_id

    def upstream(self, headers: Headers, pool: UpstreamPool, method: str, record: Record) -> Headers:
        if not self.outcome:
            self._record(record)
            self.outcome = "forwarded"
        if self._tracer is None:
            return headers
        parent = self._server_span or self._http_span()
        for span in self._spans:
            span.set_attributes({"bastion.workflow_id": record.workflow_id, "bastion.node_id": record.node_id})
        span = self._tracer.start_span(
            method,
            context=trace.set_span_in_context(self._tool_span or parent),
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": pool.host or "",
                "server.port": pool.port,
                "url.path": pool.path,
            },
            record_exception=False,
        )
        self._upstream_span = span
        self._spans.append(span)
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, trace.set_span_in_context(span))
        # The client's own trace headers are replaced: the upstream's parent is this proxy.
        kept = [(k, v) for k, v in headers if k not in (b"traceparent", b"tracestate")]
        return kept + [(k.encode(), v.encode("latin-1")) for k, v in carrier.items()]

    def upstream_failed(self, exc: UpstreamError) -> None:
        self.outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
        if self._upstream_span is not None:
            _fail(self._upstream_span, "timeout" if isinstance(exc, UpstreamTimeout) else type(exc).__name__)
        for span in (self._server_span, self._tool_span):
            if span is not None:
                _fail(span, str(exc.jsonrpc_code), "UPSTREAM_UNAVAILABLE")

    def result(self, result: graph_pb2.ActionResult) -> None:
        self.outcome = _RESULT_OUTCOMES.get(result.outcome, self.outcome)
        if self._upstream_span is not None and result.http_status:
            self._upstream_span.set_attribute("http.response.status_code", result.http_status)
        code = result.jsonrpc_error_code
        if code and result.outcome == graph_pb2.COMPLETED:
            for span in (self._server_span, self._tool_span):
                if span is not None:
                    span.set_attribute("rpc.response.status_code", str(code))
                    _fail(span, str(code))

    def finish(self) -> None:
        if self._tracer is not None:
            self._end_spans()
        if self._access:
            self._log()

    def _http_span(self) -> Span:
        """Requests that are no MCP message (refused before parsing, GET streams, DELETE)
        get an HTTP server span instead."""
        assert self._tracer is not None
        span = self._tracer.start_span(
            f"{self.http_method} /mcp/{{server}}",
            context=self._parent({})[0],
            kind=SpanKind.SERVER,
            attributes={"http.request.method": self.http_method, "url.path": self.path, "bastion.server": self.server},
            start_time=self._start_ns,
            record_exception=False,
        )
        self._server_span = span
        self._spans.insert(0, span)
        return span

    def _end_spans(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        server = self._server_span or self._http_span()
        if self.code and self.outcome == "rejected":
            _fail(server, self.code)
        if self.status:
            server.set_attribute("http.response.status_code", self.status)
            if self._upstream_span is not None and self.outcome in ("forwarded", "client_gone"):
                self._upstream_span.set_attribute("http.response.status_code", self.status)
        for span in reversed(self._spans):
            span.end()

    def _log(self) -> None:
        fields: dict[str, Any] = {
            "method": self.http_method,
            "path": self.path,
            "server": self.server,
            "rpc_method": self.rpc_method,
            "status": self.status,
            "outcome": self.outcome or ("rejected" if self.status >= 400 else "forwarded"),
            "duration_ms": round((time.perf_counter() - self._t0) * 1000, 3),
            "workflow_id": self.workflow_id,
            "node_id": self.node_id,
            "agent_id": self.agent_id,
        }
        if self.code:
            fields["code"] = self.code
        if self._server_span is not None:
            fields["trace_id"] = f"{self._server_span.get_span_context().trace_id:032x}"
        access_log.info("request", extra={"fields": fields})


def _extract(carrier: Mapping[str, object]) -> otel_context.Context:
    """W3C trace context from string values of sane length; anything else is ignored."""
    clean = {k: v for k, v in carrier.items() if isinstance(v, str) and 0 < len(v) <= _MAX_TRACE_VALUE}
    return _W3C.extract(clean, context=otel_context.Context()) if clean else otel_context.Context()


def _short(value: str) -> str:
    """`value` when it is short enough to be an id or a name, else ""."""
    return value if len(value) <= _MAX_TARGET else ""


def _header(headers: Headers, name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def _fail(span: Span, error_type: str, description: str | None = None) -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))
