"""GET /v1/policies/{name}/versions pages (`after` + `limit`, `next`), as /v1/keys and
/v1/rollouts do, and lists summaries only: a policy's versions were read whole — every
document, canonical form and diff — on each request, so a policy with thousands of large
versions made each listing gigabytes (found by an attacker's probe)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.policycli import policy_cli

from bastion._appconfig import AppConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion.policy import PolicySettings, serve, sign_bundle

VERSIONS = 7
POLICY = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: VERSION}
spec:
  rules:
    - {id: add-vVERSION, match: {tools: ['demo__add']}, effect: allow}
"""


@dataclass(frozen=True)
class Service:
    home: Path
    url: str

    async def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        token = issue_token(ensure_dev_key(self.home), subject="auditor-pager", roles=("auditor",))
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            return await http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    tmp = tmp_path
    first = tmp / "pay.yaml"
    first.write_text(POLICY.replace("VERSION", "1"))
    home = tmp / "home"
    settings = PolicySettings(
        home=home,
        policy_grpc_addr=inprocess.ANY,
        policy_addr=inprocess.ANY,
        graph_grpc_addr="127.0.0.1:9",
        proxy_addr="127.0.0.1:9",
    )
    async with inprocess.serving(serve, settings, AppConfig(policies=(first,))) as addresses:
        url = f"http://{addresses['http']}"
        token = issue_token(ensure_dev_key(home), subject="ops", roles=("operator",))
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            for version in range(2, VERSIONS + 1):
                bundle = sign_bundle(POLICY.replace("VERSION", str(version)), ensure_dev_key(home), kid="dev")
                reply = await http.post("/v1/policies", json={"bundle": bundle})
                assert reply.status_code == 201, reply.text
        yield Service(home, url)


async def test_pages_follow_next_to_every_version_and_end_with_null(service: Service) -> None:
    seen: list[int] = []
    sizes: list[int] = []
    params = {"limit": "3"}
    while True:
        reply = await service.get("/v1/policies/pay/versions", params)
        assert reply.status_code == 200, reply.text
        page: dict[str, Any] = reply.json()
        seen += [item["version"] for item in page["versions"]]
        sizes.append(len(page["versions"]))
        if page["next"] is None:
            break
        assert page["next"] == seen[-1]
        params["after"] = str(page["next"])
    assert seen == list(range(1, VERSIONS + 1))
    assert sizes == [3, 3, 1]
    whole = (await service.get("/v1/policies/pay/versions")).json()
    assert [item["version"] for item in whole["versions"]] == seen
    assert whole["next"] is None
    assert whole["active_version"] == 1
    assert "document" not in whole["versions"][0]


async def test_past_the_last_version_is_an_empty_page_and_an_unknown_policy_404(service: Service) -> None:
    past = await service.get("/v1/policies/pay/versions", {"after": str(VERSIONS)})
    unknown = await service.get("/v1/policies/nope/versions", {"after": "3"})
    assert (past.status_code, past.json()["versions"], past.json()["next"]) == (200, [], None)
    assert unknown.status_code == 404


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "1001"}, {"limit": "1.5"}, {"limit": "\u0661"},
                                   {"after": "-1"}, {"after": "x"}, {"after": "99999999999999999999999"}])  # fmt: skip
async def test_a_bad_limit_or_after_is_422_naming_it(service: Service, query: dict[str, str]) -> None:
    reply = await service.get("/v1/policies/pay/versions", query)
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bastion.invalid_request"), reply.text
    assert next(iter(query)) in reply.json()["error"]["message"]


async def test_the_cli_lists_every_version_across_pages(service: Service) -> None:
    code, out, err = await policy_cli(service.url, service.home, "versions", "pay")
    assert code == 0, err
    listed = [line.lstrip("* ").split()[0] for line in out.splitlines()]
    assert listed == [f"v{version}" for version in range(1, VERSIONS + 1)]
