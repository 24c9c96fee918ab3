"""The store of API keys and revocations: digests only, durability, audit records in the same
transaction, the state it keeps for its own verifier, snapshots and deltas for watchers, bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bastion._apikeys import ApiKey, IdentityState, parse_api_key
from bastion._errors import Conflict, NotFound
from bastion._identifiers import InvalidIdentity
from bastion.policy import PolicyStore, parse_policy
from bastion.policy._identities import AUDIT_WORKFLOW, IdentityStore, StoredKey, StoredRevocation
from bastion.v1 import graph_pb2, policy_pb2


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "policy" / "versions.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[IdentityStore]:
    opened = IdentityStore(path)
    yield opened
    opened.close()


def _stored(store: IdentityStore, key_id: str) -> StoredKey:
    key = store.key(key_id)
    assert key is not None
    return key


def _pushed(state: IdentityState, key_id: str) -> ApiKey:
    key = state.api_key(key_id)
    assert key is not None
    return key


async def _outbox(path: Path) -> list[graph_pb2.Event]:
    """The audit records waiting in the version store's outbox, as its shipper reads them."""
    versions = PolicyStore(path)
    try:
        return [graph_pb2.Event.FromString(blob) for _, blob in await versions.outbox(1000)]
    finally:
        versions.close()


async def test_a_key_is_stored_as_salt_and_digest_and_its_secret_is_returned_once(
    store: IdentityStore, path: Path
) -> None:
    secret, key = await store.create_key(agent="billing-bot", tenant="acme", name="ci", by="ops")

    parsed = parse_api_key(secret)
    assert parsed is not None
    assert parsed[0] == key.key_id
    assert (key.agent_id, key.tenant, key.name, key.created_by, key.expires_at) == (
        "billing-bot",
        "acme",
        "ci",
        "ops",
        None,
    )
    on_disk = await asyncio.to_thread(lambda: b"".join(file.read_bytes() for file in path.parent.iterdir()))
    assert parsed[1].encode() not in on_disk
    record = store.state.api_key(key.key_id)
    assert record is not None
    assert record.matches(parsed[1])
    assert not record.matches(parsed[1][:-1] + "x")


async def test_keys_and_revocations_survive_a_reopen(path: Path) -> None:
    store = IdentityStore(path)
    _, kept = await store.create_key(agent="a", tenant="default", ttl_s=60, by="ops")
    _, revoked = await store.create_key(agent="b", tenant="default", by="ops")
    await store.revoke_key(revoked.key_id, by="ops", reason="leaked")
    await store.revoke("token", "jti-1", by="ops")
    store.close()

    reopened = IdentityStore(path)
    try:
        assert reopened.key(kept.key_id) == kept
        assert _stored(reopened, revoked.key_id).revoked_reason == "leaked"
        assert reopened.state.token_revoked("jti-1") == "revoked"
        assert _pushed(reopened.state, revoked.key_id).revoked
        assert [item.value for item in reopened.revocations()[0]] == ["jti-1"]
    finally:
        reopened.close()


async def test_revoking_a_key_twice_is_a_conflict_and_an_unknown_key_not_found(store: IdentityStore) -> None:
    _, key = await store.create_key(agent="a", tenant="default", by="ops")
    await store.revoke_key(key.key_id, by="ops")
    with pytest.raises(Conflict, match="already revoked"):
        await store.revoke_key(key.key_id, by="ops")
    with pytest.raises(NotFound):
        await store.revoke_key("0" * 16, by="ops")


async def test_revoking_a_token_id_twice_is_a_conflict_but_an_agent_may_be_revoked_again(
    store: IdentityStore,
) -> None:
    await store.revoke("token", "jti-1", by="ops")
    with pytest.raises(Conflict):
        await store.revoke("token", "jti-1", by="ops")
    first, _ = await store.revoke("agent", "a", by="ops")
    second, _ = await store.revoke("agent", "a", by="ops")
    assert second.at >= first.at
    assert second.id > first.id


async def test_revoking_an_agent_revokes_its_keys_in_that_tenant_only(store: IdentityStore) -> None:
    _, mine = await store.create_key(agent="a", tenant="acme", by="ops")
    _, other_tenant = await store.create_key(agent="a", tenant="other", by="ops")
    _, other_agent = await store.create_key(agent="b", tenant="acme", by="ops")

    revocation, keys = await store.revoke("agent", "a", tenant="acme", by="ops", reason="compromised")

    assert [key.key_id for key in keys] == [mine.key_id]
    assert _stored(store, mine.key_id).revoked_reason == "agent revoked: compromised"
    assert _stored(store, other_tenant.key_id).revoked_at is None
    assert _stored(store, other_agent.key_id).revoked_at is None
    assert store.state.agent_revoked("acme", "a", revocation.at) == "compromised"
    assert store.state.agent_revoked("other", "a", revocation.at) is None


