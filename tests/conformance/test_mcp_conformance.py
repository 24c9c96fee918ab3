"""The official MCP conformance suite passes through `/mcp/{server}` exactly as it does directly.

DESIGN §4 (Transparency): a client must not tell the per-server endpoint from the
upstream except by the decisions. `@modelcontextprotocol/conformance` (pinned and installed
by scripts/conformance-up) runs its server scenarios, both dated protocol revisions, first
against tests/fixtures/conformance_server.py directly, then against the same server behind
the whole in-process stack (policy, verifier, graph, proxy) with a policy that allows
everything. Every check of every scenario must end the same way both times.

The suite's client cannot send custom headers, and the proxy requires a bearer token. So
the run through Bastion goes through `AuthHop`: a loopback reverse proxy, started here,
that adds `Authorization: Bearer <agent token>` to each request and relays everything else
byte for byte as it arrives (method, path, Host, Origin, session and Last-Event-ID headers,
bodies, SSE streams, client disconnects). Bastion's authentication stays on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.upstream import conformance_upstream

from bastion._appconfig import AppConfig, ServerConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion._web import start_web_server

ROOT = Path(__file__).resolve().parents[2]
POLICY = Path(__file__).with_name("allow_everything.yaml")
SERVER = "conformance"
#: The dated protocol revisions the suite's server scenarios are tagged with.
REVISIONS = ("2025-06-18", "2025-11-25")
#: A cold `npm install` of the suite takes ≈ 20 s; a cached one returns at once.
INSTALL_TIMEOUT_S = 300
#: One revision's scenarios take ≈ 6 s against the fixture; the bound is for a stuck run.
RUN_TIMEOUT_S = 120

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(INSTALL_TIMEOUT_S + 3 * RUN_TIMEOUT_S)]

#: Result folders are named `server-<scenario>-<ISO timestamp with : and . as ->`.
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
#: `list --server` prints `  - <scenario> [<revision>,<revision>]`.
_LISTED = re.compile(r"^\s*-\s+(?P<scenario>\S+)\s+\[(?P<revisions>[^\]]*)\]\s*$")
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)

Outcomes = dict[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Suite:
    cli: Path
    #: revision -> the server scenarios tagged with it (the "all" suite, pending included).
    scenarios: dict[str, frozenset[str]]


@pytest.fixture(scope="module")
def suite() -> Suite:
    """The pinned suite, installed into the tools cache; a failed install fails the test."""
    up = subprocess.run(
        [str(ROOT / "scripts" / "conformance-up")],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if up.returncode != 0:
        pytest.fail(f"scripts/conformance-up failed ({up.returncode}):\n{up.stderr[-4000:]}")
    cli = Path(up.stdout.strip().splitlines()[-1])
    listed = subprocess.run(
        [str(cli), "list", "--server"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if listed.returncode != 0:
        pytest.fail(f"`conformance list --server` failed ({listed.returncode}):\n{listed.stderr[-4000:]}")
    scenarios: dict[str, set[str]] = {revision: set() for revision in REVISIONS}
    for line in listed.stdout.splitlines():
        if match := _LISTED.match(line):
            for revision in match["revisions"].split(","):
                scenarios.setdefault(revision.strip(), set()).add(match["scenario"])
    if not all(scenarios[revision] for revision in REVISIONS):
        pytest.fail(f"the suite lists no server scenario for one of {REVISIONS}:\n{listed.stdout}")
    return Suite(cli=cli, scenarios={revision: frozenset(scenarios[revision]) for revision in REVISIONS})


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tests/fixtures/conformance_server.py as a real subprocess; yields its MCP URL."""
    with conformance_upstream(tmp_path_factory.mktemp("conformance-upstream")) as url:
        yield url


class AuthHop:
    """ASGI reverse proxy to `target` that adds the agent's bearer token and changes nothing else.

    Requests and responses are relayed as they are (including Host and Origin, which the
    DNS-rebinding scenario sets to an attacker's name), response bodies chunk by chunk as
    they arrive, and a client that hangs up is passed on as a hang-up upstream.
    """

    def __init__(self, target: str, token: str, client: httpx.AsyncClient) -> None:
        self._target = target.rstrip("/")
        self._authorization = f"Bearer {token}".encode()
        self._client = client
        #: Responses that carried Bastion's `Bastion-Node-Id`: actions it decided and journaled.
        self.governed = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name.lower() not in _HOP_BY_HOP and name.lower() not in (b"authorization", b"content-length")
        ]
        headers.append((b"authorization", self._authorization))
        url = self._target + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        request = self._client.build_request(scope["method"], url, headers=headers, content=bytes(body) or None)
        response = await self._client.send(request, stream=True)
        self.governed += "bastion-node-id" in response.headers
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP],
                }
            )
            relay = asyncio.create_task(self._relay(response, send))
            hang_up = asyncio.create_task(self._until_disconnect(receive))
            await asyncio.wait({relay, hang_up}, return_when=asyncio.FIRST_COMPLETED)
            for task in (relay, hang_up):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        finally:
            await response.aclose()

    @staticmethod
    async def _relay(response: httpx.Response, send: Any) -> None:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _until_disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


