"""A stack whose agents' tokens are verified against a JWKS file (auth.jwks): a real stack
in-process, a real SDK MCP server, keys picked by `kid`. What holds at the unit level
(tests/unit/core/test_jwks.py) holds through the proxy: the token of a known kid is
decided and forwarded; an unknown kid, a kid of another key and a token of the dev key
are refused with 401, audited, never forwarded."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fixtures import inprocess
from fixtures.graphapi import poll
from fixtures.mcpcalls import headers, tool_call
from fixtures.sdk_upstream import serving_mcp
from mcp.server import MCPServer

from bastion._appconfig import AppConfig, AuthConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "jwks", "version": 1},
    "spec": {"default": "deny", "rules": [{"id": "notes", "match": {"tools": ["demo__note"]}, "effect": "allow"}]},
}


def _jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"}


def _token(key: Ed25519PrivateKey, kid: str, subject: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": subject, "iss": "idp.example", "aud": "bastion", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})


async def test_tokens_are_verified_against_the_jwks_key_their_kid_names(tmp_path: Path) -> None:
    ran: list[str] = []
    upstream = MCPServer("demo")

    def note(text: str) -> str:
        """Record that this call ran."""
        ran.append(text)
        return text

    upstream.add_tool(note, name="note")
    current, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_jwk(current, "2026-12"), _jwk(other, "2026-11")]}))
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    auth = AuthConfig(jwks=str(tmp_path / "jwks.json"), issuer="idp.example", tenant_claim="org")
    async with serving_mcp(upstream) as url:
        app = AppConfig(servers={"demo": ServerConfig(url=url)}, policies=(tmp_path / "policy.json",), auth=auth)
        async with inprocess.stack(tmp_path, app) as running, httpx.AsyncClient(timeout=30) as http:

            async def call(token: str, text: str) -> httpx.Response:
                body = orjson.dumps(tool_call("note", {"text": text}))
                return await http.post(
                    f"http://{running.proxy}/mcp/demo", content=body, headers=headers(token, name="note")
                )

            good = await call(_token(current, "2026-12", "agent-idp", org="acme"), "good")
            unknown = await call(_token(current, "2027-01", "agent-idp"), "unknown-kid")
            swapped = await call(_token(other, "2026-12", "agent-idp"), "wrong-key-for-kid")
            dev = await call(issue_token(ensure_dev_key(tmp_path), subject="agent-dev"), "dev-key")
            auditor = _token(current, "2026-12", "auditor-idp", roles=["auditor"])
            rejected = await poll(
                f"http://{running.graph}",
                "/audit/violations",
                {"workflow_id": "bastion.rejected"},
                3,
                auditor,
            )

    assert good.status_code == 200, good.text
    assert "result" in good.json()
    assert (unknown.status_code, swapped.status_code, dev.status_code) == (401, 401, 401)
    assert "unknown key id '2027-01'" in unknown.json()["error"]["message"]
    assert ran == ["good"]
    assert {item["rule_id"] for item in rejected} == {"bastion.auth.unauthenticated"}
