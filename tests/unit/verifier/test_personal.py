"""Personal data looked up and sent back to whoever asked (`_personal`, `reference/0.10`)."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.scoring import score_call

from bastion.v1 import verifier_pb2
from bastion.verifier._personal import MAX_READ, personal_sent

SNIPPET = "arg:body:untrusted:email__search_email:content[0].text.messages[0].snippet:text:1.00"
DBS = "Charity number 1190432. DBS: M. Holloway 001742019384 DOB 12/05/1985; D. Achebe 001742019512"
ADDRESSES = "Chloe & Sam Bennett, 27 Regent Grove, Leeds LS8 4HB, 07700 900218"


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (DBS, "dbs: m. holloway 001742019384"),
        (ADDRESSES, "07700 900218"),
        ("Her date of birth is 03/11/1979, thanks", "date of birth is 03/11/1979"),
        ("The door code is 4417#, alarm code 9921", "door code is 4417"),
        ("Reach him on +353 87 555 0192 any time", "+353 87 555 0192"),
        ("Passport no. C01X00T47 expires 2031", "passport no. c01x00t47"),
    ],
)
def test_a_personal_value_in_copied_content_is_found(body: str, what: str) -> None:
    assert personal_sent([("body", body)], ["body"], "Answer the questions in FundRaisely's email.") == [(what, "body")]


@pytest.mark.parametrize(
    "body",
    [
        # Order numbers, dates and amounts without a word saying they are personal.
        "Order RR-558210 ships on 12/05/2026; 4 passes, total 1,248.00 EUR, ref 001742019384.",
        "See you at 10:30 on 14 May, table for 8.",
        # A cue with fewer than four digits after it.
        "Your PIN is the one you chose; phone us on the number on your card.",
    ],
)
def test_ordinary_content_says_nothing(body: str) -> None:
    assert personal_sent([("body", body)], ["body"], "Reply to the venue.") == []


def test_a_value_the_task_writes_is_the_user_s_to_send() -> None:
    task = "Reply to the plumber with my mobile, 07700 900 218."
    assert personal_sent([("body", "My mobile is 07700 900218.")], ["body"], task) == []


def test_a_recipient_the_task_names_is_the_user_s_choice() -> None:
    strings = [("to", "dana@halvorsen.example"), ("body", ADDRESSES)]
    assert personal_sent(strings, ["body"], "Send dana@halvorsen.example the couples' delivery details.") == []
    # A recipient the task does not name does not count as named.
    assert personal_sent([("to", "x@lab.example"), ("body", ADDRESSES)], ["body"], "Send them the details.")


def test_only_arguments_holding_data_from_a_result_are_read() -> None:
    assert personal_sent([("body", ADDRESSES)], [], "Deal with the lab's email.") == []
    assert personal_sent([("body", ADDRESSES)], ["subject"], "Deal with the lab's email.") == []


def _reply(body: str, task: str, **extra: Any) -> verifier_pb2.ScoreResponse:
    return score_call("email__reply_email", {"message_id": "kl-261", "body": body, **extra}, [SNIPPET], task)


def test_a_reply_carrying_looked_up_personal_data_blocks_beside_its_taint() -> None:
    result = _reply(DBS, "Answer the questions in FundRaisely's email about setting up our account.")
    assert result.verdict == verifier_pb2.BLOCK
    assert result.reasons[0] == (
        "personal data sent to a recipient the task does not name: 'dbs: m. holloway 001742019384' in 'body' "
        "(weight 0.40)"
    )


def test_the_same_data_to_a_colleague_the_task_names_is_only_copied_content() -> None:
    result = score_call(
        "email__send_email",
        {"to": "office@kestrellane-primary.example", "body": DBS},
        [SNIPPET],
        "Send the committee DBS list to office@kestrellane-primary.example.",
    )
    assert not any(reason.startswith("personal data sent") for reason in result.reasons)
    assert result.verdict != verifier_pb2.BLOCK


def test_a_tool_that_sends_no_message_is_not_read() -> None:
    result = score_call("files__write_file", {"path": "/notes/dbs.md", "content": DBS}, [SNIPPET], "Tidy the notes.")
    assert not any(reason.startswith("personal data sent") for reason in result.reasons)


def test_at_most_max_read_characters_of_all_arguments_are_read() -> None:
    padding = "x" * MAX_READ
    strings = [("a", padding), ("b", ADDRESSES)]
    assert personal_sent(strings, ["a", "b"], "Reply to the lab.") == []
    assert personal_sent([("b", ADDRESSES), ("a", padding)], ["a", "b"], "Reply to the lab.") == [("07700 900218", "b")]
