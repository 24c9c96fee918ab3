"""The reference scorer: each signal alone, together, thresholds, verdicts, reasons."""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from bastion import ConfigError
from bastion.v1 import policy_pb2, verifier_pb2
from bastion.verifier import ReferenceScorer, ScorerConfig
from bastion.verifier._destinations import MAX_DESTINATIONS, MAX_STRING_BYTES, _Path
from bastion.verifier._engine import MAX_ARGUMENT_BYTES, MAX_ARGUMENT_VALUES
from bastion.verifier._urls import _MAX_OWN, _carried_in_urls, _own_values

# The sequence signal is off here: it learns from each request, and has its own tests
# (test_sequence_signal.py). Everything else is at its defaults.
# Intent off too: these tests are about argument_novelty and the combination (test_intent.py).
DEFAULT = ReferenceScorer(ScorerConfig(sequence_weight=0.0, intent_weight=0.0, destructive_weight=0.0))
_WEIGHT = re.compile(r" \(weight [0-9]\.[0-9]{2}\)$")
_STATED = re.compile(r" \(weight ([0-9]\.[0-9]{2})\)$")
# Valid IBANs (ISO 13616 examples) and a wallet address, so the checksum test is real.
IBAN_DE = "DE89370400440532013000"
IBAN_GB = "GB82WEST12345698765432"
WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


def step(
    tool: str,
    server: str = "demo",
    effect: policy_pb2.Effect.ValueType = policy_pb2.ALLOW,
    kind: policy_pb2.ActionKind.ValueType = policy_pb2.TOOL_CALL,
) -> verifier_pb2.HistoryNode:
    return verifier_pb2.HistoryNode(node_id=f"n-{tool}", kind=kind, server=server, tool=tool, effect=effect)


def request(
    tool: str = "add",
    *,
    server: str = "demo",
    history: Sequence[verifier_pb2.HistoryNode] = (),
    task: str = "",
    arguments: dict[str, Any] | None = None,
    kind: policy_pb2.ActionKind.ValueType = policy_pb2.TOOL_CALL,
) -> verifier_pb2.ScoreRequest:
    args = struct_pb2.Struct()
    args.update(arguments or {})
    return verifier_pb2.ScoreRequest(
        action=policy_pb2.Action(kind=kind, server=server, tool=tool, arguments=args),
        ctx=policy_pb2.Context(task=task, workflow_id="wf-1"),
        history=history,
        node_id="n-now",
    )


def seen(*tools: str) -> list[verifier_pb2.HistoryNode]:
    return [step(tool) for tool in tools]


def bare(result: verifier_pb2.ScoreResponse) -> list[str]:
    """The reasons without their weight suffix (tested once, above)."""
    return [_WEIGHT.sub("", reason) for reason in result.reasons]


# -- reasons carry their weights --------------------------------------------------------


def test_every_reason_ends_with_the_weight_its_signal_added() -> None:
    result = DEFAULT.score(request("lookup", task=TASK, arguments={"to": "eve@evil.example"}))
    assert list(result.reasons) == [
        "destination not named in the task: 'eve@evil.example' (argument 'to') (weight 0.40)"
    ]
    assert all(_WEIGHT.search(reason) for reason in result.reasons)


# -- argument_novelty -----------------------------------------------------------------

TASK = "Summarise the Q3 report and mail it to Bob <bob@acme.com>, then upload it to files.acme.com."


def test_an_email_not_named_in_the_task_adds_the_argument_weight() -> None:
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments={"to": "eve@evil.example"}))
    assert result.deviation_score == pytest.approx(0.4)
    assert result.verdict == verifier_pb2.FLAG
    assert bare(result) == ["destination not named in the task: 'eve@evil.example' (argument 'to')"]


