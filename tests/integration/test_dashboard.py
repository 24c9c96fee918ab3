"""The dashboard in a real Chromium over a real stack: an operator signs in with a token and
reads workflows, a workflow's graph and nodes, a drift path, violations and the audit
chain — and what agents wrote (a tool name holding HTML) shows as text, never runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures import inprocess
from fixtures.browser import chromium, open_page, sign_in
from fixtures.graphapi import auditor_token
from fixtures.mcpcalls import ProxyClient, headers, tool_call
from fixtures.upstream import DemoUpstream, demo_upstream
from playwright.async_api import Browser, Route, expect

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token

#: What a hostile agent names a tool: HTML that would run if the page parsed it.
HOSTILE_TOOL = 'echo<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
#: What a hostile agent passes as an argument: stored, and shown in the node's detail.
HOSTILE_TEXT = "<img src=x onerror=window.__pwned=3><b>bold</b>"
#: Text that reads as something else: a bidi override makes "report\u202etxt.exe" read as
#: "reportexe.txt", and Unicode tag characters (U+E0000…) carry "IGNORE" no reader sees.
HIDDEN_TEXT = "report\u202etxt.exe" + "".join(chr(0xE0000 + ord(c)) for c in "IGNORE")
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
    HTML), a rejected call whose recorded reason quotes HTML, and workflow wf-hidden (an echo
    of text holding invisible characters)."""
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
        hidden = headers(token, workflow="wf-hidden")
        assert "result" in (await client.post(tool_call("echo", {"text": HIDDEN_TEXT}, 5), hidden)).json()
        await client.nodes("wf-hidden", 1)
        yield _Recorded(graph=running.graph, home=tmp_path)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def test_an_auditor_reads_workflows_nodes_drift_paths_violations_and_the_chain(
    recorded: _Recorded, browser: Browser
) -> None:
    page, problems = await open_page(browser, f"{recorded.graph}/ui")
    await expect(page.locator("#status")).to_contain_text("Sign in")

    await sign_in(page, auditor_token(recorded.home))
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
    # The token is in the page's memory only: no storage /docs (same origin, Swagger UI
    # from a CDN) could read, and a reload asks for it again.
    assert await page.evaluate("sessionStorage.length + localStorage.length + document.cookie.length") == 0
    await page.reload()
    await expect(page.locator("#status")).to_contain_text("Sign in")
    await sign_in(page, auditor_token(recorded.home))
    await expect(page.locator("#chain")).to_contain_text("The audit chain holds")

    await page.click("#signout")
    await expect(page.locator("#status")).to_contain_text("Sign in")
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
    page, _ = await open_page(browser, f"{recorded.graph}/ui")
    await sign_in(page, token)
    await expect(page.locator("#status")).to_contain_text(expected)
    assert await page.locator("text=wf-ui").count() == 0


async def test_an_answer_that_arrives_after_the_operator_moved_on_is_not_shown(
    recorded: _Recorded, browser: Browser
) -> None:
    # Found by an attacker's probe: a slow answer was painted over the page the operator had
    # moved to (the URL said one workflow, the page showed the violations), and over the
    # signed-out page, putting the data back after "Sign out".
    page, problems = await open_page(browser, f"{recorded.graph}/ui")
    released = asyncio.Event()

    async def hold(route: Route) -> None:
        await released.wait()
        await route.continue_()

    await page.route("**/audit/violations*", hold)
    await sign_in(page, auditor_token(recorded.home))
    await expect(page.locator("tbody a", has_text="wf-ui")).to_have_count(1)

    # Wait for the held request to be sent: the click's hashchange is queued, and a goto
    # that lands first would make that render read the workflow's hash instead.
    async with page.expect_request("**/audit/violations*"):
        await page.click("nav >> text=Violations")  # held
    await page.goto(f"{recorded.graph}/ui#/workflow/wf-ui")
    await expect(page.locator("h2")).to_have_text("Workflow wf-ui")
    async with page.expect_response("**/audit/violations*"):
        released.set()
    await page.wait_for_timeout(500)
    await expect(page.locator("h2")).to_have_text("Workflow wf-ui")
    await expect(page.locator("#status")).to_have_text("")

    released.clear()
    async with page.expect_request("**/audit/violations*"):
        await page.click("nav >> text=Violations")  # held again
    await page.click("#signout")
    async with page.expect_response("**/audit/violations*"):
        released.set()
    await page.wait_for_timeout(500)
    await expect(page.locator("#status")).to_contain_text("Sign in")
    await expect(page.locator("#view")).to_be_empty()
    assert problems == [], problems


