"""The events `bastion bench graph` ingests: what the proxy journals for governed calls.

Every action event carries what `proxy/_recorder.py` puts in one: a uuid7 event and node
id, the workflow, session, agent and tenant, the action (server, tool, method, a few
arguments), the policy's `Decision` and the verifier's `ScoreResponse`, the start and
decision times, the payload digest, the outcome; a blocked one its violation id, block
code and reason. Each action names the previous action of its session as its CAUSED_BY
parent and, as the proxy's provenance hints do, an INFORMED_BY edge to the action whose
result its arguments contain. A forwarded action is followed, a few events later in the
stream, by its result event (same node, its own event id: `Recorder.append_result`).

The shape is synthetic on purpose: `live` workflows run at once, their events
interleaved as concurrent agents' are, each a chain of `length` actions in which every
action reads what the previous one produced. So the action at position `depth` of a
workflow is exactly `depth` INFORMED_BY edges from where its data came in (the first
action, a fetch of untrusted content): the drift path the bench times.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.struct_pb2 import Struct

from bastion.proxy._recorder import encode_event
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

#: Tools by position in a workflow: a fetch of untrusted data first, then work on it.
_TOOLS = (("web", "fetch"), ("docs", "summarize"), ("search", "query"), ("mail", "draft"), ("mail", "send"))
_BLOCK_SHARE = 0.05
#: Result events trail their action by this many events (other calls finish in between).
_RESULT_DELAY = 24
#: Argument and score variants per tool: events differ without being built field by field.
_VARIANTS = 16
_T0_MS = 1_790_000_000_000
_DIGEST = hashlib.sha256(b"bench").hexdigest()


def _ids(rnd: random.Random) -> Iterator[str]:
    """uuid7-shaped ids, time-ordered like `new_id()`'s, at a fraction of its cost (the
    bench makes millions; the stores only need them unique and sortable)."""
    millis = _T0_MS
    while True:
        millis += 1
        value = (millis << 80) | (0x7 << 76) | (rnd.getrandbits(12) << 64) | (0b10 << 62) | rnd.getrandbits(62)
        h = f"{value:032x}"
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Shape:
    #: Actions per workflow; the first is the origin of the chain.
    length: int = 25
    #: Workflows in progress at once (their events interleave).
    live: int = 64
    #: The position whose drift path is queried: that many INFORMED_BY edges deep.
    depth: int = 20


@dataclass(frozen=True, slots=True)
class Deep:
    """A node `Shape.depth` INFORMED_BY edges from its workflow's origin."""

    workflow_id: str
    node_id: str


@dataclass(slots=True)
class _Workflow:
    workflow_id: str
    session_id: str
    agent_id: str
    position: int = 0
    last_node: str = ""


