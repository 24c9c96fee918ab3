"""The dashboard in a real Chromium over a real stack: an operator signs in with a token and
reads workflows, a workflow's graph and nodes, a drift path, violations and the audit
chain — and what agents wrote (a tool name holding HTML) shows as text, never runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures import inprocess
from fixtures.browser import chromium
from fixtures.graphapi import auditor_token
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream
from playwright.async_api import Browser, Page, expect

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token

#: What a hostile agent names a tool: HTML that would run if the page parsed it.
HOSTILE_TOOL = 'echo<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
#: What a hostile agent passes as an argument: stored, and shown in the node's detail.
HOSTILE_TEXT = "<img src=x onerror=window.__pwned=3><b>bold</b>"
POLICY = {
    "apiVersion": "bastion.dev/v1",
    "kind": "AgentPolicy",
    "metadata": {"name": "ui", "version": 1},
    "spec": {
        "default": "deny",
        "rules": [
            {"id": "no-deletes", "match": {"tools": ["demo__delete_file"]}, "effect": "deny"},
            {"id": "demo", "match": {"tools": ["demo__*"]}, "effect": "allow"},
        ],
    },
}


@dataclass
class _Recorded:
    graph: str
    home: Path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoUpstream]:
    with demo_upstream(tmp_path_factory.mktemp("upstream")) as server:
        yield server


@pytest.fixture
async def recorded(tmp_path: Path, upstream: DemoUpstream) -> AsyncIterator[_Recorded]:
    """A stack whose graph holds workflow wf-ui (an allowed echo, a denied delete, an echo of
    HTML) and a rejected call whose recorded reason quotes HTML."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    app = AppConfig(servers={"demo": ServerConfig(url=upstream.url)}, policies=(policy,))
    async with inprocess.stack(tmp_path, app) as running:
        client = ProxyClient(tmp_path, running.proxy, running.graph)
        token = client.token("agent-ui")
        sent = headers(token, workflow="wf-ui")
        assert "error" not in (await client.post(tool_call("echo", {"text": "hello"}), sent)).json()
        denied = await client.post(tool_call("delete_file", {"path": "/tmp/x"}, 2), sent)
        assert denied.json()["error"]["data"]["rule_id"] == "no-deletes"
        assert "result" in (await client.post(tool_call("echo", {"text": HOSTILE_TEXT}, 3), sent)).json()
        # Refused before any decision (no '<' or '/' in a tool name), and recorded as a
        # violation of workflow bastion.rejected whose reason quotes the name.
        assert "error" in (await client.post(tool_call(HOSTILE_TOOL, {}, 4), sent)).json()
        await client.nodes("wf-ui", 4)
        await client.violations("bastion.rejected", 1)
        yield _Recorded(graph=running.graph, home=tmp_path)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def _open(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(url)
    return page, problems


async def _sign_in(page: Page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#use-token")


async def test_an_auditor_reads_workflows_nodes_drift_paths_violations_and_the_chain(
    recorded: _Recorded, browser: Browser
) -> None:
    page, problems = await _open(browser, f"{recorded.graph}/ui")
    await expect(page.locator("#status")).to_contain_text("Sign in")

    await _sign_in(page, auditor_token(recorded.home))
    await page.click("text=wf-ui")
    await expect(page.locator("h2")).to_contain_text("wf-ui")
    await expect(page.locator("td.tool", has_text="echo")).to_have_count(2)
    await expect(page.locator("tr.blocked")).to_have_count(1)
    await expect(page.locator("tr.blocked", has_text="no-deletes")).to_have_count(1)
    assert await page.locator("svg.graph circle").count() == await page.locator("tbody tr").count()

    # An argument holding HTML is shown, in the node's detail, as the characters it is.
    await page.locator("tbody tr", has_text="echo").last.click()
    await expect(page.locator("#node-detail")).to_contain_text(HOSTILE_TEXT)

    await page.locator("tr.blocked", has_text="no-deletes").click()
    await expect(page.locator("#node-detail")).to_contain_text('"rule_id": "no-deletes"')
    await page.locator("tr.blocked", has_text="no-deletes").locator("text=drift path").click()
    await expect(page.locator("#origin")).not_to_be_empty()
    await expect(page.locator("tbody tr").first).to_contain_text("delete_file")

    await page.click("nav >> text=Violations")
    await expect(page.locator("h2")).to_have_text("Violations")
    await expect(page.locator("tbody tr", has_text="no-deletes")).to_have_count(1)
    await expect(page.locator("td.reason", has_text="<script>window.__pwned=2</script>")).to_have_count(1)

    # Nothing of what agents wrote became an element, and nothing of it ran.
    assert await page.locator("main img, main script, main b").count() == 0
    assert await page.evaluate("window.__pwned") is None

    await page.click("nav >> text=Audit")
    await expect(page.locator("#chain")).to_contain_text("The audit chain holds")

    await page.click("#signout")
    await expect(page.locator("#status")).to_contain_text("Sign in")
    assert await page.evaluate("sessionStorage.length") == 0
    assert problems == [], problems  # no script error, no CSP violation of the page's own code


@pytest.mark.parametrize(
    ("who", "expected"),
    [("agent", "403"), ("garbage", "401"), ("foreign", "401")],
)
async def test_a_token_that_may_not_read_gets_the_apis_refusal_and_no_data(
    recorded: _Recorded, browser: Browser, tmp_path_factory: pytest.TempPathFactory, who: str, expected: str
) -> None:
    token = {
        "agent": issue_token(ensure_dev_key(recorded.home), subject="agent-ui"),
        "garbage": "not-a-jwt",
        "foreign": issue_token(
            ensure_dev_key(tmp_path_factory.mktemp("elsewhere")), subject="ops", roles=("operator",)
        ),
    }[who]
    page, _ = await _open(browser, f"{recorded.graph}/ui")
    await _sign_in(page, token)
    await expect(page.locator("#status")).to_contain_text(expected)
    assert await page.locator("text=wf-ui").count() == 0
