"""The reference scorer's `sequence` signal: a Markov model of each agent's tool transitions.

What an agent usually does next is learnt from the agent's own past, as the verifier sees
it: the `history` of every ScoreRequest, whose `ALLOW` nodes are steps that were forwarded.
A transition is `previous step -> this step`, where the previous step is the last allowed
step of the workflow, or START for a workflow's first step. The model counts transitions
per agent (`tenant/agent_id`, both set by the proxy from the caller's credentials, so an
agent trains only its own model) and the signal fires when this transition is rare for
the agent: it was seen in fewer than `rare_probability` of the times the agent left the
previous step. An agent with fewer than `min_transitions` learnt transitions is in *cold
start*: the signal abstains (weight 0) and says so, since a handful of steps says nothing
about what is rare.

Learning happens before scoring, from the request's history only, so a step is learnt once
a later request shows it allowed: a blocked call never becomes precedent. Each workflow's
newest learnt node is remembered (bounded, least recently used first out), so the same
history seen again by every later request of the workflow is learnt once.

Bounds, so that memory does not grow with the number of agents, tools or requests:
`max_agents` models (the least recently used is dropped), `max_edges` distinct transitions
per agent, `max_workflows` remembered workflows; step names longer than MAX_NAME are not
learnt. When an agent's model is full, or its counts reach MAX_COUNT, every count is
halved and the zeros dropped: old habits fade, new ones can enter, and the result depends
only on the order of the requests (deterministic).

No I/O here: `take_dirty()` hands the models changed since the last call to the store
(`_sequence_store.py`), which persists them off the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._errors import ConfigError
from bastion.v1 import policy_pb2, verifier_pb2

#: The state before a workflow's first step.
START = "^"
#: Longest agent key or step name modelled; longer ones are never learnt (so they stay rare).
MAX_NAME = 256
#: A count that reaches this halves the agent's counts, keeping them small ints.
MAX_COUNT = 1 << 20

# Protocol traffic and tool listings are what every client does; they are not steps of
# the workflow's behaviour, so they neither count as precedent nor get tool signals.
_NOT_STEPS = frozenset({policy_pb2.MCP_REQUEST, policy_pb2.TOOL_LIST})


def step_key(kind: int, server: str, tool: str) -> str:
    """`server__tool` as policies name it; an A2A call without a tool is named by its server."""
    if kind in _NOT_STEPS:
        return ""
    return f"{server}__{tool}" if tool else server


def precedent(history: Iterable[verifier_pb2.HistoryNode]) -> list[tuple[str, str]]:
    """(node id, step) of the workflow's earlier steps that were allowed, oldest first.

    Only ALLOW counts: a call that was denied, queued or left unanswered never ran, and
    retrying a blocked call must not make it look familiar.
    """
    return [
        (node.node_id, key)
        for node in history
        if node.effect == policy_pb2.ALLOW and (key := step_key(node.kind, node.server, node.tool))
    ]


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """Bounds and thresholds of the sequence model (VerifierSettings builds one from env)."""

    #: Learnt transitions an agent needs before the signal may fire (cold start below).
    min_transitions: int = 50
    #: A transition seen in fewer than this share of the agent's exits from the previous step is rare.
    rare_probability: float = 0.05
    max_agents: int = 4096
    max_edges: int = 256
    max_workflows: int = 16384

    def __post_init__(self) -> None:
        if self.min_transitions < 1:
            raise ConfigError(f"verifier sequence min_transitions must be at least 1, got {self.min_transitions}")
        # NaN fails the comparison, so this also rejects it.
        if not 0.0 < self.rare_probability <= 1.0:
            raise ConfigError(f"verifier sequence rare_probability must be in (0, 1], got {self.rare_probability}")
        for name in ("max_agents", "max_edges", "max_workflows"):
            value = getattr(self, name)
            if not 1 <= value <= 1_000_000:
                raise ConfigError(f"verifier sequence {name} must be in [1, 1000000], got {value}")


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the model knows of one transition for one agent."""

    #: Transitions learnt for the agent (after any halving).
    learnt: int
    #: Times the agent went from the previous step to this one, and left the previous step at all.
    count: int
    exits: int


