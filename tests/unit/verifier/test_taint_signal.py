"""The reference scorer's taint signal: untrusted data in a sink's arguments, from the proxy's labels."""

from __future__ import annotations

from typing import Any

from bastion.v1 import policy_pb2, verifier_pb2
from bastion.verifier import ReferenceScorer
from bastion.verifier._taint import is_sink, parse

SCORER = ReferenceScorer()
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
        "untrusted data in sink arguments: 'iban' 100% from email__read content[0].text (free text, 0.80)"
    ]
    assert result.drift_origin_node_id == "n-read"


def test_a_structured_field_weighs_half_and_a_partial_copy_its_fraction() -> None:
    field = _score("email__send", ["arg:to:untrusted:email__read:structuredContent.sender:field:1.00"])
    assert field.deviation_score == 0.4
    assert field.verdict == verifier_pb2.FLAG
    partial = _score("email__send", ["arg:body:untrusted:web__fetch:content[0].text:text:0.25"])
    assert partial.deviation_score == 0.2


def test_trusted_sources_non_sinks_and_no_labels_do_not_fire() -> None:
    assert _score("bank__transfer", ["arg:iban:trusted:crm__lookup:x:field:1.00"]).verdict == verifier_pb2.PASS
    assert _score("email__search", [BODY]).verdict == verifier_pb2.PASS
    assert _score("bank__transfer", []).verdict == verifier_pb2.PASS


def test_policy_declared_sinks_and_verbs_in_tool_names_are_sinks() -> None:
    assert _score("crm__frobnicate", [BODY, "sink"]).verdict == verifier_pb2.BLOCK
    for tool in ("send_email", "transferFunds", "delete", "createInvoice", "sendmail", "book-flight"):
        assert is_sink(tool, ()), tool
    for tool in ("read_email", "list", "getWeather", "search"):
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
