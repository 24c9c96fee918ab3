"""Turns what the proxy did into graph Events and appends them to the journal.

Every event is appended before the proxy answers or forwards (DESIGN §1 step ⑥);
if the journal cannot take it, the caller blocks the action.

Bounds: whatever the request, a journaled event encodes to at most MAX_EVENT_BYTES
(256 KiB), 64 times under gRPC's 16 MiB message limit (bastion._rpc), so no single call
can make an event the graph cannot receive and stop the audit trail of every agent.

- `action.arguments` are kept whole while their encoding is at most `max_arguments`
  (64 KiB by default) and the event reads back: protobuf's parser refuses nesting
  beyond 100 message levels (about 32 levels of JSON objects), and the shipper could
  only drop an event it cannot parse. Otherwise a deterministic prefix is kept: keys in
  sorted order (a Struct has no order of its own), list items in order, each value
  whole while it fits in what remains, a string that does not fit cut with a
  `…[N more characters]` marker, a list ended by a `…[N more items]` item, anything
  nested deeper than MAX_DEPTH replaced by a marker; keys that do not fit are left out.
  `arguments_truncated` is then set; `payload_digest` is always the sha256 of the whole
  request body the caller gave, so the cut copy stays attributable to what was sent.
- `arguments_json` holds the (redacted) arguments exactly as sent, as JSON: the Struct
  has only doubles, so it says 2.0 for 2 and rounds integers beyond 2^53, which an audit
  trail must not. It is kept only with whole arguments, and only while the Struct and
  the JSON together fit MAX_ARGUMENTS_LIMIT, so MAX_EVENT_BYTES still holds.
- Every other string (block_reason, tool and resource names, decision and verifier
  reasons, …) is kept whole up to MAX_TEXT_BYTES, and all of them together up to
  _TEXT_BUDGET bytes, an Event's own fields (ids, codes, reasons) before its
  submessages'; a longer one ends with the same marker.

Cost: every event pays one ByteSize of its arguments (an encoding pass in C, as the
policy call makes) and one parse of the encoded event to check it reads back: a few
microseconds for ordinary calls. Cutting visits only what is kept, so it costs in
proportion to the bound, except that a map with more keys than could ever fit is
scanned once to pick its smallest keys.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

from ._journal import Journal
from ._redact import Redactor
from ._workflows import new_id

log = logging.getLogger(__name__)

#: The largest encoded Event the recorder journals.
MAX_EVENT_BYTES = 256 << 10
#: Default bound of `action.arguments`. Real tool arguments are well under 1 KiB and a
#: long prompt or file excerpt a few KiB, so those stay whole for the auditor; yet a
#: flood of 4 MiB bodies (BASTION_MAX_BODY) costs the journal and graph 64 times less,
#: and the event keeps a 4x margin under MAX_EVENT_BYTES.
DEFAULT_MAX_ARGUMENTS = 64 << 10
#: Bound of one other string field: ids are at most 512 characters and reasons are
#: sentences; 4 KiB holds any legitimate one, e.g. an error message naming a path.
MAX_TEXT_BYTES = 4 << 10
#: Nesting levels kept when arguments are cut. Each JSON object level is 3 message
#: levels, so an Event with 33 nested objects (49 arrays) no longer parses; 20 leaves
#: a margin for messages that carry an Event inside them.
MAX_DEPTH = 20
#: Arguments nested at most this deep (objects or arrays, the outermost object counting
#: as one) always parse back inside an Event: 34 levels of objects do not (measured).
MAX_CHECKED_DEPTH = 32

_TEXT_BUDGET = 64 << 10
# Fixed-size fields and the tags and lengths of non-repeated submessages: the schema has
# under a hundred such fields, so 16 KiB is a loose upper bound.
_FIXED_BYTES = 16 << 10
#: The largest `max_arguments` for which MAX_EVENT_BYTES still holds.
MAX_ARGUMENTS_LIMIT = MAX_EVENT_BYTES - _TEXT_BUDGET - _FIXED_BYTES

# Encoded sizes, as upper bounds (a length varint takes at most 3 bytes below 2 MiB,
# and nothing kept comes near that).
_ENTRY = 12  # a Struct map entry: tags and lengths of the entry, its key and its value
_ITEM = 4  # a ListValue item: tag and length
_NESTED = 4  # a Value holding a string, Struct or ListValue: tag and length
_SCALAR = 9  # a Value holding a number (tag and 8 bytes); null and bool take 2
_STRING_FIELD = 5  # tag and length of a string field
_MARKER_TEXT = 48  # "…[N more characters]" with any N
_MARKER_ITEM = _ITEM + _NESTED + _MARKER_TEXT

_ARGUMENTS_FIELD = policy_pb2.Action.DESCRIPTOR.fields_by_name["arguments"]
_TEXT_TYPES = frozenset({FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES})


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
    #: Edges beyond CAUSED_BY: (target node, EdgeType, reason).
    edges: tuple[tuple[str, int, str], ...] = ()
    #: The arguments as parsed from the request (exact integers), journaled as JSON.
    arguments: dict[str, Any] | None = None
    #: Provenance labels of the action (ctx.taint), journaled for the drift path.
    taint: tuple[str, ...] = ()
    #: The redactor `Recorder` chose for `body`, kept so that the action's event and its
    #: result event share one search of the body (a 1-tuple: None is a decision too).
    redaction: tuple[Redactor | None] | None = field(default=None, repr=False, compare=False)


class Recorder:
    """Journals Events within the bounds above; `max_arguments` is the arguments' bound."""

    def __init__(
        self,
        journal: Journal,
        *,
        max_arguments: int = DEFAULT_MAX_ARGUMENTS,
        checked_depth: int | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        """`checked_depth`: the nesting every action's arguments were bounded to before
        they reached the recorder (the proxy's value budget), if any."""
        if not 0 <= max_arguments <= MAX_ARGUMENTS_LIMIT:
            raise ValueError(f"max_arguments must be between 0 and {MAX_ARGUMENTS_LIMIT} bytes, not {max_arguments}")
        self._journal = journal
        self._redactor = redactor
        self._max_arguments = max_arguments
        self._nesting_checked = checked_depth is not None and checked_depth <= MAX_CHECKED_DEPTH

    def _redactor_for(self, record: Record) -> Redactor | None:
        """The redactor of this record's journaled action, when it may hold secrets."""
        redactor = self._redactor
        if redactor is None:
            return None
        if record.redaction is not None:
            return record.redaction[0]
        # The raw body is searched once per record; without a body (a stated task, a
        # refusal) the walk always runs: it is cheap on what is there (names and reasons).
        chosen = redactor.for_body(record.body) if record.body else redactor
        record.redaction = (chosen,)
        return chosen

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
        verifications: Sequence[verifier_pb2.ScoreResponse] = (),
    ) -> str:
        """Journal the event; return its violation id ("" when forwarded). Raises JournalError.

        `verifications`: each chained verifier's own answer (only when a chain was asked)."""
        violation_id = new_id() if outcome != graph_pb2.FORWARDED else ""
        # The action is added by encode_event: copying it here would copy arguments of any size.
        event = graph_pb2.Event(
            event_id=new_id(),
            workflow_id=record.workflow_id,
            node_id=record.node_id,
            parent_ids=record.parent_ids,
            edges=[
                graph_pb2.EdgeHint(target_node_id=target, type=kind, reason=reason)  # type: ignore[arg-type]
                for target, kind, reason in record.edges
            ],
            node_type=record.node_type,  # type: ignore[arg-type]
            agent_id=record.agent_id,
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
            taint=record.taint,
            verifications=verifications,
        )
        redactor = self._redactor_for(record)
        self._journal.append(
            encode_event(
                event,
                record.action,
                max_arguments=self._max_arguments,
                nesting_checked=self._nesting_checked,
                redactor=redactor,
                arguments_json=_arguments_json(record.arguments, redactor),
            )
        )
        return violation_id

    def append_result(self, record: Record, result: graph_pb2.ActionResult) -> None:
        """Journal how `record`'s forwarded action ended: a result event for the same node
        (its own event_id), which the graph stores on that node. Raises JournalError."""
        action = record.action
        event = graph_pb2.Event(
            event_id=new_id(),
            workflow_id=record.workflow_id,
            node_id=record.node_id,
            node_type=record.node_type,  # type: ignore[arg-type]
            agent_id=record.agent_id,
            session_id=record.session_id,
            tenant=record.tenant,
            outcome=graph_pb2.FORWARDED,
            result=result,
        )
        # The arguments are on the action's own event already; the result names the action only.
        summary = policy_pb2.Action(
            kind=action.kind,
            server=action.server,
            tool=action.tool,
            prompt=action.prompt,
            resource=action.resource,
            method=action.method,
        )
        # The names come from the request whose body was searched: the same gate as its event.
        redactor = self._redactor_for(record)
        self._journal.append(encode_event(event, summary, max_arguments=0, nesting_checked=True, redactor=redactor))


