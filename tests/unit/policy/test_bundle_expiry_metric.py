"""A bundle's `exp` is the signer's approval lifetime: it is exported for the active versions
(bastion_policy_bundle_expiry_timestamp_seconds, for the BastionPolicyBundleExpiringSoon and
BastionPolicyBundleExpired alerts; nothing for a version applied unsigned), a version past it
is never activated, rolled out or promoted, and an active one keeps being served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from bastion._appconfig import AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, issue_token, load_public_keys
from bastion.policy import BundleVerifier, PolicyRegistry, PolicyStore, sign_bundle
from bastion.policy._api import create_app
from bastion.policy._bundles import DEFAULT_TTL_S, LEEWAY_S, BundleExpiryCollector, bundle_expiry
from bastion.policy._store import Signature

METRIC = "bastion_policy_bundle_expiry_timestamp_seconds"
V1 = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 1}
spec:
  rules:
    - {id: allow-add, match: {tools: ['demo__add']}, effect: allow}
"""
V2 = V1.replace("version: 1", "version: 2")
OTHER = V1.replace("name: pay", "name: kyc")
NOW = 1_800_000_000


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["policy"], sample.labels["version"]): sample.value
        for family in registry.collect()
        if family.name == METRIC
        for sample in family.samples
    }


def test_bundle_expiry_reads_exp_from_the_header_and_none_from_garbage() -> None:
    bundle = sign_bundle(V1, Ed25519PrivateKey.generate(), kid="dev", ttl_seconds=600, now=NOW)
    assert bundle_expiry(bundle) == NOW + 600
    assert bundle_expiry("not-a-jws") is None
    assert bundle_expiry("e30.payload.sig") is None  # {} : no exp


async def test_the_gauge_follows_the_signed_active_versions_and_skips_unsigned_ones(tmp_path: Path) -> None:
    file = tmp_path / "kyc.yaml"
    file.write_text(OTHER)
    store = PolicyStore(tmp_path / "versions.db")
    try:
        policies = PolicyRegistry(store)
        registry = CollectorRegistry()
        registry.register(BundleExpiryCollector(policies.bundle_expiries))
        await policies.apply_files([file])  # bastion.yaml files are unsigned: no series
        assert _samples(registry) == {}

        key = Ed25519PrivateKey.generate()
        for text, ttl in ((V1, 3600), (V2, 7200)):
            bundle = sign_bundle(text, key, kid="dev", ttl_seconds=ttl, now=NOW)
            await policies.create(text, author="ops", signature=Signature(bundle, "dev"))
        await policies.activate("pay", 1, by="ops")
        assert _samples(registry) == {("pay", "1"): NOW + 3600}

        await policies.activate("pay", 2, by="ops")  # the series moves with the active version
        assert _samples(registry) == {("pay", "2"): NOW + 7200}
    finally:
        store.close()


# --- an expired approval is never put in force; what is active keeps being served ----------


@dataclass
class _Admin:
    http: httpx.AsyncClient
    registry: CollectorRegistry
    clock: list[float]
    key: Ed25519PrivateKey

    async def submit(self, text: str, ttl: int) -> httpx.Response:
        bundle = sign_bundle(text, self.key, kid="dev", ttl_seconds=ttl, now=int(self.clock[0]))
        return await self.http.post("/v1/policies", json={"bundle": bundle})

    def refused_expired(self) -> float:
        value = self.registry.get_sample_value("bastion_policy_bundle_refusals_total", {"reason": "expired"})
        return value or 0.0


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[_Admin]:
    """The policy admin app with v1 of `pay` active (unsigned, from a file) and a clock to move."""
    file = tmp_path / "pay.yaml"
    file.write_text(V1)
    store = PolicyStore(tmp_path / "versions.db")
    policies = PolicyRegistry(store)
    await policies.apply_files([file])
    clock = [float(NOW)]
    key = Ed25519PrivateKey.generate()
    registry = CollectorRegistry()
    app = create_app(
        policies=policies,
        bundles=BundleVerifier({"dev": key.public_key()}, registry=registry, clock=lambda: clock[0]),
        verifier=TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path)),
        hosts=HostCheck(("testserver",), "127.0.0.1"),
        registry=registry,
        is_ready=lambda: True,
    )
    token = issue_token(ensure_dev_key(tmp_path), subject="ops", roles=("operator",))
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as http:
            yield _Admin(http, registry, clock, key)
    finally:
        store.close()


