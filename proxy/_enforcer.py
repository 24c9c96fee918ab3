"""The protocol-neutral enforcer: (caller, actions) → outcome, and what is journaled.

Protocol adapters (MCP today, A2A next) parse their wire format, validate it, bind the
caller and build the actions; the enforcer runs the decision stages of DESIGN §1 in
order for each action and journals the outcome before the adapter may forward:

    stages (each a small object: limits, approvals, redaction arrive as new stages)
      → decide + score concurrently (`Governor`, fail-closed `combine`)
      → journal the decided event (a journal failure turns the action into a block)
    forward (the adapter) → `record_results`: a result event for each forwarded node

A stage sees the pending action and either lets it continue (None) or ends it with an
`Outcome` that blocks; the first stage that ends it wins and later stages do not run.
Refusals made before any decision (bad token, malformed message) are journaled with
`refuse` under the workflow `bastion.rejected`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bastion._errors import JournalError
from bastion._identity import Principal
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._delegation import Delegation
from ._envelope import block_envelope
from ._methods import Target
from ._metrics import ProxyMetrics
from ._pipeline import JOURNAL_UNAVAILABLE, Governor, Outcome, Release
from ._pointers import read_from
from ._provenance import Provenance
from ._recorder import Record, Recorder, iso
from ._results import reading
from ._tracing import DECIDE_SPAN, JOURNAL_SPAN, Tracing
from ._workflows import WorkflowState, new_id

log = logging.getLogger("bastion.proxy")

_RESULT_NAMES = {value: name for name, value in graph_pb2.ResultOutcome.items()}
#: Where refusals made before a decision are journaled (no client may name it).
REJECTED_WORKFLOW = "bastion.rejected"
#: Characters of each name and of the reason a refusal made before any decision journals:
#: they are whatever the caller sent (a 60,000-character server name in the path made each
#: refusal of an unauthenticated client cost 23 KB of graph disk; an attacker's probe).
REFUSED_TEXT = 256
_ACTION_NAMES = ("server", "tool", "prompt", "resource", "target_agent", "method")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, in which workflow and session, of which upstream."""

    principal: Principal
    workflow_id: str
    session_id: str
    server: str
    #: The delegation the caller acts under (`_delegation.py`), if any.
    delegation: Delegation | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """One action on its way through the stages."""

    caller: Caller
    record: Record
    ctx: policy_pb2.Context
    history: Sequence[verifier_pb2.HistoryNode]
    body_size: int


class Stage(Protocol):
    async def __call__(self, pending: Pending) -> Outcome | None:
        """None lets the action go on; an Outcome ends it here."""


class AfterStage(Protocol):
    async def __call__(self, pending: Pending, outcome: Outcome) -> Outcome:
        """Sees the decision's outcome and returns it, or another (approvals, limits)."""


class DecisionStage:
    """Policy and verifier, asked concurrently; always ends the action with their outcome."""

    def __init__(self, governor: Governor) -> None:
        self._governor = governor

    async def __call__(self, pending: Pending) -> Outcome:
        return await self._governor.decide(
            pending.record.action, pending.ctx, pending.history, pending.record.node_id, body_size=pending.body_size
        )

    async def allowed(self, actions: Sequence[policy_pb2.Action], ctx: policy_pb2.Context) -> list[bool]:
        return await self._governor.allowed(actions, ctx)


@dataclass(frozen=True, slots=True)
class Decided:
    """An action after the stages and the journal."""

    record: Record
    outcome: Outcome
    violation_id: str


#: Forwarded actions whose releases wait for the result (bounded: a result that never
#: comes must not grow the proxy; the oldest entry's reservation then simply stands).
_HELD_MAX = 65_536


