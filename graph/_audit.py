"""The tamper-evident audit chain: which events are audit records, what a record says,
its canonical bytes, and how a chain is checked. Backend-neutral: a store appends what
`audit_record` builds and hands `ChainVerifier` its rows back in sequence order.

The chain:

    record_n = the JSON object `audit_record` builds, with "sequence": n
    hash_n   = sha256(bytes.fromhex(hash_{n-1}) || JCS(record_n)), hex; hash_0 = GENESIS

JCS is RFC 8785 (the `rfc8785` package): one byte string per JSON value, so anyone can
recompute a hash from the record alone, with any conforming implementation. A record
holds only values JCS admits exactly: times are RFC 3339 strings, and a number outside
the I-JSON range (a non-finite float, an integer beyond ±(2^53 - 1)) is kept as its
decimal string.

What is recorded (`audit_kind`, one row per kind of event):

    result field set                                   "result"    how a forwarded call ended
    VERIFICATION node, method bastion.approval/<step>  "approval"  an operator's approve/deny
    server "policy", method bastion.dev/<step>,
      workflow bastion.policy or bastion.identity      "policy"    policy, rollout, key change
    a Decision, or outcome BLOCKED / REJECTED          "decision"  allow, deny, approval-required, refusal
    anything else (protocol traffic, a stated task)    none        recorded in the graph, not decided

The graph writes one kind of record itself: a result event parked before its node and
refused when the node arrived, sent as another workflow or tenant (`_store._common.
refused_result`): a `decision` of outcome REJECTED, rule `bastion.graph.result_refused`.

A chained verifier's every answer (`Event.verifications`) is in its decision's record as
`verifications`, one entry per link in chain order, beside the combined `verifier`.

`ChainVerifier` names the first problem, by sequence number: `altered` (a record whose
bytes no longer hash to its stored hash), `removed` (a gap, or a link to a hash no
earlier record has), `inserted` (a record the next one does not link to), or
`reordered` (a record that says it is another sequence number). It cannot see records
cut from the end of the chain: compare the head it reports with one kept elsewhere
(an export's chain head, a previous verify).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import rfc8785
from google.protobuf import json_format

from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._events import enum_name, struct_view

#: The hash before the first record.
GENESIS = "0" * 64

#: The workflows the policy service ships its audit records in (bastion.policy._rollouts
#: and bastion.policy._identities name them; a test keeps the two in step).
POLICY_AUDIT_WORKFLOWS = frozenset({"bastion.policy", "bastion.identity"})

KINDS = ("decision", "approval", "policy", "result")

_APPROVAL_PREFIX = "bastion.approval/"
_POLICY_PREFIX = "bastion.dev/"
_MAX_EXACT_INT = 2**53 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What a BLOCKED decision is called when the policy's own effect was not the reason
# (it allowed, and the verifier or a limit blocked).
_BLOCKING_EFFECTS = frozenset({policy_pb2.DENY, policy_pb2.REQUIRE_APPROVAL, policy_pb2.QUEUE})


def audit_kind(event: graph_pb2.Event) -> str | None:
    """The kind of audit record `event` is, or None when it is not one (see the module table)."""
    if event.HasField("result"):
        return "result"
    method = event.action.method
    # The node type is checked because an agent's own JSON-RPC method name is recorded
    # as sent: only the proxy journals VERIFICATION nodes.
    if method.startswith(_APPROVAL_PREFIX) and event.node_type == graph_pb2.VERIFICATION:
        return "approval"
    if (
        method.startswith(_POLICY_PREFIX)
        and event.action.server == "policy"
        and event.workflow_id in POLICY_AUDIT_WORKFLOWS
    ):
        return "policy"
    if event.HasField("decision") or event.outcome in (graph_pb2.BLOCKED, graph_pb2.REJECTED):
        return "decision"
    return None


def decision_label(kind: str, event: graph_pb2.Event) -> str:
    """The export's `decision` column: what was decided, in one word."""
    if kind == "approval":
        return event.action.method.removeprefix(_APPROVAL_PREFIX).upper()
    if kind == "policy":
        return event.action.method.removeprefix(_POLICY_PREFIX)
    if kind == "result":
        return enum_name(graph_pb2.ResultOutcome.DESCRIPTOR, event.result.outcome)
    if event.outcome == graph_pb2.REJECTED:
        return "REJECT"
    if event.outcome == graph_pb2.BLOCKED:
        effect = event.decision.effect
        return enum_name(policy_pb2.Effect.DESCRIPTOR, effect) if effect in _BLOCKING_EFFECTS else "DENY"
    return "ALLOW"