async def test_an_id_no_url_path_can_carry_is_not_requested(recorded: _Recorded, browser: Browser) -> None:
    # Found by an attacker's probe: encodeURIComponent leaves "." alone and the browser
    # resolves a "." or ".." segment before sending (#/workflow/.. read "/", #/drift/../audit
    # read /drift-path/audit), and the graph decodes %2F before routing (#/workflow/wf-ui%2Fnodes
    # read wf-ui's node list). The graph stores such ids from any holder of the service token.
    page, problems = await open_page(browser, f"{recorded.graph}/ui")
    await sign_in(page, auditor_token(recorded.home))
    await expect(page.locator("tbody a", has_text="wf-ui")).to_have_count(1)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    for hash_route in (
        "#/workflow/..",
        "#/workflow/%2e",
        "#/workflow/wf-ui%2Fnodes",
        "#/drift/../audit",
        "#/drift/wf-ui/..",
        "#/drift/wf-ui%2Fnodes/x",
    ):
        requested.clear()
        await page.goto(f"{recorded.graph}/ui{hash_route}")
        await expect(page.locator("#status")).to_contain_text("cannot be read")
        assert [url for url in requested if "/ui" not in url] == [], (hash_route, requested)
    assert problems == [], problems


async def test_characters_that_hide_or_reorder_text_are_shown_not_obeyed(recorded: _Recorded, browser: Browser) -> None:
    # Found by an attacker's probe: an argument holding a bidi override read reordered, and
    # tag characters hid text from the operator entirely. Each is now shown as its code point.
    page, problems = await open_page(browser, f"{recorded.graph}/ui#/workflow/wf-hidden")
    await sign_in(page, auditor_token(recorded.home))
    await page.locator("tbody tr", has_text="echo").click()
    detail = page.locator("#node-detail")
    marks = ["U+202E"] + [f"U+{0xE0000 + ord(char):X}" for char in "IGNORE"]
    await expect(detail.locator(".cp")).to_have_text(marks)
    shown = await detail.text_content() or ""
    assert "\u202e" not in shown
    assert not any(0xE0000 <= ord(char) <= 0xE007F for char in shown)
    assert problems == [], problems
    # Trusted Types: should a sink ever slip into the script, the browser refuses HTML text.
    sink = await page.evaluate(
        "() => { try { document.createElement('p').innerHTML = '<b>x</b>'; return 'parsed'; }"
        " catch (error) { return error.name; } }"
    )
    assert sink == "TypeError"


async def test_the_api_docs_render_from_the_services_own_files(recorded: _Recorded, browser: Browser) -> None:
    # Swagger UI from the package, under its policy: a script it refused, or one fetched from
    # elsewhere, would leave the page blank or log a violation.
    page, problems = await open_page(browser, f"{recorded.graph}/docs")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.reload()
    await expect(
        page.locator(".opblock-summary-path", has_text="/graphs/{workflow_id}/drift-path/{node_id}")
    ).to_have_count(1)
    graph_host = recorded.graph.removeprefix("http://")
    assert requested, "the reload fetched nothing"
    assert all(url.split("/")[2] == graph_host for url in requested), requested
    assert problems == [], problems
