"""Credentials for upstreams come from bastion.yaml (`${VAR}` from the environment) and are
added by the proxy: a real SDK server, reporting the headers it received, sees them on
every path (`/mcp/{server}`, the aggregated `/mcp`, the proxy's own catalog session) and
never the agent's token or the agent's attempt at the same header."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.mcpcalls import headers as mcp_headers
from fixtures.mcpcalls import tool_call
from fixtures.sdk_upstream import serving_mcp
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

from bastion import ConfigError
from bastion._appconfig import load_app_config
from bastion._identity import ensure_dev_key, issue_token

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "brokering", "version": 1},
    "spec": {"default": "deny", "rules": [{"id": "all", "match": {"tools": ["vault__*"]}, "effect": "allow"}]},
}


def _server(seen: list[dict[str, str]]) -> MCPServer:
    server = MCPServer("vault")

    async def received(ctx: Context) -> str:
        """The headers this call arrived with."""
        found = {k.lower(): v for k, v in (ctx.headers or {}).items()}
        seen.append(found)
        return json.dumps(found)

    server.add_tool(received, name="received")
    return server


def _seeing(seen: list[dict[str, str]]) -> Callable[[Any], Any]:
    """An ASGI app in front of the server's that notes every request's headers (the
    catalog's list included)."""

    def wrap(inner: Any) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            await inner(scope, receive, send)

        return app

    return wrap


async def test_brokered_credentials_reach_the_upstream_and_the_agents_never_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "upstream-secret")
    seen: list[dict[str, str]] = []
    async with serving_mcp(_server(seen), _seeing(seen)) as url:
        (tmp_path / "policy.json").write_text(json.dumps(POLICY))
        config = tmp_path / "bastion.yaml"
        config.write_text(
            f"servers:\n  vault:\n    url: {url}\n"
            "    headers: {Authorization: 'Bearer ${VAULT_TOKEN}', X-Api-Key: brokered-key}\n"
            "policies: [policy.json]\n"
        )
        app = load_app_config(config)
        async with inprocess.stack(tmp_path, app) as running:
            token = issue_token(ensure_dev_key(tmp_path), subject="agent-brokering")
            forged = {"X-Api-Key": "agent-forged"}
            async with httpx.AsyncClient(base_url=f"http://{running.proxy}", timeout=30) as http:
                per_server = await http.post(
                    "/mcp/vault",
                    content=orjson.dumps(tool_call("received", {})),
                    headers={**mcp_headers(token, name="received"), **forged},
                )
                aggregated = await http.post(
                    "/mcp",
                    content=orjson.dumps(tool_call("vault__received", {})),
                    headers={**mcp_headers(token, name="vault__received"), **forged},
                )
    assert "result" in per_server.json(), per_server.text
    assert "result" in aggregated.text, aggregated.text  # an SSE stream on the aggregated endpoint
    assert '"error"' not in aggregated.text
    assert seen, "the upstream saw no request"
    for found in seen:
        assert found.get("authorization") == "Bearer upstream-secret", found
        assert found.get("x-api-key") == "brokered-key", found
        assert token not in json.dumps(found)
        assert "agent-forged" not in json.dumps(found)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ("{Host: evil.example.com}", "cannot be set"),
        ("{Bastion-Workflow-Id: x}", "cannot be set"),
        ("{'Bad Name': x}", "cannot be set"),
        ('{X-Key: "a\\r\\nInjected: 1"}', "one line of ASCII"),
        ("{X-Key: '${UNSET_FOR_SURE}'}", "UNSET_FOR_SURE"),
    ],
)
def test_headers_that_would_break_the_proxy_or_leak_are_refused_at_load(
    tmp_path: Path, headers: str, error: str
) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text(f"servers:\n  vault:\n    url: http://127.0.0.1:1/mcp\n    headers: {headers}\n")
    with pytest.raises(ConfigError, match=error):
        load_app_config(config)
