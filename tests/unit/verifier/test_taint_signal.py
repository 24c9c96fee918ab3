"""The reference scorer's taint signal: untrusted data in a sink's arguments, from the proxy's labels."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.v1 import policy_pb2, verifier_pb2
from bastion.verifier import ReferenceScorer, ScorerConfig
from bastion.verifier._taint import is_sink, parse

# Sequence and intent off: this file is about taint alone (test_sequence_signal.py covers
# sequence, test_intent.py intent).
SCORER = ReferenceScorer(ScorerConfig(sequence_weight=0.0, intent_weight=0.0, destructive_weight=0.0))
READ = verifier_pb2.HistoryNode(
    node_id="n-read", kind=policy_pb2.TOOL_CALL, server="email", tool="read", effect=policy_pb2.ALLOW
)
BODY = "arg:iban:untrusted:email__read:content[0].text:text:1.00"


def _score(tool: str, taint: list[str], arguments: Any = None, task: str = "") -> verifier_pb2.ScoreResponse:
    server, _, name = tool.partition("__")
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=name)
    action.arguments.update(arguments or {"iban": "DE89370400440532013000"})
    # The tool itself is familiar, so only the taint signal can fire.
    seen = verifier_pb2.HistoryNode(
        node_id="n-0", kind=policy_pb2.TOOL_CALL, server=server, tool=name, effect=policy_pb2.ALLOW
    )
    return SCORER.score(
        verifier_pb2.ScoreRequest(
            action=action,
            ctx=policy_pb2.Context(task=task, taint=taint),
            history=[seen, READ],
        )
    )


def test_a_sink_argument_copied_from_an_untrusted_email_body_blocks_with_its_weight() -> None:
    result = _score("bank__transfer", ["untrusted", "source:email__read", BODY])
    assert result.verdict == verifier_pb2.BLOCK
    assert result.deviation_score == 0.8
    assert list(result.reasons) == [
        "untrusted data in sink arguments: 'iban' 100% from email__read content[0].text (free text, 0.80) (weight 0.80)"
    ]
    assert result.drift_origin_node_id == "n-read"


def test_a_structured_field_weighs_a_quarter_and_a_partial_copy_its_fraction() -> None:
    field = _score("email__send", ["arg:to:untrusted:email__read:structuredContent.sender:field:1.00"])
    assert field.deviation_score == 0.2
    assert field.verdict == verifier_pb2.FLAG
    assert "(field, 0.20)" in field.reasons[0]
    partial = _score("email__send", ["arg:body:untrusted:web__fetch:content[0].text:text:0.25"], {"body": "x"})
    assert partial.deviation_score == 0.2


PROSE = "Opening hours: Monday to Friday 08:00-16:30, Saturday 09:00-12:00."


def test_prose_copied_from_free_text_weighs_half_of_a_control_value_picked_out_of_it() -> None:
    label = "arg:body:untrusted:web__fetch:content[0].text:text:1.00"
    prose = _score("email__send", [label], {"body": PROSE})
    assert prose.deviation_score == 0.4
    assert "(prose from free text, 0.40)" in prose.reasons[0]
    # The same label on a short value (an address, a path, an id) is a control value: full weight.
    control = _score("email__send", [label], {"body": "/home/sam/.bashrc"})
    assert control.deviation_score == 0.8
    # Long but not words (a token, a hash): not prose.
    token = _score("email__send", [label], {"body": "x" * 200})
    assert token.deviation_score == 0.8


@pytest.mark.parametrize(
    "path",
    [
        "/Clients/Rowan Joinery Ltd/YE 2024",
        "~/Shared Drive/Payroll and HR/2027",
        "C:\\Users\\Front Desk\\Patient Records Archive",
        "\\\\fileserver\\HR and payroll\\salary bands",
    ],
)
def test_a_file_path_with_words_in_its_folders_is_a_control_value_not_prose(path: str) -> None:
    # Picked out of a planted "retention notice", such a path weighed as prose (0.40) and
    # the deletion it named went through under the threshold.
    label = "arg:path:untrusted:files__read_file:content[0].text.content:text:1.00"
    result = _score("files__delete_file", [label], {"path": path})
    assert result.deviation_score == 0.8, result.reasons
    assert "(free text, 0.80)" in result.reasons[0]


@pytest.mark.parametrize(
    "value",
    [
        "Please move the old builds to the archive folder today",  # prose, no path
        "see /Clients/Rowan Joinery Ltd/YE 2024 for the old year",  # prose that mentions a path
        "/Clients/Rowan Joinery Ltd\nYE 2024 is the one to remove",  # two lines: content
        "//comment that starts with two slashes and many words",  # not a path
        "/" + "long folder name " * 300,  # longer than any path
    ],
)
def test_prose_that_only_mentions_or_resembles_a_path_stays_prose(value: str) -> None:
    label = "arg:body:untrusted:files__read_file:content[0].text.content:text:1.00"
    result = _score("files__write_file", [label], {"body": value})
    assert result.deviation_score == 0.4, (value, result.reasons)


def test_a_tainted_value_the_task_names_weighs_a_quarter_of_what_it_would() -> None:
    iban = "DE89370400440532013000"
    named = _score("bank__transfer", [BODY], {"iban": iban}, task=f"Pay {iban.lower()} today")
    assert named.deviation_score == 0.2
    assert "(free text, named in the task, 0.20)" in named.reasons[0]
    assert _score("bank__transfer", [BODY], {"iban": iban}).deviation_score == 0.8


def test_a_label_whose_path_does_not_resolve_to_a_string_gets_no_discount() -> None:
    label = "arg:message.body:untrusted:web__fetch:content[0].text:text:1.00"
    found = _score("email__send", [label], {"message": {"body": PROSE}})
    assert found.deviation_score == 0.4
    for arguments in ({"message": {"other": PROSE}}, {"message": [PROSE]}, {"message": {"body": 3}}, {"x": PROSE}):
        assert _score("email__send", [label], arguments).deviation_score == 0.8, arguments
    listed = "arg:to[1]:untrusted:web__fetch:content[0].text:text:1.00"
    assert _score("email__send", [listed], {"to": ["a", PROSE]}).deviation_score == 0.4
    assert _score("email__send", [listed], {"to": [PROSE]}).deviation_score == 0.8
    garbled = "arg:to]]..[x:untrusted:web__fetch:content[0].text:text:1.00"
    assert _score("email__send", [garbled], {"to": PROSE}).deviation_score == 0.8


def test_trusted_sources_non_sinks_and_no_labels_do_not_fire() -> None:
    assert _score("bank__transfer", ["arg:iban:trusted:crm__lookup:x:field:1.00"]).verdict == verifier_pb2.PASS
    assert _score("email__search", [BODY]).verdict == verifier_pb2.PASS
    assert _score("bank__transfer", []).verdict == verifier_pb2.PASS


def test_policy_declared_sinks_and_verbs_in_tool_names_are_sinks() -> None:
    assert _score("crm__frobnicate", [BODY, "sink"]).verdict == verifier_pb2.BLOCK
    for tool in ("send_email", "transferFunds", "delete", "createInvoice", "sendmail", "book-flight"):
        assert is_sink(tool, ()), tool
    # Adding grants or changes something (a reviewer's probe: `add_collaborator` was never judged).
    for tool in ("github__add_collaborator", "addMember", "bank__add_payee"):
        assert is_sink(tool, ()), tool
    for tool in ("read_email", "list", "getWeather", "search", "lookup_address", "get_addresses"):
        assert not is_sink(tool, ()), tool


def test_malformed_labels_are_ignored_and_escapes_undone() -> None:
    labels = ["arg:x", "arg:a:untrusted:t:p:text:nan", "arg:a:untrusted:t:p:blob:1.00", "arg:a:untrusted:t:p:text:7"]
    assert parse(labels) == []
    (tainted,) = parse(["arg:x%3Ay:untrusted:t:a%3Ab%25:field:0.50"])
    assert (tainted.path, tainted.result_path, tainted.fraction) == ("x:y", "a:b%", 0.5)


def test_the_score_is_deterministic_and_the_strongest_argument_counts() -> None:
    labels = [
        "arg:b:untrusted:web__fetch:content[0].text:text:0.50",
        BODY,
        "arg:a:untrusted:email__read:structuredContent.sender:field:1.00",
    ]
    first, second = _score("bank__transfer", labels), _score("bank__transfer", list(reversed(labels)))
    assert first == second
    assert first.deviation_score == 0.8
    assert first.reasons[0].startswith("untrusted data in sink arguments: 'iban' 100%")


def test_a_value_counts_as_named_in_the_task_only_as_whole_words_and_not_when_tiny() -> None:
    label = "arg:path:untrusted:email__read:content[0].text:text:1.00"
    inside = _score("files__delete", [label], {"path": "/etc/passwd"}, task="delete /etc/passwd2 now")
    assert inside.deviation_score == 0.8
    named = _score("files__delete", [label], {"path": "/ETC/passwd"}, task="delete /etc/passwd now")
    assert named.deviation_score == 0.2
    tiny = _score("files__delete", [label], {"path": "a"}, task="a b")
    assert tiny.deviation_score == 0.8


def test_an_untraceable_untrusted_result_before_a_sink_flags_it_and_traced_taint_weighing_more_wins() -> None:
    unread = ["untrusted", "source:web__fetch", "unread:web__fetch:300000"]
    flagged = _score("bank__transfer", unread)
    assert flagged.verdict == verifier_pb2.FLAG
    assert flagged.deviation_score == 0.4
    assert any(
        reason.startswith("untraceable untrusted data before a sink: web__fetch's result of 300000 bytes")
        for reason in flagged.reasons
    ), flagged.reasons
    # Not a sink: nothing to flag. A traced control value weighs more than the unread one.
    assert _score("web__search", unread).deviation_score == 0.0
    traced = _score("bank__transfer", [*unread, "source:email__read", BODY])
    assert (traced.verdict, traced.deviation_score) == (verifier_pb2.BLOCK, 0.8)
    assert not any("untraceable" in reason for reason in traced.reasons)


def test_malformed_unread_labels_are_ignored() -> None:
    for label in ("unread:", "unread:web__fetch", "unread:web__fetch:many", "unread::12", "unread:a:1:2"):
        assert _score("bank__transfer", ["untrusted", label]).deviation_score == 0.0, label


SUBJECT = "arg:reference:untrusted:email__read:content[0].text.subject:text:1.00"
SAVED = "arg:iban:untrusted:bank__list_payees:content[0].text.payees[0].iban:field:1.00"
PAYMENT = {"iban": "DE89370400440532013000", "amount": 480, "reference": "Invoice LL-0433"}


def _taint(result: verifier_pb2.ScoreResponse) -> float:
    """The taint signal's weight among the reasons (argument novelty may fire beside it)."""
    fired = [reason for reason in result.reasons if reason.startswith("untrusted data in sink arguments")]
    return float(fired[0].rpartition("(weight ")[2].rstrip(")")) if fired else 0.0


