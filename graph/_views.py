"""The JSON shapes of the graph REST API, and how stored records become them.

These shapes are a contract: the dashboard, the CLI and the e2e tests read them.
Enum values appear as their proto names (strings); timestamps as RFC 3339 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._events import enum_name, struct_view
from ._export import WalkReport
from ._store import (
    MAX_PAGE_BYTES,
    MAX_SNAPSHOT_EDGES,
    MAX_SNAPSHOT_NODES,
    DriftPath,
    Edge,
    Node,
    WorkflowSnapshot,
    WorkflowSummary,
)

_PAGE_MIB = MAX_PAGE_BYTES >> 20


def _one_of(descriptor: EnumDescriptor) -> str:
    return "One of " + ", ".join(value.name for value in descriptor.values)


class ActionView(BaseModel):
    """The governed action as the proxy saw it (arguments after redaction)."""

    kind: str = Field(description=_one_of(policy_pb2.ActionKind.DESCRIPTOR))
    server: str = Field(description="Upstream key in bastion.yaml (MCP server or A2A agent).")
    tool: str
    method: str = Field(description="The JSON-RPC method, e.g. tools/call.")
    arguments: dict[str, Any] = Field(
        description="As the agent sent them, after redaction: integers exact (2 stays 2, not 2.0), "
        "except for events recorded before the graph kept arguments as sent, which show them as doubles."
    )
    arguments_truncated: bool = Field(
        description="The arguments were too large for the journal: `arguments` holds a bounded prefix, "
        "and the node's payload_digest is the sha256 of the whole request."
    )


class DecisionView(BaseModel):
    effect: str = Field(description=_one_of(policy_pb2.Effect.DESCRIPTOR))
    rule_id: str
    reason: str
    policy_name: str
    policy_version: int
    bundle_digest: str


class VerifierView(BaseModel):
    deviation_score: float = Field(description="0 = exactly as expected, 1 = maximal deviation.")
    threshold: float
    verdict: str = Field(description=_one_of(verifier_pb2.Verdict.DESCRIPTOR))
    reasons: list[str]
    drift_origin_node_id: str
    scorer: str


class NodeView(BaseModel):
    """One node of the causal graph: one event recorded by the proxy."""

    node_id: str
    event_id: str
    workflow_id: str
    session_id: str
    node_type: str = Field(description=_one_of(graph_pb2.NodeType.DESCRIPTOR))
    agent_id: str
    tenant: str
    action: ActionView
    decision: DecisionView | None = Field(description="The policy decision; null when none was asked for.")
    verifier: VerifierView | None = Field(description="The verifier's score; null when it was not consulted.")
    verifier_fallback: bool = Field(description="The verifier did not answer and the policy's fallback applied.")
    outcome: str = Field(description=_one_of(graph_pb2.Outcome.DESCRIPTOR))
    violation_id: str
    block_code: str
    block_reason: str
    started_at: datetime | None
    decided_at: datetime | None
    parent_ids: list[str] = Field(description="CAUSED_BY parents: the previous action(s) of the session.")
    payload_digest: str
    result: ResultView | None = Field(
        default=None, description="How the forwarded action ended; null until the proxy recorded it."
    )
    payload_expired: bool = Field(
        default=False,
        description="Payload retention (BASTION_PAYLOAD_RETENTION_DAYS) removed this node's arguments and "
        "result content; its digests, decision and audit records remain.",
    )


class ResultView(BaseModel):
    """How a forwarded action ended, recorded by the proxy after the upstream answered."""

    outcome: str = Field(description=_one_of(graph_pb2.ResultOutcome.DESCRIPTOR))
    jsonrpc_error_code: int = Field(description="The answer's JSON-RPC error code; 0 for a result.")
    http_status: int = Field(description="The upstream's HTTP status; 0 when none arrived.")
    duration_ms: float = Field(description="From forwarding to the end of the relayed answer.")
    result_digest: str = Field(description="sha256 of the answer's body as relayed.")
    result_bytes: int
    completed_at: datetime | None
    detail: str = Field(description="Why, for UPSTREAM_ERROR, TIMEOUT and CLIENT_GONE.")


class EdgeView(BaseModel):
    source: str
    target: str
    type: str = Field(description=_one_of(graph_pb2.EdgeType.DESCRIPTOR))
    reason: str


class WorkflowView(BaseModel):
    workflow_id: str
    first_seen: datetime
    last_seen: datetime
    node_count: int
    violation_count: int = Field(description="Nodes whose outcome is BLOCKED or REJECTED.")
    agents: list[str]


class WorkflowPage(BaseModel):
    items: list[WorkflowView]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class WorkflowGraph(WorkflowView):
    """A workflow's summary, nodes and edges, all as of one moment.

    Holds at most the 5000 oldest nodes and 20000 edges, and stops after the node that
    takes the nodes' stored events to 16 MiB; `truncated` is true when the workflow has
    more. Larger workflows must be read page by page through GET /graphs/{workflow_id}/nodes.
    """

    nodes: list[NodeView] = Field(description=f"Oldest first; at most {MAX_SNAPSHOT_NODES}.")
    edges: list[EdgeView] = Field(description=f"Edges out of the listed nodes; at most {MAX_SNAPSHOT_EDGES}.")
    truncated: bool = Field(
        description="The workflow has more nodes or edges than listed (node_count counts them all); "
        "page through GET /graphs/{workflow_id}/nodes for every node."
    )


class NodeList(BaseModel):
    workflow_id: str
    items: list[NodeView] = Field(
        description=f"Oldest first; fewer than `limit` when the nodes' stored events reach {_PAGE_MIB} MiB "
        "(large arguments): `next_cursor` then reads on."
    )
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class ViolationView(BaseModel):
    """An action the proxy blocked or rejected."""

    violation_id: str
    workflow_id: str
    node_id: str
    event_id: str
    agent_id: str
    rule_id: str = Field(description="Why it was blocked: a policy rule id or a bastion.* code.")
    reason: str
    deviation_score: float | None
    threshold: float | None
    policy_name: str | None
    policy_version: int | None
    outcome: str = Field(description="BLOCKED or REJECTED.")
    timestamp: datetime
    server: str
    tool: str


class ViolationPage(BaseModel):
    items: list[ViolationView] = Field(
        description=f"Newest first; fewer than `limit` when the nodes' stored events reach {_PAGE_MIB} MiB: "
        "`next_cursor` reads on."
    )
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class Status(BaseModel):
    status: str


def workflow_view(summary: WorkflowSummary) -> WorkflowView:
    return WorkflowView(
        workflow_id=summary.workflow_id,
        first_seen=summary.first_seen,
        last_seen=summary.last_seen,
        node_count=summary.node_count,
        violation_count=summary.violation_count,
        agents=list(summary.agents),
    )


def workflow_graph(snapshot: WorkflowSnapshot) -> WorkflowGraph:
    return WorkflowGraph(
        **workflow_view(snapshot.summary).model_dump(),
        nodes=[node_view(node) for node in snapshot.nodes],
        edges=[edge_view(edge) for edge in snapshot.edges],
        truncated=snapshot.truncated,
    )


def edge_view(edge: Edge) -> EdgeView:
    return EdgeView(source=edge.source, target=edge.target, type=edge.type, reason=edge.reason)


def node_view(node: Node) -> NodeView:
    event = node.event
    return NodeView(
        node_id=event.node_id,
        event_id=event.event_id,
        workflow_id=event.workflow_id,
        session_id=event.session_id,
        node_type=enum_name(graph_pb2.NodeType.DESCRIPTOR, event.node_type),
        agent_id=event.agent_id,
        tenant=event.tenant,
        action=_action_view(event),
        decision=_decision_view(event.decision) if event.HasField("decision") else None,
        verifier=_verifier_view(event.verifier) if event.HasField("verifier") else None,
        verifier_fallback=event.verifier_fallback,
        outcome=enum_name(graph_pb2.Outcome.DESCRIPTOR, event.outcome),
        violation_id=event.violation_id,
        block_code=event.block_code,
        block_reason=event.block_reason,
        started_at=_datetime(event.started_at) if event.HasField("started_at") else None,
        decided_at=_datetime(event.decided_at) if event.HasField("decided_at") else None,
        parent_ids=list(event.parent_ids),
        payload_digest=event.payload_digest,
        result=_result_view(event.result) if event.HasField("result") else None,
        payload_expired=event.payload_expired,
    )


def _result_view(result: graph_pb2.ActionResult) -> ResultView:
    return ResultView(
        outcome=enum_name(graph_pb2.ResultOutcome.DESCRIPTOR, result.outcome),
        jsonrpc_error_code=result.jsonrpc_error_code,
        http_status=result.http_status,
        duration_ms=result.duration_ms,
        result_digest=result.result_digest,
        result_bytes=result.result_bytes,
        completed_at=_datetime(result.completed_at) if result.HasField("completed_at") else None,
        detail=result.detail,
    )


def violation_view(node: Node) -> ViolationView:
    event = node.event
    decided = event.HasField("decision")
    scored = event.HasField("verifier")
    return ViolationView(
        violation_id=event.violation_id,
        workflow_id=event.workflow_id,
        node_id=event.node_id,
        event_id=event.event_id,
        agent_id=event.agent_id,
        rule_id=event.block_code,
        reason=event.block_reason,
        deviation_score=event.verifier.deviation_score if scored else None,
        threshold=event.verifier.threshold if scored else None,
        policy_name=event.decision.policy_name if decided else None,
        policy_version=event.decision.policy_version if decided else None,
        outcome=enum_name(graph_pb2.Outcome.DESCRIPTOR, event.outcome),
        timestamp=node.at,
        server=event.action.server,
        tool=event.action.tool,
    )


def _action_view(event: graph_pb2.Event) -> ActionView:
    action = event.action
    return ActionView(
        kind=enum_name(policy_pb2.ActionKind.DESCRIPTOR, action.kind),
        server=action.server,
        tool=action.tool,
        method=action.method,
        arguments=arguments_as_sent(event),
        arguments_truncated=event.arguments_truncated,
    )


def arguments_as_sent(event: graph_pb2.Event) -> dict[str, Any]:
    """The arguments as the agent sent them (`arguments_json`), else the Struct's view."""
    if event.arguments_json:
        try:
            sent = orjson.loads(event.arguments_json)
        except orjson.JSONDecodeError:
            sent = None
        if isinstance(sent, dict):
            return sent
    return struct_view(event.action.arguments)


