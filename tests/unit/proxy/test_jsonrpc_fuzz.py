"""Fuzzing the two parsers every MCP message crosses first: `parse_message` (bytes → one
JSON-RPC message) and `classify` (message → the actions it asks for).

Whatever a client sends, the only way out of either is a ProtocolError (which the adapter
turns into a JSON-RPC error and journals); anything else would surface as a 500 or, worse,
as a message carried without a decision. Deterministic: `derandomize=True`, so a failure
found once is found on every run and in CI.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion._errors import BastionError, ProtocolError
from bastion.proxy._budget import ValueBudget
from bastion.proxy._mcp import Message, parse_message, validate_tool_name
from bastion.proxy._methods import PROTOCOL_METHODS, Target, classify
from bastion.v1 import policy_pb2

#: A small budget, so wide and deep arguments exercise the walk, not just the raw gate.
BUDGET = ValueBudget(max_values=32, max_depth=6, max_string_bytes=256)
FUZZ = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

GOVERNED = ("tools/call", "prompts/get", "resources/read", "resources/subscribe", "completion/complete")
REAL_METHODS = sorted({*PROTOCOL_METHODS, *GOVERNED, "subscriptions/listen"})


def _variants(method: str) -> list[str]:
    """Spellings that mean `method` to a lenient reader and must not to Bastion."""
    return [
        method.upper(),
        method.title(),
        method.swapcase(),
        f" {method}",
        f"{method}\n",
        f"{method}\x00",
        f"{method}\u200b",
        method.replace("/", "\u2215"),  # DIVISION SLASH
        method.replace("o", "\u043e"),  # CYRILLIC SMALL LETTER O
        method.replace("/", "//"),
        f"/{method}",
        "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in method),  # full-width
    ]


methods = st.one_of(
    st.sampled_from(REAL_METHODS),
    st.sampled_from([variant for method in REAL_METHODS for variant in _variants(method)]),
    st.text(max_size=24),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(["notifications/", "tools/", "x-"]), st.text()),
)
# Unicode everywhere, lone surrogates included (json.dumps escapes them; orjson refuses them).
texts = st.text(max_size=12) | st.sampled_from(["add", "demo__delete_file", "../x", "a/b", "A", "ﬁle", "test://x"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits orjson refuses the document
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400])
    | st.floats()  # NaN and infinities included: not JSON, written as json.dumps does
    | texts
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
# Params shaped like the governed methods', so fuzzing reaches past the first type check.
shaped_params = st.fixed_dictionaries(
    {},
    optional={
        "name": values | texts,
        "uri": values | texts,
        "arguments": values,
        "ref": st.fixed_dictionaries(
            {"type": st.sampled_from(["ref/prompt", "ref/resource"]) | texts},
            optional={"name": values | texts, "uri": values | texts},
        )
        | values,
        "notifications": st.fixed_dictionaries({}, optional={"resourceSubscriptions": values}) | values,
        "_meta": values,
    },
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.just("2.0") | values,
        "id": st.integers(-(2**63), 2**63 - 1) | texts | values,
        "method": methods | values,
        "params": shaped_params | values,
        "result": values,
        "error": values,
    },
)


def _encode(message: Any) -> bytes:
    # json.dumps rather than orjson: it writes what orjson would refuse (huge ints, NaN,
    # lone surrogates as \ud800), which is exactly what a hostile client can send.
    return json.dumps(message).encode()


def _parse_and_classify(raw: bytes) -> tuple[Message, tuple[Target, ...]] | None:
    """Both stages; None when either refused the message with a ProtocolError."""
    try:
        message = parse_message(raw)
        return message, classify(message, BUDGET, raw)
    except ProtocolError:
        return None
    except BastionError as exc:  # pragma: no cover - the assertion names the stray class
        raise AssertionError(f"{type(exc).__name__} is not a ProtocolError: {exc}") from exc


def _check_invariants(message: Message, targets: tuple[Target, ...]) -> None:
    assert isinstance(message.body, dict)
    assert message.method is None or (isinstance(message.method, str) and message.method)
    if not targets:
        # Carried undecided: only protocol traffic, a client's answer, or a listen stream
        # that subscribes to nothing (it reads no resource; each URI it names is decided).
        listen_without_uris = message.method == "subscriptions/listen"
        assert message.method is None or message.method in PROTOCOL_METHODS or listen_without_uris, message.method
        if message.method is None:
            assert "id" in message.body
            assert ("result" in message.body) != ("error" in message.body)
    if message.method == "tools/call":
        assert len(targets) == 1
        (target,) = targets
        assert target.kind == policy_pb2.TOOL_CALL
        assert target.tool == message.params["name"]
        validate_tool_name(target.tool)  # raises if classify let a bad name through
    for target in targets:
        assert target.name


@FUZZ
@given(raw=st.binary(max_size=512))
def test_arbitrary_bytes_are_parsed_or_refused_with_a_protocol_error(raw: bytes) -> None:
    found = _parse_and_classify(raw)
    if found is not None:
        _check_invariants(*found)


@FUZZ
@given(message=messages)
def test_arbitrary_json_messages_are_classified_or_refused_with_a_protocol_error(message: dict[str, Any]) -> None:
    found = _parse_and_classify(_encode(message))
    if found is not None:
        _check_invariants(*found)


@FUZZ
@given(document=values | messages)
def test_any_json_document_is_refused_unless_it_is_one_object(document: Any) -> None:
    found = _parse_and_classify(_encode(document))
    if found is not None:
        assert isinstance(document, dict)
        _check_invariants(*found)


@FUZZ
@given(
    message=messages,
    cut=st.integers(min_value=0, max_value=1 << 16),
    junk=st.binary(min_size=1, max_size=8),
)
def test_spliced_bytes_of_a_message_are_parsed_or_refused(message: dict[str, Any], cut: int, junk: bytes) -> None:
    raw = _encode(message)
    at = cut % (len(raw) + 1)
    found = _parse_and_classify(raw[:at] + junk + raw[at:])
    if found is not None:
        _check_invariants(*found)


@FUZZ
@given(name=texts | st.text(), arguments=values)
def test_every_tools_call_that_classifies_names_one_valid_tool(name: str, arguments: Any) -> None:
    raw = _encode({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})
    found = _parse_and_classify(raw)
    if found is None:
        return
    message, targets = found
    _check_invariants(message, targets)
    # Only a dict of arguments within the budget gets this far, and policy sees it as parsed.
    assert isinstance(arguments, dict | None)
    assert targets[0].arguments == (orjson.loads(orjson.dumps(message.params)).get("arguments") or {})


def test_an_integer_beyond_64_bits_is_not_decided_on_a_rounded_value() -> None:
    raw = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay","arguments":{"n":18446744073709551617}}}'
    )
    found = _parse_and_classify(raw)
    # Refused: policy would otherwise decide on a rounded value the upstream never reads.
    assert found is None
    # The largest unsigned and smallest signed 64-bit integers are exact and pass.
    for edge in (b"18446744073709551615", b"-9223372036854775808"):
        ok = _parse_and_classify(raw.replace(b"18446744073709551617", edge))
        assert ok is not None
        assert ok[1][0].arguments["n"] == int(edge)


def test_the_fuzzer_reaches_the_accepting_paths() -> None:
    """The properties above would hold vacuously if nothing ever classified; these do."""
    for method, params in (
        ("tools/call", {"name": "add", "arguments": {"a": 1}}),
        ("prompts/get", {"name": "greet"}),
        ("resources/read", {"uri": "demo://x"}),
        ("tools/list", {}),
    ):
        raw = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        found = _parse_and_classify(raw)
        assert found is not None, method
        _check_invariants(*found)