def encode_event(
    event: graph_pb2.Event,
    action: policy_pb2.Action,
    *,
    max_arguments: int = DEFAULT_MAX_ARGUMENTS,
    nesting_checked: bool = False,
    redactor: Redactor | None = None,
    arguments_json: bytes | None = None,
) -> bytes:
    """Set `event.action` from `action` and return the event's encoding, cut to the
    module's bounds (at most MAX_EVENT_BYTES). Changes `event`, never `action`.
    `arguments_json` (the same arguments as sent, redacted) is kept with whole arguments
    that leave room for it (see the module docstring).

    `nesting_checked` says the arguments' nesting was bounded before they were built
    (the proxy's value budget allows at most MAX_CHECKED_DEPTH levels, which always
    parse back): the read-back parse, a third of this function's cost, is then skipped.

    `redactor`: redacts the action (arguments, names) before anything is cut — a private key
    cut short loses the line that ends it and no pattern finds it any more (an attacker's
    probe journaled most of one) — and the event's reasons that quote what it replaced.
    """
    secrets: list[str] = []
    if redactor is not None:
        # A copy: the action, as policy and the verifier saw it, is untouched.
        redacted = policy_pb2.Action()
        redacted.CopyFrom(action)
        redactor.struct(redacted.arguments, secrets)
        redactor.names(redacted, secrets)
        action = redacted
        redactor.scrub_event(event, secrets)
        if event.block_reason:
            # A refusal's reason may quote what a caller or an upstream wrote that is in no
            # argument (a path, a stdio server's stray line): an attacker's probe journaled
            # a token a child printed on stdout. Patterns apply there too.
            event.block_reason = redactor.text(event.block_reason)[0]
    size = action.arguments.ByteSize()
    if size <= max_arguments:
        event.action.CopyFrom(action)
    else:
        size = _cut_action(event, action, max_arguments)
    if (
        arguments_json is not None
        and not event.arguments_truncated
        and size + len(arguments_json) <= MAX_ARGUMENTS_LIMIT
    ):
        event.arguments_json = arguments_json
        size += len(arguments_json)
    data = event.SerializeToString()
    readable = nesting_checked or _readable(data)
    if not readable and not event.arguments_truncated:
        # Small enough, but nested deeper than protobuf's parser accepts.
        event.ClearField("arguments_json")  # kept only beside whole arguments
        size = _cut_action(event, action, max_arguments)
        data = event.SerializeToString()
        readable = _readable(data)
    if len(data) - size > MAX_TEXT_BYTES:
        _cut_fields(event, _TEXT_BUDGET)
        data = event.SerializeToString()
        readable = nesting_checked or _readable(data)
    if not readable or len(data) > MAX_EVENT_BYTES:
        # Unreachable by construction; should the schema grow a field the cut misses,
        # the audit record still goes through, stripped to what identifies it.
        log.error(
            "journal event %s is over its bounds after cutting; journaling its identity only",
            event.event_id,
            extra={"fields": {"event_id": event.event_id, "size": len(data)}},
        )
        data = _identity_only(event).SerializeToString()
    return data


