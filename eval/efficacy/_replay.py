"""Replaying one scenario through the proxy as its agent would, and reading back from the
graph what the policy and the verifier said about its last action.

Each scenario runs as its own agent (`eval-<policy>-<scenario id>`, a real JWT signed with
the stack's key) in its own workflow (`Bastion-Workflow-Id: eval-<scenario id>`), with the
stated task in every call's `params._meta["bastion.dev/task"]`. Steps go one after the
other over `POST /mcp/<server>` (2026-07 stateless requests); a step's templates are
filled from what the earlier steps returned to the agent through the proxy. The first
step Bastion blocks ends the scenario: an agent cannot go on with a result it never got.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson

from ._pack import Scenario, TemplateError, render
from ._upstream import Script

#: JSON-RPC codes of a governance refusal (docs/errors.md): the action was not forwarded.
BLOCK_CODES = {-32003: "POLICY_VIOLATION", -32004: "APPROVAL_REQUIRED", -32005: "LIMIT_EXCEEDED"}
#: How the reference scorer words each of its signals (verifier/INTERFACE.md), to count
#: which fired; a reason matching none is counted as `other` (a third-party verifier's).
#: A signal that abstains says so with weight 0: it did not fire, so it is not counted.
ABSTAINS = "sequence abstains"
SIGNAL_PREFIXES = (
    ("rare transition ", "sequence"),
    ("destination not named in the task", "argument_novelty"),
    ("destinations not named in the task", "argument_novelty"),
    ("arguments too large to inspect", "argument_novelty"),
    ("argument ", "argument_novelty"),
    ("look-alike domain", "argument_novelty"),
    ("the task's own value", "argument_novelty"),
    ("personal data sent", "argument_novelty"),
    ("more than the task states", "argument_novelty"),
    ("more than the invoice it pays states", "argument_novelty"),
    ("an account nothing in the workflow showed", "argument_novelty"),
    ("untrusted data in sink arguments", "taint"),
    ("action the task did not ask for", "intent"),
    ("destructive action the task did not ask for", "intent"),
    ("destructive action on a security notice", "intent"),
    ("action far from the task", "semantic_drift"),
)
_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
_TIMEOUT_S = 30.0

Outcome = Literal["allowed", "blocked", "error"]


@dataclass(frozen=True, slots=True)
class StepOutcome:
    tool: str
    outcome: Outcome
    #: The action's node in the causal graph (`Bastion-Node-Id`); "" when none was created.
    node_id: str = ""
    #: For a block: the JSON-RPC code and the envelope's rule, reason and score.
    code: int | None = None
    rule_id: str = ""
    reason: str = ""
    deviation_score: float | None = None
    #: For an error: what went wrong (HTTP status, the answer).
    detail: str = ""
    #: Whether the upstream received the call (never, when Bastion blocked it).
    reached_upstream: bool = False


@dataclass(slots=True)
class ScenarioOutcome:
    scenario: Scenario
    agent: str
    workflow_id: str
    steps: list[StepOutcome] = field(default_factory=list)
    #: The policy decision and verifier score of the last step attempted, from the graph.
    decision: dict[str, Any] | None = None
    verifier: dict[str, Any] | None = None

    @property
    def blocked_at(self) -> int | None:
        return next((i for i, step in enumerate(self.steps) if step.outcome == "blocked"), None)

    @property
    def final_blocked(self) -> bool:
        """Whether the scenario's last step (the action its label is about) was blocked."""
        return self.blocked_at == len(self.scenario.steps) - 1

    @property
    def error(self) -> str:
        return next((f"step {i}: {s.detail}" for i, s in enumerate(self.steps) if s.outcome == "error"), "")

    @property
    def leaked(self) -> bool:
        """A step reported blocked that still reached the upstream: a Bastion bug, never expected."""
        return any(step.outcome == "blocked" and step.reached_upstream for step in self.steps)


def agent_id(scenario: Scenario) -> str:
    return f"eval-{scenario.policy}-{scenario.id}"


def signals(reasons: Sequence[str]) -> list[str]:
    """The reference scorer's signals named by a verifier's reasons, in order, once each."""
    found: dict[str, None] = {}
    for reason in reasons:
        if reason.startswith(ABSTAINS):
            continue
        name = next((signal for prefix, signal in SIGNAL_PREFIXES if reason.startswith(prefix)), "other")
        found[name] = None
    return list(found)


