"""GET /v1/rollouts pages as GET /v1/keys does (`after` + `limit`, `next`), probed as an
attacker would: limits out of bounds or not integers, cursors that are unknown, too long,
unicode, control characters or SQL, a cursor of another policy's listing, another reader's
cursor. Found by an attacker's probe: the listing had no paging, so every read of it
returned every rollout ever started."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fixtures import inprocess
from fixtures.policycli import policy_cli

from bastion import _policy_cli
from bastion._appconfig import AppConfig
from bastion._identity import ensure_dev_key, issue_token
from bastion.policy import PolicySettings, serve, sign_bundle

DEADLINE = 10.0
POLICY = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: NAME, version: 1}
spec:
  rules:
    - {id: add-v1, match: {tools: ['demo__add']}, effect: allow}
"""


@dataclass(frozen=True)
class Service:
    home: Path
    url: str
    #: Rollout ids in the order they were started, by policy.
    started: dict[str, list[str]]

    async def get(
        self, params: dict[str, str], *, roles: tuple[str, ...] = ("operator",), tenant: str = "default"
    ) -> httpx.Response:
        token = issue_token(ensure_dev_key(self.home), subject="ops-pager", roles=roles, tenant=tenant)
        async with httpx.AsyncClient(base_url=self.url, timeout=DEADLINE) as http:
            return await http.get("/v1/rollouts", params=params, headers={"Authorization": f"Bearer {token}"})

    async def post(self, path: str, body: Any = None) -> dict[str, Any]:
        token = issue_token(ensure_dev_key(self.home), subject="ops-pager", roles=("operator",))
        async with httpx.AsyncClient(base_url=self.url, timeout=DEADLINE) as http:
            reply = await http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code in (200, 201), reply.text
        answer: dict[str, Any] = reply.json()
        return answer


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    files = []
    for name in ("pay", "ops"):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(POLICY.replace("NAME", name))
    home = tmp_path / "home"
    settings = PolicySettings(
        home=home,
        policy_grpc_addr=inprocess.ANY,
        policy_addr=inprocess.ANY,
        graph_grpc_addr="127.0.0.1:9",  # nothing listens: audit records wait in the outbox
        proxy_addr="127.0.0.1:9",
    )
    async with inprocess.serving(serve, settings, AppConfig(policies=tuple(files))) as addresses:
        running = Service(home, f"http://{addresses['http']}", {"pay": [], "ops": []})
        for name in ("pay", "ops"):
            candidate = POLICY.replace("NAME", name).replace("version: 1", "version: 2")
            await running.post("/v1/policies", {"bundle": sign_bundle(candidate, ensure_dev_key(home), kid="dev")})
        # Five of pay's and two of ops', interleaved; each rolled back so the next may start.
        for name in ("pay", "ops", "pay", "pay", "ops", "pay", "pay"):
            rollout = await running.post("/v1/rollouts", {"policy": name, "version": 2, "percent": 10})
            await running.post(f"/v1/rollouts/{rollout['id']}/rollback")
            running.started[name].append(rollout["id"])
        yield running


async def _walk(service: Service, params: dict[str, str], **who: Any) -> tuple[list[str], list[int]]:
    """Every id of the listing, following `next`; and the size of each page."""
    ids: list[str] = []
    sizes: list[int] = []
    query = dict(params)
    while True:
        reply = await service.get(query, **who)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        ids.extend(item["id"] for item in page["rollouts"])
        sizes.append(len(page["rollouts"]))
        if page["next"] is None:
            return ids, sizes
        assert page["next"] == ids[-1]
        query["after"] = page["next"]


async def test_pages_follow_next_to_every_rollout_oldest_first_and_end_with_null(service: Service) -> None:
    everything = (await service.get({})).json()
    assert everything["next"] is None
    ids = [item["id"] for item in everything["rollouts"]]
    assert len(ids) == 7
    assert ids == sorted(ids)
    assert set(ids) == set(service.started["pay"]) | set(service.started["ops"])
    assert await _walk(service, {"limit": "2"}) == (ids, [2, 2, 2, 1])
    assert await _walk(service, {"limit": "1"}) == (ids, [1] * 7)
    # A page that ends exactly at the last rollout says so: no empty page after it.
    assert await _walk(service, {"limit": "7"}) == (ids, [7])
    assert await _walk(service, {"limit": "1000"}) == (ids, [7])
    # Listing past the last one is an empty last page, not an error.
    past = (await service.get({"after": ids[-1]})).json()
    assert (past["rollouts"], past["next"]) == ([], None)
    # Each item keeps every field it had before paging.
    assert set(everything["rollouts"][0]) >= {"id", "policy", "version", "stable_version", "state", "counts"}