def _decision_view(decision: policy_pb2.Decision) -> DecisionView:
    return DecisionView(
        effect=enum_name(policy_pb2.Effect.DESCRIPTOR, decision.effect),
        rule_id=decision.rule_id,
        reason=decision.reason,
        policy_name=decision.policy_name,
        policy_version=decision.policy_version,
        bundle_digest=decision.bundle_digest,
    )


def _verifier_view(score: verifier_pb2.ScoreResponse) -> VerifierView:
    return VerifierView(
        deviation_score=score.deviation_score,
        threshold=score.threshold,
        verdict=enum_name(verifier_pb2.Verdict.DESCRIPTOR, score.verdict),
        reasons=list(score.reasons),
        drift_origin_node_id=score.drift_origin_node_id,
        scorer=score.scorer,
    )


def _datetime(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


# --- audit chain, exports, SLO and drift paths ---------------------------------------------


class ChainHeadView(BaseModel):
    sequence: int
    hash: str = Field(description="sha256 hex of the record and everything before it.")


class ChainProblemView(BaseModel):
    kind: str = Field(description="One of altered, removed, inserted, reordered.")
    sequence: int = Field(description="The record the problem is named by.")
    detail: str


class VerifyNextView(BaseModel):
    after: int = Field(description="Pass as `after`: the last record this walk checked.")
    anchor: str = Field(description="Pass as `anchor`: that record's hash, which the next one must link to.")


class AuditVerifyView(BaseModel):
    """The audit chain recomputed from its first record (or from `first`, continuing an earlier
    walk): the first problem, if any, or where the walk stopped."""

    ok: bool = Field(
        description="True only when every record from `first` to the head was checked and none has a problem "
        "(false when the walk stopped at its deadline: see `stopped`)."
    )
    records: int = Field(description="Records checked (up to one past the first problem).")
    first: int = Field(description="The first record checked: 1, or the one after the `after` given.")
    head: ChainHeadView | None = Field(description="The last record checked; null for an empty chain.")
    problem: ChainProblemView | None
    checkpoints: int = Field(
        description="Signed checkpoints (every BASTION_AUDIT_CHECKPOINT_EVERY records) that held: each one's "
        "signature by the stack's key, and the chain's hash at its sequence. A chain cut short or rewritten "
        "with recomputed hashes fails at the first checkpoint it reaches."
    )
    stopped: str | None = Field(
        description="deadline: the walk stopped at BASTION_AUDIT_WALK_DEADLINE_S before the chain's head, having "
        "checked records `first` to `head`; continue with `next`. Null when it reached the head or found a problem."
    )
    next: VerifyNextView | None = Field(
        description="When stopped: the query (`after`, `anchor`) that checks the rest, linked to what this one checked."
    )


class RuleStatsView(BaseModel):
    rule_id: str = Field(description="A policy rule id, or a bastion.* code for blocks outside policy.")
    decisions: int
    blocked: int
    block_rate: float


class SloView(BaseModel):
    """Decisions whose event time falls in the window."""

    window_s: int
    since: datetime
    decisions: int
    blocked: int
    block_rate: float = Field(description="blocked / decisions; 0 when there were none.")
    verifier_fallbacks: int = Field(description="Decisions the verifier's configured fallback took.")
    latency_ms: dict[str, float] = Field(
        description="decided_at - started_at percentiles (p50, p90, p99, p999; nearest rank) of the "
        "decisions taken: refusals before any decision (outcome REJECTED) count in `decisions` and "
        "`blocked` but not here; empty when no decision of the window had both times."
    )
    rules: list[RuleStatsView] = Field(description="Most decisions first.")


class DriftHopView(BaseModel):
    node_id: str
    node_type: str = Field(description="NODE_TYPE_UNSPECIFIED for a node named by an edge but never ingested.")
    workflow_id: str
    agent_id: str
    server: str
    tool: str
    outcome: str
    via: str | None = Field(description="The edge followed to the next hop (toward the origin); null on the last.")
    reason: str = Field(description="The edge's reason, as the proxy recorded it.")
    taint: list[str] = Field(
        description="The node's provenance labels: untrusted (it used data from an untrusted result), "
        "source:<tool>, sink, arg:<path>:<trust>:<tool>:<result path>:<kind>:<fraction>."
    )


class DriftPathView(BaseModel):
    workflow_id: str
    node_id: str
    origin: str = Field(
        description="Why the walk ended: untrusted_data (the last hop is where the data entered), "
        "workflow_root, not_ingested, depth_limit, cycle, or not_visible (the next hop is in a "
        "workflow the reader's tenant may not read)."
    )
    hops: list[DriftHopView] = Field(description="From the node asked about back to the origin.")


def verify_view(walk: WalkReport) -> AuditVerifyView:
    report = walk.chain
    head, problem = report.head, report.problem
    # A walk stops only after its first page, so a stopped one has a head to go on from.
    resume = walk.stopped is not None and problem is None and head is not None
    return AuditVerifyView(
        ok=walk.ok,
        records=report.records,
        first=walk.first,
        head=ChainHeadView(sequence=head.sequence, hash=head.hash) if head else None,
        problem=ChainProblemView(kind=problem.kind, sequence=problem.sequence, detail=problem.detail)
        if problem
        else None,
        checkpoints=report.checkpoints,
        stopped=walk.stopped,
        next=VerifyNextView(after=head.sequence, anchor=head.hash) if resume and head is not None else None,
    )


def drift_view(workflow_id: str, node_id: str, path: DriftPath) -> DriftPathView:
    return DriftPathView(
        workflow_id=workflow_id,
        node_id=node_id,
        origin=path.origin,
        hops=[
            DriftHopView(
                node_id=hop.node_id,
                node_type=hop.node_type,
                workflow_id=hop.workflow_id,
                agent_id=hop.agent_id,
                server=hop.server,
                tool=hop.tool,
                outcome=hop.outcome,
                via=hop.via,
                reason=hop.reason,
                taint=list(hop.taint),
            )
            for hop in path.hops
        ],
    )
