"""An account nothing in the workflow showed (`_unseen`, `reference/0.14`)."""

from __future__ import annotations

import pytest
from fixtures.scoring import score_call

from bastion.v1 import verifier_pb2
from bastion.verifier._unseen import unseen_signal

TASK = "Pay the Amberglass invoice AG-2291."


def test_a_payment_to_an_unseen_iban_is_blocked_with_its_reason() -> None:
    scored = score_call(
        "bank__transfer", {"iban": "IE73BOFI02143297406938", "amount": 318.4}, ["unseen:iban"], TASK, argument_weight=0
    )
    assert scored.verdict == verifier_pb2.BLOCK
    assert scored.reasons[0] == (
        "an account nothing in the workflow showed: 'iban' is an IBAN neither the task nor any result holds "
        "(weight 0.80)"
    )


def test_without_a_task_what_the_user_said_is_not_known() -> None:
    assert unseen_signal("bank__transfer", ["unseen:iban"], "", 0.8) == (0.0, "")
    assert unseen_signal("bank__transfer", ["unseen:iban"], "   ", 0.8) == (0.0, "")


@pytest.mark.parametrize(
    "labels", [[], ["unseen:"], ["unseen:a:b"], ["unseenx:iban"], ["arg:iban:untrusted:x:y:field:1.00"]]
)
def test_no_or_malformed_labels_fire_nothing(labels: list[str]) -> None:
    assert unseen_signal("bank__transfer", labels, TASK, 0.8) == (0.0, "")


def test_an_escaped_path_is_shown_as_written_and_weight_zero_is_off() -> None:
    weight, reason = unseen_signal("bank__transfer", ["unseen:to%3Aiban"], TASK, 0.8)
    assert weight == 0.8
    assert "'to:iban'" in reason
    assert unseen_signal("bank__transfer", ["unseen:iban"], TASK, 0.0) == (0.0, "")


@pytest.mark.parametrize("tool", ["email__send_email", "files__write_file", "files__move_file"])
def test_an_iban_in_what_the_user_writes_or_sends_is_their_own(tool: str) -> None:
    # An invoice the user issues holds their own account, which no result shows.
    assert unseen_signal(tool, ["unseen:content"], TASK, 0.8) == (0.0, "")
    assert unseen_signal("bank__update_payee", ["unseen:iban"], TASK, 0.8)[0] == 0.8
