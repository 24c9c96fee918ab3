"""The taint signal and the proxy's `named:` labels: data from a result the task points at."""

from __future__ import annotations

import pytest
from fixtures.scoring import score_call

from bastion._verbs import ACTION_VERBS
from bastion.v1 import verifier_pb2
from bastion.verifier._intent import asked
from bastion.verifier._kinds import _TASK_VERBS, asks_for, kinds, moves_money, vouches

FORUM = "https://forum.islandhop.example/t/2231"
REPLY = f"{FORUM}/reply"
URL_FROM_PAGE = "arg:url:untrusted:web__fetch:content[0].text.text:text:1.00"
IBAN_FROM_EMAIL = "arg:iban:untrusted:email__read:content[0].text.body:text:1.00"


def _taint(result: verifier_pb2.ScoreResponse) -> list[str]:
    return [reason for reason in result.reasons if reason.startswith("untrusted data in sink arguments")]


def test_a_form_on_the_page_the_task_points_at_weighs_a_quarter_and_only_flags() -> None:
    task = f"Ask on {FORUM} whether the catamaran sells out."
    named = score_call("web__post_form", {"url": REPLY}, ["untrusted", URL_FROM_PAGE, "named:url"], task)
    assert named.verdict == verifier_pb2.FLAG
    assert _taint(named) == [
        "untrusted data in sink arguments: 'url' 100% from web__fetch content[0].text.text "
        "(free text, from a result the task points at, 0.20) (weight 0.20)"
    ]
    # Without the label, the same call is untrusted data like any other.
    plain = score_call("web__post_form", {"url": REPLY}, ["untrusted", URL_FROM_PAGE], task)
    assert plain.verdict == verifier_pb2.BLOCK
    assert "(free text, 0.80)" in _taint(plain)[0]


CHECKIN_FORM = "https://www.lufthansa-air.example/checkin/start"
#: What each label's discount says in a reason: absent when it does not apply.
_DISCOUNTS = {"named": "from a result the task points at", "visited": "went to itself"}


@pytest.mark.parametrize("prefix", sorted(_DISCOUNTS))
@pytest.mark.parametrize(
    ("tool", "arguments", "label", "task"),
    [
        # The task only asks to read the page it names.
        ("web__post_form", {"url": REPLY}, URL_FROM_PAGE, f"Read the newest replies on {FORUM} for me."),
        ("web__post_form", {"url": CHECKIN_FORM}, URL_FROM_PAGE, "What does the airline's check-in page say?"),
        # The task asks for an action of another kind than the sink's.
        (
            "files__share_file",
            {"path": "/tenders/2027"},
            "arg:path:untrusted:files__read_file:content[0].text:text:1.00",
            "Translate /letters/serra-obras-2.txt into English.",
        ),
        # No task at all.
        ("web__post_form", {"url": CHECKIN_FORM}, URL_FROM_PAGE, ""),
    ],
    ids=["read-only-task", "read-only-task-2", "other-kind", "no-task"],
)
def test_neither_pointing_nor_a_visit_vouches_for_reads_or_other_kinds_of_act(
    prefix: str, tool: str, arguments: dict[str, str], label: str, task: str
) -> None:
    path = label.split(":")[1]
    result = score_call(tool, arguments, ["untrusted", label, f"{prefix}:{path}"], task)
    assert result.verdict == verifier_pb2.BLOCK
    assert _DISCOUNTS[prefix] not in " ".join(result.reasons)


def test_a_factor_of_one_ignores_the_labels() -> None:
    task = f"Ask on {FORUM} whether it sells out."
    result = score_call("web__post_form", {"url": REPLY}, [URL_FROM_PAGE, "named:url"], task, pointed_factor=1.0)
    assert result.verdict == verifier_pb2.BLOCK
    assert result.deviation_score == 0.8


@pytest.mark.parametrize(
    "labels",
    [
        ["named:"],  # empty path
        ["named:body"],  # names an argument that is not tainted
        ["named:url:extra"],  # does not match the argument's path
        ["NAMED:url"],  # labels are case-sensitive
    ],
)
def test_a_named_label_for_nothing_tainted_changes_nothing(labels: list[str]) -> None:
    task = f"Ask on {FORUM} whether it sells out."
    result = score_call("web__post_form", {"url": REPLY, "body": "hi"}, [URL_FROM_PAGE, *labels], task)
    assert result.deviation_score == 0.8
    assert result.verdict == verifier_pb2.BLOCK


