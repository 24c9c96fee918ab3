"""The PolicyService gRPC servicer: Decide, DecideStream, DecideBatch and Watch over the
active PolicySet.

The service-token check is the server interceptor's job (bastion._rpc), not this
class's. Decide is on every action's hot path, so a call does one `PolicySet.evaluate`,
one pre-resolved counter increment and one protobuf construction: no logging, no
parsing, no lookups that could be done at construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter

from bastion.v1 import policy_pb2, policy_pb2_grpc

from ._document import RESERVED_RULE_ID
from ._engine import Decision, Effect, PolicySet

_EFFECTS: dict[Effect, policy_pb2.Effect.ValueType] = {
    Effect.ALLOW: policy_pb2.ALLOW,
    Effect.DENY: policy_pb2.DENY,
    Effect.REQUIRE_APPROVAL: policy_pb2.REQUIRE_APPROVAL,
}
_KIND_NAMES: dict[int, str] = {number: name for name, number in policy_pb2.ActionKind.items()}


def _kind_name(kind: int) -> str:
    # proto3 enums are open: a newer proxy may send a kind this build has no name for.
    return _KIND_NAMES.get(kind) or f"ACTION_KIND_{kind}"


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """Answers decisions from one PolicySet and streams its bundle events to watchers."""

    def __init__(self, policies: PolicySet, *, registry: CollectorRegistry) -> None:
        self._policies = policies
        self._closed = asyncio.Event()
        self._loaded_at = Timestamp()
        self._loaded_at.FromNanoseconds(time.time_ns())
        self._decisions = Counter(
            "bastion_decisions_total",
            "Policy decisions, by effect and by the rule that decided ('default' when none did).",
            ["effect", "rule"],
            registry=registry,
        )
        # Resolving a labelled child takes a lock and a dict lookup inside
        # prometheus_client; doing it once per outcome keeps that off the hot path and
        # exports every possible outcome at 0 from the start, so rate() works at once.
        self._counters: dict[tuple[Effect, str], Counter] = {}
        for outcome in _outcomes(policies):
            self._counter(*outcome)

    def close(self) -> None:
        """End open Watch streams cleanly (server shutdown)."""
        self._closed.set()

    async def Decide(
        self, request: policy_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.Decision:
        return self._decide(request)

    async def DecideStream(
        self, request_iterator: AsyncIterator[policy_pb2.DecideRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[policy_pb2.Decision]:
        # One long-lived stream per proxy: answers go out in request order, each carrying
        # the request's ctx.request_id so the proxy can match it to its caller.
        async for request in request_iterator:
            decision = self._decide(request)
            decision.request_id = request.ctx.request_id
            yield decision

    async def DecideBatch(
        self, request: policy_pb2.DecideBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.DecideBatchResponse:
        return policy_pb2.DecideBatchResponse(decisions=[self._decide(item) for item in request.requests])

    async def Watch(
        self, request: policy_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[policy_pb2.BundleEvent]:
        # An unknown name streams nothing yet and stays open: that policy may be
        # created later, and a watcher must not have to poll for it.
        for policy in self._policies.policies:
            if request.policy_name and request.policy_name != policy.name:
                continue
            yield policy_pb2.BundleEvent(
                kind=policy_pb2.BundleEvent.LOADED,
                policy_name=policy.name,
                version=policy.version,
                bundle_digest=policy.digest,
                at=self._loaded_at,
            )
        # Bundles are fixed for the life of this process until versions and rollouts
        # arrive; keep the stream open until the client cancels or the server stops.
        await self._closed.wait()

    def _decide(self, request: policy_pb2.DecideRequest) -> policy_pb2.Decision:
        action = request.action
        decision = self._policies.evaluate(
            kind=_kind_name(action.kind),
            agent_id=request.ctx.agent_id,
            server=action.server,
            tool=action.tool,
            resource=action.resource,
            prompt=action.prompt,
        )
        counter = self._counters.get((decision.effect, decision.rule_id))
        if counter is None:
            counter = self._counter(decision.effect, decision.rule_id)
        counter.inc()
        return _to_proto(decision)

    def _counter(self, effect: Effect, rule_id: str) -> Counter:
        child = self._decisions.labels(effect=effect.value, rule=rule_id)
        self._counters[(effect, rule_id)] = child
        return child


def _outcomes(policies: PolicySet) -> set[tuple[Effect, str]]:
    outcomes = {(rule.effect, rule.id) for rule in policies.rules}
    outcomes.add((Effect.DENY, RESERVED_RULE_ID))
    outcomes.add((policies.fallthrough.effect, RESERVED_RULE_ID))
    return outcomes


def _to_proto(decision: Decision) -> policy_pb2.Decision:
    return policy_pb2.Decision(
        effect=_EFFECTS[decision.effect],
        rule_id=decision.rule_id,
        reason=decision.reason,
        policy_name=decision.policy_name,
        policy_version=decision.policy_version,
        bundle_digest=decision.bundle_digest,
        # No rollouts in this version: every decision comes from the stable bundle.
        rollout_arm=policy_pb2.STABLE,
    )