async def test_one_policys_pages_hold_only_its_rollouts(service: Service) -> None:
    assert await _walk(service, {"policy": "pay", "limit": "2"}) == (service.started["pay"], [2, 2, 1])
    assert await _walk(service, {"policy": "ops", "limit": "1"}) == (service.started["ops"], [1, 1])
    assert await _walk(service, {"policy": "nope", "limit": "1"}) == ([], [0])


@pytest.mark.parametrize(
    "limit", ["0", "-1", "1001", "99999999999999999999999999", "abc", "1.5", "", "1e3", "\u0661"]
)  # the last: an Arabic-Indic digit one, which int() alone would read as 1
async def test_a_limit_outside_1_to_1000_or_not_an_integer_is_422_naming_it(service: Service, limit: str) -> None:
    reply = await service.get({"limit": limit})
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bastion.invalid_request"), reply.text
    assert "limit" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    "cursor",
    [
        "0190f0e4-0000-7000-8000-000000000000",  # well formed, never issued
        "nope",
        "é\u202e",  # unicode, with a right-to-left override
        "\x00",
        "' OR 1=1 --",
        "%",
    ],
)
async def test_a_cursor_naming_no_rollout_is_404_and_shows_it_escaped(service: Service, cursor: str) -> None:
    reply = await service.get({"after": cursor})
    assert (reply.status_code, reply.json()["error"]["code"]) == (404, "bastion.not_found"), reply.text
    assert f"no rollout {cursor!r} to continue after" in reply.json()["error"]["message"]


async def test_a_cursor_over_64_characters_is_422(service: Service) -> None:
    reply = await service.get({"after": "a" * 65})
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "bastion.invalid_request")
    assert "after" in reply.json()["error"]["message"]


async def test_a_cursor_from_another_policys_listing_is_404(service: Service) -> None:
    # It would otherwise skip pay's rollouts older than the ops rollout, and the client would
    # read a shorter list as the whole of it.
    cursor = service.started["ops"][0]
    reply = await service.get({"policy": "pay", "after": cursor})
    assert (reply.status_code, reply.json()["error"]["code"]) == (404, "bastion.not_found")
    assert f"no rollout {cursor!r} of policy 'pay' to continue after" in reply.json()["error"]["message"]
    assert (await service.get({"after": cursor})).status_code == 200  # the unfiltered listing holds it


async def test_another_readers_cursor_reads_the_same_page_since_rollouts_are_the_deployments(
    service: Service,
) -> None:
    # A rollout puts a version in force for every tenant: every reader lists the same ones,
    # so a cursor carries nothing of the caller that issued it.
    first = (await service.get({"limit": "3"})).json()
    as_operator = (await service.get({"limit": "3", "after": first["next"]})).json()
    as_auditor = await service.get({"limit": "3", "after": first["next"]}, roles=("auditor",), tenant="globex")
    assert as_auditor.status_code == 200
    assert as_auditor.json() == as_operator
    for roles in ((), ("agent",)):
        refused = await service.get({"after": first["next"]}, roles=roles)
        assert refused.status_code == 403, refused.text
    async with httpx.AsyncClient(base_url=service.url, timeout=DEADLINE) as http:
        assert (await http.get("/v1/rollouts", params={"after": first["next"]})).status_code == 401


async def test_the_cli_lists_every_page(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await policy_cli(service.url, service.home, "rollouts", "--policy", "ops")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == service.started["ops"]
    # More rollouts than one page holds: the command follows `next` (pages of 2 here, run
    # in-process against the same server, rather than starting a thousand rollouts).
    monkeypatch.setattr(_policy_cli, "_PAGE", 2)
    token = issue_token(ensure_dev_key(service.home), subject="ops-pager", roles=("auditor",))
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as http:
        for policy, expected in (
            (None, sorted(service.started["pay"] + service.started["ops"])),
            ("pay", service.started["pay"]),
        ):
            capsys.readouterr()
            args = argparse.Namespace(policy=policy, json=True)
            assert await asyncio.to_thread(_policy_cli._rollouts, http, args) == 0
            listing = orjson.loads(capsys.readouterr().out)
            assert ([item["id"] for item in listing["rollouts"]], listing["next"]) == (expected, None)