class EventStream:
    """Events in the order a busy proxy would journal them; `deep` collects the nodes
    at `shape.depth` (at most `keep_deep` of them, a uniform sample).

    An event is parsed from a template's bytes followed by the bytes of its own fields
    (ids, times, edges): protobuf merges the two, and the result is the same Event as one
    built field by field, for a sixth of the cost."""

    def __init__(self, shape: Shape, *, seed: int = 22, keep_deep: int = 100_000) -> None:
        if shape.length <= shape.depth:
            raise ValueError(f"a workflow needs more than {shape.depth} actions to hold a node that deep")
        self._shape = shape
        # Seeded, so every run ingests the same events and asks the same questions.
        self._random = random.Random(seed)  # noqa: S311 (not for secrets)
        self._ids = _ids(self._random)
        self._actions = _action_templates(self._random)
        self._results = _result_templates()
        self._live = [self._new_workflow() for _ in range(shape.live)]
        self._pending: deque[graph_pb2.Event] = deque()
        self._clock_ns = _T0_MS * 10**6
        self._keep_deep = keep_deep
        self._deep_seen = 0
        self.deep: list[Deep] = []
        #: Action events generated (one per node).
        self.actions = 0

    def batch(self, size: int) -> list[graph_pb2.Event]:
        """The next `size` events (actions and the results of earlier ones)."""
        return [self._next() for _ in range(size)]

    def actions_only(self, size: int) -> list[graph_pb2.Event]:
        """The next `size` action events, results left out (to build a graph of a given node count)."""
        return [self._action(with_result=False) for _ in range(size)]

    def records(self, size: int) -> list[bytes]:
        """The next `size` events encoded as the recorder journals them."""
        records = []
        for event in self.batch(size):
            action = policy_pb2.Action()
            action.CopyFrom(event.action)
            records.append(encode_event(event, action, nesting_checked=True))
        return records

    def _next(self) -> graph_pb2.Event:
        # Results come out once enough later events have gone by, so they interleave.
        if len(self._pending) > _RESULT_DELAY:
            return self._pending.popleft()
        return self._action()

    def _new_workflow(self) -> _Workflow:
        return _Workflow(next(self._ids), next(self._ids), f"agent-{self._random.randrange(32)}")

    def _action(self, *, with_result: bool = True) -> graph_pb2.Event:
        slot = self._random.randrange(len(self._live))
        workflow = self._live[slot]
        event = self._action_event(workflow)
        if workflow.position == self._shape.depth:
            self._sample_deep(Deep(workflow.workflow_id, event.node_id))
        workflow.position += 1
        workflow.last_node = event.node_id
        if workflow.position == self._shape.length:
            self._live[slot] = self._new_workflow()
        if with_result and event.outcome == graph_pb2.FORWARDED:
            self._pending.append(self._result_event(event))
        self.actions += 1
        return event

    def _sample_deep(self, deep: Deep) -> None:
        # Reservoir sampling: a uniform sample of every deep node, however many there are.
        self._deep_seen += 1
        if len(self.deep) < self._keep_deep:
            self.deep.append(deep)
            return
        index = self._random.randrange(self._deep_seen)
        if index < self._keep_deep:
            self.deep[index] = deep

    def _action_event(self, workflow: _Workflow) -> graph_pb2.Event:
        rnd = self._random
        self._clock_ns += rnd.randrange(50_000, 400_000)
        tool = 0 if workflow.position == 0 else rnd.randrange(1, len(_TOOLS))
        blocked = workflow.position > 0 and rnd.random() < _BLOCK_SHARE
        own = graph_pb2.Event(
            event_id=next(self._ids),
            workflow_id=workflow.workflow_id,
            node_id=next(self._ids),
            agent_id=workflow.agent_id,
            session_id=workflow.session_id,
        )
        own.started_at.FromNanoseconds(self._clock_ns)
        own.decided_at.FromNanoseconds(self._clock_ns + rnd.randrange(300_000, 2_000_000))
        if workflow.last_node:
            own.parent_ids.append(workflow.last_node)
            own.edges.add(
                target_node_id=workflow.last_node,
                type=graph_pb2.INFORMED_BY,
                reason=f"argument 'text' (100%) from {_TOOLS[tool][1]} result.content[0].text",
            )
        if blocked:
            own.violation_id = next(self._ids)
        template = rnd.choice(self._actions[tool, blocked])
        return graph_pb2.Event.FromString(template + own.SerializeToString())

    def _result_event(self, action: graph_pb2.Event) -> graph_pb2.Event:
        own = graph_pb2.Event(
            event_id=next(self._ids),
            workflow_id=action.workflow_id,
            node_id=action.node_id,
            agent_id=action.agent_id,
            session_id=action.session_id,
            result=graph_pb2.ActionResult(
                duration_ms=round(self._random.random() * 20, 3), result_bytes=self._random.randrange(200, 4000)
            ),
        )
        own.result.completed_at.FromNanoseconds(self._clock_ns + 5_000_000)
        template = self._results[_TOOLS.index((action.action.server, action.action.tool))]
        return graph_pb2.Event.FromString(template + own.SerializeToString())


def _action_templates(rnd: random.Random) -> dict[tuple[int, bool], list[bytes]]:
    """(tool, blocked) -> encodings of what varies little: action, decision, verifier score."""
    templates: dict[tuple[int, bool], list[bytes]] = {}
    for tool, (server, name) in enumerate(_TOOLS):
        for blocked in (False, True):
            templates[tool, blocked] = [_action_template(rnd, server, name, blocked) for _ in range(_VARIANTS)]
    return templates


def _action_template(rnd: random.Random, server: str, tool: str, blocked: bool) -> bytes:
    arguments = Struct()
    arguments.update(
        {
            "url": f"https://example.com/{rnd.randrange(10**6)}" if tool == "fetch" else "",
            "text": "lorem ipsum dolor sit amet " * rnd.randrange(2, 8),
            "limit": rnd.randrange(1, 50),
        }
    )
    event = graph_pb2.Event(
        node_type=graph_pb2.ACTION,
        tenant="default",
        action=policy_pb2.Action(
            kind=policy_pb2.TOOL_CALL, server=server, tool=tool, method="tools/call", arguments=arguments
        ),
        decision=policy_pb2.Decision(
            effect=policy_pb2.DENY if blocked else policy_pb2.ALLOW,
            rule_id="no-exfiltration" if blocked else f"allow-{tool}",
            reason="destination not in the task" if blocked else "tool allowed for this agent",
            policy_name="bench",
            policy_version=3,
            bundle_digest=_DIGEST,
            rollout_arm=policy_pb2.STABLE,
            cost=1.0,
        ),
        verifier=verifier_pb2.ScoreResponse(
            deviation_score=round(rnd.random() * 0.5, 3),
            threshold=0.7,
            verdict=verifier_pb2.PASS,
            reasons=["consistent with the task"],
            scorer="heuristic/1",
        ),
        payload_digest=_DIGEST,
        outcome=graph_pb2.BLOCKED if blocked else graph_pb2.FORWARDED,
    )
    if blocked:
        event.block_code = "no-exfiltration"
        event.block_reason = "destination not in the task"
    return event.SerializeToString()


def _result_templates() -> list[bytes]:
    """One per tool: the result event's action summary and what every result says."""
    return [
        graph_pb2.Event(
            node_type=graph_pb2.ACTION,
            tenant="default",
            outcome=graph_pb2.FORWARDED,
            action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=tool, method="tools/call"),
            result=graph_pb2.ActionResult(outcome=graph_pb2.COMPLETED, http_status=200, result_digest=_DIGEST),
        ).SerializeToString()
        for server, tool in _TOOLS
    ]