class Replayer:
    """Runs scenarios through the proxy at `http` (a client with the proxy as base URL)."""

    def __init__(self, http: httpx.AsyncClient, script: Script, tokens: dict[str, str]) -> None:
        self._http = http
        self._script = script
        #: Agent id → bearer token.
        self._tokens = tokens

    async def run(self, scenario: Scenario) -> ScenarioOutcome:
        agent = agent_id(scenario)
        found = ScenarioOutcome(scenario, agent, f"eval-{scenario.id}")
        self._script.load(scenario.steps)
        results: list[Any] = []
        for number, step in enumerate(scenario.steps):
            try:
                arguments = render(step.args, results)
            except TemplateError as exc:
                found.steps.append(StepOutcome(step.tool, "error", detail=f"template: {exc}"))
                break
            reached = len(self._script.calls)
            answer = await self._call(found, step.server, step.name, arguments, number)
            outcome, result = _classify(step.tool, answer, reached_upstream=len(self._script.calls) > reached)
            found.steps.append(outcome)
            if outcome.outcome != "allowed":
                break
            results.append(result)
        return found

    async def _call(
        self, found: ScenarioOutcome, server: str, tool: str, arguments: dict[str, Any], number: int
    ) -> httpx.Response:
        meta: dict[str, Any] = dict(_META)
        if found.scenario.task:
            meta["bastion.dev/task"] = found.scenario.task
        message = {
            "jsonrpc": "2.0",
            "id": number + 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": meta},
        }
        headers = {
            "Authorization": f"Bearer {self._tokens[found.agent]}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": tool,
            "Bastion-Workflow-Id": found.workflow_id,
        }
        answer = await self._http.post(f"/mcp/{server}", content=orjson.dumps(message), headers=headers)
        # The proxy scopes the workflow id to the caller; the graph knows it by the one it answers.
        found.workflow_id = answer.headers.get("bastion-workflow-id", found.workflow_id)
        return answer


def _classify(tool: str, answer: httpx.Response, *, reached_upstream: bool) -> tuple[StepOutcome, Any]:
    """The step's outcome, and what the agent got back (for later templates)."""
    node = answer.headers.get("bastion-node-id", "")
    message = _message(answer)
    if message is None:
        detail = f"HTTP {answer.status_code}: {answer.text[:300]}"
        return StepOutcome(tool, "error", node, detail=detail, reached_upstream=reached_upstream), None
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        data = error.get("data")
        if not isinstance(data, dict):
            data = {}
        if code in BLOCK_CODES:
            score = data.get("deviation_score")
            return StepOutcome(
                tool,
                "blocked",
                node,
                code=code,
                rule_id=str(data.get("rule_id", "")),
                reason=str(data.get("reason", error.get("message", ""))),
                deviation_score=score if isinstance(score, int | float) else None,
                reached_upstream=reached_upstream,
            ), None
        detail = f"JSON-RPC error {code}: {error.get('message')} {str(data.get('reason', ''))[:300]}"
        return StepOutcome(tool, "error", node, detail=detail, reached_upstream=reached_upstream), None
    result = message.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        detail = f"the tool failed: {orjson.dumps(result).decode()[:300]}"
        return StepOutcome(tool, "error", node, detail=detail, reached_upstream=reached_upstream), None
    return StepOutcome(tool, "allowed", node, reached_upstream=reached_upstream), _agent_view(result)


def _message(answer: httpx.Response) -> dict[str, Any] | None:
    """The JSON-RPC message of an answer, sent as JSON or as the last event of an SSE stream."""
    if answer.status_code != 200:
        return None
    body = answer.content
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[5:].strip() for line in body.splitlines() if line.startswith(b"data:")]
        body = events[-1] if events else b""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _agent_view(result: dict[str, Any]) -> Any:
    """What a tool result gives the agent to work with: the structured content, else the
    first text content (parsed when it is JSON)."""
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        return structured
    content = result.get("content")
    text = content[0].get("text") if isinstance(content, list) and content and isinstance(content[0], dict) else None
    if isinstance(text, str):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return result


async def read_decisions(graph: httpx.AsyncClient, outcomes: Sequence[ScenarioOutcome], timeout: float) -> int:
    """Fill each outcome's `decision` and `verifier` from its last step's node in the graph
    (`graph`: a client with the graph's REST as base URL and an auditor token). The journal
    ships asynchronously, so this polls; returns how many nodes never arrived in `timeout`."""
    waiting = {id(outcome): outcome for outcome in outcomes if outcome.steps and outcome.steps[-1].node_id}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, outcome in list(waiting.items()):
            answer = await graph.get(f"/graphs/{outcome.workflow_id}/nodes", params={"limit": 500})
            if answer.status_code != 200:
                continue
            node = next((n for n in answer.json().get("items", []) if n["node_id"] == outcome.steps[-1].node_id), None)
            if node is not None:
                outcome.decision = node.get("decision")
                outcome.verifier = node.get("verifier")
                del waiting[key]
        if waiting:
            await asyncio.sleep(0.1)
    return len(waiting)
