"""Rule ids that differ only in letter case, through the real admin REST and `bastion policy
validate`: refused as every other invalid document is (422 `bastion.policy.invalid`, or a
validation report), naming both rules, and nothing is stored. Approvals are bound to a
rule id and decisions audited by it, so `Allow-Refunds` next to `allow-refunds` would let
one be taken for the other (an attacker's probe)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures import inprocess
from fixtures.policycli import policy_cli

from bastion._appconfig import AppConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion.policy import PolicySettings, serve, sign_bundle

DEADLINE = 10.0
V1 = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 1}
spec:
  rules:
    - {id: add-v1, match: {tools: ['pay__add']}, effect: allow}
"""
CLASHING = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 2}
spec:
  rules:
    - {id: Allow-Refunds, match: {tools: ['pay__refund']}, when: 'args.amount <= 100', effect: allow}
    - {id: deny-wires, match: {tools: ['pay__wire']}, effect: deny}
    - {id: allow-refunds, match: {tools: ['pay__refund']}, effect: require_approval}
"""
BOTH_NAMED = (
    "policy 'pay' v2: rule 'allow-refunds' (rule #3) and rule 'Allow-Refunds' (rule #1) have ids that differ only "
    "in letter case; rule ids must be unique ignoring case"
)


class Service:
    def __init__(self, home: Path, http: str) -> None:
        self.home = home
        self.url = f"http://{http}"

    async def post(self, path: str, body: Any) -> httpx.Response:
        token = issue_token(ensure_dev_key(self.home), subject="ops-carol", roles=("operator",))
        async with httpx.AsyncClient(base_url=self.url, timeout=DEADLINE) as http:
            return await http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})

    async def versions(self) -> list[int]:
        token = issue_token(ensure_dev_key(self.home), subject="ops-carol", roles=("operator",))
        async with httpx.AsyncClient(base_url=self.url, timeout=DEADLINE) as http:
            reply = await http.get("/v1/policies/pay/versions", headers={"Authorization": f"Bearer {token}"})
        return [item["version"] for item in reply.json()["versions"]]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    policy = tmp_path / "pay.yaml"
    policy.write_text(V1)
    home = tmp_path / "home"
    settings = PolicySettings(
        home=home,
        policy_grpc_addr=inprocess.ANY,
        policy_addr=inprocess.ANY,
        graph_grpc_addr="127.0.0.1:9",  # nothing listens: audit records wait in the outbox
        proxy_addr="127.0.0.1:9",  # no live tool lists to check against
        policy_require_signed=False,
    )
    async with inprocess.serving(serve, settings, AppConfig(policies=(policy,))) as addresses:
        yield Service(home, addresses["http"])


@pytest.mark.parametrize("form", ["bundle", "document"])
async def test_storing_ids_that_differ_only_in_case_is_422_naming_both_and_stores_nothing(
    service: Service, form: str
) -> None:
    signed = {"bundle": sign_bundle(CLASHING, ensure_dev_key(service.home), kid="dev")}
    reply = await service.post("/v1/policies", signed if form == "bundle" else {"document": CLASHING})
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bastion.policy.invalid")
    assert BOTH_NAMED in reply.json()["error"]["message"]
    assert await service.versions() == [1]
    # The same document with distinct ids is stored: the refusal is the ids', nothing else's.
    fixed = await service.post("/v1/policies", {"document": CLASHING.replace("id: allow-refunds", "id: ask-refunds")})
    assert fixed.status_code == 201, fixed.text
    assert await service.versions() == [1, 2]


async def test_validate_reports_ids_that_differ_only_in_case_and_a_reserved_id_in_another_case(
    service: Service,
) -> None:
    report = (await service.post("/v1/policies/validate", {"document": CLASHING})).json()
    assert report["valid"] is False
    assert any(BOTH_NAMED in problem for problem in report["problems"]), report
    reserved = (await service.post("/v1/policies/validate", {"document": V1.replace("add-v1", "Default")})).json()
    assert reserved["valid"] is False
    assert any("rule id 'Default' is reserved for the fallthrough decision" in item for item in reserved["problems"])


async def test_a_lookalike_id_is_refused_for_its_characters(service: Service) -> None:
    lookalike = CLASHING.replace("id: allow-refunds", "id: Allow-Refund\u0455")  # Cyrillic dze
    report = (await service.post("/v1/policies/validate", {"document": lookalike})).json()
    assert report["valid"] is False
    assert any("must be 1-64 ASCII letters, digits" in problem for problem in report["problems"]), report


async def test_the_cli_validate_refuses_them_with_the_same_message(service: Service, tmp_path: Path) -> None:
    clashing = tmp_path / "clashing.yaml"
    clashing.write_text(CLASHING)
    code, out, err = await policy_cli(service.url, service.home, "validate", str(clashing))
    assert code == 1, (out, err)
    assert BOTH_NAMED in out
    clashing.write_text(CLASHING.replace("id: allow-refunds", "id: ask-refunds"))
    code, out, err = await policy_cli(service.url, service.home, "validate", str(clashing))
    assert code == 0, (out, err)
    assert "pay v2 is valid" in out
