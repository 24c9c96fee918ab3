"""Per-workflow state the proxy keeps to build the causal graph on the hot path:
the previous action of each session (for CAUSED_BY), the recent history the
verifier scores against, and whether the workflow's task was recorded.

State is keyed by (tenant, agent, workflow id): naming another agent's workflow id
never reaches its state, so it can neither become the parent of that agent's next
node nor seed its "trusted" task. Client-named ids are additionally bound to their
first owner (`_owners.py`), so in the graph too each caller writes only its own.

Every structure is bounded: LRU maps of workflows and rolling ids, a bounded history,
a bounded map of sessions per workflow, a capped task, capped result fingerprints. An agent fleet opens sessions
without end; the proxy's memory must not grow with them. Losing an entry (eviction,
restart) only loses a hint — the next action starts a new chain — never an event.
"""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from collections import deque
from dataclasses import dataclass, field

from bastion._errors import DelegationRefused, InvalidRequest
from bastion._identity import Principal
from bastion.v1 import verifier_pb2

from ._delegation import Delegation, Delegations
from ._lru import Lru
from ._mcp import WORKFLOW_META_KEY
from ._owners import MAX_WORKFLOW_ID, WorkflowOwners, is_safe_id, owner_key
from ._prints import Fingerprints

ROLLING_IDLE_SECONDS = 30 * 60
#: Session ids come from upstreams (MCP: visible ASCII) and are checked at this length.
MAX_ID_LENGTH = 256
#: A stated task longer than this is cut: it is context for policy and verifier, not a document.
MAX_TASK_CHARS = 8192
#: Sessions remembered per workflow for CAUSED_BY links.
MAX_SESSIONS_PER_WORKFLOW = 64


@dataclass(slots=True)
class WorkflowState:
    history: deque[verifier_pb2.HistoryNode]
    task: str = ""
    _last_nodes: Lru[str, str] = field(default_factory=lambda: Lru(MAX_SESSIONS_PER_WORKFLOW))
    #: What earlier results held (`_provenance.py`); made by the first result fingerprinted.
    fingerprints: Fingerprints | None = None

    def last_node(self, session_id: str) -> str | None:
        return self._last_nodes.get(session_id)

    def set_last_node(self, session_id: str, node_id: str) -> None:
        self._last_nodes.put(session_id, node_id)

    def prints(self) -> Fingerprints:
        if self.fingerprints is None:
            self.fingerprints = Fingerprints()
        return self.fingerprints

    def set_task(self, task: str) -> str:
        """Record the workflow's task once (capped); return it."""
        if not self.task:
            self.task = task[:MAX_TASK_CHARS]
        return self.task


def check_id(what: str, value: str) -> str:
    if len(value) > MAX_ID_LENGTH or not all("!" <= ch <= "~" for ch in value):
        raise InvalidRequest(f"{what} must be 1-{MAX_ID_LENGTH} visible ASCII characters")
    return value


#: Workflows Bastion itself writes to (e.g. `bastion.rejected`); no client may name one.
RESERVED_PREFIX = "bastion."


def check_workflow_id(what: str, value: str) -> str:
    if not is_safe_id(value):
        raise InvalidRequest(
            f"{what} must be 1-{MAX_WORKFLOW_ID} characters of A-Z a-z 0-9 . _ : - starting with a letter or digit"
        )
    if value.lower().startswith(RESERVED_PREFIX):
        raise InvalidRequest(f"{what} must not start with {RESERVED_PREFIX!r}: those workflows are Bastion's own")
    return value


def session_workflow_id(session_id: str) -> str:
    """A session's workflow: its id when that is a safe workflow id, else a digest of it."""
    if is_safe_id(session_id):
        return session_id
    return f"mcp-session-{hashlib.sha256(session_id.encode()).hexdigest()[:32]}"


#: Random bytes read from the OS at once for ids (512 ids' worth).
_POOL_BYTES = 4096


