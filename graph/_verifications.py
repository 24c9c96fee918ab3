"""The VERIFICATION nodes the graph derives from an ACTION event: one per verifier answer
the event records, each linked ACTION -VERIFIED_BY-> VERIFICATION (the direction the
proxy's approval and queue decisions use: the action was verified by that node).

Why derived at ingest and not journaled by the proxy as events of their own: the ACTION
event already carries the verifier's answer (`verifier`, `verifier_fallback`, and with a
chain every member's own answer in `verifications`), and the audit chain hashes that
event. A second event per answer would cost the proxy's hot path a journal record and
the graph an ingest and an audit record each, which is what the benchmarks fight; a
node written in the action's own store transaction costs one row. The derived nodes are
not audit records: the action's record is their evidence.

Which actions get them: an ACTION (not a result event) whose policy decision is ALLOW.
Policy and verifier are asked concurrently, but only when policy allows does the
verifier's say decide (a deny or require_approval ends the action first: `combine` in
proxy/_pipeline.py), and only then does the event say for certain whether it answered:
with policy ALLOW an event without a verifier answer means the verifier did not answer
(failed, timed out, circuit open, answered garbage) and a fallback applied. That is
recorded too, as a VERIFICATION node without a verdict giving the reason: an auditor
must see that the verifier was asked and did not answer. Denied calls, approval-required
calls (an operator's approval node verifies those), actions whose deciding policy waived
scoring (`verifier: {name: none}`: their decision says so, and the proxy notes it in
`block_reason`), protocol traffic, result events and the approvals' own VERIFICATION
events get none; a denied call's concurrent verifier answer stays on its ACTION node.

The node: id `<action node id>:verification:<n>` (n from 1, chain order; a `/` would
not fit a REST path segment), event id likewise from the action's, node_type
VERIFICATION, the action's workflow, session, agent, tenant and times (so it sorts right
after its action), outcome unset (a verification is not a violation), `verifier` the
answer (scorer, score, threshold, verdict, reasons). A verifier that did not answer has
verdict VERDICT_UNSPECIFIED, why in its reasons, `verifier_fallback` set, and the
fallback the action took in `block_reason`. Deterministic ids and insertion only with a
newly stored action keep re-delivery idempotent.
"""

from __future__ import annotations

from bastion._verdicts import NO_VERIFIER, VERIFIER_QUEUED, VERIFIER_UNAVAILABLE
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._events import enum_name

#: Between the action's id and the answer's position in a derived node's (and event's) id.
ID_INFIX = ":verification:"
VERIFIED_BY = graph_pb2.EdgeType.Name(graph_pb2.VERIFIED_BY)
_NO_ANSWER = "the verifier did not answer"
#: The block codes of a verifier's fallback (proxy/_pipeline.py): it was asked, and failed.
_FALLBACK_CODES = frozenset({VERIFIER_UNAVAILABLE, VERIFIER_QUEUED})


def verification_nodes(event: graph_pb2.Event) -> list[graph_pb2.Event]:
    """The VERIFICATION nodes of `event` (see the module docstring); [] for most events."""
    if (
        event.node_type != graph_pb2.ACTION
        or event.HasField("result")
        or not event.HasField("decision")
        or event.decision.effect != policy_pb2.ALLOW
    ):
        return []
    answers: list[verifier_pb2.ScoreResponse] = list(event.verifications)
    if not answers:
        if _waived(event):
            return []  # nothing verified it, by policy's choice: the ACTION says so
        if event.HasField("verifier"):
            answers = [event.verifier]
        else:
            answers = [verifier_pb2.ScoreResponse(reasons=[event.block_reason or _NO_ANSWER])]
    return [_node(event, position, answer) for position, answer in enumerate(answers, 1)]


def _waived(event: graph_pb2.Event) -> bool:
    """A call the proxy decided by policy alone because every policy governing the agent
    waives scoring: no answer, no fallback, the decision naming `none`. Forwarded (the
    proxy's note then says so) or refused later by a limit: either way no verifier was
    asked. A call that was scored and whose verifier failed has a fallback (allowed and
    marked, or blocked with a verifier code), so its node stays, whatever the decision names."""
    return (
        not event.HasField("verifier")
        and not event.verifier_fallback
        and event.decision.verifier.name == NO_VERIFIER
        and event.block_code not in _FALLBACK_CODES
    )


def verification_edge(event: graph_pb2.Event, node: graph_pb2.Event) -> tuple[str, str, str, str, str]:
    """(workflow, source, target, type, reason) of the ACTION -VERIFIED_BY-> `node` edge."""
    answer = node.verifier
    scorer = answer.scorer or "verifier"
    if answer.verdict == verifier_pb2.VERDICT_UNSPECIFIED:
        reason = f"{scorer} did not answer"
    else:
        verdict = enum_name(verifier_pb2.Verdict.DESCRIPTOR, answer.verdict)
        reason = f"{scorer}: {verdict}, score {answer.deviation_score:.2f} (threshold {answer.threshold:.2f})"
    return (event.workflow_id, event.node_id, node.node_id, VERIFIED_BY, reason)


def _node(event: graph_pb2.Event, position: int, answer: verifier_pb2.ScoreResponse) -> graph_pb2.Event:
    answered = answer.verdict != verifier_pb2.VERDICT_UNSPECIFIED
    node = graph_pb2.Event(
        event_id=f"{event.event_id}{ID_INFIX}{position}",
        workflow_id=event.workflow_id,
        node_id=f"{event.node_id}{ID_INFIX}{position}",
        node_type=graph_pb2.VERIFICATION,
        agent_id=event.agent_id,
        session_id=event.session_id,
        tenant=event.tenant,
        verifier=answer,
        verifier_fallback=not answered,
        block_reason="" if answered else event.block_reason,
    )
    if event.HasField("started_at"):
        node.started_at.CopyFrom(event.started_at)
    if event.HasField("decided_at"):
        node.decided_at.CopyFrom(event.decided_at)
    return node