class Enforcer:
    """`checks` run in order before `decide`; `after` stages see its outcome in order
    (approvals, then limits: an approved call still spends the budget)."""

    def __init__(
        self,
        checks: Sequence[Stage],
        decide: DecisionStage,
        recorder: Recorder,
        metrics: ProxyMetrics,
        tracing: Tracing | None = None,
        after: Sequence[AfterStage] = (),
        provenance: Provenance | None = None,
    ) -> None:
        self._tracing = tracing or Tracing()
        self._provenance = provenance or Provenance()
        #: Forwarded actions whose results are fingerprinted into their workflow (bounded like `_held`).
        #: node id → (workflow, `server__tool`, what the call read, whether no untrusted data
        #: was in its arguments) of an allowed action.
        self._informing: OrderedDict[str, tuple[WorkflowState, str, tuple[str, ...], bool, Any]] = OrderedDict()
        self._checks = tuple(checks)
        self._after = tuple(after)
        self._decide = decide
        self._recorder = recorder
        self._metrics = metrics
        self._held: OrderedDict[str, tuple[Release, ...]] = OrderedDict()
        self._releasing: set[asyncio.Task[None]] = set()

    async def enforce(
        self,
        caller: Caller,
        state: WorkflowState,
        method: str,
        targets: Sequence[Target],
        *,
        body: bytes,
        started: float,
    ) -> list[Decided]:
        """Decide and journal every action; the caller forwards only when all are allowed."""
        parent = state.last_node(caller.session_id)
        parents = (parent,) if parent else ()
        pending = [self._pending(caller, state, target, method, body, started, parents) for target in targets]
        if len(pending) == 1:  # nearly every message: no task and no gather (≈ 12 µs of CPU)
            outcomes = [await self._run(pending[0])]
        else:
            outcomes = list(await asyncio.gather(*(self._run(item) for item in pending)))
        with self._tracing.stage(JOURNAL_SPAN):
            decided = [self._journal(item.record, outcome) for item, outcome in zip(pending, outcomes, strict=True)]
        self._hold(decided, outcomes)
        state.set_last_node(caller.session_id, decided[-1].record.node_id)
        for item, asked in zip(decided, pending, strict=True):
            action = item.record.action
            if item.outcome.allowed:
                # What the call read, not its arguments: held until its result, for each pending call.
                self._informing[item.record.node_id] = (
                    state,
                    _source_name(action),
                    read_from(item.record.arguments),
                    "untrusted" not in asked.ctx.taint,
                    # Read only if a result comes: what it repeats of them is the agent's own.
                    item.record.arguments,
                )
                if len(self._informing) > _HELD_MAX:
                    self._informing.popitem(last=False)
            state.history.append(
                verifier_pb2.HistoryNode(
                    node_id=item.record.node_id,
                    kind=action.kind,
                    server=action.server,
                    tool=action.tool or action.prompt or action.resource,
                    taint=[label for label in asked.ctx.taint if not label.startswith("arg:")],
                    # What happened, not what policy said: a verifier-blocked call must not
                    # count as precedent when the agent retries it.
                    effect=policy_pb2.ALLOW if item.outcome.allowed else policy_pb2.DENY,
                )
            )
            self._metrics.count("forwarded" if item.outcome.allowed else "blocked", item.outcome.decision)
            if item.outcome.fallback:
                self._metrics.verifier_fallback(item.outcome.fallback)
        return decided

    async def allowed(self, caller: Caller, actions: Sequence[policy_pb2.Action]) -> list[bool]:
        """Whether the caller's policy could allow each (list) action: for filtering listings."""
        return await self._decide.allowed(actions, _context(caller, "", new_id()))

    def _pending(
        self,
        caller: Caller,
        state: WorkflowState,
        target: Target,
        method: str,
        body: bytes,
        started: float,
        parents: tuple[str, ...],
    ) -> Pending:
        action = policy_pb2.Action(
            kind=target.kind,
            server=caller.server,
            tool=target.tool,
            prompt=target.prompt,
            resource=target.resource,
            method=method,
            target_agent=target.target_agent,
        )
        if target.arguments:
            action.arguments.update(target.arguments)
        record = self.record(caller, action, started, graph_pb2.ACTION, body, parents)
        record.arguments = target.arguments or None
        if caller.delegation is not None:
            reason = f"delegated by {caller.delegation.delegator!r} to A2A agent {caller.delegation.agent!r}"
            record.edges = ((caller.delegation.node_id, graph_pb2.DELEGATED_TO, reason),)
        ctx = _context(caller, state.task, record.node_id)
        # Provenance: which earlier results the arguments hold data from (`_provenance.py`).
        found = self._provenance.annotate(state.fingerprints, _source_name(action), target.arguments, state.task)
        if found.labels:
            ctx.taint.extend(found.labels)
            record.taint = found.labels
            record.edges += found.edges
        return Pending(caller, record, ctx, tuple(state.history), len(body))

    async def _run(self, pending: Pending) -> Outcome:
        for check in self._checks:
            outcome = await check(pending)
            if outcome is not None:
                return outcome
        with self._tracing.stage(DECIDE_SPAN):
            decided = await self._decide(pending)
        for stage in self._after:
            decided = await stage(pending, decided)
        if decided.edges:
            pending.record.edges += decided.edges
        return decided

    def _hold(self, decided: Sequence[Decided], outcomes: Sequence[Outcome]) -> None:
        """Keep what forwarded actions took until their result; give back the rest now.

        The adapter forwards only when every action of the message is allowed, so one
        blocked action (or a journal failure) means none of them is carried out."""
        forwarded = all(item.outcome.allowed for item in decided)
        for item, outcome in zip(decided, outcomes, strict=True):
            if not forwarded:
                # Also a blocked outcome's: a limit may refuse a call an approval let through.
                self._release(outcome.on_not_forwarded)
            elif outcome.on_upstream_failure:
                self._held[item.record.node_id] = outcome.on_upstream_failure
                if len(self._held) > _HELD_MAX:
                    self._held.popitem(last=False)

    def _release(self, releases: Iterable[Release]) -> None:
        for release in releases:
            task = asyncio.create_task(release())
            self._releasing.add(task)
            task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("giving back a limit or approval failed", extra={"fields": {"error": str(exc)}})

    def _journal(self, record: Record, outcome: Outcome) -> Decided:
        """Journal the decided action; a journal failure turns it into a block."""
        try:
            violation_id = self._recorder.append(
                record,
                outcome=graph_pb2.FORWARDED if outcome.allowed else graph_pb2.BLOCKED,
                decision=outcome.decision,
                score=outcome.score,
                block_code=outcome.block_code,
                block_reason=outcome.block_reason,
                verifier_fallback=outcome.verifier_fallback,
                verifications=outcome.verifications,
            )
        except JournalError as exc:
            log.error("journal append failed; blocking", extra={"fields": {"error": str(exc)}})
            blocked = Outcome(
                False, outcome.decision, outcome.score, JOURNAL_UNAVAILABLE, f"journal unavailable: {exc}"
            )
            # Nothing was recorded, so no violation id exists; the node id still lets the
            # operator match the client's report with the proxy's error log.
            return Decided(record, blocked, record.node_id)
        return Decided(record, outcome, violation_id)

    def record(
        self,
        caller: Caller,
        action: policy_pb2.Action,
        started: float,
        node_type: int,
        body: bytes = b"",
        parents: tuple[str, ...] = (),
    ) -> Record:
        return Record(
            workflow_id=caller.workflow_id,
            session_id=caller.session_id,
            agent_id=caller.principal.subject,
            tenant=caller.principal.tenant,
            action=action,
            started_at=started,
            body=body,
            node_type=node_type,
            parent_ids=parents,
        )

    def observe(self, record: Record) -> None:
        """Journal protocol traffic that is carried without a decision. Raises JournalError."""
        self._recorder.append(record, outcome=graph_pb2.FORWARDED)

    def record_task(self, caller: Caller, task: str, started: float) -> None:
        """The workflow's stated task, recorded once as a THINKING node."""
        action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method="bastion.dev/task")
        action.arguments.update({"task": task})
        try:
            self.observe(self.record(caller, action, started, graph_pb2.THINKING))
        except JournalError as exc:
            # The action that carried the task is still journaled (or blocked) on its own.
            log.error("journal append of task failed", extra={"fields": {"error": str(exc)}})

    def refuse(
        self, action: policy_pb2.Action, started: float, code: str, reason: str, principal: Principal | None
    ) -> str:
        """Journal a refusal made before any decision; return its violation id ("" if unjournaled).

        Bounded, whoever sent it: names and the reason are cut to REFUSED_TEXT characters
        (with the length and a digest of the whole), and a caller with no valid credential
        gets no arguments journaled — only what it called, and that it was refused."""
        bounded = policy_pb2.Action()
        bounded.CopyFrom(action)
        for name in _ACTION_NAMES:
            setattr(bounded, name, _cut(getattr(bounded, name)))
        if principal is None:
            bounded.ClearField("arguments")
        action, reason = bounded, _cut(reason)
        record = Record(
            workflow_id=REJECTED_WORKFLOW,
            session_id="",
            agent_id=principal.subject if principal is not None else "",
            tenant=principal.tenant if principal is not None else "",
            action=action,
            started_at=started,
            node_type=graph_pb2.OBSERVATION,
        )
        self._metrics.count("rejected", None)
        try:
            return self._recorder.append(record, outcome=graph_pb2.REJECTED, block_code=code, block_reason=reason)
        except JournalError as exc:
            log.error("journal append of a refusal failed", extra={"fields": {"error": str(exc), "code": code}})
            return ""

    def refuse_request(
        self, method: str, path: str, started: float, code: str, reason: str, principal: Principal | None = None
    ) -> str:
        """Journal the refusal of an HTTP request that carries no protocol message (an operator
        route, a path with no route, bytes that are not HTTP); its violation id ("" if
        unjournaled). The method and path stand as the action's method, redacted like names."""
        action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method=f"{method} {path[:256]}".strip()[:300])
        return self.refuse(action, started, code, reason, principal)

    def record_results(self, records: Iterable[Record], result: graph_pb2.ActionResult, answer: Any = None) -> None:
        """Journal how forwarded actions ended (and count the outcome, once per call). The
        action already happened, so a journal failure here is logged and counted, never
        turned into a block. `answer`, the parsed JSON-RPC result (or error), is
        fingerprinted for provenance when the upstream answered."""
        self._metrics.result(_RESULT_NAMES[result.outcome])
        # Not carried out: the upstream could not be reached — no answer, not even its
        # headers. Any answer is no proof that the tool did not act: a JSON-RPC error can come
        # after it acted, and the agent itself can cause one (answering the tool's elicitation
        # with an error), or an HTTP 500 (deleting its own session mid-call); attackers' probes
        # ran six transfers on a budget of two both ways. So the budget stays spent.
        failed = result.outcome == graph_pb2.UPSTREAM_ERROR and result.http_status == 0
        # Too large to read, or too deep to read with every copy of a repeated key: its data
        # cannot be fingerprinted, and later calls must say so.
        taken = reading(result, answer)
        for record in records:
            held = self._held.pop(record.node_id, ())
            if failed:
                self._release(held)
            try:
                self._recorder.append_result(record, result)
            except JournalError as exc:
                self._metrics.result_unjournaled()
                log.error(
                    "journal append of a result failed",
                    extra={"fields": {"error": str(exc), "node_id": record.node_id}},
                )
            # After the audit record: provenance is a hint for later calls, the result a fact.
            informing = self._informing.pop(record.node_id, None)
            if informing is not None and (taken.read or taken.unread):
                state, source, read, chosen, arguments = informing
                if taken.read:
                    self._provenance.record(
                        state.prints(),
                        record.node_id,
                        source,
                        answer,
                        read,
                        size=result.result_bytes,
                        tenant=record.tenant,
                        chosen=chosen,
                        arguments=arguments,
                    )
                if taken.unread or taken.partial:
                    self._provenance.record_unread(
                        state.prints(), record.node_id, source, result.result_bytes, partial=taken.partial
                    )


