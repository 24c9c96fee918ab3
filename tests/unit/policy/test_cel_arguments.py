"""Only the argument fields a decision's conditions name are converted for CEL.

Converting a map costs ≈ 2 µs a key in the evaluator, so an agent padding its arguments
with 10,000 keys of its own made every decision on `args.amount` take ≈ 20 ms of the
policy service's time, which every other agent's decision waits behind. Here arguments
are a map that records which keys are read, and conditions decide as they did."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from bastion.policy._cel import EMPTY_CONTEXT, Activation, argument_fields, compile_condition


class _Recording(Mapping[str, Any]):
    """Arguments that note every key read, and whether they were walked whole."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self.read: set[str] = set()
        self.walked = False

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        self.walked = True
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _padded(**named: Any) -> _Recording:
    return _Recording({**{f"pad-{n}": n for n in range(10_000)}, **named})


def _activation(arguments: Mapping[str, Any]) -> Activation:
    return Activation(arguments, "agent-1", {"kind": "TOOL_CALL", "tool": "pay"}, EMPTY_CONTEXT)


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("args.amount > 100", {"amount"}),
        ('args["to"] == "x" && args.amount < 5', {"to", "amount"}),
        ("has(args.cc) && args.cc.exists(c, c.endsWith('.example'))", {"cc"}),
        ("args.to.lowerAscii() == 'x' || agent == 'a'", {"to"}),
        ("'cc' in args", None),
        ("size(args) > 3", None),
        ("args.exists(k, k == 'x')", None),
        ("args[action.tool] == 1", None),
        ("args.size() > 1", None),
        ("agent == 'a'", frozenset()),
    ],
)
def test_the_fields_a_condition_reads_are_found_from_its_source(source: str, fields: set[str] | None) -> None:
    assert argument_fields(source) == (None if fields is None else frozenset(fields))


def test_a_condition_naming_fields_converts_only_those() -> None:
    arguments = _padded(amount=150, to="acct-9")
    activation = _activation(arguments)
    assert activation.evaluate(compile_condition("args.amount > 100")) is True
    assert activation.evaluate(compile_condition('args["to"] == "acct-9"')) is True
    assert arguments.read == {"amount", "to"}
    assert not arguments.walked


def test_fields_named_by_a_later_condition_are_added_to_the_context() -> None:
    activation = _activation(_padded(amount=150, currency="EUR"))
    assert activation.evaluate(compile_condition("args.amount > 100")) is True
    # The context held `amount` alone; `currency` is added, `amount` kept.
    assert activation.evaluate(compile_condition("args.currency == 'EUR' && args.amount == 150")) is True
    assert activation.evaluate(compile_condition("has(args.missing)")) is False
    assert isinstance(activation.evaluate(compile_condition("args.missing == 1")), str)  # no such key: denies


def test_a_condition_reading_the_whole_map_still_sees_every_field() -> None:
    arguments = _padded(amount=150)
    activation = _activation(arguments)
    assert activation.evaluate(compile_condition("args.amount > 100")) is True
    assert activation.evaluate(compile_condition("'pad-9999' in args && size(args) == 10001")) is True
    assert arguments.walked
    # Once whole, a later condition naming one field reads it from there.
    assert activation.evaluate(compile_condition("args['pad-3'] == 3")) is True
