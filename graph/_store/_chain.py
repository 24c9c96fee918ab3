"""The audit chain's next row, whatever the backend: `ChainCursor` and `AuditRow`.

A store keeps the chain's head (sequence, hash, time of the last record) and, inside
the transaction that ingests a batch, asks a fork of it for the row each accepted event
adds. The fork is kept only once the transaction commits, so a rolled-back batch leaves
the head where it was. SQLite and Neo4j write the same rows: the record's bytes, its
hash and the columns that serve queries (kind, times, rule, fallback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.v1 import graph_pb2

from .._audit import GENESIS, audit_bytes, audit_kind, chain_hash, latency_ns
from .._events import event_time_ns


@dataclass(frozen=True, slots=True)
class AuditRow:
    sequence: int
    event_id: str
    kind: str
    at_ns: int
    recorded_ns: int
    latency_ns: int | None
    blocked: bool
    rule_id: str
    fallback: bool
    prev_hash: str
    hash: str
    record: bytes


class ChainCursor:
    """The chain's head as a writer sees it; `fork()` before a transaction (see the module docstring)."""

    __slots__ = ("_head", "_recorded_ns", "_sequence")

    def __init__(self, sequence: int = 0, head: str = GENESIS, recorded_ns: int = 0) -> None:
        self._sequence = sequence
        self._head = head
        self._recorded_ns = recorded_ns

    def fork(self) -> ChainCursor:
        return ChainCursor(self._sequence, self._head, self._recorded_ns)

    def next_row(self, event: graph_pb2.Event, received_ns: int) -> AuditRow | None:
        """The row `event` appends (and the cursor moves past), or None when it is no audit record."""
        kind = audit_kind(event)
        if kind is None:
            return None
        sequence = self._sequence + 1
        # Recorded times never decrease along the chain, so a time range of records is a
        # contiguous piece of it (bastion.graph._audit).
        recorded_ns = max(received_ns, self._recorded_ns)
        at_ns = _record_time(event, received_ns)
        record = audit_bytes(kind, event, sequence=sequence, at_ns=at_ns, recorded_ns=recorded_ns)
        digest = chain_hash(self._head, record)
        row = AuditRow(
            sequence=sequence,
            event_id=event.event_id,
            kind=kind,
            at_ns=at_ns,
            recorded_ns=recorded_ns,
            # A refusal before any decision (a bad token, an unknown route) took no decision:
            # its near-zero time would pull the decision latency percentiles down (a flood of
            # anonymous refusals made them look fast). It still counts as blocked, by rule.
            latency_ns=latency_ns(event) if event.outcome != graph_pb2.REJECTED else None,
            blocked=event.outcome in (graph_pb2.BLOCKED, graph_pb2.REJECTED),
            rule_id=event.block_code or event.decision.rule_id,
            fallback=event.verifier_fallback,
            prev_hash=self._head,
            hash=digest,
            record=record,
        )
        self._sequence, self._head, self._recorded_ns = sequence, digest, recorded_ns
        return row


def _record_time(event: graph_pb2.Event, received_ns: int) -> int:
    if event.HasField("result") and event.result.HasField("completed_at"):
        return event.result.completed_at.ToNanoseconds()
    return event_time_ns(event, received_ns)


def nearest_ranks(percentiles: Sequence[float], count: int) -> dict[int, list[float]]:
    """0-based rank -> the percentiles found there, for `count` sorted values.

    Nearest rank: the smallest value with at least p of the values at or below it."""
    ranks: dict[int, list[float]] = {}
    for p in percentiles:
        ranks.setdefault(max(0, math.ceil(p * count) - 1), []).append(p)
    return ranks