def audit_record(kind: str, event: graph_pb2.Event, *, sequence: int, at_ns: int, recorded_ns: int) -> dict[str, Any]:
    """The JSON object hashed into the chain for `event` (a JSON-safe dict, see `canonical`)."""
    return _Record(kind, event, sequence, at_ns, recorded_ns).value


def audit_bytes(kind: str, event: graph_pb2.Event, *, sequence: int, at_ns: int, recorded_ns: int) -> bytes:
    """`canonical(audit_record(...))`, the bytes a chain row holds, in one pass over the record.

    Why not the two calls: the writer builds one record per ingested decision and result,
    and walking the whole record again twice (`json_safe`, then `canonical`'s check that
    orjson writes its JCS form) was a third of the graph's CPU per governed call. The keys
    of a record are fixed ASCII and its strings need no check, so only its numbers and an
    approval's or result's `details` are made safe and checked, while it is built. A
    property test holds this to `canonical(audit_record(...))` byte for byte."""
    record = _Record(kind, event, sequence, at_ns, recorded_ns)
    if record.plain:
        return orjson.dumps(record.value, option=orjson.OPT_SORT_KEYS)
    return canonical(record.value)


class _Record:
    """An audit record under construction: `value` (JSON-safe), and `plain` while every
    number in it is one orjson writes as JCS does (so `canonical`'s walk can be skipped)."""

    __slots__ = ("plain", "value")

    def __init__(self, kind: str, event: graph_pb2.Event, sequence: int, at_ns: int, recorded_ns: int) -> None:
        self.plain = True
        decided = event.HasField("decision")
        action = event.action
        details = _details(kind, event)
        if details is not None:
            details = json_safe(details)
            self.plain = _orjson_is_jcs(details)
        latency = _latency_ms(event)
        self.value: dict[str, Any] = {
            "sequence": self._number(sequence),
            "kind": kind,
            "recorded_at": rfc3339(recorded_ns),
            "timestamp": rfc3339(at_ns),
            "event_id": event.event_id,
            "workflow_id": event.workflow_id,
            "node_id": event.node_id,
            "node_type": enum_name(graph_pb2.NodeType.DESCRIPTOR, event.node_type),
            "agent_id": event.agent_id,
            "tenant": event.tenant,
            "session_id": event.session_id,
            "action": {
                "kind": enum_name(policy_pb2.ActionKind.DESCRIPTOR, action.kind),
                "server": action.server,
                "tool": action.tool,
                "method": action.method,
            },
            "payload_digest": event.payload_digest,
            "outcome": enum_name(graph_pb2.Outcome.DESCRIPTOR, event.outcome),
            "decision": decision_label(kind, event),
            "violation_id": event.violation_id,
            "rule_id": event.block_code or (event.decision.rule_id if decided else ""),
            "reason": event.block_reason or (event.decision.reason if decided else ""),
            "policy": self._policy(event.decision) if decided else None,
            "verifier": self._verifier(event.verifier, event.verifier_fallback) if event.HasField("verifier") else None,
            "verifier_fallback": event.verifier_fallback,
            "latency_ms": self._number(latency) if latency is not None else None,
            "details": details,
        }
        if event.verifications:
            # A chain's every link, as the proxy journaled it (a link that failed: no verdict):
            # the combined `verifier` alone would not show which link decided or which failed.
            # Only chained events have the key, so every other record hashes as before.
            self.value["verifications"] = [
                self._verifier(member, member.verdict == verifier_pb2.VERDICT_UNSPECIFIED)
                for member in event.verifications
            ]

    def _number(self, value: float) -> Any:
        """`json_safe(value)`, noting when orjson would not write the result as JCS does."""
        safe = json_safe(value)
        if type(safe) is float and not 1e-4 <= abs(safe) < 1e16:
            self.plain = False
        return safe

    def _policy(self, decision: policy_pb2.Decision) -> dict[str, Any]:
        return {
            "effect": enum_name(policy_pb2.Effect.DESCRIPTOR, decision.effect),
            "rule_id": decision.rule_id,
            "name": decision.policy_name,
            "version": self._number(decision.policy_version),
            "bundle_digest": decision.bundle_digest,
            "rollout_arm": enum_name(policy_pb2.RolloutArm.DESCRIPTOR, decision.rollout_arm),
        }

    def _verifier(self, score: verifier_pb2.ScoreResponse, fallback: bool) -> dict[str, Any]:
        return {
            "deviation_score": self._number(score.deviation_score),
            "threshold": self._number(score.threshold),
            "verdict": enum_name(verifier_pb2.Verdict.DESCRIPTOR, score.verdict),
            "scorer": score.scorer,
            "fallback": fallback,
        }