class _Uuid7:
    """RFC 9562 uuid7 strings: 48-bit Unix milliseconds, a 12-bit counter that orders the
    ids of one millisecond (starting at a random value below 2048, moving on to the next
    millisecond should it run out), 62 random bits. Time-ordered, so ids sort by creation
    in the store and in logs. The proxy makes several per governed call: this takes about
    40% of `str(uuid6.uuid7())`'s time, which profiled at ~3% of the proxy's CPU.

    The random bits come from `os.urandom`, read 4 KiB at a time: each read is a syscall
    that lets go of the GIL, and under load the event loop then waited for a journal or
    gRPC thread to hand it back (py-spy put 3 to 4% of the proxy's loop thread in these two
    reads, for well under a microsecond of work each). A forked child starts a pool of
    its own, so no two processes hand out the same bits."""

    __slots__ = ("__weakref__", "_at", "_ms", "_pool", "_seq")

    def __init__(self) -> None:
        self._ms = 0
        self._seq = 0
        self._pool = b""
        self._at = 0
        # Weakly: a hook holding the instance would keep every one ever made alive.
        forget = weakref.WeakMethod(self._forget)
        os.register_at_fork(after_in_child=lambda: (method := forget()) is not None and method())

    def _forget(self) -> None:
        self._pool, self._at = b"", 0

    def _random(self, size: int) -> int:
        at = self._at
        if at + size > len(self._pool):
            self._pool, at = os.urandom(_POOL_BYTES), 0
        self._at = at + size
        return int.from_bytes(self._pool[at : at + size])

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms > self._ms:
            self._ms, self._seq = ms, self._random(2) & 0x7FF
        else:
            self._seq += 1
            if self._seq > 0xFFF:
                self._ms, self._seq = self._ms + 1, 0
            ms = self._ms
        value = ms << 80 | 0x7000 << 64 | self._seq << 64 | 1 << 63 | self._random(8) >> 2
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


new_id = _Uuid7()


class WorkflowTracker:
    def __init__(
        self,
        history_len: int,
        owners: WorkflowOwners,
        capacity: int = 10_000,
        delegations: Delegations | None = None,
    ) -> None:
        self._history_len = history_len
        self._owners = owners
        #: Issues and checks `Bastion-Delegation` (None: delegations are refused).
        self.delegations = delegations
        self._workflows: Lru[tuple[str, str], WorkflowState] = Lru(capacity)
        self._rolling: Lru[str, tuple[str, float]] = Lru(capacity)

    async def resolve(
        self, header: str | None, meta_value: object, session_id: str | None, principal: Principal
    ) -> str:
        """Workflow identity, in DESIGN §4 order: header, `_meta`, MCP session, rolling per agent.

        Raises InvalidRequest for an id outside the safe character set. A client-named id
        owned by another principal resolves to this principal's own scoped workflow.
        """
        if meta_value is not None and not (isinstance(meta_value, str) and meta_value):
            # A number or an object is no workflow id: refused, not silently replaced by another.
            raise InvalidRequest(f"params._meta[{WORKFLOW_META_KEY!r}] must be a non-empty string")
        if header:
            workflow = check_workflow_id("Bastion-Workflow-Id", header)
        elif isinstance(meta_value, str) and meta_value:
            workflow = check_workflow_id(f"params._meta[{WORKFLOW_META_KEY!r}]", meta_value)
        elif session_id:
            # The session is bound to this principal (SessionOwners); its workflow is
            # claimed like a named one, so no one can name it first and write into it.
            workflow = session_workflow_id(session_id)
        else:
            owner = owner_key(principal)
            now = time.monotonic()
            current = self._rolling.get(owner)
            if current is None or now - current[1] > ROLLING_IDLE_SECONDS:
                current = (f"wf-{new_id()}", now)
            self._rolling.put(owner, (current[0], now))
            workflow = current[0]
        return await self._owners.effective(workflow, principal)

    @property
    def owners(self) -> WorkflowOwners:
        """The durable ownership store (workflows, and A2A tasks by `_a2a_tasks.store_key`)."""
        return self._owners

    def delegation(self, token: bytes | None, principal: Principal, named: str | None) -> Delegation | None:
        """The delegation a request carries, checked; its workflow must be the one the
        request names, if it names one. DelegationRefused otherwise."""
        if not token:
            return None
        if self.delegations is None:
            raise DelegationRefused("this proxy does not accept Bastion-Delegation")
        delegation = self.delegations.verify(token, principal)
        if named and named != delegation.workflow_id:
            raise DelegationRefused(
                f"Bastion-Workflow-Id {named!r} is not the workflow of the Bastion-Delegation; send one of them"
            )
        return delegation

    def state(self, principal: Principal, workflow_id: str) -> WorkflowState:
        key = (owner_key(principal), workflow_id)
        state = self._workflows.get(key)
        if state is None:
            state = WorkflowState(history=deque(maxlen=self._history_len))
            self._workflows.put(key, state)
        return state