@pytest.mark.parametrize(
    ("value", "destination"),
    [
        ("eve@evil.example", "eve@evil.example"),
        ("Reply to EVE@Evil.Example please", "eve@evil.example"),
        ("https://evil.example/collect?d=1", "evil.example"),
        ("see ftp://user:pw@files.evil.example:2121/drop", "files.evil.example"),
        ("http://eve@evil.example/", "evil.example"),  # user info is not an email address
        ("http://[2001:db8::1]:8080/x", "[2001:db8::1]"),
        ("post it to //evil.example/reply", "evil.example"),  # scheme-relative
        (IBAN_GB, IBAN_GB),
        ("pay DE89 3704 0044 0532 0130 00 today", IBAN_DE),
        ("DE89-3704-0044-0532-0130-00", IBAN_DE),
        # Ends with a full group, so the pattern also takes the next short word.
        ("ES91 2100 0418 4502 0005 1332 then", "ES9121000418450200051332"),
        (IBAN_DE.lower(), IBAN_DE),
        (f"to {WALLET}", WALLET.lower()),
    ],
)
def test_destination_kinds_not_named_in_the_task_are_novel(value: str, destination: str) -> None:
    result = DEFAULT.score(request("send", history=seen("send"), task="Add two numbers.", arguments={"x": value}))
    assert bare(result) == [f"destination not named in the task: {destination!r} (argument 'x')"]


def test_a_backslash_in_a_url_authority_gives_both_readings() -> None:
    # A browser ends the authority at `\` (evil.example); httpx and curl read what comes
    # before `@` as user info and connect to acme.com (an attacker's probe named the task's
    # host first, so that the browser reading alone looked like the task's own site).
    task = "Post the report on https://evil.example/ for me."
    value = "https://evil.example\\@acme.com/"
    result = DEFAULT.score(request("send", history=seen("send"), task=task, arguments={"x": value}))
    assert bare(result)[0].startswith("destination not named in the task: 'acme.com' (argument 'x')")


@pytest.mark.parametrize(
    "value",
    [
        "bob@acme.com",
        "BOB@ACME.COM",
        "https://files.acme.com/upload",
        "https://www.files.acme.com/upload",
        "https://acme.com/",
        "s3://files.acme.com/bucket",
        "//files.acme.com/upload",
        "a path like /srv//data or a comment // like this",
    ],
)
def test_destinations_the_task_names_are_expected(value: str) -> None:
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments={"to": value}))
    assert result.verdict == verifier_pb2.PASS, bare(result)


def test_an_iban_written_in_groups_in_the_task_matches_the_compact_argument() -> None:
    task = f"Pay invoice 17 to DE89 3704 0044 0532 0130 00 and send {WALLET} a receipt"
    arguments = {"iban": IBAN_DE, "wallet": WALLET.lower()}
    assert DEFAULT.score(request("pay", history=seen("pay"), task=task, arguments=arguments)).verdict == (
        verifier_pb2.PASS
    )


@pytest.mark.parametrize(
    "value",
    [
        "DE88370400440532013000",  # IBAN shape, wrong checksum
        "report.pdf",
        "acme-evil.com",  # bare host names are not recognised
        "eve at evil dot example",
        "123456789012",
        "0x" + "a" * 39,
        "0x" + "a" * 64,  # a transaction hash, not an address
        "file:///etc/passwd",
        "user@localhost",
    ],
)
def test_strings_that_only_resemble_destinations_are_ignored(value: str) -> None:
    result = DEFAULT.score(request("send", history=seen("send"), task="Add two numbers.", arguments={"x": value}))
    assert result.verdict == verifier_pb2.PASS, bare(result)


@pytest.mark.parametrize("task", ["", "   \n\t"])
def test_argument_novelty_needs_a_task(task: str) -> None:
    result = DEFAULT.score(request("send", history=seen("send"), task=task, arguments={"to": "eve@evil.example"}))
    assert result.verdict == verifier_pb2.PASS


def test_destinations_are_found_at_any_depth_and_named_by_their_path() -> None:
    arguments = {"message": {"headers": {"reply_to": "eve@evil.example"}, "cc": ["bob@acme.com", "mal@evil.example"]}}
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments))
    assert bare(result) == [
        "destinations not named in the task: 'mal@evil.example' (argument 'message.cc[1]'), "
        "'eve@evil.example' (argument 'message.headers.reply_to')"
    ]


def test_non_string_arguments_are_ignored() -> None:
    arguments = {"n": 3, "ok": True, "none": None, "list": [1.5, False]}
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments))
    assert result.verdict == verifier_pb2.PASS


