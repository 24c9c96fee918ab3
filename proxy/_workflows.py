"""Per-workflow state the proxy keeps to build the causal graph on the hot path:
the previous action of each session (for CAUSED_BY), the recent history the
verifier scores against, and whether the workflow's task was recorded.

Bounded LRU maps: an agent fleet opens sessions without end, the proxy's memory
must not grow with them. Losing an entry (eviction, restart) only loses a hint —
the next action starts a new chain — never an event.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import uuid6

from bastion._errors import InvalidRequest
from bastion.v1 import verifier_pb2

from ._mcp import WORKFLOW_META_KEY

K = TypeVar("K")
V = TypeVar("V")

ROLLING_IDLE_SECONDS = 30 * 60
#: Workflow and session ids come from clients and become graph keys and URL path
#: segments: visible ASCII (as MCP requires of session ids), at most this long.
MAX_ID_LENGTH = 256


class _Lru(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._capacity = capacity

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._capacity:
            self._data.popitem(last=False)


@dataclass(slots=True)
class WorkflowState:
    history: deque[verifier_pb2.HistoryNode]
    task: str = ""
    last_node_by_session: dict[str, str] = field(default_factory=dict)


def check_id(what: str, value: str) -> str:
    if len(value) > MAX_ID_LENGTH or not all("!" <= ch <= "~" for ch in value):
        raise InvalidRequest(f"{what} must be 1-{MAX_ID_LENGTH} visible ASCII characters")
    return value


def new_id() -> str:
    """uuid7: time-ordered, so ids sort by creation in the store and in logs."""
    return str(uuid6.uuid7())


class WorkflowTracker:
    def __init__(self, history_len: int, capacity: int = 10_000) -> None:
        self._history_len = history_len
        self._workflows: _Lru[str, WorkflowState] = _Lru(capacity)
        self._rolling: _Lru[str, tuple[str, float]] = _Lru(capacity)

    def resolve(self, header: str | None, meta_value: object, session_id: str | None, agent_id: str) -> str:
        """Workflow identity, in DESIGN §4 order: header, `_meta`, MCP session, rolling per agent.

        Raises InvalidRequest for an id that is not 1-256 visible ASCII characters.
        """
        if session_id:
            check_id("Mcp-Session-Id", session_id)
        if header:
            return check_id("Bastion-Workflow-Id", header)
        if isinstance(meta_value, str) and meta_value:
            return check_id(f"params._meta[{WORKFLOW_META_KEY!r}]", meta_value)
        if session_id:
            return session_id
        now = time.monotonic()
        current = self._rolling.get(agent_id)
        if current is None or now - current[1] > ROLLING_IDLE_SECONDS:
            current = (f"wf-{new_id()}", now)
        self._rolling.put(agent_id, (current[0], now))
        return current[0]

    def state(self, workflow_id: str) -> WorkflowState:
        state = self._workflows.get(workflow_id)
        if state is None:
            state = WorkflowState(history=deque(maxlen=self._history_len))
            self._workflows.put(workflow_id, state)
        return state
