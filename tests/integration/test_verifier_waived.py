"""`verifier: {name: none}` through the real proxy (real policy service, graph and demo MCP
server; a verifier the test controls over gRPC, hanging on every call): the agents every
governing policy waives scoring for are decided by policy alone and the verifier is never
asked; an agent another policy also governs is still scored, and fails closed — also when
that other policy is a canary version the proxy's Watch never announced."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.fake_verifier import fake_verifier, policy_file
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import demo_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion.policy import sign_bundle
from bastion.policy._document import parse_policy
from bastion.policy._registry import settings_json


def _rule(rule_id: str, agents: list[str]) -> dict[str, Any]:
    return {"id": rule_id, "match": {"agents": agents, "tools": ["demo__add"]}, "effect": "allow"}


async def test_waived_agents_skip_the_verifier_and_others_still_fail_closed(tmp_path: Path) -> None:
    policies = [
        policy_file(tmp_path, "reader", [_rule("readers-add", ["reader-*"])], {"name": "none"}),
        # Also governs reader-2, with no verifier stanza: reader-2 stays scored.
        policy_file(tmp_path, "shared", [_rule("shared-add", ["reader-2", "payer"])], None),
        # A name that only starts like the waiver is none: names are exact.
        policy_file(tmp_path, "lookalike", [_rule("lookalike-add", ["lookalike"])], {"name": "none-"}),
    ]
    (tmp_path / "upstream").mkdir()
    with demo_upstream(tmp_path / "upstream") as upstream:
        app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=tuple(policies))
        async with (
            inprocess.policy(tmp_path, app) as policy,
            inprocess.graph(tmp_path, app, policy_addr=policy["grpc"]) as graph,
            fake_verifier(tmp_path, None) as (verifier, servicer),  # hangs: any call it gets times out
            inprocess.proxy(
                tmp_path,
                app,
                policy_addr=policy["grpc"],
                verifier_addr=verifier,
                graph_addr=graph["grpc"],
                verifier_timeout_ms=300,
                verifier_breaker_failures=100,  # every hanging call is asked, none cut short by the breaker
            ) as running,
        ):
            client = ProxyClient(tmp_path, running["http"], graph["http"])
            for _ in range(200):  # until the proxy learnt every policy's settings from Watch
                async with httpx.AsyncClient(base_url=client.proxy, timeout=10) as http:
                    text = (await http.get("/metrics")).text
                if all(f'bastion_proxy_policy_version{{policy="{p.stem}"}} 1.0' in text for p in policies):
                    break
                await asyncio.sleep(0.05)

            async def add(agent: str) -> tuple[dict[str, Any], float]:
                started = time.monotonic()
                response = await client.post(
                    tool_call("add", {"a": 2, "b": 3}), headers(client.token(agent), workflow=f"wf-{agent}")
                )
                return response.json(), time.monotonic() - started

            waived, waived_s = await add("reader-1")
            calls_after_waived = servicer.calls
            scored, _ = await add("reader-2")
            payer, _ = await add("payer")
            lookalike, _ = await add("lookalike")
            nodes = await client.nodes("wf-reader-1", 1)
            scored_nodes = await client.nodes("wf-reader-2", 2)

            # A canary of `shared` that also governs every reader, with no stanza: Watch
            # announces no rollout, so the proxy still believes reader-1 waived. The policy
            # engine does not: the decision carries the canary's (absent) stanza, and the
            # proxy asks the verifier after all, which hangs, so the call is blocked.
            canary = policy_file(tmp_path, "shared", [_rule("shared-add", ["reader-*", "payer"])], None)
            text = canary.read_text().replace('"version": 1', '"version": 2')
            bundle = sign_bundle(text, ensure_dev_key(tmp_path), kid="dev")
            operator = {
                "Authorization": f"Bearer {issue_token(ensure_dev_key(tmp_path), subject='ops', roles=('operator',))}"
            }
            async with httpx.AsyncClient(base_url=f"http://{policy['http']}", headers=operator, timeout=10) as admin:
                stored = await admin.post("/v1/policies", json={"bundle": bundle})
                assert stored.status_code == 201, stored.text
                started = await admin.post("/v1/rollouts", json={"policy": "shared", "version": 2, "percent": 100})
                assert started.status_code == 201, started.text
            before_canary = servicer.calls
            on_canary, _ = await add("reader-1")
            canary_calls = servicer.calls - before_canary

    assert waived["result"]["structuredContent"] == {"result": 5}, waived
    assert calls_after_waived == 0, "the verifier was asked about a waived agent's call"
    assert waived_s < 5
    assert nodes[0]["outcome"] == "FORWARDED"
    assert [n["node_type"] for n in nodes] == ["ACTION"]  # nothing verified it: no VERIFICATION node
    assert nodes[0]["block_reason"] == "verifier waived: policy 'reader' v1 says verifier none"
    # Scored and failing closed: the verifier hangs, the default fallback blocks.
    for body in (scored, payer, lookalike):
        assert body["error"]["code"] == -32003, body
        assert body["error"]["data"]["rule_id"] == "bastion.verifier_unavailable"
    # reader-2 was scored and its verifier failed: the graph says so (a VERIFICATION node),
    # whatever the deciding policy's decision names.
    assert [n["node_type"] for n in scored_nodes] == ["ACTION", "VERIFICATION"]
    assert on_canary["error"]["code"] == -32003, on_canary
    assert canary_calls == 1


@pytest.mark.parametrize("name", ["none", "reference"])
def test_the_policy_service_accepts_and_publishes_the_verifier_name(tmp_path: Path, name: str) -> None:
    path = policy_file(tmp_path, "p", [_rule("r", ["a"])], {"name": name})
    assert f'"name":"{name}"' in settings_json(parse_policy(path.read_text()))