def _active(policies: dict[str, Any]) -> dict[str, int]:
    return {item["name"]: item["version"] for item in policies["policies"]}


async def test_a_version_whose_bundle_expired_cannot_be_rolled_out_or_activated(admin: _Admin) -> None:
    assert (await admin.submit(V2, ttl=3600)).status_code == 201
    admin.clock[0] = NOW + 3600 + LEEWAY_S + 1  # the signer's approval has run out

    for path, body in (
        ("/v1/rollouts", {"policy": "pay", "version": 2, "percent": 10}),
        ("/v1/policies/pay/versions/2/activate", None),
    ):
        reply = await admin.http.post(path, json=body)
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert error["code"] == "bastion.policy.signature"
        assert "policy 'pay' v2 was signed until 2027-01-15T09:00:00Z" in error["message"]
        assert "sign the document again under a new metadata.version" in error["message"]
    assert admin.refused_expired() == 2
    assert _active((await admin.http.get("/v1/policies")).json()) == {"pay": 1}
    assert (await admin.http.get("/v1/rollouts")).json()["rollouts"] == []


async def test_a_rollout_whose_candidate_expired_cannot_be_promoted_but_can_be_rolled_back(admin: _Admin) -> None:
    assert (await admin.submit(V2, ttl=3600)).status_code == 201
    started = await admin.http.post("/v1/rollouts", json={"policy": "pay", "version": 2, "percent": 10})
    assert started.status_code == 201, started.text
    rollout = started.json()["id"]
    admin.clock[0] = NOW + 7200

    refused = await admin.http.post(f"/v1/rollouts/{rollout}/promote")
    assert refused.status_code == 422, refused.text
    assert "'pay' v2 was signed until" in refused.json()["error"]["message"]
    assert (await admin.http.get(f"/v1/rollouts/{rollout}")).json()["state"] == "running"
    assert _active((await admin.http.get("/v1/policies")).json()) == {"pay": 1}

    ended = await admin.http.post(f"/v1/rollouts/{rollout}/rollback")
    assert ended.status_code == 200, ended.text
    assert ended.json()["state"] == "rolled_back"


async def test_an_active_version_keeps_being_served_after_its_bundle_expires(admin: _Admin) -> None:
    assert (await admin.submit(V2, ttl=3600)).status_code == 201
    assert (await admin.http.post("/v1/policies/pay/versions/2/activate")).status_code == 200
    admin.clock[0] = NOW + 30 * 86400

    assert _active((await admin.http.get("/v1/policies")).json()) == {"pay": 2}
    # Within the leeway a bundle still counts as in force, as it does on submission.
    admin.clock[0] = NOW + 3600 + LEEWAY_S
    assert (await admin.http.post("/v1/policies/pay/versions/2/activate")).status_code == 200
    assert admin.refused_expired() == 0


async def test_a_fresh_version_can_still_replace_an_expired_one(admin: _Admin) -> None:
    assert (await admin.submit(V2, ttl=3600)).status_code == 201
    assert (await admin.http.post("/v1/policies/pay/versions/2/activate")).status_code == 200
    admin.clock[0] = NOW + 7200
    v3 = V2.replace("version: 2", "version: 3")
    assert (await admin.submit(v3, ttl=DEFAULT_TTL_S)).status_code == 201
    started = await admin.http.post("/v1/rollouts", json={"policy": "pay", "version": 3, "percent": 50})
    assert started.status_code == 201, started.text
    promoted = await admin.http.post(f"/v1/rollouts/{started.json()['id']}/promote")
    assert promoted.status_code == 200, promoted.text
    assert _active((await admin.http.get("/v1/policies")).json()) == {"pay": 3}