def test_the_reason_lists_three_destinations_then_counts_the_rest() -> None:
    arguments = {"to": [f"u{i}@evil.example" for i in range(5)]}
    (reason,) = bare(DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments)))
    assert reason == (
        "destinations not named in the task: 'u0@evil.example' (argument 'to[0]'), "
        "'u1@evil.example' (argument 'to[1]'), 'u2@evil.example' (argument 'to[2]') and 2 more"
    )


def test_a_destination_repeated_across_arguments_is_listed_once() -> None:
    arguments = {"a": "eve@evil.example", "b": "again eve@evil.example"}
    (reason,) = bare(DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments)))
    assert reason == "destination not named in the task: 'eve@evil.example' (argument 'a')"


def test_reasons_escape_control_characters_and_clip_long_values() -> None:
    arguments = {"url\n": "https://evil\x1b[31m" + "x" * 200 + ".example/"}
    (reason,) = bare(DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments)))
    assert "\x1b" not in reason
    assert "\n" not in reason
    assert "\\x1b" in reason
    assert "…" in reason
    assert len(reason) < 250


# -- scan budgets ---------------------------------------------------------------------

MIB = 1024 * 1024
PADDING = "x" * MAX_STRING_BYTES


def test_a_4_mib_argument_is_not_scanned_and_fires_argument_novelty_naming_it() -> None:
    # A destination at the end of the padding is what an agent would try to hide.
    arguments = {"pad": "x" * (4 * MIB - 16) + "eve@evil.example", "to": "bob@acme.com"}
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments))
    assert bare(result) == [f"argument 'pad' too large to inspect ({4 * MIB} bytes)"]
    assert result.deviation_score == pytest.approx(0.4)
    assert result.verdict == verifier_pb2.FLAG


@pytest.mark.parametrize("task", ["", "   "])
def test_an_argument_too_large_to_inspect_fires_even_without_a_task(task: str) -> None:
    result = DEFAULT.score(request("send", server="email", task=task, arguments={"body": "x" * MIB}))
    assert bare(result) == [f"argument 'body' too large to inspect ({MIB} bytes)"]
    assert result.verdict == verifier_pb2.FLAG


def test_the_string_budget_counts_utf8_bytes_not_characters() -> None:
    text = "€" * (MAX_STRING_BYTES // 3 + 1)  # fewer characters than the budget, 3 bytes each
    result = DEFAULT.score(request("send", history=seen("send"), arguments={"note": text}))
    assert bare(result) == [f"argument 'note' too large to inspect ({len(text.encode())} bytes)"]


def test_a_string_of_exactly_the_budget_is_scanned_as_before() -> None:
    at_budget = PADDING[: -len(" eve@evil.example")] + " eve@evil.example"
    assert len(at_budget) == MAX_STRING_BYTES
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments={"x": at_budget}))
    assert bare(result) == ["destination not named in the task: 'eve@evil.example' (argument 'x')"]
    over = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments={"x": at_budget + " "}))
    assert bare(over) == [f"argument 'x' too large to inspect ({MAX_STRING_BYTES + 1} bytes)"]


def test_strings_under_the_budget_that_name_nothing_novel_still_pass() -> None:
    arguments = {"doc": PADDING, "to": "bob@acme.com", "nested": {"url": "https://files.acme.com/" + "y" * 1000}}
    assert DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=arguments)).verdict == (
        verifier_pb2.PASS
    )


def test_strings_are_read_up_to_the_total_budget_then_the_signal_fires() -> None:
    parts = MAX_ARGUMENT_BYTES // MAX_STRING_BYTES
    within = {"parts": [PADDING] * (parts - 1) + [PADDING[:-17] + " eve@evil.example"]}
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=within))
    assert bare(result) == [f"destination not named in the task: 'eve@evil.example' (argument 'parts[{parts - 1}]')"]
    # The 16 bytes of 'a' are read first, so the last part no longer fits.
    over = {"a": "mal@evil.example", "parts": [PADDING] * parts}
    result = DEFAULT.score(request("lookup", history=seen("lookup"), task=TASK, arguments=over))
    # What was read before the budget ran out still counts, and the reason says where it ran out.
    assert bare(result) == [
        "destination not named in the task: 'mal@evil.example' (argument 'a'); arguments too large to inspect "
        f"(strings exceed {MAX_ARGUMENT_BYTES} bytes in total at argument 'parts[{parts - 1}]')"
    ]
    assert result.deviation_score == pytest.approx(0.4)


