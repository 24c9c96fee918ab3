"""Hostile and malformed requests against the real stack: whatever a client sends, a
denied tool never runs upstream, the proxy never answers 5xx of its own, and it keeps
serving. Deterministic (derandomized) so CI sees the same examples every run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fixtures.stack import Stack
from fixtures.upstream import DemoUpstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
DENIED_NAMES = [
    "delete_file",
    "Delete_File",
    "DELETE_FILE",
    " delete_file",
    "delete_file ",
    "delete_file\u0000",
    "delete_file\n",
    "demo__delete_file",
    "../delete_file",
    "./delete_file",
    "delete_file/",
    "delete\u2010file",
    "\uff44elete_file",
    "delete_fil\u0435",
    "delete_file\u200b",
]


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    token = stack.token("agent-fuzz")
    with httpx.Client(base_url=stack.proxy, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A well-formed 2026-07 call of the denied tool, with a few mutations drawn on top.

    Starting from the call the upstream would execute keeps the dangerous case common:
    the unmutated call, and each disguise of it, is drawn many times per run.
    """
    params: dict[str, Any] = {"name": "delete_file", "arguments": {"path": "/etc/passwd"}, "_meta": MODERN_META}
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "delete_file",
    }
    mutate = st.integers(0, 3).map(lambda n: n == 0)  # each mutation in about a quarter of the cases
    if draw(mutate):
        params["name"] = draw(st.sampled_from(DENIED_NAMES) | st.text(max_size=30))
    if draw(mutate):
        params["arguments"] = draw(json_values)
    if draw(mutate):
        body["id"] = draw(st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5) | st.none() | st.booleans())
    if draw(mutate):
        body["method"] = draw(st.sampled_from(["Tools/Call", "tools/call ", "tools/list", "tools//call", "tools/cal"]))
    if draw(mutate):
        del body[draw(st.sampled_from(["jsonrpc", "id", "params"]))]
    if draw(mutate):
        headers["Mcp-Name"] = draw(st.sampled_from(["add", "Delete_File", ""]))
    if draw(mutate):
        del headers[draw(st.sampled_from(["Mcp-Method", "Mcp-Name", "MCP-Protocol-Version"]))]
    raw = orjson.dumps([body] if draw(mutate) else body)
    if draw(mutate):
        # Duplicate keys: what if the proxy and the upstream read different ones?
        raw = raw.replace(b'"name":', b'"name":"add","name":', 1)
    return raw, headers


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=tool_calls() | st.tuples(st.binary(max_size=200), st.just({"Content-Type": "application/json"})))
def test_no_request_makes_a_denied_tool_run_and_the_proxy_never_fails_on_its_own(
    http: httpx.Client, upstream: DemoUpstream, request: tuple[bytes, dict[str, str]]
) -> None:
    raw, headers = request
    before = len(upstream.executed())
    response = http.post("/mcp/demo", content=raw, headers=headers)
    assert len(upstream.executed()) == before, f"delete_file ran for {raw!r}"
    assert response.status_code != 200 or b"deleted" not in response.content
    assert response.status_code < 500, f"{response.status_code} for {raw!r}: {response.text[:300]}"


def test_the_proxy_still_serves_after_the_fuzzing(http: httpx.Client) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 2}, "_meta": MODERN_META},
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "add",
    }
    response = http.post("/mcp/demo", json=body, headers=headers)
    assert response.json()["result"]["structuredContent"] == {"result": 4}