async def test_every_change_writes_its_audit_record_without_the_secret(path: Path) -> None:
    woken: list[int] = []
    audited = IdentityStore(path, on_audit=lambda: woken.append(1))
    try:
        secret, key = await audited.create_key(agent="a", tenant="default", name="n", by="ops")
        await audited.revoke_key(key.key_id, by="ops-2", reason="rotated")
        await audited.revoke("token", "jti-9", by="ops-3")
        await audited.revoke("agent", "a", by="ops-4")
    finally:
        audited.close()

    events = await _outbox(path)
    assert [event.action.method for event in events] == [
        "bastion.dev/apikey.created",
        "bastion.dev/apikey.revoked",
        "bastion.dev/token.revoked",
        "bastion.dev/agent.revoked",
    ]
    assert {event.workflow_id for event in events} == {AUDIT_WORKFLOW}
    assert [event.agent_id for event in events] == ["ops", "ops-2", "ops-3", "ops-4"]
    assert events[1].parent_ids == [events[0].node_id]  # the revocation hangs off the creation
    assert events[1].action.arguments["reason"] == "rotated"
    assert woken == [1, 1, 1, 1]
    text = b"".join(event.SerializeToString() for event in events)
    assert secret.encode() not in text
    assert key.digest not in text
    assert key.digest.hex().encode() not in text


async def test_watchers_get_a_snapshot_closed_by_an_empty_event_then_deltas(store: IdentityStore) -> None:
    await store.revoke("token", "jti-1", by="ops")
    _, key = await store.create_key(agent="a", tenant="default", by="ops")
    watcher = store.subscribe()

    parts = store.snapshot()
    assert parts[0].snapshot
    assert not parts[-1].keys
    assert not parts[-1].revocations
    assert [record.key_id for part in parts for record in part.keys] == [key.key_id]
    await store.revoke_key(key.key_id, by="ops")
    delta = watcher.queue.get_nowait()

    assert not delta.snapshot
    assert [(record.key_id, record.revoked) for record in delta.keys] == [(key.key_id, True)]
    state = IdentityState()
    for event in [*parts, delta]:
        state.apply(event)
    assert state.synced
    assert _pushed(state, key.key_id).revoked
    assert state.token_revoked("jti-1") == "revoked"


async def test_a_large_snapshot_comes_in_parts_revocations_first(store: IdentityStore) -> None:
    for index in range(30):
        await store.revoke("token", f"jti-{index}", by="ops")
    for _ in range(30):
        await store.create_key(agent="a" * 200, tenant="default", by="ops")

    parts = store.snapshot(part_bytes=2000)

    assert len(parts) > 4
    assert parts[0].snapshot
    assert not any(part.snapshot for part in parts[1:])
    assert all(part.ByteSize() < 2000 + 600 for part in parts)
    kinds = [kind for part in parts for kind in ["r"] * len(part.revocations) + ["k"] * len(part.keys)]
    assert kinds == ["r"] * 30 + ["k"] * 30
    assert (len(parts[-1].keys), len(parts[-1].revocations)) == (0, 0)


async def test_a_watcher_that_falls_too_far_behind_is_cut_off(
    store: IdentityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bastion.policy._identities.WATCH_BACKLOG", 8)
    watcher = store.subscribe()
    for index in range(8):
        await store.revoke("token", f"jti-{index}", by="ops")
    assert not watcher.overflowed
    await store.revoke("token", "jti-8", by="ops")
    assert watcher.overflowed
    await store.revoke("token", "one-more", by="ops")
    assert watcher.queue.qsize() == 8


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("agent", "", "must not be empty"),
        ("agent", "a" * 257, "longer than 256"),
        ("agent", "evil\nagent", "control character"),
        ("tenant", "t\x00", "control character"),
        ("name", "n\x1b[31m", "control character"),
        # Names that read as other names: a right-to-left override, an isolate, a zero-width space.
        ("agent", "billing\u202etset", "invisible formatting character \\(U\\+202E\\)"),
        ("tenant", "acme\u2067", "invisible formatting character"),
        ("name", "ci\u200bkey", "invisible formatting character"),
        ("ttl_s", 0, "ttl_s"),
    ],
)
async def test_bad_names_and_ttls_are_refused(store: IdentityStore, field: str, value: Any, message: str) -> None:
    arguments: dict[str, Any] = {"agent": "a", "tenant": "default", "name": "", "ttl_s": None, field: value}
    with pytest.raises(InvalidIdentity, match=message):
        await store.create_key(**arguments, by="ops")
    assert store.keys()[0] == []


