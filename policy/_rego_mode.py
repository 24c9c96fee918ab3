"""`BASTION_POLICY_ENGINE=opa`: decisions made by a real OPA server instead of the native engine.

The active set (the registry's, the same versions the native engine would use) is pushed
to OPA as data, evaluated by the bundled generic module `rego/bastion.rego` with the
native engine's `match`/`effect` semantics; every decision sends OPA the same input
document (`_opa.opa_input`) and maps its answer to the same `Decision`. Fail closed
throughout: OPA unreachable, slow past `BASTION_OPA_DEADLINE_MS` or answering garbage is
a deny naming why (`_opa.OpaEngine.decide` never raises).

Activation: at start the module and the active set are loaded before the service reports
ready (a document bastion.rego cannot evaluate — `when`, `args`, `taint` — stops the
start with a message, rather than being evaluated without its conditions). Each later
activation is pushed by a watcher task as soon as the registry publishes it; decisions
in the few milliseconds between are made against the previous set, as with a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from bastion._errors import BastionError
from bastion.v1 import policy_pb2

from ._cel import CallContext
from ._document import Limits
from ._opa import OpaEngine, bundled_module, opa_input
from ._registry import PolicyRegistry

log = logging.getLogger("bastion.policy")

BUNDLED_MODULE_ID = "bastion"
_EFFECTS = {
    "allow": policy_pb2.ALLOW,
    "deny": policy_pb2.DENY,
    "require_approval": policy_pb2.REQUIRE_APPROVAL,
    "queue": policy_pb2.QUEUE,
}


class RegoDecider:
    def __init__(self, engine: OpaEngine, registry: PolicyRegistry) -> None:
        self._engine = engine
        self._registry = registry
        self._pusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the module and the active set; then keep OPA's set in step with the registry."""
        await self._engine.load_module(BUNDLED_MODULE_ID, bundled_module())
        await self._engine.push_policies(self._registry.active_documents())
        watcher = self._registry.subscribe()

        async def push_changes() -> None:
            try:
                while True:
                    change = await watcher.queue.get()
                    if change.kind != "activated":
                        continue
                    try:
                        await self._engine.push_policies(self._registry.active_documents())
                    except BastionError as exc:
                        # OPA keeps the previous set; decisions stay fail-closed on what it holds.
                        log.error("could not push policy %r v%d to OPA: %s", change.name, change.version, exc)
            finally:
                self._registry.unsubscribe(watcher)

        self._pusher = asyncio.create_task(push_changes(), name="bastion-opa-push")

    async def close(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher

    async def decide(
        self, request: policy_pb2.DecideRequest, kind: str, arguments: Mapping[str, object], context: CallContext
    ) -> policy_pb2.Decision:
        action, ctx = request.action, request.ctx
        snapshot = self._registry.snapshot  # read once: version numbers and digest of one set
        answer = await self._engine.decide(
            opa_input(
                kind=kind,
                agent_id=ctx.agent_id,
                server=action.server,
                tool=action.tool,
                resource=action.resource,
                prompt=action.prompt,
                method=action.method,
                arguments=arguments,
                tenant=context.tenant,
                roles=context.roles,
                session_id=context.session_id,
                workflow_id=context.workflow_id,
                task=context.task,
                labels=context.labels,
                taint=context.taint,
            )
        )
        versions = {active.name: active.version for active in snapshot.versions}
        decision = policy_pb2.Decision(
            effect=_EFFECTS.get(answer.effect, policy_pb2.DENY),
            rule_id=answer.rule_id,
            reason=answer.reason,
            policy_name=answer.policy,
            policy_version=versions.get(answer.policy, 0),
            bundle_digest=snapshot.policies.digest,
            request_id=ctx.request_id,
            # Rules with `cost` are refused in Rego mode: every call costs the default.
            cost=1.0,
        )
        # The deciding policy's limits apply in Rego mode too (the proxy enforces them).
        for policy in snapshot.policies.policies:
            if policy.name == answer.policy and policy.stanzas.limits is not None:
                fill_limits(decision.limits, policy.stanzas.limits)
        return decision


def fill_limits(message: policy_pb2.Limits, limits: Limits) -> None:
    """A policy's `limits:` stanza as the Decision carries it to the proxy."""
    message.rate = limits.rate or ""
    if (budget := limits.budget) is not None:
        message.budget_calls = budget.calls or 0
        message.budget_cost = budget.cost or 0.0
        message.budget_window = budget.window
    if limits.loop is not None:
        message.loop_same_call = limits.loop.same_call
        message.loop_window = limits.loop.window
