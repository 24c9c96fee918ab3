"""`POST /v1/simulate`: replay recorded actions against a candidate policy version, and
say which decisions would change before anything is activated.

Request (JSON, unknown fields refused):

    {"policy": "demo", "version": 2,            # a stored version, or instead of `version`:
     "document": "<YAML or JSON text>",          # an inline candidate, validated, never stored
     "workflow_ids": ["wf-1", ...],              # recorded workflows, read from the graph, or
     "events": [{...node view...}, ...]}         # posted events in the graph's node-view shape

Exactly one of `version` / `document`, and exactly one of `workflow_ids` / `events`. An
inline `document` must name `policy` in its metadata; it lets an operator see the effect
of an edit before creating a version.

The candidate set is the active set with the candidate in its policy's place (appended
last when that policy has no active version), which is what activating it would serve;
the current set is the active set as it is. Each replayed action is decided by both with
`PolicySet.evaluate`; `changed` is true when the effect or the deciding rule differs.
`newly_denied` counts actions the current set allows and the candidate does not (any
effect but allow blocks), `newly_allowed` the reverse.

What is replayed: ACTION nodes of a governed kind (tools/call, resources/read, … as in
bastion.policy._engine); other nodes and kinds are counted in `skipped`. The recorded
context is the node's tenant, session and workflow; roles, labels, taint and task are
not in the node view, so conditions on them see empty values. Arguments are replayed as
recorded, i.e. after redaction (a truncated record is replayed with its prefix and the
event says so in `note`).

Bounds: at most MAX_WORKFLOWS workflow ids and MAX_EVENTS events per request (posted
events beyond it are refused; recorded ones beyond it are not read: `truncated` is true,
`stopped` is 'events'), GRAPH_DEADLINE_S for all graph reads together, and
REPLAY_DEADLINE_S for the replay (the actions not decided by then are left out:
`truncated` is true, `stopped` is 'deadline'). The replay runs in a worker thread, one
simulation at a time per service (another meanwhile is 429 `bastion.policy.simulation_busy`):
a decision may take up to CEL's step bound (≈ 20 ms) per condition, and 5,000 actions
decided twice on the event loop held up every live decision of the service for minutes
(an attacker's probe with one costly condition in an inline candidate).

Graph reads go to the graph REST at BASTION_GRAPH_ADDR (`GET /graphs/{wf}/nodes`, paged)
with the caller's own bearer token forwarded: the route needs an operator, whom the graph
lets read, and the policy service mints nothing, so a simulation reads only what its
caller could read directly. Failures: an unknown workflow is 404 `bastion.not_found`; a
graph that cannot be reached in time is 503 `bastion.policy.graph_unavailable`; one that
answers with an error or an unreadable body (a refused token included) is 502
`bastion.policy.graph_error`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion._errors import PolicyValidationError
from bastion._json import loads_strict
from bastion.v1 import policy_pb2

from ._cel import CallContext
from ._engine import GOVERNED_KINDS, Decision, Effect, PolicySet
from ._registry import PolicyRegistry, compile_version
from ._store import MAX_VERSION

MAX_WORKFLOWS = 20
MAX_EVENTS = 5000
GRAPH_DEADLINE_S = 10.0
REPLAY_DEADLINE_S = 20.0
_PAGE = 500
_KINDS = frozenset(policy_pb2.ActionKind.keys())


class SimulationInputError(ValueError):
    """The request is not a simulation this service can run (422)."""


class SimulationRefused(Exception):
    """The simulation cannot run now: answered with `status` and `code` (and `headers`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers


class GraphReadError(SimulationRefused):
    """The graph could not be read: 503 when unreachable or too slow, 502 when it answered badly."""


class SimulationNotFound(LookupError):
    """A workflow id the graph does not know (404)."""


class SimulateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    policy: Annotated[str, Field(min_length=1, max_length=63, description="The candidate's policy name.")]
    version: Annotated[int, Field(ge=1, le=MAX_VERSION)] | None = Field(
        default=None, description="A stored version of `policy` (or give `document`)."
    )
    document: str | None = Field(default=None, description="An inline candidate (YAML or JSON text); not stored.")
    workflow_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, description=f"Recorded workflows to replay (at most {MAX_WORKFLOWS})."
    )
    events: list[Any] | None = Field(
        default=None, description=f"Events in the graph's node-view shape (at most {MAX_EVENTS})."
    )


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: str
    server: str
    tool: str = ""
    resource: str = ""
    prompt: str = ""
    method: str = ""
    arguments: dict[str, Any] = Field(default_factory=dict)
    arguments_truncated: bool = False


