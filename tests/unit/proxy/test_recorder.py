"""Journaled events stay bounded whatever the request (proxy/_recorder.py)."""

from __future__ import annotations

import hashlib
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.proxy._journal import Cursor, Journal
from bastion.proxy._recorder import (
    DEFAULT_MAX_ARGUMENTS,
    MAX_ARGUMENTS_LIMIT,
    MAX_CHECKED_DEPTH,
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_TEXT_BYTES,
    Record,
    Recorder,
    encode_event,
)
from bastion.proxy._redact import Redactor
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

# Far below gRPC's 16 MiB receive limit (bastion._rpc), which the shipper could never pass.
assert MAX_EVENT_BYTES * 64 <= 16 << 20


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = Journal.open(tmp_path / "journal")
    yield journal
    await journal.close()


async def journaled(journal: Journal) -> list[bytes]:
    await journal.flush()
    records, _ = journal.reader().read(Cursor(1, 0), 100, 64 << 20)
    return records


def tool_call(arguments: Struct, body: bytes = b"") -> Record:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="echo", method="tools/call")
    action.arguments.CopyFrom(arguments)
    return Record("wf-1", "session-1", "agent-1", "default", action, started_at=1.0, body=body)


def struct(value: dict[str, Any]) -> Struct:
    result = Struct()
    result.update(value)
    return result


def numbers(count: int) -> Struct:
    """{"xs": [7, 7, …]} built from its encoding: Struct.update would take seconds."""
    item = Value(number_value=7).SerializeToString()
    values = ListValue.FromString((bytes([0x0A, len(item)]) + item) * count)
    result = Struct()
    result.fields["xs"].list_value.CopyFrom(values)
    return result


def nested(depth: int, *, in_list: bool = False) -> dict[str, Any]:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if in_list else {"a": value}
    return {"a": value}


def request_body(arguments: Any) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": arguments}}
    )


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


async def test_small_arguments_are_journaled_unchanged(journal: Journal) -> None:
    arguments = struct({"a": 20, "b": [1, "two", None, True], "c": {"d": "é" * 1000}})
    body = request_body(json_format.MessageToDict(arguments))
    record = tool_call(arguments, body)

    Recorder(journal).append(record, outcome=graph_pb2.FORWARDED)

    [data] = await journaled(journal)
    event = graph_pb2.Event.FromString(data)
    assert event.action == record.action
    assert event.action.arguments.SerializeToString(deterministic=True) == arguments.SerializeToString(
        deterministic=True
    )
    assert not event.arguments_truncated
    assert event.payload_digest == hashlib.sha256(body).hexdigest()


LARGE = {
    # The probe: a 3.2 MB body of small numbers is a 17.6 MB Struct.
    "3.2 MB of small numbers": (lambda: numbers(1_600_000), lambda: request_body({"xs": [7] * 1_600_000})),
    "4 MiB of one string": (lambda: struct({"text": "x" * (4 << 20)}), lambda: b"x" * (4 << 20)),
    "100k keys": (lambda: struct({f"k{i:06d}": i for i in range(100_000)}), lambda: b"{...}"),
    "deep nesting": (lambda: struct(nested(200)), lambda: request_body(nested(200))),
    "deep lists": (lambda: struct(nested(200, in_list=True)), lambda: b"[[[...]]]"),
}


@pytest.mark.parametrize("case", LARGE.values(), ids=LARGE.keys())
async def test_large_arguments_are_cut_to_a_bounded_event_that_keeps_the_digest_of_the_whole(
    journal: Journal, case: Any
) -> None:
    arguments, body = case[0](), case[1]()
    record = tool_call(arguments, body)

    violation_id = Recorder(journal).append(
        record, outcome=graph_pb2.BLOCKED, block_code="allow-add", block_reason="no rule allows demo__echo"
    )

    [data] = await journaled(journal)
    assert len(data) <= MAX_EVENT_BYTES
    event = graph_pb2.Event.FromString(data)
    assert event.arguments_truncated
    assert event.action.arguments.ByteSize() <= DEFAULT_MAX_ARGUMENTS
    assert depth_of(json_format.MessageToDict(event.action.arguments)) <= MAX_DEPTH
    assert event.payload_digest == hashlib.sha256(body).hexdigest()
    assert (event.violation_id, event.block_reason, event.action.tool) == (
        violation_id,
        "no rule allows demo__echo",
        "echo",
    )
    assert record.action.arguments == arguments  # the caller's record is not changed