def canonical(record: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of a record: what its chain hash covers.

    The `rfc8785` package is pure Python (≈ 140 µs for a decision record here, which
    capped ingest near 1,000 events/s); orjson writes the same bytes ≈ 50 times faster for the
    records the graph builds — ASCII keys, and floats that JCS and orjson both print as
    plain shortest decimals. Anything else goes to `rfc8785`. A property test holds the
    two to the same bytes."""
    if _orjson_is_jcs(record):
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(record)


def _orjson_is_jcs(value: Any) -> bool:
    """Whether orjson's sorted compact output of `value` is its RFC 8785 form: keys sort the
    same only when ASCII (JCS sorts by UTF-16 units), and floats print the same only as
    non-integral decimals between 1e-4 and 1e16 (JCS writes 2.0 as 2, and 1e-7 as 1e-7)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is dict:
        return all(key.isascii() and _orjson_is_jcs(item) for key, item in value.items())
    if kind is float:
        return math.isfinite(value) and not value.is_integer() and 1e-4 <= abs(value) < 1e16
    if kind is int:
        return bool(-_MAX_EXACT_INT <= value <= _MAX_EXACT_INT)
    if kind is list:
        return all(_orjson_is_jcs(item) for item in value)
    return False  # anything else (a subclass, a tuple): the reference implementation decides


def chain_hash(prev_hash: str, canonical_record: bytes) -> str:
    """hash_n from hash_{n-1} (hex) and JCS(record_n); ValueError when prev_hash is not hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_record).hexdigest()


def json_safe(value: Any) -> Any:
    """`value` with every number JCS cannot write exactly replaced by its decimal string, and
    integral floats as integers (JCS writes 2.0 as 2: the same bytes, and the fast path of
    `canonical` takes them). Dispatches on the exact type: this runs for every ingested
    decision, and isinstance chains cost more than the rest of the record."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is dict:
        return {key: json_safe(item) for key, item in value.items()}
    if kind is int:
        return value if -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT else str(value)
    if kind is float:
        if not math.isfinite(value):
            return repr(value)
        if value.is_integer():
            return int(value) if abs(value) <= _MAX_EXACT_INT else str(int(value))
        return value
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    # Subclasses (an IntEnum, a str enum): as their base value.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return json_safe(base(value))
    return str(value)


def rfc3339(ns: int) -> str:
    """UTC, microseconds, `Z`: e.g. 2026-01-01T00:00:00.000000Z."""
    second, micros = divmod(ns // 1000, 1_000_000)
    text = _RFC3339_SECONDS.get(second)
    if text is None:
        # strftime is most of this function's cost and most records of a batch share a
        # second or two (when the event happened, when it was recorded): a few seconds'
        # text is kept. dict get and set are atomic, so writer and readers may share it.
        if len(_RFC3339_SECONDS) >= _RFC3339_KEPT:
            _RFC3339_SECONDS.clear()
        text = (_EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
        _RFC3339_SECONDS[second] = text
    return f"{text}.{micros:06d}Z"


#: The seconds rfc3339 formatted lately, and their text.
_RFC3339_SECONDS: dict[int, str] = {}
_RFC3339_KEPT = 8


def latency_ns(event: graph_pb2.Event) -> int | None:
    """decided_at - started_at, when the event has both."""
    if event.HasField("started_at") and event.HasField("decided_at"):
        return event.decided_at.ToNanoseconds() - event.started_at.ToNanoseconds()
    return None


def _latency_ms(event: graph_pb2.Event) -> float | None:
    latency = latency_ns(event)
    return round(latency / 1e6, 3) if latency is not None else None


def _details(kind: str, event: graph_pb2.Event) -> dict[str, Any] | None:
    """What an approval or policy step said (its arguments: who, why, which version), or how a call ended."""
    if kind == "result":
        # The answer itself is payload, kept (and retained) apart.
        plain = _result_details(event.result)
        if plain is not None:
            return plain
        try:
            result = json_format.MessageToDict(event.result, preserving_proto_field_name=True)
        except json_format.SerializeToJsonError:
            # A number JSON cannot hold in the answer (NaN, ±Infinity; an attacker's probe with
            # the service token): the record does not hold the answer, so convert it without.
            # Raised, it was UNKNOWN, which the shipper retries for ever.
            answerless = graph_pb2.ActionResult()
            answerless.CopyFrom(event.result)
            answerless.ClearField("redacted_result")
            result = json_format.MessageToDict(answerless, preserving_proto_field_name=True)
        result.pop("redacted_result", None)
        return result
    if kind in ("approval", "policy"):
        return struct_view(event.action.arguments)
    return None


#: How `MessageToDict` writes each plain field of an ActionResult (int64 as a decimal
#: string, as ProtoJSON does); `redacted_result` is left out of the record.
_RESULT_FIELDS: dict[str, Any] = {
    "jsonrpc_error_code": int,
    "http_status": int,
    "result_digest": str,
    "result_bytes": str,
    "detail": str,
}


def _result_details(result: graph_pb2.ActionResult) -> dict[str, Any] | None:
    """`MessageToDict(result)` without `redacted_result`, written field by field (json_format
    walks descriptors and was the costliest step of a result's record); None for anything
    but the plain case (a field added later, an unknown enum value, a non-finite duration,
    a time ProtoJSON cannot write), which `MessageToDict` then converts. A test holds the
    two to the same dict."""
    details: dict[str, Any] = {}
    for field, value in result.ListFields():
        name = field.name
        convert = _RESULT_FIELDS.get(name)
        if convert is not None:
            details[name] = convert(value)
        elif name == "redacted_result":
            continue
        elif name == "duration_ms" and math.isfinite(value):
            details[name] = value
        elif name == "outcome" and value in graph_pb2.ResultOutcome.values():
            details[name] = graph_pb2.ResultOutcome.Name(value)
        elif name == "completed_at" and _MIN_PROTOJSON_S <= value.seconds <= _MAX_PROTOJSON_S:
            try:
                details[name] = value.ToJsonString()
            except ValueError:  # nanos out of range: as MessageToDict fails, so must this
                return None
        else:
            return None
    return details


#: The seconds a ProtoJSON timestamp can write: 0001-01-01 to 9999-12-31.
_MIN_PROTOJSON_S = -62_135_596_800
_MAX_PROTOJSON_S = 253_402_300_799


# --- checking a chain ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the chain as stored or exported; `record` is the JCS bytes that were hashed."""

    sequence: int
    prev_hash: str
    hash: str
    record: bytes


@dataclass(frozen=True, slots=True)
class ChainHead:
    sequence: int
    hash: str


@dataclass(frozen=True, slots=True)
class ChainProblem:
    #: altered, removed, inserted or reordered; forged for a checkpoint whose signature fails
    kind: str
    #: The record the problem is named by.
    sequence: int
    detail: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    #: Records read (up to and including the one after a problem).
    records: int
    #: The last record read, or None for an empty chain.
    head: ChainHead | None
    problem: ChainProblem | None
    #: Signed checkpoints that held (bastion.graph._checkpoints).
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


class ChainVerifier:
    """Feed it a chain's entries in order; `report()` names the first problem.

    A chain may start mid-way (an export of a time range): `anchor` is the hash before
    the first entry and `first` its sequence number. Once a problem is seen, one more
    entry is used to tell an alteration from an insertion, and the rest are ignored.
    """

    def __init__(self, *, anchor: str = GENESIS, first: int = 1) -> None:
        self._expected = first
        self._prev = anchor  # hash the next entry must link to
        self._before_prev: str | None = None  # hash of the entry before that one
        self._records = 0
        self._head: ChainHead | None = None
        self._problem: ChainProblem | None = None
        # An altered-looking entry, the hash it should link to, and the problem it is if last.
        self._suspect: tuple[AuditEntry, str, ChainProblem] | None = None

    @property
    def done(self) -> bool:
        return self._problem is not None

    def feed(self, entry: AuditEntry) -> None:
        if self._problem is not None:
            return
        self._records += 1
        self._head = ChainHead(entry.sequence, entry.hash)
        if self._suspect is not None:
            suspect, expected_prev, _ = self._suspect
            self._problem = _classify_suspect(suspect, expected_prev, entry)
            return
        recomputed = _recompute(entry)
        if recomputed != entry.hash:
            # The next entry tells whether this one was edited or slipped in.
            detail = (
                f"record #{entry.sequence} was altered: its stored bytes hash to {recomputed[:16]}…, "
                f"its stored hash is {entry.hash[:16]}…"
            )
            self._suspect = (entry, self._prev, ChainProblem("altered", entry.sequence, detail))
            return
        problem = self._check(entry)
        if problem is not None:
            self._problem = problem
            return
        self._expected = entry.sequence + 1
        self._before_prev, self._prev = self._prev, entry.hash

    def report(self) -> ChainReport:
        problem = self._problem
        if problem is None and self._suspect is not None:
            problem = self._suspect[2]
        return ChainReport(records=self._records, head=self._head, problem=problem)

    def _check(self, entry: AuditEntry) -> ChainProblem | None:
        n = entry.sequence
        if n > self._expected:
            missing = f"#{self._expected}" if n == self._expected + 1 else f"#{self._expected}..#{n - 1}"
            return ChainProblem("removed", self._expected, f"record {missing} was removed (the chain jumps to #{n})")
        if n < self._expected:
            return ChainProblem("reordered", n, f"record #{n} appears again after #{self._expected - 1}")
        stated = _stated_sequence(entry.record)
        if entry.prev_hash != self._prev:
            if self._before_prev is not None and entry.prev_hash == self._before_prev:
                return ChainProblem(
                    "inserted", n - 1, f"record #{n - 1} was inserted: #{n} links past it to the record before it"
                )
            if stated == n and n > 1:
                # Numbers run on unbroken, so nothing is missing: #n-1 was rewritten
                # and given a new hash, and #n still names the old one.
                return ChainProblem(
                    "altered",
                    n - 1,
                    f"record #{n - 1} was altered and its hash recomputed: #{n} links to "
                    f"{entry.prev_hash[:16]}…, not to #{n - 1}'s {self._prev[:16]}…",
                )
            return ChainProblem(
                "removed",
                n,
                f"a record before #{n} was removed: #{n} links to {entry.prev_hash[:16]}…, "
                f"which is not the hash of #{n - 1}",
            )
        if stated != n:
            shift = "inserted before it" if stated is not None and stated < n else "removed before it"
            return ChainProblem("reordered", n, f"record #{n} says it is #{stated}: a record was {shift}")
        return None


def _classify_suspect(suspect: AuditEntry, expected_prev: str, following: AuditEntry) -> ChainProblem:
    n = suspect.sequence
    if following.prev_hash == expected_prev and _stated_sequence(following.record) == n:
        return ChainProblem(
            "inserted", n, f"record #{n} was inserted: the next record links to #{n - 1} and says it is #{n}"
        )
    recomputed = _recompute(suspect)
    if following.prev_hash == suspect.hash:
        what = "its content was edited (the next record still links to its original hash)"
    elif following.prev_hash == recomputed:
        what = "its content and the next record's link were edited, but not the chain after it"
    else:
        what = "its content or stored hash was edited"
    return ChainProblem("altered", n, f"record #{n} was altered: {what}; stored bytes hash to {recomputed[:16]}…")


def _recompute(entry: AuditEntry) -> str:
    try:
        return chain_hash(entry.prev_hash, entry.record)
    except ValueError:
        return "<prev_hash is not hex>"


def _stated_sequence(record: bytes) -> int | None:
    try:
        value = orjson.loads(record).get("sequence")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None
