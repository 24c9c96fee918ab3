"""`BASTION_POLICY_ENGINE=opa`: decisions made by a real OPA server instead of the native engine.

The active set (the registry's, the same versions the native engine would use) is pushed
to OPA as data, evaluated by the bundled generic module `rego/bastion.rego` with the
native engine's `match`/`effect` semantics; every decision sends OPA the same input
document (`_opa.opa_input`) and maps its answer to the same `Decision`. Fail closed
throughout: OPA unreachable, slow past `BASTION_OPA_DEADLINE_MS` or answering garbage is
a deny naming why (`decide` never raises).

What OPA holds, and what decisions say
--------------------------------------
* Only what bastion.rego can decide by exactly is put in OPA: a document with `when`,
  `args`, `taint`, `shadow`, `steer` or `cost` (`_opa.rego_problems`) is refused when it
  is created, validated or activated (422), and stops the start when bastion.yaml or the
  store makes it active. Evaluated without its conditions it would allow more than its
  author wrote.
* An activation is put in force in OPA before it is written and swapped in (`OpaSync`,
  the registry's `Enforcer`): when OPA does not take it, the activation fails (503) and
  the previous version stays active. Pushes are serialised.
* OPA answers each decision together with the name of the set it decided by (versions
  and digest, `_opa.decide_bundled`), read in the same evaluation. A decision carries
  those versions and that digest, so it names what OPA really decided by. An answer by
  a set this service did not put in force (OPA holds an older set, or another writer's),
  or no set at all (OPA restarted empty), is not used: the service reloads bastion.rego
  and the active set (one reload at a time), waits up to one deadline for it, asks once
  more, and otherwise denies with the reason.
* Every `CHECK_S` (and at once after a failed push) OPA is asked the same way with an
  empty input; `ready` (and so `/readyz`) is true only while OPA holds the active set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final

from bastion._errors import BastionError, DecisionUnavailable
from bastion.v1 import policy_pb2

from ._cel import CallContext
from ._document import Limits, PolicyDocument
from ._opa import (
    BundledAnswer,
    HeldSet,
    OpaDecision,
    OpaEngine,
    bundled_module,
    check_rego_supported,
    fail_closed,
    opa_input,
)
from ._registry import PolicyRegistry, Snapshot

log = logging.getLogger("bastion.policy")

BUNDLED_MODULE_ID = "bastion"
#: How often OPA is asked whether it still holds the active set (one small query).
CHECK_S: Final = 1.0
#: After a failed reload, decisions wait this long before they trigger another.
RELOAD_BACKOFF_S: Final = 1.0
_EFFECTS = {
    "allow": policy_pb2.ALLOW,
    "deny": policy_pb2.DENY,
    "require_approval": policy_pb2.REQUIRE_APPROVAL,
    "queue": policy_pb2.QUEUE,
}
# What the periodic check asks: a kind no rule governs, answered without matching any rule.
_PROBE = opa_input(kind="BASTION_HEALTH_CHECK", agent_id="")

LimitsByPolicy = Mapping[str, Limits | None]


class OpaSync:
    """Writes policy sets into OPA, one write at a time; the registry's `Enforcer` in Rego mode."""

    def __init__(self, engine: OpaEngine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()
        #: Sets being put in force (pushed, not yet swapped in by the registry), by name.
        self._pending: dict[HeldSet, tuple[PolicyDocument, ...]] = {}
        #: Set when OPA may hold a set other than the active one: the check runs at once.
        self.stale = asyncio.Event()

    def check(self, document: PolicyDocument) -> None:
        check_rego_supported(document)

    @contextlib.asynccontextmanager
    async def transition(self, documents: tuple[PolicyDocument, ...]) -> AsyncIterator[None]:
        held = HeldSet.of(documents)
        async with self._lock:
            self._pending[held] = documents
            try:
                try:
                    await self.engine.push_policies(documents)
                except BastionError as exc:
                    # OPA may have taken the write and lost the answer: the check puts the active set back.
                    self.stale.set()
                    raise DecisionUnavailable(
                        f"OPA did not take the policy set {held.describe()}, so nothing was activated and the "
                        f"previous version stays active ({exc}); check OPA at BASTION_OPA_URL and activate again"
                    ) from exc
                try:
                    yield
                except BaseException:
                    self.stale.set()  # the registry kept the previous set: OPA must hold it again
                    raise
            finally:
                del self._pending[held]

    def pending(self, held: HeldSet) -> tuple[PolicyDocument, ...] | None:
        """The documents of `held` while it is being put in force, else None."""
        return self._pending.get(held)

    async def reload(self, documents: Callable[[], tuple[PolicyDocument, ...]]) -> HeldSet:
        """Load bastion.rego and the set `documents()` returns (read once the write may start)."""
        async with self._lock:
            active = documents()
            await self.engine.load_module(BUNDLED_MODULE_ID, bundled_module())
            await self.engine.push_policies(active)
            return HeldSet.of(active)


class RegoDecider:
    def __init__(self, sync: OpaSync, registry: PolicyRegistry, *, check_every_s: float = CHECK_S) -> None:
        self._sync = sync
        self._engine = sync.engine
        self._registry = registry
        self._check_every_s = check_every_s
        self._ready = False
        self._reloading: asyncio.Task[bool] | None = None
        self._failed_at = -math.inf
        self._watcher: asyncio.Task[None] | None = None
        self._active: tuple[Snapshot, HeldSet] | None = None

    @property
    def ready(self) -> bool:
        """Whether OPA held the active set at the last look (a decision, or the check)."""
        return self._ready

    async def start(self) -> None:
        """Load the module and the active set (a failure stops the start); then keep checking."""
        await self._sync.reload(self._registry.active_documents)
        self._ready = True
        self._watcher = asyncio.create_task(self._watch(), name="bastion-opa-check")

    async def close(self) -> None:
        for task in (self._watcher, self._reloading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def decide(
        self, request: policy_pb2.DecideRequest, kind: str, arguments: Mapping[str, object], context: CallContext
    ) -> policy_pb2.Decision:
        action, ctx = request.action, request.ctx
        document = opa_input(
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
        snapshot = self._registry.snapshot
        answer = await self._engine.decide_bundled(document)
        limits = self._known(answer, snapshot)
        if limits is None and _answered(answer):
            # OPA answered, but not by a set this service put in force (it restarted empty, or
            # holds an older set): reload it and ask once more; never decide by what it held.
            self._ready = False
            if await self._reload(wait_s=self._engine.deadline_s):
                snapshot = self._registry.snapshot
                answer = await self._engine.decide_bundled(document)
                limits = self._known(answer, snapshot)
        if limits is not None:
            self._ready = True
        return self._decision(request, snapshot, answer, limits)

    def _decision(
        self,
        request: policy_pb2.DecideRequest,
        snapshot: Snapshot,
        answer: BundledAnswer,
        limits: LimitsByPolicy | None,
    ) -> policy_pb2.Decision:
        opa, held = answer.decision, answer.held
        versions: Mapping[str, int] = {}
        digest = snapshot.policies.digest
        if held is not None and limits is not None:
            versions, digest = dict(held.versions), held.digest
        elif held is not None:
            opa = self._not_active(held, snapshot)
        decision = policy_pb2.Decision(
            effect=_EFFECTS.get(opa.effect, policy_pb2.DENY),
            rule_id=opa.rule_id,
            reason=opa.reason,
            policy_name=opa.policy,
            # The version OPA decided by, as it named it in the same evaluation (0: none decided).
            policy_version=versions.get(opa.policy, 0),
            bundle_digest=digest,
            request_id=request.ctx.request_id,
            # Rules with `cost` are refused in Rego mode: every call costs the default.
            cost=1.0,
        )
        # The deciding policy's limits apply in Rego mode too (the proxy enforces them).
        if limits is not None and (stanza := limits.get(opa.policy)) is not None:
            fill_limits(decision.limits, stanza)
        return decision

    def _known(self, answer: BundledAnswer, snapshot: Snapshot) -> LimitsByPolicy | None:
        """Each policy's limits in the set OPA decided by, when it is the active set (read before
        or after the query) or one being put in force; None when OPA decided by no such set."""
        held = answer.held
        if held is None:
            return None
        for candidate in (snapshot, self._registry.snapshot):
            if held == self._held_of(candidate):
                return {policy.name: policy.stanzas.limits for policy in candidate.policies.policies}
        pending = self._sync.pending(held)
        if pending is not None:
            return {document.metadata.name: document.spec.limits for document in pending}
        return None

    def _held_of(self, snapshot: Snapshot) -> HeldSet:
        cached = self._active
        if cached is None or cached[0] is not snapshot:
            versions = tuple((active.name, active.version) for active in snapshot.versions)
            cached = self._active = (snapshot, HeldSet(versions, snapshot.policies.digest))
        return cached[1]

    def _not_active(self, held: HeldSet, snapshot: Snapshot) -> OpaDecision:
        return fail_closed(
            f"OPA decided by {held.describe()}, not the active set ({self._held_of(snapshot).describe()}); "
            "the service is loading the active set into OPA"
        )

    async def _reload(self, *, wait_s: float | None) -> bool:
        """Reload OPA with the active set, one reload at a time; True when it succeeded within `wait_s`."""
        task = self._reloading
        if task is None or task.done():
            if time.monotonic() - self._failed_at < RELOAD_BACKOFF_S:
                return False  # OPA refused a moment ago: not one reload per decision while it is down
            task = self._reloading = asyncio.create_task(self._reload_now(), name="bastion-opa-reload")
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(task)
        except TimeoutError:
            return False

    async def _reload_now(self) -> bool:
        try:
            held = await self._sync.reload(self._registry.active_documents)
        except Exception as exc:  # BastionError from OPA; anything else is logged as the bug it is
            self._failed_at = time.monotonic()
            self._ready = False
            log.error(
                "OPA does not hold the active policy set and could not be reloaded: %s; decisions are denied "
                "until it is",
                exc,
                exc_info=not isinstance(exc, BastionError),
            )
            return False
        self._ready = True
        log.warning("OPA did not hold the active policy set; reloaded it (%s)", held.describe())
        return True

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_every_s):
                    await self._sync.stale.wait()
            self._sync.stale.clear()
            answer = await self._engine.decide_bundled(_PROBE)
            if self._known(answer, self._registry.snapshot) is not None:
                self._ready = True
                continue
            self._ready = False  # unreachable, failing, empty or holding another set
            if _answered(answer):
                await self._reload(wait_s=None)


def _answered(answer: BundledAnswer) -> bool:
    """OPA answered the query (by some set, or with none): as opposed to being unreachable or failing."""
    return answer.missing or answer.held is not None


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