class EventIn(BaseModel):
    """A node view (graph/_views.py NodeView): the fields replay reads; the rest of a node
    view is accepted and ignored, anything else refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: str = ""
    node_id: str = ""
    workflow_id: str = ""
    session_id: str = ""
    node_type: str = "ACTION"
    agent_id: str
    tenant: str = ""
    action: ActionIn
    # Node-view fields replay does not read.
    decision: Any = None
    verifier: Any = None
    verifier_fallback: Any = None
    outcome: Any = None
    violation_id: Any = None
    block_code: Any = None
    block_reason: Any = None
    started_at: Any = None
    decided_at: Any = None
    parent_ids: Any = None
    payload_digest: Any = None
    result: Any = None
    #: The graph's retention removed the arguments: replayed without them, and said so.
    payload_expired: bool = False


class _RecordedNode(EventIn):
    # What the graph answers: a field it adds later must not break simulation.
    model_config = ConfigDict(extra="ignore", strict=False)


class SimulatedDecision(BaseModel):
    effect: str = Field(description="allow, deny, require_approval or queue.")
    rule_id: str = Field(description="The deciding rule, or 'default'.")
    policy_name: str
    policy_version: int
    reason: str


class SimulatedEvent(BaseModel):
    event_id: str
    node_id: str
    workflow_id: str
    agent_id: str
    action: str = Field(description="A summary: the kind and `server__target`, e.g. 'TOOL_CALL demo__add'.")
    current: SimulatedDecision
    candidate: SimulatedDecision
    changed: bool = Field(description="The effect or the deciding rule differs.")
    note: str = ""


class SimulationTotals(BaseModel):
    events: int = Field(description="Actions replayed.")
    changed: int
    newly_denied: int = Field(description="Allowed now, not allowed by the candidate.")
    newly_allowed: int = Field(description="Not allowed now, allowed by the candidate.")
    skipped: int = Field(description="Nodes not replayed: not ACTION nodes, or not a governed kind.")


class SimulationReport(BaseModel):
    policy: str
    version: int = Field(description="The candidate's version (from the document when inline).")
    candidate_digest: str = Field(description="sha256 of the candidate set (the active set with the candidate in).")
    current_digest: str = Field(description="sha256 of the active set.")
    events: list[SimulatedEvent]
    totals: SimulationTotals
    truncated: bool = Field(description="Not every action was replayed: `stopped` says why.")
    stopped: str = Field(
        default="",
        description=(
            f"Why the replay ended early: '' (it did not), 'events' (the workflows hold more than {MAX_EVENTS} "
            f"actions: only the first were read) or 'deadline' (the replay took {REPLAY_DEADLINE_S:g} s: the "
            "actions after the last one here were not decided)."
        ),
    )


SIMULATE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": SimulateRequest.model_json_schema()}}}
}


def parse_request(body: bytes) -> tuple[SimulateRequest, list[EventIn] | None]:
    """The request and its posted events, validated; SimulationInputError says what is wrong."""
    try:
        request = SimulateRequest.model_validate(loads_strict(body))
    except ValidationError as exc:
        raise SimulationInputError(_describe(exc)) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimulationInputError(f"the body is not valid JSON: {exc}") from exc
    if (request.version is None) == (request.document is None):
        raise SimulationInputError("send exactly one of 'version' (a stored version) or 'document' (inline YAML)")
    if (request.workflow_ids is None) == (request.events is None):
        raise SimulationInputError(
            f"send exactly one of 'workflow_ids' (at most {MAX_WORKFLOWS}) or 'events' (at most {MAX_EVENTS})"
        )
    if request.workflow_ids is not None:
        ids = request.workflow_ids
        if not ids:
            raise SimulationInputError("'workflow_ids' is empty: name at least one recorded workflow")
        if len(ids) > MAX_WORKFLOWS:
            raise SimulationInputError(f"{len(ids)} workflow ids: at most {MAX_WORKFLOWS} per request")
        if len(set(ids)) != len(ids):
            raise SimulationInputError("'workflow_ids' lists a workflow twice")
        return request, None
    assert request.events is not None
    if not request.events:
        raise SimulationInputError("'events' is empty: post at least one event")
    if len(request.events) > MAX_EVENTS:
        raise SimulationInputError(f"{len(request.events)} events: at most {MAX_EVENTS} per request")
    events = []
    for index, raw in enumerate(request.events):
        try:
            event = EventIn.model_validate(raw)
        except ValidationError as exc:
            raise SimulationInputError(_describe(exc, f"events[{index}]")) from exc
        if event.action.kind not in _KINDS:
            raise SimulationInputError(
                f"events[{index}].action.kind: {event.action.kind[:64]!r} is not an action kind "
                f"(e.g. TOOL_CALL, RESOURCE_READ, PROMPT_GET)"
            )
        events.append(event)
    return request, events


class Simulator:
    """Runs simulations against the registry's active set and the graph at `graph_addr`."""

    def __init__(
        self,
        policies: PolicyRegistry,
        graph_addr: str,
        *,
        deadline: float = GRAPH_DEADLINE_S,
        replay_deadline: float | None = None,
    ) -> None:
        self._policies = policies
        self._graph_addr = graph_addr
        self._deadline = deadline
        self._replay_deadline = REPLAY_DEADLINE_S if replay_deadline is None else replay_deadline
        self._running = False

    async def run(
        self, request: SimulateRequest, events: list[EventIn] | None, authorization: str | None
    ) -> SimulationReport:
        # One at a time: each holds a worker thread and the GIL for up to REPLAY_DEADLINE_S,
        # which the live decisions of this service share.
        if self._running:
            raise SimulationRefused(
                429,
                "bastion.policy.simulation_busy",
                "another simulation is running in this service; retry when it has answered",
                {"Retry-After": str(int(self._replay_deadline + self._deadline) or 1)},
            )
        self._running = True
        try:
            return await self._run(request, events, authorization)
        finally:
            self._running = False

    async def _run(
        self, request: SimulateRequest, events: list[EventIn] | None, authorization: str | None
    ) -> SimulationReport:
        text = request.document
        if text is None:
            assert request.version is not None
            text = (await self._policies.get(request.policy, request.version)).document  # UnknownVersion: 404
        compiled = await asyncio.to_thread(compile_version, text)
        document = compiled.document
        if document.metadata.name != request.policy:
            raise PolicyValidationError(
                f"the document is policy {document.metadata.name!r}, not {request.policy!r}: they must agree"
            )
        # One snapshot for both sets: no await between reading the active set and its documents.
        current = self._policies.policies
        documents = [doc for doc in self._policies.active_documents() if doc.metadata.name != request.policy]
        position = next(
            (i for i, doc in enumerate(self._policies.active_documents()) if doc.metadata.name == request.policy),
            len(documents),
        )
        documents.insert(position, document)
        candidate = await asyncio.to_thread(PolicySet.compile, documents)
        truncated = False
        if events is None:
            assert request.workflow_ids is not None
            events, truncated = await self._read(request.workflow_ids, authorization)
        report = await asyncio.to_thread(
            _replay, request.policy, document.metadata.version, current, candidate, events, self._replay_deadline
        )
        if truncated and not report.truncated:
            report.truncated, report.stopped = True, "events"
        return report

    async def _read(self, workflow_ids: Sequence[str], authorization: str | None) -> tuple[list[EventIn], bool]:
        headers = {"Authorization": authorization} if authorization else {}
        where = f"the graph at {self._graph_addr} (BASTION_GRAPH_ADDR)"
        events: list[EventIn] = []
        started = time.monotonic()
        try:
            async with (
                asyncio.timeout(self._deadline),
                httpx.AsyncClient(
                    base_url=f"http://{self._graph_addr}", headers=headers, timeout=self._deadline
                ) as http,
            ):
                for workflow in workflow_ids:
                    if await self._read_workflow(http, workflow, events, where):
                        return events, True
        except TimeoutError:
            raise GraphReadError(
                503, "bastion.policy.graph_unavailable", f"{where} did not answer within {self._deadline:g}s"
            ) from None
        except httpx.TimeoutException:
            waited = time.monotonic() - started
            raise GraphReadError(
                503, "bastion.policy.graph_unavailable", f"{where} did not answer within {waited:.1f}s"
            ) from None
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise GraphReadError(503, "bastion.policy.graph_unavailable", f"{where} is unreachable: {reason}") from exc
        return events, False

    async def _read_workflow(self, http: httpx.AsyncClient, workflow: str, events: list[EventIn], where: str) -> bool:
        """Append the workflow's ACTION nodes to `events`; True when MAX_EVENTS stopped the read."""
        remaining = MAX_EVENTS - sum(1 for event in events if _replayable(event))
        cursor: str | None = None
        path = f"/graphs/{quote(workflow, safe='')}/nodes"
        while True:
            params = {"limit": str(_PAGE), **({"cursor": cursor} if cursor else {})}
            response = await http.get(path, params=params)
            if response.status_code == 404:
                raise SimulationNotFound(f"workflow {workflow!r} is not in the graph")
            if response.status_code != 200:
                raise GraphReadError(
                    502,
                    "bastion.policy.graph_error",
                    f"{where} answered GET {path} with HTTP {response.status_code}: {_message(response)}",
                )
            try:
                page = response.json()
                items = page["items"]
                cursor = page.get("next_cursor")
                nodes = [_RecordedNode.model_validate(item) for item in items]
            except (ValueError, TypeError, KeyError, AttributeError, ValidationError) as exc:
                raise GraphReadError(
                    502, "bastion.policy.graph_error", f"{where} answered GET {path} with an unreadable page: {exc}"
                ) from exc
            for node in nodes:
                if _replayable(node):
                    if remaining == 0:
                        return True
                    remaining -= 1
                events.append(node)
            if not isinstance(cursor, str) or not cursor:
                return False


