"""bastion_policy_bundle_expiry_timestamp_seconds: the `exp` of each active version's signed
bundle, for the "policy bundle expiry approaching" alert; nothing for a version applied unsigned."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from bastion.policy import PolicyRegistry, PolicyStore, sign_bundle
from bastion.policy._bundles import BundleExpiryCollector, bundle_expiry
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
