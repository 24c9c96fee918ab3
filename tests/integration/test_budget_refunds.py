"""Budget refunds go only to calls that provably did not run: an upstream that could not be
reached (tests/integration/test_limits_proxy.py). An answer, whatever its HTTP status or
JSON-RPC error, is no proof — the tool may have acted first, and the agent can make it fail
(an attacker's probe answered a transfer tool's elicitation with an error and ran six
transfers on a budget of two)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
from fixtures import inprocess
from fixtures.local_http import Handler, LocalHttp
from fixtures.mcpcalls import headers, tool_call

from bastion._appconfig import load_app_config
from bastion._identity import ensure_dev_key, issue_token

BUDGET = 2
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("transfer", "refused")]
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "refunds", "version": 1},
    "spec": {
        "default": "deny",
        "limits": {"budget": {"calls": BUDGET, "window": "1d"}},
        "rules": [{"id": "all", "match": {"tools": ["up__transfer", "up__refused"]}, "effect": "allow"}],
    },
}


class _Upstream(LocalHttp):
    """`transfer` acts, then fails with a JSON-RPC error on HTTP 200 (as a tool whose
    elicitation the agent refused does); `refused` answers HTTP 401."""

    def __init__(self) -> None:
        self.transfers = 0
        upstream = self

        class McpHandler(Handler):
            def do_POST(self) -> None:
                message = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                params = message.get("params") or {}
                if "id" not in message:
                    self.answer(202, b"")
                elif message.get("method") == "tools/list":
                    self.answer(200, orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": TOOLS}}))
                elif params.get("name") == "transfer":
                    upstream.transfers += 1
                    error = {"code": -32602, "message": "elicitation declined"}
                    self.answer(200, orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}))
                else:
                    error = {"code": -32001, "message": "unauthorized"}
                    self.answer(401, orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}))

        super().__init__(McpHandler)

    def __enter__(self) -> _Upstream:
        super().__enter__()
        return self


@asynccontextmanager
async def _stack(tmp_path: Path) -> AsyncIterator[tuple[_Upstream, httpx.AsyncClient, str]]:
    with _Upstream() as upstream:
        (tmp_path / "policy.json").write_text(json.dumps(POLICY))
        config = tmp_path / "bastion.yaml"
        config.write_text(f"servers:\n  up:\n    url: http://{upstream.addr}/mcp\npolicies: [policy.json]\n")
        async with (
            inprocess.stack(tmp_path, load_app_config(config)) as running,
            httpx.AsyncClient(base_url=f"http://{running.proxy}", timeout=30) as http,
        ):
            yield upstream, http, issue_token(ensure_dev_key(tmp_path), subject="agent-refunds")


async def _call(http: httpx.AsyncClient, token: str, tool: str, n: int) -> httpx.Response:
    hdrs = {**headers(token, workflow="wf-refunds"), "Mcp-Name": tool}
    return await http.post("/mcp/up", content=orjson.dumps(tool_call(tool, {"n": n}, n)), headers=hdrs)


async def test_a_jsonrpc_error_after_the_call_was_answered_spends_the_budget(tmp_path: Path) -> None:
    async with _stack(tmp_path) as (upstream, http, token):
        answers = [await _call(http, token, "transfer", n) for n in range(6)]
    errors = [answer.json()["error"] for answer in answers]
    assert [error["message"] for error in errors[:BUDGET]] == ["elicitation declined"] * BUDGET
    assert all(error["data"]["kind"] == "BUDGET_EXCEEDED" for error in errors[BUDGET:]), errors
    assert upstream.transfers == BUDGET


async def test_an_http_error_after_the_call_was_sent_spends_the_budget_too(tmp_path: Path) -> None:
    # The agent can cause one after the tool acted (deleting its own session mid-call gets
    # HTTP 500 from the MCP SDK): a re-probe ran six transfers on a budget of two so.
    async with _stack(tmp_path) as (_, http, token):
        refused = [await _call(http, token, "refused", n) for n in range(4)]
    assert [answer.status_code for answer in refused[:BUDGET]] == [401] * BUDGET
    assert all(answer.json()["error"]["data"]["kind"] == "BUDGET_EXCEEDED" for answer in refused[BUDGET:])
