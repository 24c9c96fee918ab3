"""Secrets in arguments never reach the journal, the graph's store or its REST API: they
are replaced in the journaled copy, while policy decides on the real values in memory."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.graphapi import auditor_token, bearer
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AppConfig, RedactionConfig, ServerConfig
from bastion._identity import ensure_dev_key, ensure_service_token, issue_token
from bastion.proxy._redact import Redactor

AWS = "AKIAIOSFODNN7EXAMPLE"
CARD = "4111111111111111"
PASSWORD = "correct-horse-battery-staple"
TASK_TOKEN = "ghp_" + "b" * 36
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "redaction", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            # Decided on the real value: the journaled copy no longer contains it.
            {
                "id": "no-aws-keys-out",
                "match": {"tools": ["demo__echo"]},
                "when": "args.text.contains('AKIA')",
                "effect": "deny",
            },
            {"id": "ask", "match": {"tools": ["demo__delete_file"]}, "effect": "require_approval"},
            {"id": "demo", "match": {"tools": ["demo__*"]}, "effect": "allow"},
        ],
    },
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


async def test_planted_secrets_are_redacted_everywhere_they_are_stored(
    tmp_path: Path, upstream: DemoUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    app = AppConfig(
        servers={"demo": ServerConfig(url=upstream.url)},
        policies=(policy,),
        redaction=RedactionConfig(paths=("$..password",)),
    )
    async with inprocess.stack(tmp_path, app) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        token = client.token("agent-secrets")
        leak = tool_call("echo", {"text": f"key {AWS}"})
        leak["params"]["_meta"]["bastion.dev/task"] = f"rotate {TASK_TOKEN}"
        blocked = await client.post(leak, headers(token, workflow="wf-secrets"))
        paid = await client.post(
            tool_call("add", {"a": 1, "b": 2, "card": CARD, "login": {"password": PASSWORD}}, 2),
            headers(token, workflow="wf-secrets"),
        )
        parked = await client.post(
            tool_call("delete_file", {"path": f"/keys/{AWS}", "login": {"password": PASSWORD}}, 3),
            headers(token, workflow="wf-secrets"),
        )
        assert parked.json()["error"]["code"] == -32004
        assert blocked.json()["error"]["data"]["rule_id"] == "no-aws-keys-out"
        assert "error" not in paid.text or paid.status_code == 200
        nodes = await client.nodes("wf-secrets", 3)
        async with httpx.AsyncClient(base_url=client.graph, headers=bearer(auditor_token(tmp_path))) as http:
            graph = (await http.get("/graphs/wf-secrets")).text
            violations = (await http.get("/audit/violations", params={"workflow_id": "wf-secrets"})).text
            exports = ""
            for fmt in ("csv", "json"):
                for schema in ("soc2_v1", "iso42001_v1"):
                    exports += (await http.get("/audit/export", params={"format": fmt, "schema": schema})).text
        operator = issue_token(ensure_dev_key(tmp_path), subject="ops", roles=("operator",))
        async with httpx.AsyncClient(base_url=client.proxy, headers=bearer(operator)) as http:
            approvals = (await http.get("/v1/approvals")).text
    assert "[REDACTED:aws_key:" in approvals
    assert "wf-secrets" in exports
    rest = orjson.dumps(nodes).decode() + graph + violations + approvals + exports
    assert "[REDACTED:aws_key:" in rest
    assert "[REDACTED:card:" in rest
    assert "[REDACTED:path:" in rest
    assert "[REDACTED:github_token:" in rest  # the stated task, a THINKING node
    # The digest is keyed by the deployment's service token, not a bare sha256 of the
    # secret that a reader of the trail could check guesses against.
    keyed = Redactor(secret=ensure_service_token(tmp_path, None).encode())
    assert keyed.placeholder("aws_key", AWS) in rest
    assert hashlib.sha256(AWS.encode()).hexdigest()[:12] not in rest
    stored = _everything_under(tmp_path)
    for secret in (AWS, CARD, PASSWORD, TASK_TOKEN):
        assert secret not in rest, secret
        assert secret.encode() not in stored, f"{secret} is in a file under $BASTION_HOME"
        assert secret not in caplog.text, f"{secret} was logged"


async def test_an_argument_dense_with_key_shapes_is_journaled_as_one_placeholder(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    # 60,000 AWS-key-shaped tokens (1.2 MB) in one denied call: each read one by one cost a
    # Python call, an HMAC and a pass over every reason, for seconds of the proxy's loop.
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=(policy,))
    keys = " ".join(f"AKIA{index:016d}" for index in range(60_000))
    async with inprocess.stack(tmp_path, app) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        token = client.token("agent-dense")
        blocked = await client.post(tool_call("echo", {"text": keys}), headers(token, workflow="wf-dense"))
        after = await client.post(tool_call("add", {"a": 1, "b": 2}, 2), headers(token, workflow="wf-dense"))
        nodes = await client.nodes("wf-dense", 2, where=lambda node: node["node_type"] == "ACTION")
    assert blocked.json()["error"]["data"]["rule_id"] == "no-aws-keys-out"
    assert after.json()["result"]["structuredContent"] == {"result": 3}
    echo = next(node for node in nodes if node["action"]["tool"] == "echo")
    keyed = Redactor(secret=ensure_service_token(tmp_path, None).encode())
    assert echo["action"]["arguments"] == {"text": keyed.placeholder("bulk", keys)}
    assert b"AKIA00000000000000" not in _everything_under(tmp_path)


def _everything_under(home: Path) -> bytes:
    """Every byte the stack wrote under $BASTION_HOME: journal segments, SQLite files and WALs."""
    return b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
