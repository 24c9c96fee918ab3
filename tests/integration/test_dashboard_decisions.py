"""Draining approvals and the verifier's queue from the dashboard, in a real Chromium: the
graph's `/ui` knows where the proxy is (BASTION_DASHBOARD_PROXY_URL), the proxy answers
that origin's cross-origin requests (BASTION_DASHBOARD_ORIGIN) and no other's."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.browser import chromium, open_page, sign_in
from fixtures.graphapi import auditor_token
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream
from playwright.async_api import Browser, Page, expect

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token

POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "ui-decisions", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "ask-deletes", "match": {"tools": ["demo__delete_file"]}, "effect": "require_approval"},
            {"id": "park-adds", "match": {"tools": ["demo__add"]}, "effect": "queue"},
            {"id": "demo", "match": {"tools": ["demo__*"]}, "effect": "allow"},
        ],
    },
}


@dataclass
class _Stack:
    client: ProxyClient
    proxy: str
    graph: str
    home: Path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


def _reserved_port() -> int:
    # The graph must be told the proxy's URL before the proxy starts, and the proxy the
    # graph's origin: the proxy's port is picked here (the window before it binds is tiny).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def stack(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[_Stack]:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=(policy,))
    proxy_addr = f"127.0.0.1:{_reserved_port()}"
    async with contextlib.AsyncExitStack() as running:
        policy_addrs = await running.enter_async_context(inprocess.policy(tmp_path, app))
        verifier_addrs = await running.enter_async_context(inprocess.verifier(tmp_path, app))
        graph_addrs = await running.enter_async_context(
            inprocess.graph(tmp_path, app, policy_addr=policy_addrs["grpc"], dashboard_proxy_url=f"http://{proxy_addr}")
        )
        proxy_addrs = await running.enter_async_context(
            inprocess.proxy(
                tmp_path,
                app,
                policy_addr=policy_addrs["grpc"],
                verifier_addr=verifier_addrs["grpc"],
                graph_addr=graph_addrs["grpc"],
                proxy_addr=proxy_addr,
                dashboard_origin=f"http://{graph_addrs['http']}",
            )
        )
        await inprocess.synced(graph_addrs["http"], "graph")
        client = ProxyClient(tmp_path, proxy_addrs["http"], graph_addrs["http"])
        yield _Stack(client=client, proxy=f"http://{proxy_addrs['http']}", graph=client.graph, home=tmp_path)


def _operator(home: Path) -> str:
    return issue_token(ensure_dev_key(home), subject="ops-ui", roles=("operator",))


async def _page(browser: Browser, stack: _Stack, token: str, route: str) -> tuple[Page, list[str]]:
    page, problems = await open_page(browser, f"{stack.graph}/ui{route}")
    await sign_in(page, token)
    return page, problems


async def test_an_operator_approves_a_request_and_releases_a_queued_call_from_the_dashboard(stack: _Stack) -> None:
    token = stack.client.token("agent-ask")
    sent = headers(token, workflow="wf-ask")
    asked = (await stack.client.post(tool_call("delete_file", {"path": "/tmp/old"}, 1), sent)).json()
    assert asked["error"]["code"] == -32004, asked
    approval_id = asked["error"]["data"]["approval_id"]
    parked = (await stack.client.post(tool_call("add", {"a": 1, "b": 2}, 2), sent)).json()
    queue_id = parked["error"]["data"]["queue_id"]

    async with chromium() as browser:
        page, problems = await _page(browser, stack, _operator(stack.home), "#/approvals")
        await expect(page.locator("nav a[data-nav=approvals]")).to_be_visible()
        row = page.locator(f"tr[data-id='{approval_id}']")
        await expect(row).to_contain_text("ask-deletes")
        await row.locator("input").fill("cleanup agreed")
        await row.locator("button.yes").click()
        await expect(page.locator("#status")).to_contain_text("approve done")
        await expect(page.locator(f"tr[data-id='{approval_id}']")).to_have_count(0)

        await page.click("nav >> text=Queue")
        row = page.locator(f"tr[data-id='{queue_id}']")
        await expect(row).to_contain_text("park-adds")
        await row.locator("button.yes").click()
        await expect(page.locator("#status")).to_contain_text("release done")
        assert problems == [], problems

    # The approved and the released calls now pass, once each.
    again = (await stack.client.post(tool_call("delete_file", {"path": "/tmp/old"}, 3), sent)).json()
    assert "result" in again, again
    released = (await stack.client.post(tool_call("add", {"a": 1, "b": 2}, 4), sent)).json()
    assert "result" in released, released
    async with httpx.AsyncClient(
        base_url=stack.proxy, headers={"Authorization": f"Bearer {_operator(stack.home)}"}
    ) as http:
        decided = (await http.get(f"/v1/approvals/{approval_id}")).json()
    assert decided["decided_by"] == "ops-ui"
    assert decided["decision_reason"] == "cleanup agreed"


async def test_an_auditor_sees_the_requests_but_cannot_decide_them(stack: _Stack) -> None:
    sent = headers(stack.client.token("agent-ask"), workflow="wf-ask")
    asked = (await stack.client.post(tool_call("delete_file", {"path": "/tmp/x"}, 1), sent)).json()
    approval_id = asked["error"]["data"]["approval_id"]

    async with chromium() as browser:
        page, _ = await _page(browser, stack, auditor_token(stack.home), "#/approvals")
        row = page.locator(f"tr[data-id='{approval_id}']")
        await row.locator("button.yes").click()
        await expect(page.locator("#status")).to_contain_text("403")
        await expect(row).to_have_count(1)


async def test_the_proxy_answers_cross_origin_requests_for_the_dashboards_origin_only(stack: _Stack) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with httpx.AsyncClient(base_url=stack.proxy) as http:
        ours = await http.options("/v1/approvals", headers={"Origin": stack.graph, **preflight})
        theirs = await http.options("/v1/approvals", headers={"Origin": "http://evil.example", **preflight})
        lookalike = await http.options("/v1/queue", headers={"Origin": stack.graph + ".evil.example", **preflight})
        read = await http.get(
            "/v1/approvals",
            headers={"Origin": "http://evil.example", "Authorization": f"Bearer {_operator(stack.home)}"},
        )
        mcp = await http.options("/mcp/demo", headers={"Origin": stack.graph, **preflight})

    assert ours.status_code == 204
    assert ours.headers["access-control-allow-origin"] == stack.graph
    assert "authorization" in ours.headers["access-control-allow-headers"]
    assert theirs.status_code == 403
    assert "access-control-allow-origin" not in theirs.headers
    # Refused by the route's own handler: 403 (Origin not in allowed_hosts) or 405 (no OPTIONS route).
    assert lookalike.status_code in (403, 405)
    assert "access-control-allow-origin" not in lookalike.headers
    # Another origin's request is checked as before (its Origin is not an allowed host) and
    # carries nothing a browser would let that origin's script read.
    assert "access-control-allow-origin" not in read.headers
    assert read.status_code == 403, read.text
    assert "access-control-allow-origin" not in mcp.headers  # the agent endpoints answer no origin


async def test_a_refused_cross_origin_preflight_is_journaled_like_any_refusal(stack: _Stack) -> None:
    # A page of another origin trying the operator routes with a token never gets past the
    # preflight: that refusal must be in the audit trail (workflow bastion.rejected) as the
    # same request without CORS configured would be.
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with httpx.AsyncClient(base_url=stack.proxy) as http:
        evil = await http.options("/v1/approvals", headers={"Origin": "http://evil.example", **preflight})
        null = await http.options("/v1/queue", headers={"Origin": "null", **preflight})
    assert evil.status_code == 403
    assert null.status_code == 403
    assert "access-control-allow-origin" not in evil.headers
    assert "access-control-allow-origin" not in null.headers

    def refused(method: str, origin: str) -> Callable[[dict[str, Any]], bool]:
        return lambda node: node["action"].get("method") == method and origin in node.get("block_reason", "")

    found = await stack.client.nodes("bastion.rejected", 1, where=refused("OPTIONS /v1/approvals", "evil.example"))
    assert "not allowed" in found[0]["block_reason"]
    await stack.client.nodes("bastion.rejected", 1, where=refused("OPTIONS /v1/queue", "'null'"))


async def test_the_operator_sees_what_a_parked_call_would_do_before_deciding(stack: _Stack) -> None:
    # The tool's name alone is every call of it: the row must show the arguments the
    # approval is for (the path delete_file deletes, the numbers add adds).
    sent = headers(stack.client.token("agent-ask"), workflow="wf-args")
    asked = (await stack.client.post(tool_call("delete_file", {"path": "/etc/important.conf"}, 1), sent)).json()
    approval_id = asked["error"]["data"]["approval_id"]
    parked = (await stack.client.post(tool_call("add", {"a": 40, "b": 2}, 2), sent)).json()
    queue_id = parked["error"]["data"]["queue_id"]

    async with chromium() as browser:
        page, problems = await _page(browser, stack, _operator(stack.home), "#/approvals")
        row = page.locator(f"tr[data-id='{approval_id}']")
        await expect(row).to_contain_text("demo / delete_file")
        await expect(row.locator("pre.args")).to_contain_text('"path": "/etc/important.conf"')
        await page.click("nav >> text=Queue")
        row = page.locator(f"tr[data-id='{queue_id}']")
        await expect(row.locator("pre.args")).to_contain_text('"a": 40')
        await expect(row.locator("pre.args")).to_contain_text('"b": 2')
        assert problems == [], problems
