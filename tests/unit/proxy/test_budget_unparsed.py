"""Refusing, before parsing, a body that provably holds too many values (`_budget.py`).

The bound must never exceed what a valid JSON text holds (else a message that fits would
be refused), must be exact where an attacker aims (`[0,0,…]`) and must cost byte scans,
not a parse, for the bodies it refuses.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion._errors import ArgumentsTooLarge, InvalidParams
from bastion.proxy._budget import ValueBudget, values_at_least
from bastion.proxy._mcp import check_integers, parse_message


def _count(value: Any) -> int:
    """Every scalar, array and object (keys are not values), as ValueBudget.check counts."""
    if isinstance(value, dict):
        return 1 + sum(_count(child) for child in value.values())
    if isinstance(value, list):
        return 1 + sum(_count(child) for child in value)
    return 1


#: Strings made of what the byte scans look at: quotes, backslashes, commas, brackets.
_tricky_text = st.text(alphabet=st.sampled_from(['"', "\\", ",", "[", "{", "a", "é", "\u2028", "\n"]), max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _tricky_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_tricky_text, inner, max_size=5),
    max_leaves=40,
)


@given(value=_json, style=st.sampled_from(["orjson", "spaced", "indented", "ascii"]))
def test_the_bound_never_exceeds_the_values_of_valid_json(value: Any, style: str) -> None:
    raw = {
        "orjson": lambda: orjson.dumps(value),
        "spaced": lambda: json.dumps(value, ensure_ascii=False, separators=(" , ", " : ")).encode(),
        "indented": lambda: json.dumps(value, ensure_ascii=False, indent=1).encode(),
        "ascii": lambda: json.dumps(value).encode(),
    }[style]()
    assert values_at_least(raw, enough=10**9) <= _count(value)


@pytest.mark.parametrize("n", [1, 2, 17, 100_000])
def test_the_bound_is_exact_for_a_flat_array(n: int) -> None:
    raw = b"[" + b",".join([b"0"] * n) + b"]"
    assert values_at_least(raw, enough=10**9) == n  # the root array is not counted: a lower bound


def test_commas_inside_strings_and_escaped_quotes_do_not_count() -> None:
    text = 'a,b\\",c\\\\",' * 1000  # an escaped quote, then an escaped backslash before a real quote
    raw = orjson.dumps({"s": text, "t": ",,,"})
    assert values_at_least(raw, enough=10**9) <= 3
    ValueBudget(max_values=10).refuse_unparsed(raw, "the message")  # nothing raised


def test_a_wide_body_is_refused_unparsed_in_milliseconds() -> None:
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":['
    raw += b"0," * 1_999_999 + b"0]}}}"
    started = time.process_time()
    with pytest.raises(ArgumentsTooLarge, match=r"at least 200000\d JSON values.*BASTION_MAX_ARGUMENT_VALUES"):
        ValueBudget().refuse_unparsed(raw, "the message")
    # orjson alone takes tens of ms on this body; the scans a few (generous bound for CI).
    assert time.process_time() - started < 1.0


def test_many_strings_are_refused_without_splitting_them_apart() -> None:
    raw = orjson.dumps({"a": ["x"] * 200_000})
    with pytest.raises(ArgumentsTooLarge, match="more than twice"):
        ValueBudget().refuse_unparsed(raw, "the message")


def test_up_to_twice_the_budget_is_left_to_the_exact_walk() -> None:
    budget = ValueBudget(max_values=100)
    at_cap = orjson.dumps({"a": [0] * 199})  # 200 values, 199 commas: parsed, then walked
    budget.refuse_unparsed(at_cap, "the message")
    with pytest.raises(ArgumentsTooLarge):
        budget.refuse_unparsed(orjson.dumps({"a": [0] * 202}), "the message")


def test_a_large_text_full_of_commas_is_not_refused() -> None:
    raw = orjson.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"csv": "1,2," * 500_000}}}
    )
    ValueBudget().refuse_unparsed(raw, "the message")
    assert parse_message(raw).params["arguments"]["csv"].count(",") == 1_000_000


def test_invalid_json_is_refused_either_way() -> None:
    with pytest.raises(ArgumentsTooLarge):
        ValueBudget(max_values=4).refuse_unparsed(b"," * 100, "the message")


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (b'{"n": 1234567890123456789}', False),  # 19 digits, within 64 bits
        (b'{"n": 12345678901234567890123}', True),
        (b'{"n": -99999999999999999999}', True),
        (b'{"n": 123456789012345678}', False),
        (b'{"n": "12345678901234567890123"}', False),  # a string: exact already
        (b'{"n": [123456789, 1234567890]}', False),  # digits apart are no run
        ('{"n": "' + "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660" * 3 + '"}', False),
    ],
)
def test_integers_beyond_64_bits_are_still_found(raw: bytes | str, refused: bool) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        check_integers(data)
    except InvalidParams:
        assert refused
    else:
        assert not refused


def test_nesting_counts_without_commas() -> None:
    element = b"[" * 103 + b"0" + b"]" * 103
    raw = b'{"a":[' + b",".join([element] * 19_990) + b"]}"
    started = time.process_time()
    with pytest.raises(ArgumentsTooLarge, match="refused before parsing"):
        ValueBudget().refuse_unparsed(raw, "the message")
    assert time.process_time() - started < 1.0  # orjson took 0.5-0.8 s on this body
    assert values_at_least(b"[[[[[[[[[[1]]]]]]]]]]", enough=10**9) == 10
    # Brackets inside strings are text, not values.
    assert values_at_least(orjson.dumps({"s": "[[{{" * 1000}), enough=10**9) <= 2