async def test_what_is_kept_is_a_deterministic_prefix(journal: Journal) -> None:
    value = {"xs": list(range(100_000)), "text": "y" * 100_000, **{f"k{i:05d}": i for i in range(20_000)}}
    first = struct(value)
    second = struct(dict(reversed(list(value.items()))))

    kept = []
    for arguments in (first, second):
        event = graph_pb2.Event(event_id="e")
        encode_event(event, tool_call(arguments).action)
        kept.append(event.action.arguments)

    assert kept[0].SerializeToString(deterministic=True) == kept[1].SerializeToString(deterministic=True)
    shown = json_format.MessageToDict(kept[0])
    keys = list(shown)
    # Keys in sorted order while they fit: "k00000"… come first, "text" and "xs" do not fit.
    assert sorted(keys) == [f"k{i:05d}" for i in range(len(keys))]
    assert 1000 < len(keys) < 20_000


async def test_a_list_keeps_its_first_items_and_counts_the_rest(journal: Journal) -> None:
    event = graph_pb2.Event(event_id="e")
    encode_event(event, tool_call(struct({"xs": list(range(100_000))})).action)

    items = json_format.MessageToDict(event.action.arguments)["xs"]
    kept = items[:-1]
    assert kept == list(range(len(kept)))
    assert items[-1] == f"…[{100_000 - len(kept)} more items]"
    assert event.arguments_truncated


async def test_a_long_string_keeps_a_utf8_prefix_and_counts_the_rest(journal: Journal) -> None:
    text = "aé€😀" * 100_000
    event = graph_pb2.Event(event_id="e")
    encode_event(event, tool_call(struct({"text": text})).action)

    kept = event.action.arguments.fields["text"].string_value
    prefix, marker = kept.split("…[")
    assert text.startswith(prefix)
    assert marker == f"{len(text) - len(prefix)} more characters]"
    assert DEFAULT_MAX_ARGUMENTS - 100 < len(kept.encode()) <= DEFAULT_MAX_ARGUMENTS


async def test_a_long_task_in_a_thinking_node_is_cut(journal: Journal) -> None:
    action = policy_pb2.Action(kind=policy_pb2.MCP_REQUEST, method="bastion.dev/task")
    action.arguments.update({"task": "Summarise " * 400_000})
    record = Record("wf-1", "s", "agent-1", "default", action, started_at=1.0, node_type=graph_pb2.THINKING)

    Recorder(journal).append(record, outcome=graph_pb2.FORWARDED)

    [data] = await journaled(journal)
    event = graph_pb2.Event.FromString(data)
    assert len(data) <= MAX_EVENT_BYTES
    assert event.arguments_truncated
    assert event.action.arguments.fields["task"].string_value.startswith("Summarise Summarise")


async def test_every_other_large_string_is_cut_and_the_ids_are_kept(journal: Journal) -> None:
    huge = "r" * (4 << 20)
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool=huge, method=huge, resource=huge)
    record = Record("wf-1", "session-1", "agent-1", "default", action, started_at=1.0, parent_ids=("p1", "p2"))
    decision = policy_pb2.Decision(effect=policy_pb2.DENY, rule_id="r", reason=huge)
    score = verifier_pb2.ScoreResponse(verdict=verifier_pb2.BLOCK, reasons=[huge] * 3 + ["x"] * 100_000)

    violation_id = Recorder(journal).append(
        record, outcome=graph_pb2.BLOCKED, decision=decision, score=score, block_code=huge, block_reason=huge
    )

    [data] = await journaled(journal)
    assert len(data) <= MAX_EVENT_BYTES
    event = graph_pb2.Event.FromString(data)
    assert (event.workflow_id, event.node_id, event.violation_id, list(event.parent_ids)) == (
        "wf-1",
        record.node_id,
        violation_id,
        ["p1", "p2"],
    )
    assert not event.arguments_truncated  # the arguments were empty; only text was cut
    for text in (event.block_reason, event.block_code, event.action.tool, event.decision.reason):
        assert text.startswith("rrrr")
        assert text.endswith(" more characters]")
        assert len(text.encode()) <= MAX_TEXT_BYTES
    assert event.decision.rule_id == "r"
    assert len(event.verifier.reasons) < 100_000


