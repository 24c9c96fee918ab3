"""Secrets in A2A messages, 1.0 and 0.3, JSON-RPC and HTTP+JSON, never reach the audit
trail: the journal, the graph's store or its REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
from fixtures.a2a_agent import a2a_agent
from fixtures.a2a_stack import a2a_stack
from fixtures.graphapi import auditor_token, bearer, poll

AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
GITHUB = "ghp_" + "c" * 36
SLACK = "xoxb-1234567890-abcdefghij"
CARD = "4111111111111111"
PUSH_TOKEN = "push-verification-5f0c1e"
PUSH_KEY = "basic-dXNlcjpwdXNocGFzcw"
POLICY = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: a2a-redaction, version: 1}
spec:
  default: deny
  rules:
    - id: no-cancels
      match: {a2a: ["echo__CancelTask"]}
      effect: deny
    - id: everyone-everything
      match: {a2a: ["echo__*"]}
      effect: allow
"""


def _rpc(method: str, params: dict[str, Any], msg_id: int = 1) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})


async def test_secrets_in_a2a_messages_are_redacted_in_every_stored_copy(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with a2a_agent() as agent, a2a_stack(tmp_path, tmp_path / "policy.yaml", {"echo": agent.url}) as stack:
        hdrs = stack.headers("agent-secrets", **{"Bastion-Workflow-Id": "wf-a2a-secrets"})
        async with httpx.AsyncClient(base_url=stack.proxy, timeout=30) as http:
            v1 = {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": f"deploy with {AWS}"}]}
            metadata = {"bastion.dev/task": f"rotate {GITHUB}"}
            sent = await http.post(
                "/a2a/echo",
                content=_rpc("SendMessage", {"message": v1, "metadata": metadata}),
                headers={**hdrs, "A2A-Version": "1.0"},
            )
            task = sent.json()["result"]["task"]["id"]
            v03 = {"role": "user", "messageId": "m2", "kind": "message", "parts": [{"kind": "text", "text": JWT}]}
            await http.post(
                "/a2a/echo", content=_rpc("message/send", {"message": v03}, 2), headers={**hdrs, "A2A-Version": "0.3"}
            )
            rest = {"message": {"role": "ROLE_USER", "messageId": "m3", "parts": [{"text": f"pay {CARD}"}]}}
            await http.post(
                "/a2a/echo/message:send", content=orjson.dumps(rest), headers={**hdrs, "A2A-Version": "1.0"}
            )
            await http.post(
                "/a2a/echo",
                content=_rpc("CancelTask", {"id": task, "metadata": {"why": SLACK}}, 4),
                headers={**hdrs, "A2A-Version": "1.0"},
            )
            # A push config's token and credentials match no pattern: redacted by their names.
            push = {
                "url": "https://hooks.example/a2a",
                "token": PUSH_TOKEN,
                "authentication": {"credentials": PUSH_KEY},
            }
            await http.post(
                "/a2a/echo",
                content=_rpc("CreateTaskPushNotificationConfig", {"taskId": task, "config": push}, 5),
                headers={**hdrs, "A2A-Version": "1.0"},
            )
        # Every action's node (the verifier adds its own besides: polling for a count of all
        # nodes could return before the last actions' had arrived).
        actions = await poll(
            stack.graph,
            "/graphs/wf-a2a-secrets/nodes",
            {},
            5,
            auditor_token(tmp_path),
            where=lambda node: node.get("node_type") == "ACTION",
        )
        nodes = await stack.nodes("wf-a2a-secrets", len(actions) + 1)
        async with httpx.AsyncClient(base_url=stack.graph, headers=bearer(auditor_token(tmp_path))) as http:
            graph = (await http.get("/graphs/wf-a2a-secrets")).text
            violations = (await http.get("/audit/violations", params={"workflow_id": "wf-a2a-secrets"})).text
            export = (await http.get("/audit/export", params={"format": "json", "schema": "soc2_v1"})).text
    shown = orjson.dumps(nodes).decode() + graph + violations + export
    for kind in ("aws_key", "jwt", "card", "slack_token", "github_token"):
        assert f"[REDACTED:{kind}:" in shown, kind
    stored = _everything_under(tmp_path)
    assert "[REDACTED:field:" in shown
    for secret in (AWS, JWT, GITHUB, SLACK, CARD, PUSH_TOKEN, PUSH_KEY):
        assert secret not in shown, secret
        assert secret.encode() not in stored, f"{secret} is in a file under $BASTION_HOME"


def _everything_under(home: Path) -> bytes:
    """Every byte the stack wrote under $BASTION_HOME: journal segments, SQLite files and WALs."""
    return b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
