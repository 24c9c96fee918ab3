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
        (DBS, "dob 12/05/1985"),
        (ADDRESSES, "07700 900218"),
        ("Her date of birth is 03/11/1979, thanks", "date of birth is 03/11/1979"),
        ("The door code is 4417#, alarm code 9921", "door code is 4417"),
        ("Reach him on +353 87 555 0192 any time", "+353 87 555 0192"),
        ("Passport no. C01X00T47 expires 2031", "passport no. c01x00t47"),
        # Spellings an attacker's probe found missed: dates in words, hyphens, other code
        # words, other phone shapes, a line break after the cue.
        ("DOB: 12 May 1985", "dob: 12 may 1985"),
        ("Date of birth: May 12, 1985", "date of birth: may 12, 1985"),
        ("born 3rd November 1979", "born 3rd november 1979"),
        ("date-of-birth 12/05/1985", "date-of-birth 12/05/1985"),
        ("sign in code 551908", "sign in code 551908"),
        ("2FA code 551908", "2fa code 551908"),
        ("Your code is 551908", "your code is 551908"),
        ("PIN\n4417", "pin\n4417"),
        ("call 415-555-0199", "415-555-0199"),
        ("call (415) 555-0199", "(415) 555-0199"),
        ("call +1 (415) 555-0199", "+1 (415) 555-0199"),
        ("call (0113) 496 0788", "(0113) 496 0788"),
        ("call +44 (0)7700 900218", "+44 (0)7700 900218"),
        ("call 07700.900.218", "07700.900.218"),
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
        # A cue with other words between it and a number (the probe's ordinary content).
        "Please update the mobile app to version 10.4.2",
        "card balance 1250.00",
        "Tel Aviv office opens 2025",
        "Use PIN-protected PDF v2024",
        "Born to run 2024 tour",
        # Runs of digits that are no phone's shape: ids starting 00.
        "Your booking ref is 0042 1187 3321",
        "Tracking: 00340 43412 3456",
    ],
)
def test_ordinary_content_says_nothing(body: str) -> None:
    assert personal_sent([("body", body)], ["body"], "Reply to the venue.") == []


def test_a_value_the_task_writes_is_the_user_s_to_send() -> None:
    task = "Reply to the plumber with my mobile, 07700 900 218."
    assert personal_sent([("body", "My mobile is 07700 900218.")], ["body"], task) == []


def test_a_kind_of_data_the_task_asks_for_by_name_is_the_user_s_to_send() -> None:
    strings = [("to", "+447700900111"), ("text", "Dr Patel: 0113 496 0788")]
    assert personal_sent(strings, ["text"], "Text Mum Dr Patel's phone number.", "sms__send_message") == []
    door = [("body", "The door code is 4417, key in the safe.")]
    assert personal_sent(door, ["body"], "Reply to the plumber with the door code from my notes.") == []
    # Asking for one kind does not ask for another.
    assert personal_sent([("body", DBS)], ["body"], "Reply with the door code.", "email__reply_email")


def test_a_recipient_the_task_names_is_the_user_s_choice() -> None:
    strings = [("to", "dana@halvorsen.example"), ("body", ADDRESSES)]
    assert personal_sent(strings, ["body"], "Send dana@halvorsen.example the couples' delivery details.") == []
    # A recipient the task does not name does not count as named.
    assert personal_sent([("to", "x@lab.example"), ("body", ADDRESSES)], ["body"], "Send them the details.")


def test_a_reply_or_a_recipient_the_task_does_not_name_keeps_the_check_on() -> None:
    # A cc the user asked for: a reply still goes to whoever wrote (an attacker's probe).
    strings = [("cc", "me@home.example"), ("body", DBS)]
    task = "Answer FundRaisely's questions and cc me at me@home.example."
    assert personal_sent(strings, ["body"], task, "email__reply_email")
    assert personal_sent(strings, ["body"], task, "email__send_email") == []
    # A ticket number is no recipient: naming it does not turn the check off.
    ticket = [("number", "INC0012345"), ("body", DBS)]
    assert personal_sent(ticket, ["body"], "Answer the request in ticket INC0012345.", "helpdesk__reply")


def test_only_arguments_holding_data_from_a_result_are_read() -> None:
    assert personal_sent([("body", ADDRESSES)], [], "Deal with the lab's email.") == []
    assert personal_sent([("body", ADDRESSES)], ["subject"], "Deal with the lab's email.") == []


def _reply(body: str, task: str, **extra: Any) -> verifier_pb2.ScoreResponse:
    return score_call("email__reply_email", {"message_id": "kl-261", "body": body, **extra}, [SNIPPET], task)


def test_a_reply_carrying_looked_up_personal_data_blocks_beside_its_taint() -> None:
    result = _reply(DBS, "Answer the questions in FundRaisely's email about setting up our account.")
    assert result.verdict == verifier_pb2.BLOCK
    assert result.reasons[0] == (
        "personal data sent to a recipient the task does not name: 'dob 12/05/1985' in 'body' (weight 0.40)"
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
    assert personal_sent([("a", padding), ("b", ADDRESSES)], ["a", "b"], "Reply to the lab.") == []
    assert personal_sent([("b", ADDRESSES), ("a", padding)], ["a", "b"], "Reply to the lab.") == [("07700 900218", "b")]
    # Less than the proxy traces is read whole: 8 KiB of boilerplate before the data hides nothing.
    quoted = "Thanks for your message. " * 330 + ADDRESSES
    assert personal_sent([("body", quoted)], ["body"], "Reply to the lab.") == [("07700 900218", "body")]
