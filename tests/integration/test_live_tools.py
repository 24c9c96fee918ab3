"""The proxy's GET /v1/tools (each upstream's live tools, for operators) and policy validation
against it: a rule naming a tool or argument no upstream has is flagged; with the proxy down,
validation says the live tools were not checked and still answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures import inprocess
from fixtures.graphapi import callers
from fixtures.policycli import policy_cli
from fixtures.policystack import free_addr, policy_stack
from fixtures.stack import ROOT
from fixtures.upstream import DemoUpstream, demo_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key
from bastion.policy import sign_bundle

POLICY = ROOT / "examples" / "policies" / "demo.yaml"
CANDIDATE = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: demo, version: 9}
spec:
  rules:
    - {id: ok-add, match: {tools: ['demo__add']}, args: {a: {type: integer}}, effect: allow}
    - {id: camel, match: {tools: ['demo__Echo']}, effect: allow}
    - {id: ghost, match: {tools: ['demo__nope']}, effect: allow}
    - {id: bad-arg, match: {tools: ['demo__add']}, args: {amount: {type: number}}, effect: allow}
    - {id: no-server, match: {tools: ['bank__transfer']}, effect: deny}
    - {id: lonely-glob, match: {tools: ['demo__zz*']}, effect: deny}
    - {id: fine-glob, match: {tools: ['demo__*']}, effect: deny}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


async def test_v1_tools_answers_operators_and_auditors_only(tmp_path: Path, upstream: DemoUpstream) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with policy_stack(tmp_path, app) as stack:
        who = callers(tmp_path, tmp_path / "elsewhere")
        async with httpx.AsyncClient(base_url=f"http://{stack.proxy}", timeout=30) as http:
            got = {name: await http.get("/v1/tools", headers=headers) for name, headers in who.items()}
            wrong_method = await http.post("/v1/tools", headers=who["operator"])
    assert {name: response.status_code for name, response in got.items()} == {
        "anonymous": 401,
        "garbage": 401,
        "expired": 401,
        "foreign": 401,
        "agent": 403,
        "auditor": 200,
        "operator": 200,
        "admin": 200,
    }
    assert got["anonymous"].headers["www-authenticate"] == "Bearer"
    assert got["agent"].json()["error"]["code"] == "bastion.auth.forbidden"
    assert wrong_method.status_code == 405
    demo = got["auditor"].json()["servers"]["demo"]
    assert demo["error"] is None
    tools = {tool["name"]: tool["inputSchema"] for tool in demo["tools"]}
    assert {"add", "echo", "count", "confirm", "delete_file"} <= set(tools)
    assert set(tools["add"]["properties"]) == {"a", "b"}


async def test_an_upstream_that_cannot_be_listed_shows_its_error_without_its_address(tmp_path: Path) -> None:
    dead = free_addr()
    app = AppConfig(servers={"gone": ServerConfig(url=f"http://{dead}/mcp")}, policies=(POLICY,))
    async with (
        policy_stack(tmp_path, app) as stack,
        httpx.AsyncClient(base_url=f"http://{stack.proxy}", timeout=30) as http,
    ):
        response = await http.get("/v1/tools", headers=stack.bearer("auditor"))
    assert response.status_code == 200
    gone = response.json()["servers"]["gone"]
    assert gone["tools"] == []
    assert "cannot list the tools of upstream 'gone'" in gone["error"]
    assert dead not in gone["error"]
    assert dead.split(":")[1] not in gone["error"]


async def test_validate_flags_unknown_tools_and_arguments_and_warns_on_empty_globs(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with policy_stack(tmp_path, app) as stack:
        response = await stack.policy_post("/v1/policies/validate", {"document": CANDIDATE})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["valid"] is False
    problems = "\n".join(report["problems"])
    assert "rule 'ghost': tool 'demo__nope' is not in upstream 'demo'" in problems
    assert "rule 'bad-arg': args.amount: no tool the rule names has an argument 'amount'" in problems
    assert "rule 'no-server': tool 'bank__transfer' names upstream 'bank'" in problems
    assert len(report["problems"]) == 3, problems  # ok-add, camel (case-insensitive) and the globs pass
    assert report["warnings"] == ["policy 'demo' v9 rule 'lonely-glob': tool pattern 'demo__zz*' matches no live tool"]
    assert report["live_tools"] == "checked against the proxy's live tools (upstreams: demo)"


async def test_validate_with_the_proxy_down_says_not_checked_and_stays_valid(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with policy_stack(tmp_path, app, proxy_up=False) as stack:
        response = await stack.policy_post("/v1/policies/validate", {"document": CANDIDATE})
        code, out, err = await _cli(stack.policy, tmp_path, "validate", str(POLICY))
    report = response.json()
    assert (report["valid"], report["problems"]) == (True, [])
    assert report["live_tools"].startswith("live tools not checked: the proxy at ")
    assert "unreachable" in report["live_tools"]
    assert code == 0, err
    assert "demo v1 is valid" in out
    assert "live tools not checked" in out


async def test_cli_validate_exits_1_on_a_tool_no_upstream_has(tmp_path: Path, upstream: DemoUpstream) -> None:
    file = tmp_path / "candidate.yaml"
    file.write_text(CANDIDATE)
    app = inprocess.app_config(upstream.url, POLICY)
    async with policy_stack(tmp_path, app) as stack:
        code, out, err = await _cli(stack.policy, tmp_path, "validate", str(file))
    assert code == 1, err
    assert "demo__nope" in out
    assert "warning: " in out


async def _cli(addr: str, home: Path, *args: str) -> tuple[int, str, str]:
    return await policy_cli(addr, home, *args)


async def test_creating_a_version_reports_what_no_live_upstream_has_and_stores_it_all_the_same(
    tmp_path: Path, upstream: DemoUpstream
) -> None:
    app = inprocess.app_config(upstream.url, POLICY)
    async with policy_stack(tmp_path, app) as stack:
        bundle = sign_bundle(CANDIDATE, ensure_dev_key(tmp_path), kid="dev")
        response = await stack.policy_post("/v1/policies", {"bundle": bundle})
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["name"], created["version"], created["created"]) == ("demo", 9, True)
    assert any("tool 'demo__nope' is not in upstream 'demo'" in warning for warning in created["warnings"])
    assert created["live_tools"] == "checked against the proxy's live tools (upstreams: demo)"