def _source_name(action: policy_pb2.Action) -> str:
    """`server__tool` as policies name it (the prompt or resource for those actions)."""
    return f"{action.server}__{action.tool or action.prompt or action.resource}"


def _context(caller: Caller, task: str, request_id: str) -> policy_pb2.Context:
    principal = caller.principal
    return policy_pb2.Context(
        agent_id=principal.subject,
        tenant=principal.tenant,
        session_id=caller.session_id,
        workflow_id=caller.workflow_id,
        task=task,
        roles=principal.roles,
        request_id=request_id,
    )


def envelope(msg_id: Any, method: str, decided: Decided, started: float) -> bytes:
    """The -32003 block envelope of DESIGN §4 for a blocked action."""
    outcome, action = decided.outcome, decided.record.action
    score, decision = outcome.score, outcome.decision
    blocked_action: dict[str, Any] = {"method": method, "server": action.server}
    for key in ("tool", "prompt", "resource", "target_agent"):
        if value := getattr(action, key):
            blocked_action[key] = value
    return block_envelope(
        msg_id,
        violation_id=decided.violation_id,
        rule_id=outcome.block_code,
        reason=outcome.block_reason,
        deviation_score=score.deviation_score if score is not None else None,
        threshold=score.threshold if score is not None else None,
        drift_path_origin=(score.drift_origin_node_id or None) if score is not None else None,
        agent_id=decided.record.agent_id,
        blocked_action=blocked_action,
        policy_version=decision.policy_version if decision is not None else None,
        policy_name=decision.policy_name if decision is not None else "",
        timestamp=iso(started),
        code=outcome.error_code,
        message=outcome.error_message,
        extra=outcome.error_data,
    )


def _cut(text: str) -> str:
    """`text` within REFUSED_TEXT characters, marked with its length and a digest when cut."""
    if len(text) <= REFUSED_TEXT:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:REFUSED_TEXT]}… ({len(text)} characters, sha256 {digest}…)"