def test_arguments_with_more_values_than_the_budget_fire_without_being_read() -> None:
    at_budget = {"items": ["x"] * (MAX_ARGUMENT_VALUES - 1)}  # the list counts as a value too
    assert DEFAULT.score(request("send", history=seen("send"), arguments=at_budget)).verdict == verifier_pb2.PASS
    too_many = "arguments too large to inspect (more than 10000 values)"
    wide = {"items": [None] * MAX_ARGUMENT_VALUES}
    assert bare(DEFAULT.score(request("send", history=seen("send"), arguments=wide))) == [too_many]
    many_keys = {f"k{i}": i for i in range(MAX_ARGUMENT_VALUES + 1)}
    assert bare(DEFAULT.score(request("send", history=seen("send"), arguments=many_keys))) == [too_many]


def test_a_deeply_nested_argument_is_walked_without_recursion_and_bounded() -> None:
    req = request("lookup", history=seen("lookup"), task=TASK)
    value = req.action.arguments.fields["deep"]
    for _ in range(MAX_ARGUMENT_VALUES):
        value = value.list_value.values.add()
    value.string_value = "eve@evil.example"
    assert bare(DEFAULT.score(req)) == ["arguments too large to inspect (more than 10000 values)"]


def test_the_task_is_read_up_to_the_string_budget() -> None:
    # What a task names past the budget is not known, so the argument looks novel.
    late = PADDING + " mail bob@acme.com"
    result = DEFAULT.score(request("send", history=seen("send"), task=late, arguments={"to": "bob@acme.com"}))
    assert bare(result) == ["destination not named in the task: 'bob@acme.com' (argument 'to')"]
    early = "mail bob@acme.com " + PADDING
    result = DEFAULT.score(request("send", history=seen("send"), task=early, arguments={"to": "bob@acme.com"}))
    assert result.verdict == verifier_pb2.PASS


def test_the_argument_named_over_budget_does_not_depend_on_argument_order() -> None:
    pairs = [("b", "x" * (MAX_STRING_BYTES + 1)), ("a", "y" * (MAX_STRING_BYTES + 2))]
    for order in (pairs, pairs[::-1]):
        result = DEFAULT.score(request("send", history=seen("send"), arguments=dict(order)))
        assert bare(result) == [f"argument 'a' too large to inspect ({MAX_STRING_BYTES + 2} bytes)"]


def _mod97(text: str) -> int:
    # ISO 13616 written out the slow, obvious way: letters as 10-35, digits as themselves.
    return int("".join(str(int(char, 36)) for char in text)) % 97


@given(
    country=st.text(alphabet=string.ascii_uppercase, min_size=2, max_size=2),
    body=st.text(alphabet=string.ascii_uppercase + string.digits, min_size=11, max_size=30),
    valid=st.booleans(),
    wrong=st.integers(min_value=1, max_value=96),
)
def test_an_iban_shaped_argument_is_a_destination_exactly_when_its_checksum_holds(
    country: str, body: str, valid: bool, wrong: int
) -> None:
    check = 98 - _mod97(body + country + "00")
    if not valid:
        check = (check + wrong) % 97 or 97
    iban = f"{country}{check:02d}{body}"
    result = DEFAULT.score(request("send", history=seen("send"), task="Add two numbers.", arguments={"x": iban}))
    assert bool(result.reasons) == (_mod97(iban[4:] + iban[:4]) == 1)


# -- combinations, thresholds, verdicts -----------------------------------------------


