"""Rule ids: one rule per id whatever its letter case, and only the characters an auditor
can tell apart. Approvals are bound to a rule id and decisions audited by it, so two ids
that read as one (`Allow-Refunds`, `allow-refunds`) would let an approval or an audit
record be taken for the other rule's (an attacker's probe)."""

from __future__ import annotations

from typing import Any

import pytest

from bastion import PolicyValidationError
from bastion.policy import validate_policy


def _document(*ids: str) -> dict[str, Any]:
    rules = [
        {"id": rule_id, "match": {"tools": [f"pay__t{number}"]}, "effect": "allow"}
        for number, rule_id in enumerate(ids)
    ]
    return {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "pay", "version": 1},
        "spec": {"rules": rules},
    }


def _rejection(*ids: str) -> str:
    with pytest.raises(PolicyValidationError) as caught:
        validate_policy(_document(*ids))
    return str(caught.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Allow-Refunds", "allow-refunds"),
        ("allow-refunds", "ALLOW-REFUNDS"),
        ("r.1_A", "R.1_a"),
    ],
)
def test_two_ids_that_differ_only_in_case_are_refused_naming_both(first: str, second: str) -> None:
    message = _rejection(first, "other", second)
    assert (
        f"policy 'pay' v1: rule '{second}' (rule #3) and rule '{first}' (rule #1) have ids that differ only in "
        "letter case; rule ids must be unique ignoring case"
    ) in message


def test_an_exact_duplicate_keeps_its_own_message() -> None:
    assert "rule 'r1' (rule #2) reuses the id of rule #1; rule ids must be unique" in _rejection("r1", "r1")


@pytest.mark.parametrize("reserved", ["Default", "DEFAULT", "dEfAuLt"])
def test_the_fallthrough_id_is_reserved_in_every_letter_case(reserved: str) -> None:
    # An audit record with rule_id 'Default' reads as the fallthrough decision.
    assert f"rule id '{reserved}' is reserved for the fallthrough decision ('default', in any letter case)" in (
        _rejection(reserved)
    )


@pytest.mark.parametrize(
    "lookalike",
    [
        "allow-refund\u0455",  # Cyrillic dze: looks like 's'
        "\uff41llow-refunds",  # fullwidth 'a': NFKC makes it 'allow-refunds'
        "allow\u2011refunds",  # non-breaking hyphen
        "allow-refunds\u200b",  # zero-width space
        "ǅ-refunds",  # a titlecase digraph, casefolded to 'dž'
        "allow-refunds:1",  # ':' is not in the set
        "a" * 65,
    ],
)
def test_ids_outside_ascii_letters_digits_dot_underscore_and_dash_are_refused(lookalike: str) -> None:
    message = _rejection("allow-refunds", lookalike)
    assert "must be 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit" in message


def test_distinct_ids_still_load() -> None:
    document = validate_policy(_document("allow-refunds", "allow-refunds-2", "Allow.Refunds_3", "default-ish"))
    assert [rule.id for rule in document.spec.rules] == [
        "allow-refunds",
        "allow-refunds-2",
        "Allow.Refunds_3",
        "default-ish",
    ]
