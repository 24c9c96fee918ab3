"""The policy version store and the registry over it: immutability, digests, restarts, atomic swaps."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import yaml
from google.protobuf import json_format

from bastion import ConfigError, PolicyValidationError
from bastion.policy import PolicyRegistry, PolicyStore, parse_policy, version_digest
from bastion.policy._store import MAX_VERSION, Signature, UnknownVersion, VersionExists, canonical_json
from bastion.v1 import graph_pb2

V1 = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: pay, version: 1}
spec:
  rules:
    - {id: allow-add, match: {tools: ['demo__add']}, effect: allow}
"""
V2 = V1.replace("version: 1", "version: 2").replace("allow-add", "allow-add-v2")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PolicyStore]:
    opened = PolicyStore(tmp_path / "policy" / "versions.db")
    yield opened
    opened.close()


def test_the_digest_is_sha256_of_the_submitted_document_without_defaults() -> None:
    document = parse_policy(V1)
    canonical = canonical_json(document)
    assert orjson.loads(canonical) == {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "pay", "version": 1},
        "spec": {"rules": [{"id": "allow-add", "match": {"tools": ["demo__add"]}, "effect": "allow"}]},
    }
    assert b" " not in canonical
    assert version_digest(document) == hashlib.sha256(canonical).hexdigest()


NUMBERS = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {name: refunds, version: 1}
spec:
  rules:
    - id: small-refunds
      match: {tools: ["stripe__refund"]}
      args: {amount: {type: number, min: 0, max: 100}, "*": deny}
      effect: allow
  verifier: {name: reference, threshold: 1, timeout_ms: 50}