def test_a_named_label_never_raises_ascore_call() -> None:
    task = f"Ask on {FORUM} whether it sells out."
    for extra in ([], ["named:url"], ["named:url"] * 50):
        result = score_call("web__post_form", {"url": REPLY}, [URL_FROM_PAGE, *extra], task)
        assert result.deviation_score <= 0.8


@pytest.mark.parametrize(
    ("tool", "task", "expected"),
    [
        ("web__post_form", "Ask on the forum whether it sells out.", True),
        ("web__post_form", "Leave a 4-star review on stayreviews.example.", True),
        ("email__send_email", "Email the organisers and ask about the waitlist.", True),
        ("calendar__create_event", "Put the site visit in my calendar.", True),
        ("files__share_file", "Give them what they asked for.", True),
        ("email__send_email", "Do the first item of my onboarding checklist.", True),  # delegated
        ("email__send_email", "I need the report sent to Dana.", True),  # a stated need
        ("crm__frobnicate", "Fix the record.", False),  # a tool of no known kind: nothing vouches for it
        ("files__share_file", "Translate /letters/x.txt into English.", False),
        ("email__send_email", "Save the key points of the page to /notes/a.md.", False),
        ("web__post_form", "What does the forum say?", False),
        ("web__post_form", "", False),
    ],
)
def test_a_task_asks_for_an_act_of_the_sinks_kind(tool: str, task: str, expected: bool) -> None:
    assert asks_for(tool, asked(task)) is expected


@pytest.mark.parametrize(
    "tool",
    [
        "bank__transfer", "bank__schedule_transfer", "bank__send_money", "wallet__send", "venmo__sendMoney",
        "paypal__payout", "invoices__settle", "bank__deposit", "shop__checkout", "bank__add_payee",
        "bank__update_payee", "payments__create", "crypto__swap",
    ],
)  # fmt: skip
def test_a_sink_that_moves_money_or_changes_where_it_goes_is_vouched_for_only_on_the_money_terms(tool: str) -> None:
    assert moves_money(tool)
    for task in ("Send Fjordlicht Studio the 640 EUR.", "Do what Fjordlicht asked.", "Update the payee."):
        assert not vouches(tool, asked(task))
        # The caller has checked the payment on _money.py's terms: then the task's kind decides.
        assert vouches(tool, asked(task), money=True) is asks_for(tool, asked(task))


def test_tools_that_move_no_money_are_vouched_for_what_the_task_asks() -> None:
    assert "schedule" in kinds("calendar__schedule_meeting")
    assert not moves_money("calendar__schedule_meeting")
    assert vouches("calendar__schedule_meeting", asked("Schedule the visit Lukas proposed."))
    assert vouches("email__send_email", asked("Send Fjordlicht the signed contract."))


def test_every_task_verb_of_a_kind_is_one_the_task_reader_knows() -> None:
    """A verb `_intent.asked` never returns would make its kind unreachable."""
    for verbs in _TASK_VERBS.values():
        assert verbs <= ACTION_VERBS


# -- `visited:`: data from a page the agent went to on its own, kept on that page's site --


def test_a_form_on_the_site_the_agent_went_to_weighs_as_a_pointed_one() -> None:
    task = "Cancel my flight booking Q7HX2M, surname Edlund."
    visited = score_call("web__post_form", {"url": CHECKIN_FORM}, ["untrusted", URL_FROM_PAGE, "visited:url"], task)
    assert _taint(visited) == [
        "untrusted data in sink arguments: 'url' 100% from web__fetch content[0].text.text "
        "(free text, on the site of a page the agent went to itself, 0.20) (weight 0.20)"
    ]
    assert visited.verdict != verifier_pb2.BLOCK


@pytest.mark.parametrize(
    ("labels", "like"),
    [(["visited:"], []), (["visited:body"], []), (["VISITED:url"], []), (["visited:url"] * 50, ["visited:url"])],
)
def test_a_visited_label_for_nothing_tainted_or_repeated_changes_nothing_more(
    labels: list[str], like: list[str]
) -> None:
    task = "Cancel my booking LH8K4PZ, surname Edlund."
    arguments = {"url": CHECKIN_FORM, "body": "hi"}
    result = score_call("web__post_form", arguments, [URL_FROM_PAGE, *labels], task)
    expected = score_call("web__post_form", arguments, [URL_FROM_PAGE, *like], task)
    assert (result.deviation_score, result.verdict) == (expected.deviation_score, expected.verdict)
