"""The A2A parsers and the card rewrite as pure functions: every method and route maps to
its 1.0 method and kind, anything else is refused, and fuzzed input never crashes them
or classifies as something undecided."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion._errors import InvalidParams, MethodNotAllowed, ProtocolError
from bastion.proxy._a2a_card import rewrite_card
from bastion.proxy._a2a_methods import LEGACY_NAMES, METHODS, classify_jsonrpc, classify_rest, parse_jsonrpc
from bastion.proxy._budget import ValueBudget
from bastion.v1 import policy_pb2

BUDGET = ValueBudget(max_values=200, max_depth=8, max_string_bytes=4096)
KIND = {
    "SendMessage": policy_pb2.A2A_SEND,
    "SendStreamingMessage": policy_pb2.A2A_SEND,
    "GetTask": policy_pb2.A2A_GET,
    "ListTasks": policy_pb2.A2A_GET,
    "SubscribeToTask": policy_pb2.A2A_GET,
    "GetExtendedAgentCard": policy_pb2.A2A_GET,
    "CancelTask": policy_pb2.A2A_CANCEL,
    "CreateTaskPushNotificationConfig": policy_pb2.A2A_PUSH_CONFIG,
    "GetTaskPushNotificationConfig": policy_pb2.A2A_PUSH_CONFIG,
    "ListTaskPushNotificationConfigs": policy_pb2.A2A_PUSH_CONFIG,
    "DeleteTaskPushNotificationConfig": policy_pb2.A2A_PUSH_CONFIG,
}


def _classify(method: str, params: Any = None) -> tuple[str, int, bool]:
    raw = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
    msg_id, body = parse_jsonrpc(raw)
    call = classify_jsonrpc(msg_id, body, BUDGET, raw)
    return call.method.name, call.method.kind, call.method.streaming


@pytest.mark.parametrize("wire", [*METHODS, *LEGACY_NAMES])
def test_every_jsonrpc_name_maps_to_its_1_0_method_and_kind(wire: str) -> None:
    name, kind, streaming = _classify(wire)
    assert name == LEGACY_NAMES.get(wire, wire)
    assert kind == KIND[name]
    assert streaming == (name in ("SendStreamingMessage", "SubscribeToTask"))


REST = [
    ("POST", "message:send", "SendMessage", {}),
    ("POST", "v1/message:stream", "SendStreamingMessage", {}),
    ("GET", "tasks", "ListTasks", {}),
    ("GET", "tenant-a/tasks/t1", "GetTask", {"id": "t1"}),
    ("POST", "tasks/t1:cancel", "CancelTask", {"id": "t1"}),
    ("GET", "tasks/t1:subscribe", "SubscribeToTask", {"id": "t1"}),
    ("POST", "tasks/t1/pushNotificationConfigs", "CreateTaskPushNotificationConfig", {"taskId": "t1"}),
    ("GET", "tasks/t1/pushNotificationConfigs", "ListTaskPushNotificationConfigs", {"taskId": "t1"}),
    ("GET", "tasks/t1/pushNotificationConfigs/c1", "GetTaskPushNotificationConfig", {"taskId": "t1", "id": "c1"}),
    (
        "DELETE",
        "v1/tasks/t1/pushNotificationConfigs/c1",
        "DeleteTaskPushNotificationConfig",
        {"taskId": "t1", "id": "c1"},
    ),
    ("GET", "extendedAgentCard", "GetExtendedAgentCard", {}),
    ("GET", "v1/card", "GetExtendedAgentCard", {}),
]


@pytest.mark.parametrize(("verb", "path", "name", "arguments"), REST, ids=[f"{r[0]} {r[1]}" for r in REST])
def test_every_rest_route_maps_to_its_method_with_path_parameters_under_jsonrpc_names(
    verb: str, path: str, name: str, arguments: dict[str, str]
) -> None:
    call = classify_rest(verb, path, b"", b"", BUDGET)
    assert call.method.name == name
    assert call.arguments == arguments


def test_rest_query_and_body_join_the_arguments_and_must_agree_with_the_path() -> None:
    call = classify_rest("GET", "tasks/t1", b"historyLength=3", b"", BUDGET)
    assert call.arguments == {"historyLength": "3", "id": "t1"}
    body = orjson.dumps({"url": "https://h", "taskId": "t1"})
    assert classify_rest("POST", "tasks/t1/pushNotificationConfigs", b"", body, BUDGET).arguments["url"] == "https://h"
    with pytest.raises(InvalidParams):
        classify_rest("POST", "tasks/t1/pushNotificationConfigs", b"", orjson.dumps({"taskId": "t2"}), BUDGET)
    with pytest.raises(MethodNotAllowed):
        classify_rest("GET", "a/b/tasks/t1", b"", b"", BUDGET)


def test_a_send_shows_policy_one_message_whatever_spelling_carried_it() -> None:
    # The a2a-sdk 0.3 HTTP+JSON client writes the 0.3 proto's names; policy and the verifier
    # are shown what a 1.0 client's send shows them. The body forwarded is left as it came.
    proto_03: dict[str, Any] = {
        "request": {"message_id": "m", "task_id": "t", "role": "ROLE_USER", "content": [{"text": "hi"}]},
        "configuration": {"history_length": 2},
        "metadata": {"snake_key": 1},
    }
    json_10: dict[str, Any] = {
        "message": {"messageId": "m", "taskId": "t", "role": "ROLE_USER", "parts": [{"text": "hi"}]},
        "configuration": {"historyLength": 2},
        "metadata": {"snake_key": 1},
    }
    rest = classify_rest("POST", "v1/message:send", b"", orjson.dumps(proto_03), BUDGET).arguments
    raw = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": proto_03})
    jsonrpc = classify_jsonrpc(1, orjson.loads(raw), BUDGET, raw).params
    assert rest == jsonrpc == json_10
    assert classify_rest("POST", "message:send", b"", orjson.dumps(json_10), BUDGET).arguments == json_10
    for disagreeing in (
        {**json_10, "request": proto_03["request"]},
        {"message": {**json_10["message"], "task_id": "other"}},
        {"message": {**json_10["message"], "content": [{"text": "other"}]}},
    ):
        with pytest.raises(InvalidParams):
            classify_rest("POST", "message:send", b"", orjson.dumps(disagreeing), BUDGET)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzzed_jsonrpc_bodies_are_refused_or_classify_as_a_known_method(raw: bytes) -> None:
    try:
        msg_id, body = parse_jsonrpc(raw)
        call = classify_jsonrpc(msg_id, body, BUDGET, raw)
    except ProtocolError:
        return
    assert call.method.name in METHODS


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    st.lists(st.sampled_from(["tasks", "t1", "v1", "message:send", ":cancel", "..", "%2F", "card", ""]), max_size=5),
    st.binary(max_size=64),
    _JSON,
)
def test_fuzzed_rest_requests_are_refused_or_classify_as_a_known_method(
    verb: str, segments: list[str], query: bytes, body: Any
) -> None:
    try:
        call = classify_rest(verb, "/".join(segments), query, orjson.dumps(body), BUDGET)
    except ProtocolError:
        return
    assert call.method.name in METHODS
    assert ".." not in call.route
    assert "%" not in call.route


AGENT = "http://agent.internal:9000/a2a-root"
BASTION = "https://bastion.example.com/a2a/billing"


def test_card_rewrite_points_every_carried_interface_at_bastion_and_drops_the_rest() -> None:
    card: dict[str, Any] = {
        "name": "billing",
        "supportedInterfaces": [
            {"url": AGENT, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": AGENT + "/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0", "tenant": "t"},
            {"url": "grpc://agent.internal:9001", "protocolBinding": "GRPC"},
            {"url": "http://evil.example.com/a2a-root", "protocolBinding": "JSONRPC"},
            {"url": "http://agent.internal:9000/a2a-rootx", "protocolBinding": "HTTP+JSON"},
            {"url": "http://user@agent.internal:9000/a2a-root", "protocolBinding": "HTTP+JSON"},
            {"url": AGENT + "/rpc", "protocolBinding": "JSONRPC"},
        ],
        "signatures": [{"protected": "x", "signature": "y"}],
        "skills": [{"id": "s"}],
    }
    out = rewrite_card(card, AGENT, BASTION)
    assert out["supportedInterfaces"] == [
        {"url": BASTION, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
        {"url": BASTION + "/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0", "tenant": "t"},
    ]
    assert "signatures" not in out
    assert out["skills"] == card["skills"]
    assert len(card["supportedInterfaces"]) == 7  # the input is not changed


@pytest.mark.parametrize(
    ("url", "preferred", "expected_url", "expected_preferred"),
    [
        (AGENT, "JSONRPC", BASTION, "JSONRPC"),
        (AGENT + "/", None, BASTION, None),
        ("grpc://agent.internal:9001", "GRPC", BASTION, "JSONRPC"),
        ("http://elsewhere.example.com/", "JSONRPC", BASTION, "JSONRPC"),
        (AGENT + "/v1", "HTTP+JSON", BASTION + "/v1", "HTTP+JSON"),
    ],
)
def test_legacy_card_url_and_additional_interfaces_are_rewritten(
    url: str, preferred: str | None, expected_url: str, expected_preferred: str | None
) -> None:
    card: dict[str, Any] = {"url": url, "additionalInterfaces": [{"url": "grpc://x:1", "transport": "GRPC"}]}
    if preferred is not None:
        card["preferredTransport"] = preferred
    out = rewrite_card(card, AGENT, BASTION)
    assert out["url"] == expected_url
    assert out.get("preferredTransport") == expected_preferred
    assert out["additionalInterfaces"] == []