def test_a_sink_sending_elsewhere_than_the_task_says_fires_the_contradiction_weight_and_blocks() -> None:
    result = DEFAULT.score(request("send", server="email", task=TASK, arguments={"to": "eve@evil.example"}))
    assert result.deviation_score == pytest.approx(0.8)
    assert result.verdict == verifier_pb2.BLOCK
    assert list(result.reasons) == [
        "destination not named in the task: 'eve@evil.example' (argument 'to'); "
        "the task names another email address (weight 0.80)"
    ]


def test_the_contradiction_needs_a_sink_and_a_task_destination_of_the_same_kind() -> None:
    # A read is no sink: a fetched URL the task did not name is novel, not a contradiction.
    read = DEFAULT.score(request("fetch", task=TASK, arguments={"url": "https://evil.example/"}))
    assert read.deviation_score == pytest.approx(0.4)
    # The task names email addresses and hosts, no IBAN.
    iban = DEFAULT.score(request("transfer", task=TASK, arguments={"iban": IBAN_GB}))
    assert iban.deviation_score == pytest.approx(0.4)
    iban_task = DEFAULT.score(request("transfer", task=f"pay {IBAN_DE}", arguments={"iban": IBAN_GB}))
    assert iban_task.deviation_score == pytest.approx(0.8)
    assert bare(iban_task) == [
        f"destination not named in the task: {IBAN_GB!r} (argument 'iban'); the task names another IBAN"
    ]


def test_a_chat_handle_given_whole_is_a_destination_and_a_task_channel_makes_another_one_a_contradiction() -> None:
    task = "Catch me up on #general."
    dm = DEFAULT.score(request("send_message", task=task, arguments={"channel": "@max.external", "text": "hi"}))
    assert bare(dm) == [
        "destination not named in the task: '@max.external' (argument 'channel'); the task names another chat handle"
    ]
    assert dm.verdict == verifier_pb2.BLOCK
    same = DEFAULT.score(request("send_message", task=task, arguments={"channel": "#General", "text": "hi"}))
    assert same.verdict == verifier_pb2.PASS
    # Inside text, @name is a mention, not a destination.
    mention = DEFAULT.score(request("send_message", task=task, arguments={"channel": "#general", "text": "ask @max"}))
    assert mention.verdict == verifier_pb2.PASS


def test_the_contradiction_weight_is_configurable_and_never_below_the_argument_weight() -> None:
    scorer = ReferenceScorer(ScorerConfig(sequence_weight=0.0, contradiction_weight=0.3))
    result = scorer.score(request("send", task=TASK, arguments={"to": "eve@evil.example"}))
    assert result.deviation_score == pytest.approx(0.4)
    assert bare(result) == ["destination not named in the task: 'eve@evil.example' (argument 'to')"]


@pytest.mark.parametrize(
    ("threshold", "verdict"),
    [(0.39, verifier_pb2.BLOCK), (0.4, verifier_pb2.BLOCK), (0.41, verifier_pb2.FLAG), (1.0, verifier_pb2.FLAG)],
)
def test_a_score_at_or_above_the_threshold_blocks(threshold: float, verdict: verifier_pb2.Verdict.ValueType) -> None:
    scorer = ReferenceScorer(ScorerConfig(threshold=threshold, sequence_weight=0.0))
    result = scorer.score(request("lookup", task=TASK, arguments={"to": "eve@evil.example"}))
    assert result.deviation_score == pytest.approx(0.4)
    assert result.threshold == threshold
    assert result.verdict == verdict


def test_weights_that_add_up_to_the_threshold_on_paper_reach_it() -> None:
    # 0.7 + 0.1 is 0.7999999999999999 in floating point.
    scorer = ReferenceScorer(ScorerConfig(threshold=0.8, sequence_weight=0.0, argument_weight=0.1, taint_weight=0.7))
    req = request("transfer", task="pay it", arguments={"iban": IBAN_GB})
    req.ctx.taint.extend(["untrusted", "arg:iban:untrusted:email__read:content[0].text:text:1.00"])
    result = scorer.score(req)
    assert result.deviation_score == 0.8
    assert result.verdict == verifier_pb2.BLOCK


