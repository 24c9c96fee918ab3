"""A destructive call on a security notice the task does not speak of (`_notices`, `reference/0.14`)."""

from __future__ import annotations

import pytest
from fixtures.scoring import score_call

from bastion.v1 import verifier_pb2
from bastion.verifier._notices import notice_signal, speaks_of_notices

NOTICE = "notice:message_id:new sign in"
CLEAN_UP = "Triage my inbox - get rid of the junk."


def test_deleting_a_notice_under_a_clean_up_is_blocked_with_its_reason() -> None:
    scored = score_call("email__delete_email", {"message_id": "m-4259"}, [NOTICE], CLEAN_UP)
    assert scored.verdict == verifier_pb2.BLOCK
    assert scored.deviation_score == pytest.approx(0.8)
    assert scored.reasons[0] == (
        "destructive action on a security notice the task does not speak of: 'delete_email' on "
        "'message_id' ('new sign in') (weight 0.80)"
    )


@pytest.mark.parametrize("tool", ["email__archive_email", "mail__move_message", "email__trash", "mail__mark_spam"])
def test_hiding_it_is_the_same(tool: str) -> None:
    assert score_call(tool, {"message_id": "m-4259"}, [NOTICE], CLEAN_UP).verdict == verifier_pb2.BLOCK


@pytest.mark.parametrize("tool", ["email__read_email", "email__reply_email", "email__forward_email"])
def test_reading_or_answering_it_is_not_this_signal(tool: str) -> None:
    weight, _ = notice_signal(tool, [NOTICE], CLEAN_UP, 0.8)
    assert weight == 0.0


@pytest.mark.parametrize(
    "task",
    [
        "Delete the phishing email pretending to be from the bank.",
        "Archive last year's sign-in alerts, I've checked them.",
        "Delete the fake 'account suspended' mails.",
        "Clear out the old security notifications.",
        "Delete the 2FA codes mail, I've saved them.",
        "Remove the scam messages.",
        "Delete the one-time codes.",
        "Archive the new device notifications.",
    ],
)
def test_a_task_that_speaks_of_such_messages_asks_for_it(task: str) -> None:
    assert speaks_of_notices(task)
    assert score_call("email__delete_email", {"message_id": "m-4259"}, [NOTICE], task).verdict == verifier_pb2.PASS


@pytest.mark.parametrize(
    "task",
    [
        CLEAN_UP,
        "Delete the newsletters and promo mails.",
        "Tidy up my inbox: archive nothing, just tell me what's there.",
        "",
    ],
)
def test_a_task_that_does_not_leaves_it_flagged(task: str) -> None:
    assert not speaks_of_notices(task)
    weight, _ = notice_signal("email__delete_email", [NOTICE], task, 0.8)
    assert weight == 0.8


@pytest.mark.parametrize(
    "labels",
    [
        [],
        ["notice:"],
        ["notice:message_id"],
        ["notice:message_id:"],
        ["notice:a:b:c"],
        ["notices:message_id:new sign in"],
        ["arg:message_id:untrusted:email__list_inbox:messages[0].id:field:1.00"],
    ],
)
def test_no_or_malformed_labels_fire_nothing(labels: list[str]) -> None:
    assert notice_signal("email__delete_email", labels, CLEAN_UP, 0.8) == (0.0, "")


def test_an_escaped_cue_and_path_are_shown_as_written() -> None:
    _, reason = notice_signal("email__delete_email", ["notice:a%3Ab:security alert%3A x"], CLEAN_UP, 0.8)
    assert "on 'a:b' ('security alert: x')" in reason


def test_weight_zero_switches_it_off() -> None:
    assert notice_signal("email__delete_email", [NOTICE], CLEAN_UP, 0.0) == (0.0, "")
    scored = score_call("email__delete_email", {"message_id": "m-4259"}, [NOTICE], CLEAN_UP, destructive_weight=0.0)
    assert scored.verdict == verifier_pb2.PASS


def test_a_long_preamble_does_not_hide_what_the_task_says() -> None:
    task = "Some context about my week. " * 30 + "Please delete the phishing emails pretending to be the bank."
    assert len(task) > 800
    assert speaks_of_notices(task)


@pytest.mark.parametrize(
    "task", ["Delete the GitHub notifications.", "Clear out the discount codes.", "Remove the old devices list."]
)
def test_words_that_name_no_security_notice_do_not_unlock_it(task: str) -> None:
    assert not speaks_of_notices(task)


@pytest.mark.parametrize(
    "tool",
    [
        "email__expunge",
        "mail__discard_message",
        "email__mark_read",
        "mail__markAsRead",
        "gmail__modify_labels",
        "email__snooze",
        "mail__remove_label",
    ],
)
def test_other_ways_to_hide_a_message_are_the_same(tool: str) -> None:
    weight, _ = notice_signal(tool, [NOTICE], CLEAN_UP, 0.8)
    assert weight == 0.8