def _arguments_json(arguments: dict[str, Any] | None, redactor: Redactor | None) -> bytes | None:
    """The arguments as JSON (orjson keeps integers exact), redacted like the Struct copy."""
    if not arguments:
        return None
    if redactor is not None:
        arguments, _ = redactor.json(arguments)
    try:
        return orjson.dumps(arguments)
    except (TypeError, orjson.JSONEncodeError):
        return None  # not JSON after all (cannot come from a parsed body): the Struct stands


def _readable(data: bytes) -> bool:
    try:
        graph_pb2.Event.FromString(data)
    except DecodeError:
        return False
    return True


def _cut_action(event: graph_pb2.Event, action: policy_pb2.Action, max_arguments: int) -> int:
    """Copy `action` into `event` with its arguments cut to `max_arguments`; return their size."""
    event.ClearField("action")
    target = event.action
    for fd, value in action.ListFields():
        if fd is _ARGUMENTS_FIELD:
            continue
        if fd.message_type is not None:
            getattr(target, fd.name).CopyFrom(value)
        elif fd.is_repeated:
            getattr(target, fd.name).extend(value)
        else:
            setattr(target, fd.name, value)
    cut = _Cut()
    cut.struct(action.arguments, target.arguments, max_arguments, 1)
    event.arguments_truncated = cut.cut
    return target.arguments.ByteSize()


