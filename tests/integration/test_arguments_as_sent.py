"""The graph shows an action's arguments exactly as the agent sent them: integers stay
integers (2, not 2.0), an amount beyond 2^53 is not rounded, nested arrays and unicode
come back unchanged, for forwarded and blocked calls alike, and redaction still applies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, bearer
from fixtures.mcpcalls import MODERN_META, ProxyClient, headers
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AppConfig, ServerConfig

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "as-sent", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [{"id": "adds", "match": {"tools": ["demo__add"]}, "effect": "allow"}],
    },
}
#: 2^53 + 1: a double cannot hold it (it would read back as 9007199254740992).
BIG = 9007199254740993
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


def _raw_call(msg_id: int, tool: str, arguments: str) -> bytes:
    # Written by hand, not by a JSON library, so the test controls every digit sent.
    params = f'{{"name": "{tool}", "arguments": {arguments}, "_meta": {json.dumps(MODERN_META)}}}'
    return f'{{"jsonrpc": "2.0", "id": {msg_id}, "method": "tools/call", "params": {params}}}'.encode()


async def test_arguments_are_stored_and_served_exactly_as_sent(tmp_path: Path, upstream: DemoUpstream) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=(policy,))
    forwarded = '{"a": 2, "b": 3}'
    blocked = (
        '{"amount": 9007199254740993, "ratio": 1.5, "whole": 2.0, "negative": -9007199254740993,'
        ' "nested": [[1, [2, {"k": "café ☕ 𝄞"}]], []], "empty": {}, "none": null, "flag": false,'
        f' "token": "{JWT}"}}'
    )
    async with inprocess.stack(tmp_path, app) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        token = client.token("agent-as-sent")
        add = headers(token, workflow="wf-as-sent", name="add")
        echo = headers(token, workflow="wf-as-sent", name="echo")
        allowed = await client.post(None, add, raw=_raw_call(1, "add", forwarded))
        denied = await client.post(None, echo, raw=_raw_call(2, "echo", blocked))
        assert "error" not in allowed.json(), allowed.text
        assert denied.json()["error"]["data"]["rule_id"] == "default", denied.text
        # The allowed call's verifier answer is a third node (VERIFICATION, no action).
        nodes = await client.nodes("wf-as-sent", 3)
        assert [node["node_type"] for node in nodes] == ["ACTION", "VERIFICATION", "ACTION"]
        nodes = [node for node in nodes if node["node_type"] == "ACTION"]
        async with httpx.AsyncClient(base_url=client.graph, headers=bearer(auditor_token(tmp_path))) as http:
            raw_nodes = (await http.get("/graphs/wf-as-sent/nodes")).text

    by_tool = {node["action"]["tool"]: node["action"]["arguments"] for node in nodes}
    assert _typed(by_tool["add"]) == _typed({"a": 2, "b": 3})
    echoed: dict[str, Any] = by_tool["echo"]
    assert _typed(echoed["amount"]) == ("int", BIG)
    assert echoed["negative"] == -BIG
    assert str(BIG) in raw_nodes  # the digits themselves, not a rounded double
    assert _typed(echoed["whole"]) == ("float", 2.0)  # sent as 2.0: kept a float
    assert echoed["nested"] == [[1, [2, {"k": "café ☕ 𝄞"}]], []]
    assert (echoed["empty"], echoed["none"], echoed["flag"], echoed["ratio"]) == ({}, None, False, 1.5)
    assert echoed["token"].startswith("[REDACTED:field:")  # redaction applies to the copy as sent too (by its name)
    assert JWT not in raw_nodes


def _typed(value: Any) -> Any:
    """A value with its JSON types spelled out, so 2 and 2.0 (equal in Python) differ."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, value)