async def test_a_revocation_reason_may_hold_an_emoji_joiner_but_not_a_bidi_override(store: IdentityStore) -> None:
    await store.revoke("token", "jti-1", by="ops", reason="leaked \U0001f468\u200d\U0001f4bb laptop")
    with pytest.raises(InvalidIdentity, match="U\\+202E"):
        await store.revoke("token", "jti-2", by="ops", reason="ok \u202edeifitrec")


async def test_the_number_of_keys_is_bounded(store: IdentityStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bastion.policy._identities.MAX_KEYS", 2)
    await store.create_key(agent="a", tenant="default", by="ops")
    await store.create_key(agent="a", tenant="default", by="ops")
    with pytest.raises(Conflict, match="2 API keys"):
        await store.create_key(agent="a", tenant="default", by="ops")


async def test_listing_pages_in_creation_order_and_filters(store: IdentityStore) -> None:
    created = [(await store.create_key(agent=f"a{index % 2}", tenant="default", by="ops"))[1] for index in range(5)]

    first, following = store.keys(limit=2)
    second, last = store.keys(limit=2, after=following)
    third, end = store.keys(limit=2, after=last)

    assert [key.key_id for key in first + second + third] == [key.key_id for key in created]
    assert end is None
    assert [key.key_id for key in store.keys(agent="a1")[0]] == [created[1].key_id, created[3].key_id]
    with pytest.raises(NotFound):
        store.keys(after="f" * 16)


async def test_another_tenants_key_is_no_cursor_for_a_tenants_listing(store: IdentityStore) -> None:
    # Found by an attacker's probe: GET /v1/keys?after=<id> answered 200 for another tenant's key
    # and 404 for none, telling an operator what revoking it never tells.
    _, theirs = await store.create_key(agent="a", tenant="globex", by="ops")
    await store.create_key(agent="a", tenant="acme", by="ops")
    with pytest.raises(NotFound, match=f"no API key '{theirs.key_id}' to continue after"):
        store.keys(tenant="acme", after=theirs.key_id)
    assert store.keys(tenant="globex", after=theirs.key_id) == ([], None)
    assert len(store.keys(after=theirs.key_id)[0]) == 1  # an admin's listing of every tenant


async def test_concurrent_revocations_of_one_key_leave_one_winner(store: IdentityStore) -> None:
    _, key = await store.create_key(agent="a", tenant="default", by="ops")
    results = await asyncio.gather(
        *(store.revoke_key(key.key_id, by=f"ops-{index}") for index in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(result, BaseException) for result in results) == 1
    assert all(isinstance(result, Conflict) for result in results if isinstance(result, BaseException))


def test_a_revocation_record_carries_kind_tenant_time_author_and_reason() -> None:
    record = StoredRevocation(1, "agent", "a", "acme", 1700000000.5, "ops", "why").to_proto()
    assert (record.kind, record.value, record.tenant, record.by, record.reason) == (
        policy_pb2.Revocation.AGENT,
        "a",
        "acme",
        "ops",
        "why",
    )
    assert record.at.ToNanoseconds() == 1700000000500000000


async def test_the_version_store_and_this_store_write_to_one_file_at_once_without_refusals(path: Path) -> None:
    versions, identities = PolicyStore(path), IdentityStore(path)
    document = "apiVersion: bastion.dev/v1\nkind: AgentPolicy\nmetadata: {name: p, version: %d}\nspec: {rules: []}\n"
    try:
        await asyncio.gather(
            *(versions.add(parse_policy(document % n), document % n, author="ops") for n in range(1, 31)),
            *(identities.create_key(agent=f"a{n}", tenant="default", by="ops") for n in range(30)),
        )
        assert len(await versions.versions("p")) == 30
        assert len(identities.keys()[0]) == 30
        assert len(await versions.outbox(1000)) == 60  # one audit record per key and per version
    finally:
        versions.close()
        identities.close()