"""


def test_numbers_are_digested_as_written_not_as_the_schema_reads_them() -> None:
    # The schema reads `max`, `min` and `threshold` as floats; the submitted document says
    # 100, 0 and 1, and its canonical form (sorted keys, no whitespace; RFC 8785 alike) too.
    submitted = yaml.safe_load(NUMBERS)
    expected = orjson.dumps(submitted, option=orjson.OPT_SORT_KEYS)
    assert canonical_json(parse_policy(NUMBERS)) == expected
    assert version_digest(parse_policy(NUMBERS)) == hashlib.sha256(expected).hexdigest()
    fractional = NUMBERS.replace("threshold: 1", "threshold: 0.75")
    assert b'"threshold":0.75' in canonical_json(parse_policy(fractional))


async def test_a_version_stored_with_floats_written_as_floats_is_the_same_content(store: PolicyStore) -> None:
    # Versions stored before numbers were digested as written: re-adding the same file after
    # the upgrade (bastion.yaml at every start) is the stored version, not a conflict.
    document = parse_policy(NUMBERS)
    await store.add(document, NUMBERS, author="ops")
    legacy = orjson.dumps(
        document.model_dump(mode="json", by_alias=True, exclude_unset=True), option=orjson.OPT_SORT_KEYS
    )
    assert b"100.0" in legacy
    store._db.execute(
        "UPDATE versions SET digest = ?, canonical = ? WHERE name = 'refunds'",
        (hashlib.sha256(legacy).hexdigest(), legacy.decode()),
    )
    again, created = await store.add(parse_policy(NUMBERS), NUMBERS, author="ops")
    assert created is False
    assert again.digest == hashlib.sha256(legacy).hexdigest()
    changed = NUMBERS.replace("max: 100", "max: 1000")
    with pytest.raises(VersionExists):
        await store.add(parse_policy(changed), changed, author="ops")


def test_formatting_and_key_order_do_not_change_the_digest_but_spelt_out_defaults_do() -> None:
    reordered = (
        '{"spec": {"rules": [{"effect": "allow", "match": {"tools": ["demo__add"]}, "id": "allow-add"}]},'
        ' "metadata": {"version": 1, "name": "pay"}, "kind": "AgentPolicy", "apiVersion": "bastion.dev/v1"}'
    )
    assert version_digest(parse_policy(reordered)) == version_digest(parse_policy(V1))
    spelt_out = V1.replace("spec:\n", "spec:\n  default: deny\n")
    assert version_digest(parse_policy(spelt_out)) != version_digest(parse_policy(V1))


async def test_a_version_round_trips_with_author_signature_and_diff(store: PolicyStore) -> None:
    first, created = await store.add(parse_policy(V1), V1, author="ops")
    assert (created, first.diff) == (True, "")
    second, _ = await store.add(parse_policy(V2), V2, author="ops", signature=Signature("a.b.c", "dev"))
    got = await store.get("pay", 2)
    assert got == second
    assert (got.author, got.signature, got.document) == ("ops", Signature("a.b.c", "dev"), V2)
    assert "-    id: allow-add\n" in got.diff
    assert "+    id: allow-add-v2\n" in got.diff
    assert got.diff.startswith("--- pay v1\n+++ pay v2\n")
    assert [record.version for record in await store.versions("pay")] == [1, 2]
    assert await store.versions("nobody") == []


async def test_the_same_content_again_is_a_no_op_and_other_content_is_refused(store: PolicyStore) -> None:
    first, _ = await store.add(parse_policy(V1), V1, author="ops")
    again, created = await store.add(parse_policy(V1), V1 + "# a comment\n", author="someone-else")
    assert (created, again) == (False, first)
    changed = V1.replace("effect: allow", "effect: deny")
    with pytest.raises(VersionExists, match=r"'pay' v1 already exists .* immutable"):
        await store.add(parse_policy(changed), changed, author="ops")
    assert (await store.get("pay", 1)).digest == first.digest


async def test_a_version_beyond_int64_is_refused_not_overflowed(store: PolicyStore) -> None:
    huge = V1.replace("version: 1", f"version: {MAX_VERSION + 1}")
    # The loader refuses it first; the store's own bound stays as a second line.
    with pytest.raises(PolicyValidationError, match=f"less than or equal to {MAX_VERSION}"):
        await store.add(parse_policy(huge), huge, author="ops")
    with pytest.raises(UnknownVersion):
        await store.get("pay", MAX_VERSION + 1)


async def test_creating_and_activating_versions_are_audited_in_the_same_transaction(store: PolicyStore) -> None:
    await store.add(parse_policy(V1), V1, author="ops-a")
    await store.add(parse_policy(V1), V1, author="ops-b")  # the same content again: nothing new
    await store.add(parse_policy(V2), V2, author="ops-a")
    await store.activate("pay", 1, by="ops-b")
    await store.activate("pay", 2, by="ops-c")
    records = []
    for _, raw in await store.outbox(100):
        event = graph_pb2.Event.FromString(raw)
        arguments = json_format.MessageToDict(event.action.arguments)
        records.append((event.workflow_id, event.action.method, event.agent_id, arguments))
    assert [(method, by, args["version"]) for _, method, by, args in records] == [
        ("bastion.dev/policy.created", "ops-a", 1),
        ("bastion.dev/policy.created", "ops-a", 2),
        ("bastion.dev/policy.activated", "ops-b", 1),
        ("bastion.dev/policy.activated", "ops-c", 2),
    ]
    assert {workflow for workflow, *_ in records} == {"bastion.policy"}
    assert records[2][3]["previous_version"] == 0
    assert records[3][3]["previous_version"] == 1
    assert records[0][3]["digest"] == version_digest(parse_policy(V1))


async def test_activating_an_unknown_version_is_refused(store: PolicyStore) -> None:
    with pytest.raises(UnknownVersion, match="no version 3"):
        await store.activate("pay", 3, by="ops")
    assert await store.active() == []


async def test_the_active_version_survives_a_restart_and_bastion_yaml_does_not_override_it(tmp_path: Path) -> None:
    file = tmp_path / "pay.yaml"
    file.write_text(V1)
    path = tmp_path / "versions.db"
    store = PolicyStore(path)
    registry = PolicyRegistry(store)
    await registry.apply_files([file])
    assert [(v.name, v.version, v.activated_by) for v in registry.snapshot.versions] == [("pay", 1, "bastion.yaml")]
    await registry.create(V2, author="ops")
    await registry.activate("pay", 2, by="ops")
    store.close()

    store = PolicyStore(path)
    registry = PolicyRegistry(store)
    await registry.apply_files([file])  # unchanged file: no new version, v2 stays active
    assert [(v.version, v.activated_by) for v in registry.snapshot.versions] == [(2, "ops")]
    assert [r.version for r in await registry.versions("pay")] == [1, 2]
    assert [rule.id for rule in registry.policies.rules] == ["allow-add-v2"]
    store.close()


async def test_a_new_file_version_becomes_active_at_start(tmp_path: Path) -> None:
    file = tmp_path / "pay.yaml"
    file.write_text(V1)
    store = PolicyStore(tmp_path / "versions.db")
    await PolicyRegistry(store).apply_files([file])
    file.write_text(V2)
    registry = PolicyRegistry(store)
    await registry.apply_files([file])
    assert [v.version for v in registry.snapshot.versions] == [2]
    store.close()


async def test_a_file_with_a_stored_version_but_other_content_stops_the_start(tmp_path: Path) -> None:
    file = tmp_path / "pay.yaml"
    file.write_text(V1)
    store = PolicyStore(tmp_path / "versions.db")
    await PolicyRegistry(store).apply_files([file])
    file.write_text(V1.replace("effect: allow", "effect: deny"))
    with pytest.raises(ConfigError, match=r"pay.yaml: policy 'pay' v1 already exists"):
        await PolicyRegistry(store).apply_files([file])
    store.close()


async def test_decisions_during_swaps_see_a_whole_set_never_half(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "versions.db")
    registry = PolicyRegistry(store)
    two = V2.replace(
        "spec:\n  rules:\n", "spec:\n  rules:\n    - {id: extra, match: {tools: ['demo__x']}, effect: deny}\n"
    )
    await registry.create(V1, author="ops")
    await registry.create(two, author="ops")
    await registry.activate("pay", 1, by="ops")
    expected = {("allow-add",), ("extra", "allow-add-v2")}
    seen: set[tuple[str, ...]] = set()
    done = asyncio.Event()

    async def decide() -> None:
        while not done.is_set():
            policies = registry.policies  # what a decision reads, once
            seen.add(tuple(rule.id for rule in policies.rules))
            # A real pause, not sleep(0): four tasks spinning on sleep(0) starve the
            # store's worker thread of the GIL, and the swaps crawl (seconds each).
            await asyncio.sleep(0.0002)

    readers = [asyncio.create_task(decide()) for _ in range(4)]
    for _ in range(50):
        await registry.activate("pay", 2, by="ops")
        await registry.activate("pay", 1, by="ops")
    done.set()
    await asyncio.gather(*readers)
    assert seen == expected
    store.close()