def _replayable(event: EventIn) -> bool:
    return event.node_type == "ACTION" and event.action.kind in GOVERNED_KINDS


def _replay(
    policy: str,
    version: int,
    current: PolicySet,
    candidate: PolicySet,
    events: Sequence[EventIn],
    deadline: float,
) -> SimulationReport:
    out: list[SimulatedEvent] = []
    skipped = changed = newly_denied = newly_allowed = 0
    stop_at = time.monotonic() + deadline
    stopped = ""
    for event in events:
        if time.monotonic() >= stop_at:
            stopped = "deadline"
            break
        if not _replayable(event):
            skipped += 1
            continue
        action = event.action
        inputs: dict[str, Any] = {
            "kind": action.kind,
            "agent_id": event.agent_id,
            "server": action.server,
            "tool": action.tool,
            "resource": action.resource,
            "prompt": action.prompt,
            "method": action.method,
            "arguments": action.arguments,
            "context": CallContext(tenant=event.tenant, session_id=event.session_id, workflow_id=event.workflow_id),
        }
        now, then = current.evaluate(**inputs), candidate.evaluate(**inputs)
        differs = (now.effect, now.rule_id) != (then.effect, then.rule_id)
        changed += differs
        newly_denied += now.effect is Effect.ALLOW and then.effect is not Effect.ALLOW
        newly_allowed += now.effect is not Effect.ALLOW and then.effect is Effect.ALLOW
        target = action.tool or action.resource or action.prompt
        out.append(
            SimulatedEvent(
                event_id=event.event_id,
                node_id=event.node_id,
                workflow_id=event.workflow_id,
                agent_id=event.agent_id,
                action=f"{action.kind} {action.server}__{target}",
                current=_decision(now),
                candidate=_decision(then),
                changed=differs,
                note=_note(event),
            )
        )
    totals = SimulationTotals(
        events=len(out), changed=changed, newly_denied=newly_denied, newly_allowed=newly_allowed, skipped=skipped
    )
    return SimulationReport(
        policy=policy,
        version=version,
        candidate_digest=candidate.digest,
        current_digest=current.digest,
        events=out,
        totals=totals,
        truncated=bool(stopped),
        stopped=stopped,
    )


def _decision(decision: Decision) -> SimulatedDecision:
    return SimulatedDecision(
        effect=str(decision.effect),
        rule_id=decision.rule_id,
        policy_name=decision.policy_name,
        policy_version=decision.policy_version,
        reason=decision.reason,
    )


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or response.reason_phrase)[:300]
    except (ValueError, AttributeError):
        return response.reason_phrase


def _describe(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        where = f"{prefix}.{where}" if prefix and where else (prefix or where or "body")
        message = "unknown field" if error.get("type") == "extra_forbidden" else error.get("msg", "invalid")
        parts.append(f"{where}: {message}")
    return "; ".join(parts[:10])


def _note(event: EventIn) -> str:
    if event.payload_expired:
        return "the arguments expired under the graph's payload retention; replayed without them"
    if event.action.arguments_truncated:
        return "arguments were truncated when recorded; replayed with the recorded prefix"
    return ""