@contextlib.asynccontextmanager
async def auth_hop(target: str, token: str) -> AsyncIterator[tuple[str, AuthHop]]:
    """Serve an `AuthHop` to `target` on a loopback port; yield the URL to give the suite."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as client:
        hop = AuthHop(target, token, client)
        web = await start_web_server(hop, "127.0.0.1:0")
        try:
            yield f"http://{web.address}", hop
        finally:
            await web.stop()


async def run_suite(suite: Suite, url: str, revision: str, out: Path) -> Outcomes:
    """Run every server scenario of `revision` against `url`: scenario -> its checks' outcomes.

    INFO checks are the suite's own trace of the exchange (event ids, dates); what counts is
    SUCCESS, WARNING and FAILURE, by check id.
    """
    log = out.with_suffix(".log")
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            str(suite.cli),
            "server",
            "--url",
            url,
            "--suite",
            "all",
            "--spec-version",
            revision,
            "--output-dir",
            str(out),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            # Exit status 1 only says some check failed; the result files say which.
            await asyncio.wait_for(proc.wait(), RUN_TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    outcomes = read_outcomes(out)
    assert set(outcomes) == suite.scenarios[revision], (
        f"the suite did not run every scenario against {url}:\n{log.read_text(errors='replace')[-4000:]}"
    )
    return outcomes


def read_outcomes(out: Path) -> Outcomes:
    outcomes: Outcomes = {}
    for checks_file in sorted(out.glob("*/checks.json")):
        match = _RESULT_DIR.match(checks_file.parent.name)
        assert match, f"unexpected result folder {checks_file.parent}"
        checks = json.loads(checks_file.read_bytes())
        outcomes[match["scenario"]] = tuple(
            sorted((check["id"], check["status"]) for check in checks if check["status"] != "INFO")
        )
    return outcomes


def passed(outcomes: Outcomes) -> set[str]:
    return {scenario for scenario, checks in outcomes.items() if all(status != "FAILURE" for _, status in checks)}


#: The fixture as a stdio server, which the proxy runs and serves on `/mcp/{server}` itself.
STDIO = ServerConfig(command=(sys.executable, str(ROOT / "tests" / "fixtures" / "conformance_server.py"), "--stdio"))


#: (revision, upstream transport): both revisions through an HTTP upstream; the newest one
#: through a stdio child too. A stdio session starts a child (≈ 3 s of SDK imports), so a
#: revision's run there takes ≈ 70 s against ≈ 5 s over HTTP; the older revision's
#: scenarios are a subset of the newer one's.
RUNS = [(revision, "http") for revision in REVISIONS] + [(REVISIONS[-1], "stdio")]


@pytest.mark.parametrize(("revision", "transport"), RUNS)
async def test_every_scenario_ends_through_bastion_as_it_does_directly(
    suite: Suite, upstream: str, tmp_path: Path, revision: str, transport: str
) -> None:
    started = time.monotonic()
    direct = await run_suite(suite, upstream, revision, tmp_path / "direct")
    direct_s = time.monotonic() - started
    assert passed(direct) == set(direct), f"the fixture itself fails {sorted(set(direct) - passed(direct))}: {direct}"

    server = ServerConfig(url=upstream) if transport == "http" else STDIO
    app = AppConfig(servers={SERVER: server}, policies=(POLICY,))
    token = issue_token(ensure_dev_key(tmp_path), subject="conformance-suite")
    async with inprocess.stack(tmp_path, app) as running, auth_hop(f"http://{running.proxy}", token) as (url, hop):
        started = time.monotonic()
        through = await run_suite(suite, f"{url}/mcp/{SERVER}", revision, tmp_path / "bastion")
        through_s = time.monotonic() - started
    print(  # the figures, in CI logs under -rA / -s
        f"conformance {revision}: {len(passed(direct))}/{len(direct)} scenarios passed directly ({direct_s:.1f} s), "
        f"{len(passed(through))}/{len(through)} through Bastion to the {transport} upstream ({through_s:.1f} s)"
    )
    differing = {
        scenario: {"direct": direct[scenario], "bastion": through[scenario]}
        for scenario in direct
        if through[scenario] != direct[scenario]
    }
    assert not differing, f"scenarios that end differently through /mcp/{SERVER}: {json.dumps(differing, indent=1)}"
    # And Bastion decided and journaled the tool calls, reads and prompt gets, not waved them through.
    assert hop.governed >= len(through) // 2, hop.governed


def test_the_suite_cli_is_installed_outside_the_checkout(suite: Suite) -> None:
    tools = Path(os.environ.get("BASTION_TOOLS", Path.home() / ".cache" / "bastion" / "tools"))
    assert suite.cli.is_relative_to(tools / "conformance")
    assert not suite.cli.resolve().is_relative_to(ROOT)