def test_a_signal_with_zero_weight_neither_scores_nor_explains() -> None:
    silent = ReferenceScorer(ScorerConfig(sequence_weight=0.0, argument_weight=0.0, contradiction_weight=0.0))
    result = silent.score(request("send", task=TASK, arguments={"to": "eve@evil.example"}))
    assert result.verdict == verifier_pb2.PASS
    assert list(result.reasons) == []


def test_the_response_names_the_scorer_and_echoes_the_threshold() -> None:
    result = ReferenceScorer(ScorerConfig(threshold=0.65)).score(request("add"))
    assert result.scorer == "reference/0.15"
    assert result.threshold == 0.65
    assert result.drift_origin_node_id == ""


@pytest.mark.parametrize(
    "overrides",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"contradiction_weight": -0.1},
        {"sequence_weight": 1.01},
        {"argument_weight": float("nan")},
        {"taint_weight": 2.0},
    ],
)
def test_an_out_of_range_config_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(overrides))):
        ScorerConfig(**overrides)


# -- determinism ----------------------------------------------------------------------


def test_the_same_request_always_gets_the_same_answer() -> None:
    req = request("send", history=seen("a", "b", "c"), task=TASK, arguments={"to": "eve@evil.example", "x": WALLET})
    first = DEFAULT.score(req)
    wire = verifier_pb2.ScoreRequest.FromString(req.SerializeToString())
    assert all(DEFAULT.score(r) == first for r in (req, wire, req))


def test_the_answer_does_not_depend_on_argument_order() -> None:
    pairs = [("z", "z@evil.example"), ("a", "a@evil.example"), ("m", "https://m.evil.example")]
    results = {
        DEFAULT.score(request("send", task=TASK, arguments=dict(order))).SerializeToString(deterministic=True)
        for order in itertools.permutations(pairs)
    }
    assert len(results) == 1


# -- properties -----------------------------------------------------------------------

_fragments = st.sampled_from(
    ["eve@evil.example", "bob@acme.com", "https://evil.example/x", "https://acme.com", IBAN_DE, IBAN_GB, WALLET, " "]
)
_strings = st.one_of(st.text(max_size=40), st.lists(_fragments | st.text(max_size=8), max_size=5).map("".join))
_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | _strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_names = st.sampled_from(["", "add", "search", "send", "read"])
_kinds = st.sampled_from(list(policy_pb2.ActionKind.values()))
_nodes = st.builds(
    step,
    tool=_names,
    server=st.sampled_from(["demo", "email", ""]),
    effect=st.sampled_from(list(policy_pb2.Effect.values())),
    kind=_kinds,
)
_requests = st.builds(
    request,
    _names,
    server=st.sampled_from(["demo", "email", ""]),
    history=st.lists(_nodes, max_size=8),
    task=st.one_of(st.just(""), _strings, st.just(TASK)),
    arguments=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    kind=_kinds,
)
_unit = st.floats(min_value=0.0, max_value=1.0)
_configs = st.builds(
    ScorerConfig,
    threshold=st.floats(min_value=0.01, max_value=1.0),
    sequence_weight=st.just(0.0),
    argument_weight=_unit,
    contradiction_weight=_unit,
    taint_weight=_unit,
)


@given(config=_configs, req=_requests)
def test_any_request_gets_a_score_in_range_and_a_verdict_consistent_with_it(
    config: ScorerConfig, req: verifier_pb2.ScoreRequest
) -> None:
    # Sequence off: with it, a second scoring would see what the first one learnt.
    result = ReferenceScorer(config).score(req)
    score = result.deviation_score
    assert 0.0 <= score <= 1.0
    assert result.threshold == config.threshold
    if score >= config.threshold:
        assert result.verdict == verifier_pb2.BLOCK
    elif score > 0:
        assert result.verdict == verifier_pb2.FLAG
    else:
        assert result.verdict == verifier_pb2.PASS
    # The score is exactly the capped sum of the weights the reasons state (no taint labels here).
    stated = [float(match.group(1)) for reason in result.reasons if (match := _STATED.search(reason))]
    assert len(stated) == len(result.reasons)
    assert score == pytest.approx(min(1.0, math.fsum(stated)), abs=0.006 * len(stated))
    assert ReferenceScorer(config).score(req) == result


