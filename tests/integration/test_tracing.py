"""OpenTelemetry spans and the access log of the proxy, through the real in-process stack,
exported over OTLP/gRPC to a real stand-in collector on port 0.

The proxy's stop shuts its tracer provider down, which exports every ended span: the
tests read the collector after the stack has stopped, so nothing waits on a timer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures import inprocess
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.otlp import ExportedSpan, OtlpSink, otlp_sink
from fixtures.upstream import DemoUpstream, demo_upstream
from opentelemetry.proto.trace.v1 import trace_pb2

from bastion.proxy._tracing import OFF, Tracing

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "policies" / "demo.yaml"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HEADER_TRACE = "0af7651916cd43dd8448eb211c80319c"
HEADER_SPAN = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpSink]:
    with otlp_sink() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER"):
            monkeypatch.delenv(name, raising=False)
        yield collector


def _by_name(spans: list[ExportedSpan]) -> dict[str, ExportedSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


async def test_an_allowed_tool_call_is_one_trace_under_the_clients_meta_traceparent(
    tmp_path: Path, upstream: DemoUpstream, sink: OtlpSink
) -> None:
    call = tool_call("add", {"a": 2, "b": 3}, msg_id=7)
    call["params"]["_meta"]["traceparent"] = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, POLICY)) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        hdrs = headers(client.token("tracer"), workflow="wf-trace")
        # The transport's own context: kept as a link, not the parent (MCP convention).
        hdrs["traceparent"] = f"00-{HEADER_TRACE}-{HEADER_SPAN}-01"
        response = await client.post(call, hdrs)
    assert response.json()["result"]["structuredContent"] == {"result": 5}

    spans = _by_name(sink.spans())
    assert set(spans) == {"tools/call add", "execute_tool add", "bastion.decide", "bastion.journal", "POST"}
    assert {span.trace_id for span in spans.values()} == {CLIENT_TRACE}
    server, tool = spans["tools/call add"], spans["execute_tool add"]
    assert (server.kind, server.parent_span_id, server.links) == (
        trace_pb2.Span.SPAN_KIND_SERVER,
        CLIENT_SPAN,
        (HEADER_SPAN,),
    )
    assert tool.parent_span_id == server.span_id
    for stage in ("bastion.decide", "bastion.journal", "POST"):
        assert spans[stage].parent_span_id == tool.span_id, stage
    assert spans["POST"].kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert spans["POST"].attributes["http.response.status_code"] == 200
    node_id = response.headers["bastion-node-id"]
    expected: dict[str, Any] = {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "add",
        "gen_ai.operation.name": "execute_tool",
        "jsonrpc.request.id": "7",
        "bastion.workflow_id": "wf-trace",
        "bastion.node_id": node_id,
        "bastion.decision.effect": "ALLOW",
        "bastion.decision.rule_id": "allow-add",
    }
    for span in (server, tool):
        assert {key: span.attributes.get(key) for key in expected} == expected
        assert "error.type" not in span.attributes
        assert span.status_code != trace_pb2.Status.STATUS_CODE_ERROR
    assert server.attributes["mcp.protocol.version"] == "2026-07-28"
    assert server.resource["service.name"] == "bastion-proxy"


async def test_a_blocked_tool_call_carries_the_decision_and_the_http_traceparent_as_parent(
    tmp_path: Path, upstream: DemoUpstream, sink: OtlpSink
) -> None:
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, POLICY)) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        hdrs = headers(client.token("tracer"), workflow="wf-block")
        hdrs["traceparent"] = f"00-{HEADER_TRACE}-{HEADER_SPAN}-01"
        response = await client.post(tool_call("delete_file", {"path": "/etc/passwd"}), hdrs)
    error = response.json()["error"]
    assert error["code"] == -32003
    assert upstream.executed() == []

    spans = _by_name(sink.spans())
    assert set(spans) == {
        "tools/call delete_file",
        "execute_tool delete_file",
        "bastion.decide",
        "bastion.journal",
    }
    server, tool = spans["tools/call delete_file"], spans["execute_tool delete_file"]
    assert {span.trace_id for span in spans.values()} == {HEADER_TRACE}
    assert (server.parent_span_id, server.links) == (HEADER_SPAN, ())
    assert server.attributes["error.type"] == "-32003"
    assert server.status_code == trace_pb2.Status.STATUS_CODE_ERROR
    block_code = error["data"]["rule_id"]
    assert tool.attributes["error.type"] == block_code
    for span in (server, tool):
        assert span.attributes["bastion.decision.effect"] == "DENY"
        assert span.attributes["bastion.decision.rule_id"] == "no-file-deletes"
        assert span.attributes["bastion.block.code"] == block_code
        assert span.attributes["bastion.node_id"] == response.headers["bastion-node-id"]


async def test_a_request_refused_before_parsing_is_an_http_server_span_with_its_code(
    tmp_path: Path, upstream: DemoUpstream, sink: OtlpSink
) -> None:
    async with inprocess.stack(tmp_path, inprocess.app_config(upstream.url, POLICY)) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        response = await client.post(tool_call("add", {"a": 1, "b": 1}), headers("not-a-token"))
    assert response.status_code == 401
    [span] = sink.spans()
    assert span.name == "POST /mcp/{server}"
    assert span.attributes["error.type"] == response.json()["error"]["code"]
    assert span.attributes["http.response.status_code"] == 401


def test_without_an_otlp_endpoint_no_exporter_is_created_and_requests_share_the_no_op() -> None:
    scope = {"type": "http", "method": "POST", "path": "/mcp/demo", "headers": []}
    off = Tracing.from_env(access_log=False, environ={"OTEL_SERVICE_NAME": "x"})
    assert (off.provider, off.tracer) == (None, None)
    assert off.request(scope, "demo") is OFF
    disabled = Tracing.from_env(
        access_log=False, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}
    )
    assert disabled.provider is None
    # The access log alone watches requests but still creates no tracer.
    logged = Tracing.from_env(access_log=True, environ={})
    assert logged.tracer is None
    assert logged.request(scope, "demo") is not OFF


async def test_the_access_log_writes_one_line_per_request_with_its_outcome(
    tmp_path: Path, upstream: DemoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bastion.proxy.access")
    app = inprocess.app_config(upstream.url, POLICY)
    async with inprocess.stack(tmp_path, app, access_log=True) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        token = client.token("logger")
        allowed = await client.post(tool_call("add", {"a": 1, "b": 2}), headers(token, workflow="wf-log"))
        blocked = await client.post(tool_call("delete_file", {"path": "/x"}), headers(token, workflow="wf-log"))
        refused = await client.post(tool_call("add", {"a": 1, "b": 2}), headers("not-a-token"))
    lines = [record.fields for record in caplog.records if record.name == "bastion.proxy.access"]  # type: ignore[attr-defined]
    assert len(lines) == 3
    common = {"method": "POST", "path": "/mcp/demo", "server": "demo"}
    for line in lines:
        assert {key: line[key] for key in common} == common
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] > 0
    assert {
        key: lines[0][key] for key in ("rpc_method", "status", "outcome", "workflow_id", "node_id", "agent_id")
    } == {
        "rpc_method": "tools/call",
        "status": 200,
        "outcome": "forwarded",
        "workflow_id": "wf-log",
        "node_id": allowed.headers["bastion-node-id"],
        "agent_id": "logger",
    }
    assert (lines[1]["outcome"], lines[1]["node_id"], lines[1]["code"]) == (
        "blocked",
        blocked.headers["bastion-node-id"],
        blocked.json()["error"]["data"]["rule_id"],
    )
    assert (lines[2]["outcome"], lines[2]["status"], lines[2]["rpc_method"], lines[2]["agent_id"]) == (
        "rejected",
        refused.status_code,
        "",
        "",
    )