def cut_text(text: str, limit: int) -> tuple[str, int]:
    """`text` itself if its UTF-8 encoding fits in `limit` bytes, else a prefix ending in
    a `…[N more characters]` marker that fits; and the encoded size of the result."""
    # Characters never outnumber bytes, so a longer text cannot fit and is not encoded whole.
    if len(text) <= limit:
        size = len(text.encode())
        if size <= limit:
            return text, size
    keep = limit - _MARKER_TEXT
    if keep <= 0:
        prefix = _prefix(text, max(limit, 0))
        return prefix, len(prefix.encode())
    prefix = _prefix(text, keep)
    result = f"{prefix}…[{len(text) - len(prefix)} more characters]"
    return result, len(result.encode())


def _marker(text: str, limit: int) -> tuple[str, int]:
    """`text` and its size if it fits in `limit` bytes, else nothing: a cut marker misleads."""
    size = len(text.encode())
    return (text, size) if size <= limit else ("", 0)


def _prefix(text: str, limit: int) -> str:
    # Cutting the bytes may split a character; "ignore" drops its partial end.
    return text[:limit].encode()[:limit].decode("utf-8", "ignore")


class _Cut:
    """Copies Struct values within byte allowances; `cut` tells whether anything was left out."""

    def __init__(self) -> None:
        self.cut = False

    def struct(self, src: Struct, dst: Struct, allowance: int, depth: int) -> int:
        """Copy entries of `src` in sorted key order while they fit; return the bytes used."""
        fields = src.fields
        most = allowance // (_ENTRY + 2)  # the smallest entry: empty key, null value
        if len(fields) > most:
            self.cut = True
            keys = heapq.nsmallest(most, fields)
        else:
            keys = sorted(fields)
        used = 0
        for key in keys:
            # A key longer in characters than the allowance cannot fit: not worth encoding.
            key_size = len(key) if len(key) > allowance else len(key.encode())
            room = allowance - used - _ENTRY - key_size
            if room < _SCALAR:
                # A cut key would name something the caller never sent: leave it out.
                self.cut = True
                continue
            used += _ENTRY + key_size + self.value(fields[key], dst.fields[key], room, depth)
        return used

    def list(self, src: ListValue, dst: ListValue, allowance: int, depth: int) -> int:
        """Copy items of `src` in order while they fit, then a `…[N more items]` item."""
        values = src.values
        used = 0
        kept = 0
        while kept < len(values):
            # Each item leaves room for the marker a later one may need.
            room = allowance - used - _ITEM - _MARKER_ITEM
            if room < _SCALAR:
                break
            used += _ITEM + self.value(values[kept], dst.values.add(), room, depth)
            kept += 1
        if kept == len(values):
            return used
        self.cut = True
        marker, size = _marker(f"…[{len(values) - kept} more items]", allowance - used - _ITEM - _NESTED)
        if not size:
            return used
        dst.values.add().string_value = marker
        return used + _ITEM + _NESTED + size

    def value(self, src: Value, dst: Value, room: int, depth: int) -> int:
        """Copy `src` into `dst` within `room` bytes (at least _SCALAR); return the bytes used."""
        kind = src.WhichOneof("kind")
        if kind == "string_value":
            original = src.string_value
            text, size = cut_text(original, room - _NESTED)
            self.cut |= text is not original
            dst.string_value = text
            return _NESTED + size
        if kind == "struct_value" or kind == "list_value":
            if depth >= MAX_DEPTH:
                self.cut = True
                text, size = _marker(f"…[nested deeper than {MAX_DEPTH} levels]", room - _NESTED)
                dst.string_value = text
                return _NESTED + size
            if kind == "struct_value":
                dst.struct_value.SetInParent()
                return _NESTED + self.struct(src.struct_value, dst.struct_value, room - _NESTED, depth + 1)
            dst.list_value.SetInParent()
            return _NESTED + self.list(src.list_value, dst.list_value, room - _NESTED, depth + 1)
        dst.CopyFrom(src)  # a number, bool or null
        return _SCALAR