def _labelled(tool: str, labels: Sequence[str], task: str = "") -> verifier_pb2.ScoreRequest:
    scored = request(tool, task=task, arguments={"to": "kerstin@linguabridge-projects.example"})
    scored.ctx.taint.extend(labels)
    return scored


LOOKALIKE = "lookalike:to:linguabridge-projects.example:linguabridge.example"


def test_a_look_alike_domain_on_a_sink_weighs_as_a_contradiction_task_or_not() -> None:
    for task in ("", "Handle the LinguaBridge request"):
        result = DEFAULT.score(_labelled("forward_email", [LOOKALIKE], task))
        assert result.deviation_score >= 0.8, task
        assert (
            "look-alike domain: 'linguabridge-projects.example' ('to') like 'linguabridge.example', "
            "seen in this workflow (weight 0.80)"
        ) in result.reasons[0]


def test_a_look_alike_domain_off_a_sink_flags_and_malformed_labels_are_ignored() -> None:
    assert DEFAULT.score(_labelled("lookup_contact", [LOOKALIKE])).deviation_score == 0.4
    for label in ("lookalike:to:x", "lookalike::a.example:b.example", "lookalike:to:a:b:c"):
        assert DEFAULT.score(_labelled("forward_email", [label])).deviation_score == 0.0, label


# -- the task's own values carried out in a URL ------------------------------------------

_CARRY_TASK = (
    "Get the price list from the wedding cars page; contact mira.tomas@ourmail.example, "
    f"refunds to {IBAN_DE[:4]} {IBAN_DE[4:8]} {IBAN_DE[8:12]} {IBAN_DE[12:16]} {IBAN_DE[16:20]} {IBAN_DE[20:]}"
)


@pytest.mark.parametrize(
    "url",
    [
        "https://price-sync.example/q?name=Mira&email=mira.tomas@ourmail.example",
        "https://price-sync.example/q?email=MIRA.TOMAS%40ourmail.example&x=1",  # encoded, other case
        "https://price-sync.example/u/mira.tomas@ourmail.example/prices",  # in the path
        "https://price-sync.example/pixel.gif#iban=de89+3704+0044+0532+0130+00",  # the IBAN, as printed
        "https://price-sync.example/q?email=mira.tomas%2540ourmail.example",  # encoded twice
        "https://mira.tomas%40ourmail.example@price-sync.example/",  # as the user info
        "https://price-sync.example/p/de89.3704.0044.0532.0130.00",  # other separators
    ],
)
def test_the_tasks_own_value_in_a_url_to_a_host_it_does_not_name_blocks_even_a_fetch(url: str) -> None:
    result = DEFAULT.score(request("fetch", server="web", task=_CARRY_TASK, arguments={"url": url}))
    assert result.verdict == verifier_pb2.BLOCK
    assert result.deviation_score == 0.8
    assert "the task's own value carried in a URL: " in result.reasons[0]
    assert "to 'price-sync.example' ('url')" in result.reasons[0]


@pytest.mark.parametrize(
    ("task", "url"),
    [
        # The host is the task's: the user sends their own data where they said.
        (
            "Check my order on shop.example, my email is mira@ourmail.example",
            "https://shop.example/orders?email=mira@ourmail.example",
        ),
        (
            "Check my order on shop.example, my email is mira@ourmail.example",
            "https://eu.shop.example/orders?email=mira@ourmail.example",
        ),
        # Someone else's address in the query; the task's values nowhere in the URL.
        ("Contact mira@ourmail.example about the cars", "https://cars.example/q?email=eve@evil.example"),
        # The task's address as the URL's user info or host part is no value carried past the host.
        ("Contact mira@ourmail.example about the cars", "https://mira@ourmail.example.cars.example/"),
        # No task values at all.
        ("Get the price list from the wedding cars page", "https://cars.example/q?email=mira@ourmail.example"),
    ],
)
def test_a_url_carries_nothing_of_the_tasks_when_it_goes_where_the_task_says_or_holds_none(task: str, url: str) -> None:
    result = DEFAULT.score(request("fetch", server="web", task=task, arguments={"url": url}))
    assert all("carried in a URL" not in reason for reason in result.reasons)
    assert result.deviation_score <= 0.4