def test_max_arguments_beyond_what_the_event_bound_allows_is_refused(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    with pytest.raises(ValueError, match="max_arguments"):
        Recorder(journal, max_arguments=MAX_ARGUMENTS_LIMIT + 1)
    Recorder(journal, max_arguments=MAX_ARGUMENTS_LIMIT)


def test_the_event_schema_has_only_fields_the_cut_handles() -> None:
    """The text cut walks every field of an Event; it does not walk maps or repeated Structs."""

    def check(descriptor: Descriptor, seen: set[str]) -> None:
        if descriptor.full_name in seen or descriptor.full_name.startswith("google.protobuf."):
            return
        seen.add(descriptor.full_name)
        for fd in descriptor.fields:
            if fd.message_type is None:
                continue
            assert not fd.message_type.GetOptions().map_entry, f"{fd.full_name} is a map"
            if fd.message_type.full_name == "google.protobuf.Struct":
                assert not fd.is_repeated, f"{fd.full_name} is a repeated Struct"
            check(fd.message_type, seen)

    check(graph_pb2.Event.DESCRIPTOR, set())


texts = st.text(string.printable + "é€😀", max_size=50)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(texts, inner, max_size=8),
    max_leaves=30,
)
# Long texts without generating every character: a short text repeated.
long_texts = st.builds(lambda text, times: text * times, texts, st.integers(0, 400))


@settings(max_examples=60, deadline=None)
@given(
    arguments=st.dictionaries(texts, json_values, max_size=10),
    max_arguments=st.integers(0, 2000),
    reason=long_texts,
    reasons=st.lists(long_texts, max_size=40),
)
def test_any_input_gives_a_bounded_readable_event(
    arguments: dict[str, Any], max_arguments: int, reason: str, reasons: list[str]
) -> None:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="echo")
    action.arguments.update(arguments)
    event = graph_pb2.Event(
        event_id="e", block_reason=reason, verifier=verifier_pb2.ScoreResponse(reasons=reasons, scorer=reason)
    )

    sent = orjson.dumps(arguments)
    data = encode_event(event, action, max_arguments=max_arguments, arguments_json=sent)

    assert len(data) <= MAX_EVENT_BYTES
    back = graph_pb2.Event.FromString(data)
    assert back.action.arguments.ByteSize() <= max_arguments
    # The copy as sent rides only beside whole arguments, and then exactly as given.
    assert back.arguments_json == (b"" if back.arguments_truncated else sent)
    assert back.arguments_truncated == (back.action.arguments != action.arguments)
    assert (back.event_id, back.action.tool) == ("e", "echo")
    if len(reason.encode()) <= MAX_TEXT_BYTES:
        assert back.block_reason == reason


def test_the_copy_as_sent_is_dropped_when_it_would_take_the_event_past_its_bound() -> None:
    arguments = {"text": "x" * (MAX_ARGUMENTS_LIMIT - 100)}
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="echo")
    action.arguments.update(arguments)

    data = encode_event(
        graph_pb2.Event(event_id="e"), action, max_arguments=MAX_ARGUMENTS_LIMIT, arguments_json=orjson.dumps(arguments)
    )

    back = graph_pb2.Event.FromString(data)
    assert len(data) <= MAX_EVENT_BYTES
    assert not back.arguments_truncated
    assert back.arguments_json == b""  # the whole Struct stays; the second copy would not fit


@pytest.mark.parametrize("kind", ["object", "array"])
def test_arguments_within_the_proxys_depth_bound_always_read_back_without_the_check(kind: str) -> None:
    # The proxy skips the read-back parse because its value budget stops nesting at
    # MAX_CHECKED_DEPTH; this is the fact that makes skipping it safe.
    value: Any = "leaf"
    for _ in range(MAX_CHECKED_DEPTH - 1):
        value = {"x": value} if kind == "object" else [value]
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="s", tool="t")
    action.arguments.update({"x": value})
    event = graph_pb2.Event(event_id="e", workflow_id="w", node_id="n")
    data = encode_event(event, action, nesting_checked=True)
    assert graph_pb2.Event.FromString(data).action.arguments == action.arguments


async def test_a_body_is_searched_for_secrets_once_for_the_action_and_its_result(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The search reads the whole raw body; the result event redacts by the same decision.
    redactor = Redactor()
    searched: list[bytes] = []
    look = redactor.may_hold_secrets

    def counted(raw: bytes) -> bool:
        searched.append(raw)
        return look(raw)

    monkeypatch.setattr(redactor, "may_hold_secrets", counted)
    arguments = {"token": "sk-live-" + "a" * 40}
    record = tool_call(struct(arguments), request_body(arguments))
    recorder = Recorder(journal, redactor=redactor)

    recorder.append(record, outcome=graph_pb2.FORWARDED)
    recorder.append_result(record, graph_pb2.ActionResult())

    assert searched == [record.body]
    [action, _] = await journaled(journal)
    assert "sk-live-" not in str(graph_pb2.Event.FromString(action).action.arguments)
