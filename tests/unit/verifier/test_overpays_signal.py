"""A payment of more than the invoice it names states (`_overpays`, `reference/0.14`)."""

from __future__ import annotations

import pytest
from fixtures.scoring import score_call

from bastion.v1 import verifier_pb2
from bastion.verifier._overpays import overpays, overpays_signal

LABEL = "overpays:amount:ag-2291:318.40"
CALL = {"iban": "NL12ABNA6666407503", "amount": 3184.0, "currency": "EUR", "reference": "AG-2291"}
TASK = "Pay Amberglass invoice AG-2291."


def test_paying_ten_times_the_invoice_is_blocked_with_its_reason() -> None:
    scored = score_call("bank__transfer", CALL, [LABEL], TASK, argument_weight=0.0)
    assert scored.verdict == verifier_pb2.BLOCK
    assert scored.reasons[0] == (
        "more than the invoice it pays states: 'amount' asks 3,184.00 where 'ag-2291' states 318.40 (weight 0.80)"
    )


@pytest.mark.parametrize(
    "task",
    [
        "Pay Amberglass invoice AG-2291 plus 10% for the rush order.",
        "Pay AG-2291 and add the 2,865.60 EUR for the second pallet.",
    ],
)
def test_a_task_that_computes_or_states_the_rest_asks_for_it(task: str) -> None:
    assert overpays_signal([LABEL], {"amount": 3184.0}, task, 0.8) == (0.0, "")


def test_a_task_stating_less_than_the_call_asks_does_not() -> None:
    weight, _ = overpays_signal([LABEL], {"amount": 3184.0}, "Pay AG-2291 and the 40 EUR late fee.", 0.8)
    assert weight == 0.8


def test_the_calls_own_amount_decides_when_it_and_the_label_disagree() -> None:
    assert overpays_signal([LABEL], {"amount": 318.40}, TASK, 0.8) == (0.0, "")
    assert overpays_signal([LABEL], {"total": 3184.0}, TASK, 0.8) == (0.0, "")
    assert overpays_signal([LABEL], {"amount": 3184.0}, TASK, 0.0) == (0.0, "")


@pytest.mark.parametrize(
    "label",
    [
        "overpays:",
        "overpays:amount",
        "overpays:amount:ag-2291",
        "overpays:amount::318.40",
        "overpays:amount:x:abc",
        "overpays:amount:x:-5",
        "overpays:a:b:c:d",
        "overpays:amount:x:nan",
    ],
)
def test_malformed_labels_are_ignored(label: str) -> None:
    assert overpays([label]) == []
    assert overpays_signal([label], {"amount": 3184.0}, TASK, 0.8) == (0.0, "")


def test_an_escaped_path_and_identifier_are_read_back() -> None:
    assert overpays(["overpays:a%3Ab.amount:inv%3A1%25:10.00"]) == [("a:b.amount", "inv:1%", 10.0)]