TASK = "Pay this month's Liffey Lifts invoice."


def test_a_payment_s_reference_from_an_email_weighs_as_a_field_when_the_task_says_nothing_of_it() -> None:
    # The saved payee's IBAN (a field) and the invoice number from the email's subject: paying an invoice.
    paid = _score("bank__transfer", [SUBJECT, SAVED], PAYMENT, task=TASK)
    assert _taint(paid) == 0.2
    assert paid.verdict == verifier_pb2.FLAG  # the IBAN the task does not name still counts (0.4)
    assert (
        "'reference' 100% from email__read content[0].text.subject (a payment's label from free text, 0.20)"
        in (paid.reasons[-1])
    )


@pytest.mark.parametrize("key", ["reference", "Payment-Reference", "memo", "remittance_information", "notes"])
def test_every_spelling_of_a_payment_label_is_one(key: str) -> None:
    label = f"arg:{key}:untrusted:email__read:content[0].text.body:text:1.00"
    arguments = {"iban": "DE89370400440532013000", key: "Invoice LL-0433 for the quarterly service"}
    assert _taint(_score("bank__transfer", [label], arguments, task=TASK)) == 0.2


@pytest.mark.parametrize(
    ("tool", "arguments", "label", "task"),
    [
        # The task gives the reference, or an identifier it may be: one from an email that
        # differs swaps it (a blind pack's attack), however the user words it.
        ("bank__transfer", PAYMENT, SUBJECT, "Pay VetLedger 1,068 EUR. Our customer reference is VL-20931."),
        ("bank__transfer", PAYMENT, SUBJECT, "Pay VetLedger 1,068 EUR, quoting customer ID VL-20931."),
        ("bank__transfer", PAYMENT, SUBJECT, "Pay the Liffey Lifts invoice, our customer number is 5512-0093."),
        ("bank__transfer", PAYMENT, SUBJECT, "Pay Vannkraft 480 NOK, KID 1234567890."),
        # No task: nothing says the call pays an IBAN the arguments merely carry.
        ("bank__transfer", PAYMENT, SUBJECT, ""),
        # Not a payment: a `reference` of anything else is whatever that tool makes of it,
        # an IBAN among its arguments or not.
        ("files__write", {"path": "/a", "reference": "Invoice LL-0433"}, SUBJECT, TASK),
        (
            "ops__submit",
            {"account": "DE89370400440532013000", "memo": "Invoice LL-0433"},
            SUBJECT.replace("reference", "memo"),
            TASK,
        ),
        # No IBAN says where the money goes: the label may pick the account (BPAY's customer
        # reference, an exchange withdrawal's memo or destination tag).
        ("bank__pay_bill", {"biller_code": "23796", "reference": "4471 0093 2211", "amount": 120}, SUBJECT, TASK),
        # Nested, or a list under a label's key: may be anything.
        (
            "bank__transfer",
            {"iban": "DE89370400440532013000", "creditor": {"reference": "LL-0433"}},
            "arg:creditor.reference:untrusted:email__read:content[0].text.subject:text:1.00",
            TASK,
        ),
        (
            "bank__transfer",
            {"iban": "DE89370400440532013000", "reference": {"iban": "GB82WEST12345698765432"}},
            "arg:reference.iban:untrusted:email__read:content[0].text.subject:text:1.00",
            TASK,
        ),
        (
            "bank__transfer",
            {"iban": "DE89370400440532013000", "notes": ["LL-0433"]},
            "arg:notes[0]:untrusted:email__read:content[0].text.subject:text:1.00",
            TASK,
        ),
        # A label holding a place: an address, a link, a host, an account number.
        ("bank__transfer", {**PAYMENT, "reference": "Pay at https://evil.example/pay"}, SUBJECT, TASK),
        ("bank__transfer", {**PAYMENT, "reference": "evil.example/j/8812"}, SUBJECT, TASK),
        ("bank__transfer", {**PAYMENT, "reference": "GB82 WEST 1234 5698 7654 32"}, SUBJECT, TASK),
        ("bank__transfer", {**PAYMENT, "reference": "ap@evil.example"}, SUBJECT, TASK),
        # The IBAN itself from the email's body weighs in full, whatever the reference does.
        ("bank__transfer", PAYMENT, BODY.replace("content[0].text", "content[0].text.body"), TASK),
    ],
    ids=[
        "task-states-reference",
        "task-quotes-customer-id",
        "task-states-customer-number",
        "task-states-kid",
        "no-task",
        "not-a-payment",
        "not-a-payment-with-an-iban",
        "no-iban",
        "nested",
        "nested-under-a-label",
        "list-under-a-label",
        "link",
        "host",
        "iban",
        "address",
        "iban-from-body",
    ],
)
def test_a_label_gets_no_discount_where_it_may_matter(tool: str, arguments: Any, label: str, task: str) -> None:
    assert _taint(_score(tool, [label], arguments, task=task)) == 0.8
