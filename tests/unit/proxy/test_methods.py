"""Which MCP methods are decided, carried or refused, and the value budget on arguments."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import ArgumentsTooLarge, InvalidParams, MethodNotAllowed, ProtocolError
from bastion.proxy._budget import ValueBudget
from bastion.proxy._mcp import parse_message
from bastion.proxy._methods import PROTOCOL_METHODS, Target, classify, validate_uri
from bastion.v1 import policy_pb2

BUDGET = ValueBudget()


def _classify(method: str, params: dict[str, Any] | None = None, budget: ValueBudget = BUDGET) -> tuple[Target, ...]:
    raw = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
    return classify(parse_message(raw), budget, raw)


@pytest.mark.parametrize("method", sorted(PROTOCOL_METHODS))
def test_protocol_methods_are_carried_without_a_decision(method: str) -> None:
    assert _classify(method) == ()


def test_client_answers_are_protocol_traffic() -> None:
    raw = b'{"jsonrpc":"2.0","id":"s-1","result":{"action":"accept"}}'
    assert classify(parse_message(raw), BUDGET, raw) == ()


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        (
            "tools/call",
            {"name": "add", "arguments": {"a": 1}},
            Target(policy_pb2.TOOL_CALL, tool="add", arguments={"a": 1}),
        ),
        (
            "prompts/get",
            {"name": "greet", "arguments": {"n": "x"}},
            Target(policy_pb2.PROMPT_GET, prompt="greet", arguments={"n": "x"}),
        ),
        ("resources/read", {"uri": "file:///a/b"}, Target(policy_pb2.RESOURCE_READ, resource="file:///a/b")),
        ("resources/subscribe", {"uri": "demo://x"}, Target(policy_pb2.RESOURCE_SUBSCRIBE, resource="demo://x")),
        (
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "n", "value": "a"}},
            Target(policy_pb2.COMPLETION, prompt="greet", arguments={"argument": {"name": "n", "value": "a"}}),
        ),
        (
            "completion/complete",
            {"ref": {"type": "ref/resource", "uri": "demo://t/{x}"}, "argument": {"name": "x", "value": ""}},
            Target(policy_pb2.COMPLETION, resource="demo://t/{x}", arguments={"argument": {"name": "x", "value": ""}}),
        ),
    ],
)
def test_every_method_that_reads_or_acts_is_an_action(method: str, params: dict[str, Any], expected: Target) -> None:
    assert _classify(method, params) == (expected,)


def test_a_listen_stream_decides_each_resource_it_subscribes_to() -> None:
    uris = ["demo://a", "demo://b", "demo://a"]
    found = _classify("subscriptions/listen", {"notifications": {"resourceSubscriptions": uris}})
    assert [(t.kind, t.resource) for t in found] == [
        (policy_pb2.RESOURCE_SUBSCRIBE, "demo://a"),
        (policy_pb2.RESOURCE_SUBSCRIBE, "demo://b"),
    ]
    assert _classify("subscriptions/listen", {"notifications": {"toolsListChanged": True}}) == ()
    with pytest.raises(InvalidParams, match="at most"):
        _classify("subscriptions/listen", {"notifications": {"resourceSubscriptions": [f"d://{i}" for i in range(65)]}})


@pytest.mark.parametrize(
    "method",
    [
        "Tools/Call",
        "TOOLS/CALL",
        "tools/call ",
        " tools/call",
        "tools/call\u200b",
        "tasks/result",
        "roots/list",
        "sampling/createMessage",
        "elicitation/create",
        "notifications/message",
        "x/y",
        "initialize/",
    ],
)
def test_any_other_method_is_refused_and_case_variants_get_a_hint(method: str) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        _classify(method, {"name": "add"})
    assert caught.value.jsonrpc_code == -32601
    if method.lower() == "tools/call":
        assert "did you mean 'tools/call'" in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///a/../etc/passwd",
        "file:///a/./b",
        "..",
        "demo://x/%2e%2E/y",
        "file:///a\\b",
        "demo://x y",
        "demo://x\u202e",
        "demo://x\n",
        "",
        "d://" + "x" * 2100,
    ],
)
def test_resource_uris_with_path_games_are_refused(uri: str) -> None:
    with pytest.raises(InvalidParams, match="URI"):
        validate_uri(uri)


@pytest.mark.parametrize("uri", ["file:///a/b.txt", "demo://notes/readme", "https://x.example/a?b=../c", "db://t/{id}"])
def test_ordinary_uris_pass(uri: str) -> None:
    assert validate_uri(uri) == uri


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tools/call", {"arguments": {}}),
        ("tools/call", {"name": "add", "arguments": [1]}),
        ("prompts/get", {"name": "../x"}),
        ("resources/read", {"uri": 5}),
        ("completion/complete", {"ref": {"type": "ref/other"}}),
        ("completion/complete", {"ref": "greet"}),
        ("subscriptions/listen", {"notifications": {"resourceSubscriptions": "demo://x"}}),
    ],
)
def test_malformed_params_of_governed_methods_are_invalid_params(method: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        _classify(method, params)


# --- the value budget ---------------------------------------------------------------------------


def test_a_wide_array_is_refused_without_walking_it() -> None:
    raw = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":['
        + b"0," * 1_999_999
        + b"0]}}}"
    )
    started = time.perf_counter()
    with pytest.raises(ArgumentsTooLarge, match="BASTION_MAX_ARGUMENT_VALUES"):
        classify(parse_message(raw), BUDGET, raw)
    # orjson's parse dominates (tens of ms); the budget check itself stops at the array.
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"k": list(range(20))}, "values"),
        ({f"k{i}": i for i in range(20)}, "values"),
        ({"s": "x" * 2000}, "bytes of strings"),
        ({"x" * 2000: 1}, "bytes of strings"),
        ({"s": "\u00e9" * 600}, "bytes of strings"),  # 1,200 UTF-8 bytes in 600 characters
        ({"d": [[[[[[1]]]]]]}, "nest deeper"),
    ],
)
def test_each_dimension_of_the_budget_is_enforced(arguments: dict[str, Any], match: str) -> None:
    small = ValueBudget(max_values=16, max_depth=5, max_string_bytes=1024)
    with pytest.raises(ArgumentsTooLarge, match=match):
        _classify("tools/call", {"name": "t", "arguments": arguments}, small)


def test_arguments_within_the_budget_pass_whatever_the_raw_gate_says() -> None:
    small = ValueBudget(max_values=16, max_depth=5, max_string_bytes=1024)
    # Commas and brackets inside a string push the raw gate over, but the walk finds 2 values.
    (target,) = _classify("tools/call", {"name": "t", "arguments": {"s": ",[{" * 100}}, small)
    assert target.arguments == {"s": ",[{" * 100}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=25,
)


@given(
    method=st.sampled_from(["tools/call", "prompts/get", "resources/read", "completion/complete", "x"]),
    params=json_values,
)
def test_classify_never_fails_on_anything_but_a_protocol_error(method: str, params: object) -> None:
    raw = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    try:
        targets = classify(parse_message(raw), ValueBudget(max_values=20, max_depth=4, max_string_bytes=64), raw)
    except ProtocolError:
        return
    for target in targets:
        assert target.name