def _cut_fields(message: Message, left: int) -> int:
    """Cut the strings of `message` and its submessages (except action.arguments, cut
    already) to MAX_TEXT_BYTES each and `left` bytes together; return what is left.

    A message's own strings go before its submessages', so when the budget runs out an
    Event still has its ids, codes and reasons. The Event schema has no map and no
    repeated Struct fields (a test checks), so neither is handled here.
    """
    own_first = sorted(message.ListFields(), key=lambda item: item[0].message_type is not None)
    for fd, value in own_first:
        if fd is _ARGUMENTS_FIELD:
            continue
        if fd.message_type is not None and fd.message_type.full_name == Struct.DESCRIPTOR.full_name:
            kept = Struct()
            left -= _Cut().struct(value, kept, max(left, 0), 1)
            value.CopyFrom(kept)
        elif fd.type in _TEXT_TYPES and fd.is_repeated:
            left = _cut_repeated_text(value, left)
        elif fd.type in _TEXT_TYPES:
            text, size = _cut_item(value, min(MAX_TEXT_BYTES, max(left - _STRING_FIELD, 0)))
            if text is not value:
                setattr(message, fd.name, text)
            left -= _STRING_FIELD + size
        elif fd.message_type is not None and fd.is_repeated:
            for index, item in enumerate(value):
                if left < _STRING_FIELD:
                    del value[index:]
                    break
                left = _cut_fields(item, left - _STRING_FIELD)
        elif fd.message_type is not None:
            left = _cut_fields(value, left)
        elif fd.is_repeated:
            # Packed numbers and enums: at most 10 bytes each.
            del value[max(left, 0) // 10 :]
            left -= 10 * len(value)
    return left


def _cut_repeated_text(items: MutableSequence[Any], left: int) -> int:
    cut: dict[int, str | bytes] = {}
    end = len(items)
    for index, item in enumerate(items):
        if left < _STRING_FIELD:
            end = index
            break
        text, size = _cut_item(item, min(MAX_TEXT_BYTES, left - _STRING_FIELD))
        if text is not item:
            cut[index] = text
        left -= _STRING_FIELD + size
    for index, text in cut.items():
        items[index] = text
    del items[end:]
    return left


def _cut_item(item: str | bytes, limit: int) -> tuple[str | bytes, int]:
    if isinstance(item, bytes):
        if len(item) <= limit:
            return item, len(item)
        return item[:limit], limit
    return cut_text(item, limit)


def _identity_only(event: graph_pb2.Event) -> graph_pb2.Event:
    """What identifies `event` and its verdict, every string cut to MAX_TEXT_BYTES."""

    def text(value: str) -> str:
        return cut_text(value, MAX_TEXT_BYTES)[0]

    return graph_pb2.Event(
        event_id=text(event.event_id),
        workflow_id=text(event.workflow_id),
        node_id=text(event.node_id),
        node_type=event.node_type,
        agent_id=text(event.agent_id),
        action=policy_pb2.Action(
            kind=event.action.kind,
            server=text(event.action.server),
            tool=text(event.action.tool),
            method=text(event.action.method),
        ),
        started_at=event.started_at,
        decided_at=event.decided_at,
        payload_digest=text(event.payload_digest),
        session_id=text(event.session_id),
        tenant=text(event.tenant),
        outcome=event.outcome,
        violation_id=text(event.violation_id),
        block_code=text(event.block_code),
        verifier_fallback=event.verifier_fallback,
        arguments_truncated=True,
    )