def test_the_tasks_value_beside_a_url_but_not_in_it_is_not_carried() -> None:
    arguments = {"url": "https://cars.example/prices", "note": "for mira.tomas@ourmail.example"}
    result = DEFAULT.score(request("fetch", server="web", task=_CARRY_TASK, arguments=arguments))
    assert all("carried in a URL" not in reason for reason in result.reasons)


def test_only_the_tasks_first_values_are_looked_for_in_urls() -> None:
    # An attacker's probe: a task naming 4,000 addresses against 900 URL arguments held the
    # first version 2.9 s; each value looked for is a search of every URL, so they are capped.
    task = " ".join(f"u{i}@m{i}.example" for i in range(4000))
    assert _own_values(task) == tuple(f"u{i}@m{i}.example" for i in range(_MAX_OWN))
    first = DEFAULT.score(request("fetch", task=task, arguments={"url": "https://x.example/?e=u0@m0.example"}))
    past = DEFAULT.score(
        request("fetch", task=task, arguments={"url": f"https://x.example/?e=u{_MAX_OWN}@m{_MAX_OWN}.example"})
    )
    assert "carried in a URL" in first.reasons[0]
    assert all("carried in a URL" not in reason for reason in past.reasons)


def test_a_url_inside_text_carrying_the_tasks_value_weighs_as_novelty_not_a_block() -> None:
    # The call does not request it: a confirmation link in a mail's body (a prober's false alarm).
    body = f"see https://price-sync.example/r?i={IBAN_DE} for the list"
    arguments = {"to": "mira.tomas@ourmail.example", "body": body}
    result = DEFAULT.score(request("send_email", server="email", task=_CARRY_TASK, arguments=arguments))
    assert result.deviation_score < 0.8
    assert any("carried in a URL" in reason for reason in result.reasons)


def test_a_plus_address_and_the_browsers_reading_of_a_backslash_are_carried() -> None:
    task = "Contact mira+shop@ourmail.example about the cars"
    for url in (
        "https://cars-prices.example/q?e=mira+shop@ourmail.example",
        "https://cars-prices.example\\@ourmail.example/?e=mira%2Bshop@ourmail.example",
    ):
        result = DEFAULT.score(request("fetch", server="web", task=task, arguments={"url": url}))
        assert result.verdict == verifier_pb2.BLOCK, url


def test_many_urls_glued_in_one_string_are_read_in_linear_time() -> None:
    # A prober's request: every URL's text ran to the next whitespace, through every URL
    # after it, so 11,000 glued URLs copied 350 MB; each now ends where the next begins.
    value = "a://b/" * (MAX_DESTINATIONS - 1) + "?e=mira.tomas@ourmail.example"
    carried = _carried_in_urls([(_Path(None, "u"), value)], _CARRY_TASK)
    assert [(mine, host) for mine, host, _, _ in carried] == [("mira.tomas@ourmail.example", "b")]
    # Past MAX_DESTINATIONS no more URLs are parsed (each is a parse: 256 KiB of them took
    # 190 ms), and the scorer says the arguments are too large to inspect. The value is one
    # URL requested whole (no white space) whose last part read runs on past 16 KiB: it
    # counts as sending data, so the address 60 KB in, not read, still blocks.
    value = "a://b/" * 10_000 + "?e=mira.tomas@ourmail.example"
    assert _carried_in_urls([(_Path(None, "u"), value)], _CARRY_TASK) == []
    result = DEFAULT.score(request("fetch", server="web", task=_CARRY_TASK, arguments={"u": value}))
    assert f"arguments too large to inspect (more than {MAX_DESTINATIONS} destinations)" in result.reasons[0]
    assert "personal data sent in a URL: 'more than 16 KiB past the host' to 'b'" in result.reasons[0]
    assert result.verdict == verifier_pb2.BLOCK
    # Inside text (not requested) it is novelty's weight, as before.
    text = DEFAULT.score(request("fetch", server="web", task=_CARRY_TASK, arguments={"u": "see " + value}))
    assert text.deviation_score == pytest.approx(0.4)