class _Model:
    """One agent's transition counts."""

    __slots__ = ("edges", "exits", "total")

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], int] = {}
        self.exits: dict[str, int] = {}
        self.total = 0

    def add(self, edge: tuple[str, str], count: int) -> None:
        self.edges[edge] = self.edges.get(edge, 0) + count
        self.exits[edge[0]] = self.exits.get(edge[0], 0) + count
        self.total += count

    def halve(self) -> None:
        edges = {edge: count // 2 for edge, count in self.edges.items() if count >= 2}
        self.edges, self.exits, self.total = {}, {}, 0
        for edge, count in edges.items():
            self.add(edge, count)

    def dump(self) -> bytes:
        # Sorted, so the same model always serialises to the same bytes.
        return orjson.dumps([[a, b, c] for (a, b), c in sorted(self.edges.items())])


class SequenceModel:
    """Per-agent transition counts, learnt from ScoreRequest histories; not thread-safe
    (it lives on the verifier's event loop, as the scorer does)."""

    def __init__(self, config: SequenceConfig | None = None) -> None:
        self.config = config or SequenceConfig()
        self._models: OrderedDict[str, _Model] = OrderedDict()
        #: (agent, workflow) -> (newest learnt node id, its step); node id "" before any step.
        self._cursors: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        #: Agents changed (or dropped) since the last take_dirty().
        self._dirty: set[str] = set()

    @property
    def agents(self) -> int:
        """How many agents have a model (not __len__: an empty model must not be falsy)."""
        return len(self._models)

    def observe(self, agent: str, workflow: str, steps: Sequence[tuple[str, str]]) -> None:
        """Learn the transitions of `steps` (a request's allowed history, oldest first) not learnt yet."""
        if not agent or len(agent) > MAX_NAME or len(workflow) > MAX_NAME:
            return
        if not all(node_id for node_id, _ in steps):
            # Without node ids a history cannot be told from the last one: learning it
            # would count the same transitions again on every request.
            return
        where = (agent, workflow)
        cursor = self._cursors.get(where)
        previous: str | None = None
        start = 0
        if cursor is not None:
            last_id, last_step = cursor
            if not last_id:
                previous = START
            else:
                # Usually the newest or second newest node: search from the end.
                found = next((i for i in range(len(steps) - 1, -1, -1) if steps[i][0] == last_id), None)
                if found is not None:
                    start, previous = found + 1, last_step
                # Else the node slid out of the history window: every node shown is newer,
                # but what came between is unknown, so the first one is learnt without a predecessor.
        elif not steps:
            # A workflow's first request: its first step will follow START.
            previous = START
        for _, step in steps[start:]:
            if previous is not None:
                self.learn(agent, previous, step)
            previous = step
        self._cursors[where] = (steps[-1][0], steps[-1][1]) if steps else cursor or ("", START)
        self._cursors.move_to_end(where)
        while len(self._cursors) > self.config.max_workflows:
            self._cursors.popitem(last=False)

    def assess(self, agent: str, previous: str, step: str) -> Assessment:
        model = self._models.get(agent)
        if model is None:
            return Assessment(0, 0, 0)
        return Assessment(model.total, model.edges.get((previous, step), 0), model.exits.get(previous, 0))

    def learn(self, agent: str, previous: str, step: str) -> bool:
        """Count one transition (observe() calls this; so does seeding from recorded data);
        False when a bound refused it."""
        if not agent or len(agent) > MAX_NAME or len(previous) > MAX_NAME or len(step) > MAX_NAME:
            return False
        model = self._model(agent)
        edge = (previous, step)
        if edge not in model.edges and len(model.edges) >= self.config.max_edges:
            model.halve()
            if len(model.edges) >= self.config.max_edges:
                return False
        if model.edges.get(edge, 0) + 1 >= MAX_COUNT:
            model.halve()
        model.add(edge, 1)
        self._dirty.add(agent)
        return True

    def _model(self, agent: str) -> _Model:
        model = self._models.get(agent)
        if model is None:
            model = self._models[agent] = _Model()
            while len(self._models) > self.config.max_agents:
                dropped, _ = self._models.popitem(last=False)
                self._dirty.add(dropped)
        self._models.move_to_end(agent)
        return model

    # -- persistence (the store calls these on the event loop) ---------------------------

    def take_dirty(self) -> list[tuple[str, bytes | None]]:
        """(agent, serialised model, or None when dropped) for each agent changed since the last call."""
        rows = [(agent, model.dump() if (model := self._models.get(agent)) else None) for agent in sorted(self._dirty)]
        self._dirty.clear()
        return rows

    def restore(self, agent: str, data: bytes) -> bool:
        """Load one agent's serialised model (oldest first, to rebuild the LRU order); False when
        `data` is not one, which leaves the agent unknown."""
        try:
            rows: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not agent or len(agent) > MAX_NAME or not isinstance(rows, list) or len(rows) > self.config.max_edges:
            return False
        model = _Model()
        for row in rows:
            if not (
                isinstance(row, list)
                and len(row) == 3
                and all(isinstance(name, str) and 0 < len(name) <= MAX_NAME for name in row[:2])
                and type(row[2]) is int
                and 0 < row[2] < MAX_COUNT
            ):
                return False
            model.add((row[0], row[1]), row[2])
        self._models[agent] = model
        self._models.move_to_end(agent)
        while len(self._models) > self.config.max_agents:
            self._models.popitem(last=False)
        return True
