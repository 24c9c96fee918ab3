"""The PolicyService gRPC servicer: Decide, DecideStream, DecideBatch and Watch over the
active PolicySet, read from the PolicyRegistry (bastion.policy._registry) on every decision.

`self._policies` is a property that returns the registry's current set; `_decide` reads
the registry's snapshot once (the set, and for canary rollouts the running rollouts and
each arm's set: bastion.policy._rollouts), so a decision is made entirely against the set
before or entirely against the set after a concurrent activation or rollout step. Watch
sends the active versions, then every change; WatchIdentity does the same for API keys and
revocations (bastion.policy._identities).

The service-token check is the server interceptor's job (bastion._rpc), not this
class's. Decide is on every action's hot path, so a call does one `PolicySet.evaluate`,
one pre-resolved counter increment and one protobuf construction: no logging, no
parsing, no lookups that could be done at construction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter

from bastion._rpc import batch_too_large
from bastion.v1 import policy_pb2, policy_pb2_grpc

from ._cel import CallContext
from ._document import RESERVED_RULE_ID
from ._engine import Decision, Effect, PolicySet
from ._identities import IdentityStore, watch_identity
from ._registry import Change, PolicyRegistry
from ._rego_mode import RegoDecider, fill_limits
from ._rollouts import arm_mask, observe

_EFFECTS: dict[Effect, policy_pb2.Effect.ValueType] = {
    Effect.ALLOW: policy_pb2.ALLOW,
    Effect.DENY: policy_pb2.DENY,
    Effect.REQUIRE_APPROVAL: policy_pb2.REQUIRE_APPROVAL,
    Effect.QUEUE: policy_pb2.QUEUE,
}
_FALLBACKS = {
    "block": policy_pb2.VerifierSettings.BLOCK,
    "allow": policy_pb2.VerifierSettings.ALLOW,
    "queue": policy_pb2.VerifierSettings.QUEUE,
}
#: Arguments nested deeper than this are refused (the proxy bounds them well below).
MAX_ARGUMENT_DEPTH = 64
_KIND_NAMES: dict[int, str] = {number: name for name, number in policy_pb2.ActionKind.items()}


def _kind_name(kind: int) -> str:
    # proto3 enums are open: a newer proxy may send a kind this build has no name for.
    return _KIND_NAMES.get(kind) or f"ACTION_KIND_{kind}"


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """Answers decisions from the registry's active set and streams its bundle events to watchers."""

    def __init__(
        self,
        policies: PolicyRegistry,
        *,
        registry: CollectorRegistry,
        rego: RegoDecider | None = None,
        identities: IdentityStore | None = None,
    ) -> None:
        self._registry = policies
        #: API keys and revocations, streamed by WatchIdentity (None: it answers UNIMPLEMENTED).
        self._identities = identities
        #: Set in `BASTION_POLICY_ENGINE=opa` mode: decisions come from OPA (`_rego_mode.py`).
        self._rego = rego
        self._closed = asyncio.Event()
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
        for outcome in _outcomes(policies.policies):
            self._counter(*outcome)

    @property
    def _policies(self) -> PolicySet:
        # One attribute read per decision: see the module docstring.
        return self._registry.policies

    def close(self) -> None:
        """End open Watch streams cleanly (server shutdown)."""
        self._closed.set()

    async def Decide(
        self, request: policy_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.Decision:
        return self._decide(request) if self._rego is None else await self._decide_rego(request)

    async def DecideStream(
        self, request_iterator: AsyncIterator[policy_pb2.DecideRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[policy_pb2.Decision]:
        # One long-lived stream per proxy; each answer carries the request's
        # ctx.request_id so the proxy can match it to its caller. Native evaluation is
        # synchronous and takes microseconds (CEL included, eval/bench/policy_bench.py),
        # so answering each request as it arrives already answers it as soon as it is
        # decided: no request can wait behind a slower one. OPA answers over the network:
        # there each request gets its own task and answers go out as they come, out of order.
        if self._rego is None:
            async for request in request_iterator:
                yield self._decide(request)
            return
        async for decision in _as_completed(request_iterator, self._decide_rego):
            yield decision

    async def DecideBatchStream(
        self,
        request_iterator: AsyncIterator[policy_pb2.DecideBatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[policy_pb2.DecideBatchResponse]:
        # Several requests per stream message: one gRPC message then serves many calls.
        async for batch in request_iterator:
            if (refused := batch_too_large(len(batch.requests))) is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
            yield policy_pb2.DecideBatchResponse(decisions=await self._decide_all(batch.requests))

    async def DecideBatch(
        self, request: policy_pb2.DecideBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.DecideBatchResponse:
        if (refused := batch_too_large(len(request.requests))) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
        return policy_pb2.DecideBatchResponse(decisions=await self._decide_all(request.requests))

    async def _decide_all(self, requests: Iterable[policy_pb2.DecideRequest]) -> list[policy_pb2.Decision]:
        if self._rego is None:
            return [self._decide(item) for item in requests]
        return list(await asyncio.gather(*(self._decide_rego(item) for item in requests)))

    async def _decide_rego(self, request: policy_pb2.DecideRequest) -> policy_pb2.Decision:
        assert self._rego is not None
        prepared = self._prepare(request)
        if isinstance(prepared, policy_pb2.Decision):
            return prepared
        message = await self._rego.decide(request, *prepared)
        self._count(_EFFECT_BY_PROTO.get(message.effect, Effect.DENY), message.rule_id)
        return message

    async def Watch(
        self, request: policy_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[policy_pb2.BundleEvent]:
        # Subscribe before reading the snapshot, so no change falls between the two (a
        # change may then be seen twice, which a watcher applies idempotently). An unknown
        # name streams nothing yet and stays open: that policy may be created later, and a
        # watcher must not have to poll for it.
        watcher = self._registry.subscribe()
        closed = asyncio.ensure_future(self._closed.wait())
        change: asyncio.Future[Change] | None = None
        try:
            for active in self._registry.snapshot.versions:
                if not request.policy_name or request.policy_name == active.name:
                    yield _event(
                        policy_pb2.BundleEvent.LOADED,
                        active.name,
                        active.version,
                        active.digest,
                        active.settings_json,
                        active.activated_at,
                    )
            while True:
                change = asyncio.ensure_future(watcher.queue.get())
                await asyncio.wait((change, closed), return_when=asyncio.FIRST_COMPLETED)
                if not change.done():
                    return  # the server is stopping: end the stream cleanly
                item = change.result()
                if watcher.overflowed:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher fell too far behind; reconnect to resynchronise"
                    )
                if not request.policy_name or request.policy_name == item.name:
                    yield _event(_KINDS[item.kind], item.name, item.version, item.digest, item.settings_json, item.at)
        finally:
            closed.cancel()
            if change is not None:
                change.cancel()
            self._registry.unsubscribe(watcher)

    async def WatchIdentity(
        self, request: policy_pb2.WatchIdentityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[policy_pb2.IdentityEvent]:
        # API keys and revocations: a snapshot, then every change (bastion.policy._identities).
        async with contextlib.aclosing(watch_identity(self._identities, self._closed, context)) as events:
            async for event in events:
                yield event

    def _prepare(
        self, request: policy_pb2.DecideRequest, *, eager: bool = True
    ) -> tuple[str, Mapping[str, Any], CallContext] | policy_pb2.Decision:
        """(kind name, arguments, context) for an engine, or the deny for arguments it cannot take.

        Not `eager`, the arguments are converted only if a rule reads them: most decisions
        are made on the tool name alone, and the conversion costs more than the rest.
        """
        action, ctx = request.action, request.ctx
        try:
            if not action.HasField("arguments"):
                arguments: Mapping[str, Any] = {}
            elif eager:
                arguments = _struct_to_dict(action.arguments, 0)
            else:
                arguments = _LazyArguments(action.arguments)
        except ValueError as exc:
            return self._deny_arguments(exc, ctx.request_id)
        context = CallContext(
            tenant=ctx.tenant,
            session_id=ctx.session_id,
            workflow_id=ctx.workflow_id,
            task=ctx.task,
            roles=tuple(ctx.roles),
            labels=dict(ctx.labels),
            taint=tuple(ctx.taint),
        )
        return _kind_name(action.kind), arguments, context

    def _deny_arguments(self, exc: ValueError, request_id: str) -> policy_pb2.Decision:
        self._count(Effect.DENY, RESERVED_RULE_ID)
        return policy_pb2.Decision(
            effect=policy_pb2.DENY, rule_id=RESERVED_RULE_ID, reason=str(exc), request_id=request_id
        )

    def _decide(self, request: policy_pb2.DecideRequest) -> policy_pb2.Decision:
        try:
            return self._decide_native(request)
        except _TooDeep as exc:  # raised by the lazy arguments when a rule first reads them
            return self._deny_arguments(exc, request.ctx.request_id)

    def _decide_native(self, request: policy_pb2.DecideRequest) -> policy_pb2.Decision:
        prepared = self._prepare(request, eager=False)
        if isinstance(prepared, policy_pb2.Decision):
            return prepared
        kind, arguments, context = prepared
        action, ctx = request.action, request.ctx
        snapshot = self._registry.snapshot  # one read: the set, and the rollouts with their arms' sets
        policies, mask = snapshot.policies, 0
        if snapshot.rollouts:
            mask = arm_mask(snapshot, ctx)
            policies = snapshot.sets[mask]
        decision = policies.evaluate(
            kind=kind,
            agent_id=ctx.agent_id,
            server=action.server,
            tool=action.tool,
            resource=action.resource,
            prompt=action.prompt,
            method=action.method,
            arguments=arguments,
            context=context,
        )
        self._count(decision.effect, decision.rule_id)
        message = _to_proto(decision)
        message.request_id = ctx.request_id
        if snapshot.rollouts:
            message.rollout_arm = observe(snapshot, mask, decision, ctx)
        return message

    def _count(self, effect: Effect, rule_id: str) -> None:
        counter = self._counters.get((effect, rule_id))
        if counter is None:
            counter = self._counter(effect, rule_id)
        counter.inc()

    def _counter(self, effect: Effect, rule_id: str) -> Counter:
        # The proto's name (ALLOW, DENY, …), as the proxy labels the same metric: one
        # query over both services' `bastion_decisions_total` (an audit found "allow" here).
        child = self._decisions.labels(effect=effect.name, rule=rule_id)
        self._counters[(effect, rule_id)] = child
        return child


_KINDS = {"created": policy_pb2.BundleEvent.CREATED, "activated": policy_pb2.BundleEvent.ACTIVATED}
_EFFECT_BY_PROTO = {value: effect for effect, value in _EFFECTS.items()}


async def _as_completed(
    requests: AsyncIterator[policy_pb2.DecideRequest],
    decide: Callable[[policy_pb2.DecideRequest], Awaitable[policy_pb2.Decision]],
) -> AsyncIterator[policy_pb2.Decision]:
    """Decide every request of a stream in its own task; yield each answer as it is ready."""
    answers: asyncio.Queue[policy_pb2.Decision | None] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()

    async def one(request: policy_pb2.DecideRequest) -> None:
        await answers.put(await decide(request))

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
        finally:
            await answers.put(None)

    reader = asyncio.create_task(read())
    try:
        while (answer := await answers.get()) is not None:
            yield answer
        await reader  # re-raise a failure of the request stream
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()


def _event(
    kind: policy_pb2.BundleEvent.Kind.ValueType, name: str, version: int, digest: str, settings: str, at: float
) -> policy_pb2.BundleEvent:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return policy_pb2.BundleEvent(
        kind=kind, policy_name=name, version=version, bundle_digest=digest, settings_json=settings, at=stamp
    )


def _outcomes(policies: PolicySet) -> set[tuple[Effect, str]]:
    # Shadow rules never decide; a rule with a condition denies when it errors.
    outcomes = {(rule.effect, rule.id) for rule in policies.rules if not rule.shadow}
    outcomes.update((Effect.DENY, rule.id) for rule in policies.rules if rule.when is not None and not rule.shadow)
    # An allow rule of a policy with `taint:` gives its on_tainted_sink to tainted sink calls.
    outcomes.update(
        (check.effect, rule.id)
        for rule in policies.rules
        if rule.effect is Effect.ALLOW and not rule.shadow and (check := rule.stanzas.taint_check) is not None
    )
    outcomes.add((Effect.DENY, RESERVED_RULE_ID))
    outcomes.add((policies.fallthrough.effect, RESERVED_RULE_ID))
    return outcomes


def _to_proto(decision: Decision) -> policy_pb2.Decision:
    message = policy_pb2.Decision(
        effect=_EFFECTS[decision.effect],
        rule_id=decision.rule_id,
        reason=decision.reason,
        policy_name=decision.policy_name,
        policy_version=decision.policy_version,
        bundle_digest=decision.bundle_digest,
        cost=decision.cost,
    )
    if decision.shadow_effect is not None:
        message.shadow_effect = _EFFECTS[decision.shadow_effect]
        message.shadow_rule_id = decision.shadow_rule_id
    if decision.steer:
        message.obligations.steer_message = decision.steer
    if decision.limits is not None:
        fill_limits(message.limits, decision.limits)
    if (verifier := decision.verifier) is not None:
        message.verifier.name = verifier.name
        message.verifier.fallback = _FALLBACKS[verifier.fallback]
        if verifier.threshold is not None:
            message.verifier.threshold = verifier.threshold
        if verifier.timeout_ms is not None:
            message.verifier.timeout_ms = verifier.timeout_ms
    if (taint := decision.taint) is not None:
        message.taint.untrusted_sources.extend(taint.untrusted_sources)
        message.taint.sinks.extend(taint.sinks)
        message.taint.on_tainted_sink = _EFFECTS[Effect(taint.on_tainted_sink)]
    return message


class _TooDeep(ValueError):
    pass


class _LazyArguments(Mapping[str, Any]):
    """A Struct's arguments as a mapping, converted on first read (see `_prepare`)."""

    __slots__ = ("_converted", "_struct")

    def __init__(self, struct: struct_pb2.Struct) -> None:
        self._struct = struct
        self._converted: dict[str, Any] | None = None

    def _dict(self) -> dict[str, Any]:
        if self._converted is None:
            self._converted = _struct_to_dict(self._struct, 0)
        return self._converted

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._struct.fields)

    def __contains__(self, key: object) -> bool:
        return key in self._struct.fields


def _struct_to_dict(struct: struct_pb2.Struct, depth: int) -> dict[str, Any]:
    """A Struct as plain JSON values; whole numbers become ints, as the agent wrote them.

    Struct keeps every number as a double, so `{"amount": 5}` arrives as 5.0; turning it
    back into 5 lets CEL compare and index with ints (`args.n % 2`, `args.list[args.i]`).
    About 3x faster than json_format.MessageToDict (eval/bench/policy_bench.py).
    """
    if depth > MAX_ARGUMENT_DEPTH:
        raise _TooDeep(f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep (fail closed)")
    return {key: _value(value, depth + 1) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and -_EXACT <= number <= _EXACT else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct_to_dict(value.struct_value, depth)
    if kind == "list_value":
        if depth > MAX_ARGUMENT_DEPTH:
            raise _TooDeep(f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep (fail closed)")
        return [_value(item, depth + 1) for item in value.list_value.values]
    return None  # null_value, or unset (which JSON cannot express)


#: Doubles hold every integer up to 2**53 exactly; beyond, a whole double stays a double.
_EXACT = float(2**53)
