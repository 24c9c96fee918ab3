"""Turns what the proxy did into graph Events and appends them to the journal.

Every event is appended before the proxy answers or forwards (DESIGN §1 step ⑥);
if the journal cannot take it, the caller blocks the action.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._journal import Journal
from ._workflows import new_id


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


@dataclass(slots=True)
class Record:
    """The facts of one request, filled in as the pipeline learns them."""

    workflow_id: str
    session_id: str
    agent_id: str
    tenant: str
    action: policy_pb2.Action
    started_at: float
    body: bytes = b""
    node_id: str = field(default_factory=new_id)
    node_type: int = graph_pb2.ACTION
    parent_ids: tuple[str, ...] = ()


class Recorder:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def append(
        self,
        record: Record,
        *,
        outcome: int,
        decision: policy_pb2.Decision | None = None,
        score: verifier_pb2.ScoreResponse | None = None,
        block_code: str = "",
        block_reason: str = "",
        verifier_fallback: bool = False,
    ) -> str:
        """Journal the event; return its violation id ("" when forwarded). Raises JournalError."""
        violation_id = new_id() if outcome != graph_pb2.FORWARDED else ""
        event = graph_pb2.Event(
            event_id=new_id(),
            workflow_id=record.workflow_id,
            node_id=record.node_id,
            parent_ids=record.parent_ids,
            node_type=record.node_type,  # type: ignore[arg-type]
            agent_id=record.agent_id,
            action=record.action,
            decision=decision,
            verifier=score,
            started_at=timestamp(record.started_at),
            decided_at=timestamp(time.time()),
            payload_digest=hashlib.sha256(record.body).hexdigest() if record.body else "",
            session_id=record.session_id,
            tenant=record.tenant,
            outcome=outcome,  # type: ignore[arg-type]
            violation_id=violation_id,
            block_code=block_code,
            block_reason=block_reason,
            verifier_fallback=verifier_fallback,
        )
        self._journal.append(event.SerializeToString())
        return violation_id
