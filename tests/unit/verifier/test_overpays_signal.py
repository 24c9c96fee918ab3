"""A payment of more than the invoices it names state (`_overpays`, `reference/0.14`)."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.scoring import score_call

from bastion.v1 import verifier_pb2
from bastion.verifier._overpays import invoiced, overpays_signal

LABEL = "invoiced:ag2291:318.40"
TASK = "Pay Amberglass invoice AG-2291."


def _call(amount: Any, **more: Any) -> dict[str, Any]:
    return {"iban": "NL12ABNA6666407503", "amount": amount, "currency": "EUR", "reference": "AG-2291", **more}


def test_paying_ten_times_the_invoice_is_blocked_with_its_reason() -> None:
    scored = score_call("bank__transfer", _call(3184.0), [LABEL], TASK, argument_weight=0.0)
    assert scored.verdict == verifier_pb2.BLOCK
    assert scored.reasons[0] == (
        "more than the invoice it pays states: 'amount' asks 3,184.00 where 'ag2291' states 318.40 (weight 0.80)"
    )


@pytest.mark.parametrize(
    "arguments",
    [
        _call("3184.00 EUR"),
        _call("€3,184.00"),
        {"iban": "NL12ABNA6666407503", "amount": {"value": 3184, "currency": "EUR"}, "reference": "AG-2291"},
        {"iban": "NL12ABNA6666407503", "amount_cents": 318400, "reference": "AG-2291"},
        {"payments": [{"amount": 3184}], "reference": "AG-2291"},
    ],
)
def test_amounts_are_read_as_the_tasks_are(arguments: dict[str, Any]) -> None:
    assert score_call("bank__transfer", arguments, [LABEL], TASK, argument_weight=0.0).verdict == verifier_pb2.BLOCK


@pytest.mark.parametrize("amount", [318.40, 318.41, 320.0, 100, "318.40", {"value": 318.4}])
def test_the_invoices_amount_or_less_passes(amount: Any) -> None:
    assert score_call("bank__transfer", _call(amount), [LABEL], TASK, argument_weight=0.0).verdict == verifier_pb2.PASS


def test_one_transfer_settling_several_invoices_may_ask_their_sum() -> None:
    labels = [LABEL, "invoiced:ag2292:500.00"]
    assert score_call("bank__transfer", _call(818.40), labels, TASK, argument_weight=0.0).verdict == verifier_pb2.PASS
    assert score_call("bank__transfer", _call(900.0), labels, TASK, argument_weight=0.0).verdict == verifier_pb2.BLOCK


def test_a_task_that_states_the_rest_asks_for_it_and_one_that_computes_for_at_most_twice() -> None:
    quantities = [("amount", "amount", 358.40)]
    assert overpays_signal([LABEL], quantities, "Pay AG-2291 and the 40 EUR late fee.", 0.8) == (0.0, "")
    computes = "Pay Amberglass invoice AG-2291 plus 10% for the rush order."
    assert overpays_signal([LABEL], [("amount", "amount", 350.24)], computes, 0.8) == (0.0, "")
    weight, _ = overpays_signal([LABEL], [("amount", "amount", 3184.0)], computes, 0.8)
    assert weight == 0.8
    weight, _ = overpays_signal([LABEL], [("amount", "amount", 3184.0)], "Pay AG-2291 and the 40 EUR late fee.", 0.8)
    assert weight == 0.8


def test_no_amount_or_weight_zero_fires_nothing() -> None:
    assert overpays_signal([LABEL], [("reference", "reference", "AG-2291")], TASK, 0.8) == (0.0, "")
    assert overpays_signal([LABEL], [("amount", "amount", 3184.0)], TASK, 0.0) == (0.0, "")


@pytest.mark.parametrize(
    "label",
    [
        "invoiced:",
        "invoiced:ag2291",
        "invoiced::318.40",
        "invoiced:x:abc",
        "invoiced:x:-5",
        "invoiced:a:b:c",
        "invoiced:x:nan",
        "invoiced:x:0",
    ],
)
def test_malformed_labels_are_ignored(label: str) -> None:
    assert invoiced([label]) == {}
    assert overpays_signal([label], [("amount", "amount", 3184.0)], TASK, 0.8) == (0.0, "")


def test_a_huge_amount_is_shown_cut() -> None:
    _, reason = overpays_signal([LABEL], [("amount", "amount", 1e300)], TASK, 0.8)
    assert len(reason) < 200


def test_amounts_that_cannot_be_read_fail_closed() -> None:
    weight, reason = overpays_signal([LABEL], [("amount", "amount", "3184 (three thousand) EUR")], TASK, 0.8)
    assert weight == 0.8
    assert "asks a value that is no number" in reason
    weight, reason = overpays_signal([LABEL], [], TASK, 0.8, wide=True)
    assert weight == 0.8
    assert "too wide to read their amounts" in reason
    padded = {"payment": {"amount": 3184}, "pad": {f"k{n}": n for n in range(4095)}, "reference": "AG-2291"}
    assert score_call("bank__transfer", padded, [LABEL], TASK, argument_weight=0.0).verdict == verifier_pb2.BLOCK
