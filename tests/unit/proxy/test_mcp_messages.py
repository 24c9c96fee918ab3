from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import HeaderMismatch, InvalidParams, InvalidRequest, ParseError, ProtocolError
from bastion.proxy._budget import ValueBudget
from bastion.proxy._mcp import check_routing_headers, check_single_headers, parse_message, validate_tool_name
from bastion.proxy._methods import classify
from bastion.v1 import policy_pb2

BUDGET = ValueBudget()


def tool_call_target(raw: bytes) -> tuple[str, dict[str, object]]:
    (target,) = classify(parse_message(raw), BUDGET, raw)
    assert target.kind == policy_pb2.TOOL_CALL
    return target.tool, target.arguments


def _call(name: object, arguments: object = None) -> bytes:
    params: dict[str, object] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})


def test_tools_call_is_parsed_into_method_id_name_and_arguments() -> None:
    message = parse_message(_call("add", {"a": 1}))
    assert (message.method, message.id, message.is_request) == ("tools/call", 7, True)
    assert tool_call_target(_call("add", {"a": 1})) == ("add", {"a": 1})


def test_notification_and_client_response_are_accepted() -> None:
    note = parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert note.method == "notifications/initialized"
    assert not note.is_request
    answer = parse_message(b'{"jsonrpc":"2.0","id":"s-1","result":{"role":"assistant"}}')
    assert answer.method is None
    assert answer.id == "s-1"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{not json", ParseError),
        (b"", ParseError),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', InvalidRequest),
        (b'"just a string"', InvalidRequest),
        (b'{"id":1,"method":"ping"}', InvalidRequest),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":5}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', InvalidRequest),
    ],
)
def test_malformed_messages_get_the_precise_protocol_error(raw: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error) as caught:
        parse_message(raw)
    assert type(caught.value) is error


def test_parse_error_maps_to_minus_32700_and_invalid_request_to_minus_32600() -> None:
    assert ParseError.jsonrpc_code == -32700
    assert InvalidRequest.jsonrpc_code == -32600
    assert InvalidParams.jsonrpc_code == -32602
    assert HeaderMismatch.jsonrpc_code == -32020


def test_stateless_routing_headers_must_agree_with_the_body() -> None:
    message = parse_message(_call("add"))
    check_routing_headers(message, "tools/call", "add")
    check_routing_headers(message, None, None)
    with pytest.raises(HeaderMismatch, match="Mcp-Method"):
        check_routing_headers(message, "tools/list", "add")
    with pytest.raises(HeaderMismatch, match="Mcp-Name"):
        check_routing_headers(message, "tools/call", "delete_file")


def test_resource_reads_compare_mcp_name_with_the_uri() -> None:
    message = parse_message(b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}')
    check_routing_headers(message, "resources/read", "file:///a")
    with pytest.raises(HeaderMismatch):
        check_routing_headers(message, "resources/read", "file:///b")


HOSTILE_NAMES = [
    "../etc/passwd",
    "..",
    "a/b",
    "a\\b",
    "tool\x00",
    "tool\n",
    "tool\r\nx-injected: 1",
    "tool\t",
    "\u202etool",  # right-to-left override
    "to\u200bol",  # zero-width space
    "tool\ufeff",  # BOM
    "\uff54\uff4f\uff4f\uff4c",  # full-width letters fold to "tool" under NFKC
    "ﬁle",  # ligature fi
    "t\u043e\u043el",  # Cyrillic o
    "tool\u0301",  # combining accent
    "",
    "-tool",
    "_tool",
    ".tool",
    "tool name",
    "tool;rm",
    "tool|x",
    "tool$x",
    "tool%2e%2e",
    "tool:x",
    "tool@x",
    "a" * 129,
    "tool\x7f",
    "tool\u0085",
    "\u2028tool",
    "tool*",
    "tool?",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_tool_names_are_rejected_with_a_reason(name: str) -> None:
    with pytest.raises(InvalidParams, match="rejected"):
        validate_tool_name(name)


@pytest.mark.parametrize("name", ["add", "delete_file", "get.weather", "v2-search", "getWeather", "a" * 128])
def test_ordinary_tool_names_pass(name: str) -> None:
    validate_tool_name(name)


def test_tool_call_without_a_string_name_or_with_non_object_arguments_is_invalid_params() -> None:
    with pytest.raises(InvalidParams):
        tool_call_target(_call(5))
    with pytest.raises(InvalidParams):
        tool_call_target(_call("add", [1, 2]))


@given(st.binary(max_size=256))
def test_parser_never_raises_anything_but_protocol_errors(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_message(raw)


@given(st.text(max_size=140))
def test_accepted_tool_names_are_plain_ascii_without_traversal(name: str) -> None:
    try:
        validate_tool_name(name)
    except InvalidParams:
        return
    assert name.isascii()
    assert name.isprintable()
    assert ".." not in name
    assert "/" not in name
    assert "\\" not in name
    assert 1 <= len(name) <= 128


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=10,
    )
)
def test_any_json_value_either_parses_or_is_a_protocol_error(value: object) -> None:
    try:
        message = parse_message(orjson.dumps(value))
    except ProtocolError:
        return
    assert isinstance(message.body, dict)


def test_arguments_nested_beyond_the_limit_are_invalid_params() -> None:
    deep: dict[str, object] = {"x": "leaf"}
    for _ in range(BUDGET.max_depth - 1):
        deep = {"x": deep}
    assert tool_call_target(_call("add", {"ok": 1}))[1] == {"ok": 1}
    tool_call_target(_call("add", deep))  # exactly at the limit
    with pytest.raises(InvalidParams, match="nest deeper"):
        tool_call_target(_call("add", {"y": [deep]}))


def test_a_header_the_proxy_reads_once_is_refused_when_sent_twice() -> None:
    check_single_headers([(b"mcp-session-id", b"a"), (b"accept", b"x"), (b"accept", b"y")])
    for name in (b"mcp-session-id", b"authorization", b"bastion-workflow-id", b"mcp-method"):
        with pytest.raises(InvalidRequest, match="more than once"):
            check_single_headers([(name, b"theirs"), (b"host", b"h"), (name, b"mine")])
