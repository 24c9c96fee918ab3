"""The proxy's WatchIdentity follower against a fake stub: a snapshot in parts is applied only
once complete, deltas at once, and the last state is kept while the stream is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from bastion._apikeys import IdentityState
from bastion._identity_watch import IdentityWatch
from bastion.v1 import policy_pb2


class _Broken(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())


class _FakeStub:
    """Each WatchIdentity call reads events from its own queue until None, then fails (a lost stream)."""

    def __init__(self) -> None:
        self.streams: asyncio.Queue[asyncio.Queue[policy_pb2.IdentityEvent | None]] = asyncio.Queue()

    def WatchIdentity(self, request: Any, metadata: Any = None) -> AsyncIterator[policy_pb2.IdentityEvent]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[policy_pb2.IdentityEvent]:
        events: asyncio.Queue[policy_pb2.IdentityEvent | None] = asyncio.Queue()
        await self.streams.put(events)
        while (event := await events.get()) is not None:
            yield event
        raise _Broken()


def _token(value: str) -> policy_pb2.Revocation:
    return policy_pb2.Revocation(kind=policy_pb2.Revocation.TOKEN, value=value)


def _gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_snapshot_in_parts_is_applied_only_once_its_closing_event_arrives() -> None:
    stub, registry, state = _FakeStub(), CollectorRegistry(), IdentityState()
    state.apply(policy_pb2.IdentityEvent(snapshot=True, revocations=[_token("old")]))
    watch = IdentityWatch(stub, (), registry, state)  # type: ignore[arg-type]
    watch.start()
    try:
        stream = await stub.streams.get()
        await stream.put(policy_pb2.IdentityEvent(snapshot=True, revocations=[_token("a")]))
        await stream.put(policy_pb2.IdentityEvent(revocations=[_token("b")]))
        await _settle()
        # Half a snapshot is not applied: the old state still holds, whole.
        assert (state.token_revoked("old"), state.token_revoked("a")) == ("revoked", None)
        assert _gauge(registry, "bastion_proxy_identity_synced") == 0

        await stream.put(policy_pb2.IdentityEvent())
        await _settle()
        assert (state.token_revoked("old"), state.token_revoked("a"), state.token_revoked("b")) == (
            None,
            "revoked",
            "revoked",
        )
        assert _gauge(registry, "bastion_proxy_identity_synced") == 1
        assert _gauge(registry, "bastion_proxy_identity_revocations") == 2

        await stream.put(policy_pb2.IdentityEvent(revocations=[_token("c")]))
        await _settle()
        assert state.token_revoked("c") == "revoked"
        assert _gauge(registry, "bastion_proxy_identity_revocations") == 3
    finally:
        await watch.close()


async def test_a_lost_stream_keeps_the_last_state_and_reconnects_for_a_fresh_snapshot() -> None:
    stub, registry, state = _FakeStub(), CollectorRegistry(), IdentityState()
    watch = IdentityWatch(stub, (), registry, state, backoff_max=0.05)  # type: ignore[arg-type]
    watch.start()
    try:
        first = await stub.streams.get()
        for event in (policy_pb2.IdentityEvent(snapshot=True, revocations=[_token("a")]), policy_pb2.IdentityEvent()):
            await first.put(event)
        await first.put(None)  # the policy service goes away
        second = await asyncio.wait_for(stub.streams.get(), 5)

        assert state.token_revoked("a") == "revoked", "a revocation is not forgotten by a disconnection"
        assert _gauge(registry, "bastion_proxy_identity_synced") == 0
        for event in (
            policy_pb2.IdentityEvent(snapshot=True, revocations=[_token("a"), _token("made-while-down")]),
            policy_pb2.IdentityEvent(),
        ):
            await second.put(event)
        await _settle()
        assert state.token_revoked("made-while-down") == "revoked"
        assert _gauge(registry, "bastion_proxy_identity_synced") == 1
    finally:
        await watch.close()


async def test_an_event_that_cannot_be_applied_changes_nothing_and_the_watch_starts_over() -> None:
    stub, registry, state = _FakeStub(), CollectorRegistry(), IdentityState()
    state.apply(policy_pb2.IdentityEvent(snapshot=True, revocations=[_token("old")]))
    watch = IdentityWatch(stub, (), registry, state, backoff_max=0.05)  # type: ignore[arg-type]
    watch.start()
    try:
        first = await stub.streams.get()
        garbled = policy_pb2.ApiKeyRecord(key_id="0123456789abcdef", salt="not hex", digest="00")
        await first.put(policy_pb2.IdentityEvent(snapshot=True, keys=[garbled]))
        await first.put(policy_pb2.IdentityEvent())
        await asyncio.wait_for(stub.streams.get(), 5)  # reconnected
        assert state.token_revoked("old") == "revoked", "the old state holds, whole"
        assert state.api_key("0123456789abcdef") is None
    finally:
        await watch.close()


async def test_the_first_attempt_is_awaited_whether_it_syncs_or_fails() -> None:
    stub, state = _FakeStub(), IdentityState()
    watch = IdentityWatch(stub, (), CollectorRegistry(), state, backoff_max=0.05)  # type: ignore[arg-type]
    watch.start()
    try:
        await (await stub.streams.get()).put(None)  # the policy service is down
        assert await watch.first_attempt(5) is False
        second = await stub.streams.get()
        for event in (policy_pb2.IdentityEvent(snapshot=True), policy_pb2.IdentityEvent()):
            await second.put(event)
        await _settle()
        assert await watch.first_attempt(5) is True
    finally:
        await watch.close()


async def test_a_failed_first_attempt_says_why_the_state_is_not_synced_until_a_snapshot_arrives() -> None:
    stub, state = _FakeStub(), IdentityState()
    watch = IdentityWatch(stub, (), CollectorRegistry(), state, backoff_max=0.05)  # type: ignore[arg-type]
    watch.start()
    try:
        await (await stub.streams.get()).put(None)  # the policy service is down
        assert await watch.first_attempt(5) is False
        assert state.unsynced_reason == "its WatchIdentity stream failed: UNAVAILABLE"
        second = await stub.streams.get()
        for event in (policy_pb2.IdentityEvent(snapshot=True), policy_pb2.IdentityEvent()):
            await second.put(event)
        await second.put(None)  # lost again, after the snapshot
        await asyncio.wait_for(stub.streams.get(), 5)
        assert state.synced, "a synced state stays synced: what it knew is kept"
    finally:
        await watch.close()
