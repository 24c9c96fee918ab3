"""The redactor: known secret patterns in any string, configured paths whatever the value,
typed placeholders with digests; card numbers and IBANs only when their checksums hold."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from bastion.proxy._recorder import encode_event
from bastion.proxy._redact import Redactor
from bastion.v1 import graph_pb2, policy_pb2

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGZha2Uta2V5\n-----END PRIVATE KEY-----"
FULLWIDTH = str.maketrans("0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19")
SECRETS = {
    "jwt": JWT,
    "private_key": PEM,
    "bearer": "Bearer abcdefghijklmnop0123456789",
    "aws_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a" * 36,
    "slack_token": "xoxb-123456789012-abcdefghij",
    "api_key": "sk-" + "Z" * 32,
    "card": "4111 1111 1111 1111",
}
#: The placeholders' key material (the service token, in a proxy).
KEY = b"service-token-of-this-deployment"


def _redactor(paths: tuple[str, ...] | list[str] = (), *, iban: bool = False) -> Redactor:
    return Redactor(paths, iban=iban, secret=KEY)


placeholder = _redactor().placeholder


def _redacted(arguments: dict[str, Any], redactor: Redactor | None = None) -> tuple[dict[str, Any], int]:
    struct = Struct()
    struct.update(arguments)
    count = (redactor or _redactor()).struct(struct)
    return MessageToDict(struct), count


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_each_known_secret_becomes_a_typed_placeholder(kind: str) -> None:
    secret = SECRETS[kind]
    found, count = _redacted({"note": f"use {secret} now", "nested": [{"deep": secret}]})
    assert count == 2
    assert secret not in str(found)
    expected = placeholder(kind, secret) if kind != "bearer" else None
    if expected is not None:
        assert found["note"] == f"use {expected} now"


def test_lookalikes_that_fail_their_checksum_or_shape_are_kept() -> None:
    arguments = {"order": "4111 1111 1111 1112", "phone": "+44 20 7946 0958", "id": "AKIA-not-a-key", "n": 4111}
    found, count = _redacted(arguments)
    assert count == 0
    assert found == arguments


def test_ibans_only_when_configured_and_valid() -> None:
    arguments = {"to": "GB82 WEST 1234 5698 7654 32", "bad": "GB00 WEST 1234 5698 7654 32"}
    assert _redacted(arguments)[1] == 0
    found, count = _redacted(arguments, _redactor(iban=True))
    assert count == 1
    assert found["to"].startswith("[REDACTED:iban:")
    assert found["bad"] == arguments["bad"]


def test_an_iban_written_with_digits_of_another_script_is_redacted_too() -> None:
    # The IBAN pattern's `\d` finds Arabic-Indic digits; the shared checksum reads them as
    # digits (a probe found the shared one had stopped redacting them).
    found, count = _redacted({"to": "GB\u0668\u0662 WEST 1234 5698 7654 32"}, _redactor(iban=True))
    assert count == 1
    assert found["to"].startswith("[REDACTED:iban:")


def test_configured_paths_replace_whole_values_at_the_root_or_any_depth() -> None:
    redactor = _redactor(("$.auth.token", "$..password", "$.cards.*"), iban=False)
    arguments = {
        "auth": {"token": 12345, "user": "ada"},
        "login": {"password": {"value": "hunter2"}},
        "password": "top",
        "cards": ["a", "b"],
        "keep": "visible",
    }
    found, count = _redacted(arguments, redactor)
    assert count == 5
    assert found["auth"]["user"] == "ada"
    assert found["keep"] == "visible"
    for value in (found["auth"]["token"], found["login"]["password"], found["password"], *found["cards"]):
        assert value.startswith("[REDACTED:path:")
    assert "hunter2" not in str(found)


def test_the_same_secret_gets_the_same_placeholder_and_others_a_different_one() -> None:
    one, _ = _redacted({"a": SECRETS["aws_key"], "b": SECRETS["aws_key"], "c": "AKIAIOSFODNN7EXAMPLF"})
    assert one["a"] == one["b"] != one["c"]


def test_a_placeholders_digest_is_keyed_so_a_guess_cannot_be_checked_offline() -> None:
    # An attacker's probe: the digest was a bare sha256 prefix, so whoever read the audit
    # trail could confirm a guessed password ("hunter2") by hashing it.
    found, _ = _redacted({"password": "hunter2"})
    bare = hashlib.sha256(orjson.dumps("hunter2")).hexdigest()[:12]
    assert found["password"] == placeholder("field", '"hunter2"')
    assert bare not in found["password"]
    assert hashlib.sha256(b"hunter2").hexdigest()[:12] not in found["password"]
    # Replicas keyed by the same service token agree; another deployment's key does not.
    assert Redactor(secret=KEY).placeholder("jwt", JWT) == placeholder("jwt", JWT)
    assert Redactor(secret=b"another-deployment").placeholder("jwt", JWT) != placeholder("jwt", JWT)
    assert Redactor().placeholder("jwt", JWT) != Redactor().placeholder("jwt", JWT)  # no key: random per process
    assert re.fullmatch(r"\[REDACTED:jwt:[0-9a-f]{12}\]", placeholder("jwt", JWT))


@pytest.mark.parametrize("path", ["password", "$", "$.", "$.a..b", "$.a/b", "$...x", "$.a b"])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="redaction path"):
        _redactor((path,))


def test_the_body_search_skips_the_walk_for_ordinary_calls() -> None:
    redactor = _redactor()
    assert not redactor.may_hold_secrets(b'{"name":"add","arguments":{"a":1,"b":2}}')
    assert redactor.may_hold_secrets(SECRETS["aws_key"].encode())
    assert _redactor(("$..password",)).may_hold_secrets(b"{}")


@pytest.mark.parametrize(
    "arguments",
    [
        {"auth": {"token": 12345, "user": "ada"}, "login": {"password": {"value": "hunter2"}}, "cards": ["a", 2]},
        {"text": f"use {JWT} and {SECRETS['aws_key']}", "n": 2, "deep": [[{"k": SECRETS["card"]}]]},
        {"nothing": "to hide", "list": [1, 2.5, None, True, {"x": "y"}]},
    ],
)
def test_the_json_copy_is_redacted_with_the_struct_copys_placeholders(arguments: dict[str, Any]) -> None:
    # The journal keeps both copies of an action's arguments: they must agree exactly.
    redactor = _redactor(("$.auth.token", "$..password", "$.cards.*"))
    from_struct, struct_count = _redacted(arguments, redactor)
    from_json, json_count = redactor.json(arguments)

    assert json_count == struct_count
    assert _strings(from_json) == _strings(from_struct)
    if not json_count:
        assert from_json is arguments  # nothing replaced: no copy made


def test_the_json_copy_keeps_every_non_secret_value_and_type() -> None:
    arguments = {"amount": 2**53 + 1, "whole": 2, "ratio": 0.5, "header": JWT, "nested": [[1, [2]]]}
    found, count = _redactor().json(arguments)
    assert count == 1
    assert found == {**arguments, "header": placeholder("jwt", JWT)}
    assert type(found["amount"]) is int
    assert arguments["header"] == JWT  # the caller's value, as policy saw it, is untouched


def _strings(value: Any) -> list[str]:
    """The strings of a JSON value in document order: where the two copies must agree
    (the Struct copy's numbers are doubles, so numbers are compared elsewhere)."""
    if isinstance(value, dict):
        return [text for key in sorted(value) for text in _strings(value[key])]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("key_AKIAIOSFODNN7EXAMPLF", "aws_key"),  # a word character beside the key
        ("AKIAIOSFODNN7EXAMPLF_old", "aws_key"),
        ("authorization: bearer abcdefghijklmnop0123456789", "bearer"),  # schemes ignore case
        ("BEARER abcdefghijklmnop0123456789", "bearer"),
        ("token=ghp_" + "b" * 36 + "_x", "github_token"),
        ("card " + "4111 1111 1111 1111".translate(FULLWIDTH), "card"),
        # The re-probe's spellings:
        ("github_pat_" + "A1b2" * 15, "github_token"),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----", "private_key"),
        ("4111.1111.1111.1111", "card"),
        ("4111\u00a01111\u00a01111\u00a01111", "card"),
    ],
)
def test_spellings_an_attackers_probe_found_are_redacted(text: str, kind: str) -> None:
    redactor = _redactor()
    assert redactor.may_hold_secrets(orjson.dumps({"a": text}))
    found, count = _redacted({"a": text}, redactor)
    assert count == 1
    assert f"[REDACTED:{kind}:" in found["a"]


def test_a_json_escape_in_the_body_sends_the_arguments_to_the_walk() -> None:
    # `\u0065yJ…` is a JWT once parsed: the body search cannot see it, so it must not skip.
    raw = b'{"text":"' + JWT.replace("eyJ", "\\u0065yJ").encode() + b'"}'
    redactor = _redactor()
    assert redactor.may_hold_secrets(raw)
    found, count = _redacted(orjson.loads(raw), redactor)
    assert (count, JWT in str(found)) == (1, False)


def test_configured_paths_match_keys_in_any_case() -> None:
    found, count = _redacted({"Password": "hunter2", "creds": {"PASSWORD": "x"}}, _redactor(["$..password"]))
    assert count == 2
    assert "hunter2" not in str(found)


def test_what_was_replaced_is_collected_and_scrubbed_from_reasons_whole_or_cut() -> None:
    redactor = _redactor(["$..email"], iban=True)
    struct = Struct()
    struct.update({"contact": {"email": "private.person@hidden.example"}, "iban": "DE89370400440532013000"})
    secrets: list[str] = []
    assert redactor.struct(struct, secrets) == 2
    assert sorted(secrets) == ["DE89370400440532013000", "private.person@hidden.example"]
    reason = "destinations not named in the task: 'DE8937040\u2026', 'private.person@hidden.example' and 'pin-1...'"
    scrubbed = redactor.scrub(reason, secrets)
    assert "DE8937" not in scrubbed
    assert "private.person" not in scrubbed
    assert scrubbed.count("[REDACTED:quoted:") == 2
    assert redactor.scrub("score 12 for 'ab'", ["ab", "12"]) == f"score 12 for {placeholder('quoted', 'ab')}"


def test_names_are_redacted_and_the_event_reasons_that_quote_them() -> None:
    action = policy_pb2.Action(tool="AKIAIOSFODNN7EXAMPL2", resource="https://ghp_" + "c" * 36 + "@example.com/x")
    secrets: list[str] = []
    _redactor().names(action, secrets)
    assert "AKIA" not in action.tool
    assert "ghp_" not in action.resource
    assert action.resource.endswith("@example.com/x")
    event = graph_pb2.Event(block_reason=f"tool {secrets[0]!r} is not in the tools/list")
    event.verifier.reasons.append(f"destination {secrets[1][:20]}\u2026")
    _redactor().scrub_event(event, secrets)
    assert "AKIA" not in event.block_reason
    assert "ghp_" not in event.verifier.reasons[0]


def test_arguments_are_redacted_before_they_are_cut() -> None:
    # Cut first, a private key lost its END line and no pattern found the rest.
    key = "-----BEGIN RSA PRIVATE KEY-----\n" + "A" * 70_000 + "\n-----END RSA PRIVATE KEY-----"
    action = policy_pb2.Action(tool="t")
    action.arguments.update({"a_key": key, "b_notes": "x" * 66_000})
    data = encode_event(graph_pb2.Event(event_id="e"), action, redactor=_redactor())
    stored = graph_pb2.Event.FromString(data)
    assert stored.arguments_truncated
    assert not stored.HasField("verifier")  # scrubbing reasons sets nothing
    assert "AAAAAAAAAA" not in str(stored.action.arguments)
    assert "[REDACTED:private_key:" in str(stored.action.arguments)


def test_a_secret_in_an_object_key_is_redacted_in_both_copies() -> None:
    key = SECRETS["aws_key"]
    found, count = _redacted({key: "v", "nested": {key: 1}})
    assert count == 2
    assert key not in str(found)
    copy, count = _redactor().json({key: "v", "nested": {key: 1}})
    assert count == 2
    assert key not in str(copy)
    assert list(copy["nested"]) == [placeholder("aws_key", key)]


def test_secret_field_names_are_redacted_by_default_in_any_case_at_any_depth() -> None:
    # An attacker's probe: an A2A push config's token and credentials, like a password,
    # match no pattern and were journaled in clear.
    arguments = {
        "config": {
            "url": "https://hooks.example/x",
            "Token": "opaque-123",
            "authentication": {"credentials": "s3cr3t"},
        },
        "login": {"PASSWORD": "hunter2", "user": "ada"},
        "page_token": "next-7",
    }
    shown, count = _redacted(arguments)
    assert count == 3
    assert shown["config"]["Token"].startswith("[REDACTED:field:")
    assert shown["config"]["authentication"]["credentials"].startswith("[REDACTED:field:")
    assert shown["login"]["PASSWORD"].startswith("[REDACTED:field:")
    assert (shown["config"]["url"], shown["login"]["user"], shown["page_token"]) == (
        "https://hooks.example/x",
        "ada",
        "next-7",
    )
    assert _redactor().json(arguments)[0] == shown  # both copies alike
    # The body search sends such a body to the walk, whatever the key's case.
    assert _redactor().may_hold_secrets(b'{"config":{"TOKEN":"opaque-123"}}')
    assert not _redactor().may_hold_secrets(b'{"page_token":"next-7","tokens":3}')
    # A configured path still says so.
    assert _redacted({"token": "x"}, _redactor(("$..token",)))[0]["token"].startswith("[REDACTED:path:")


def test_decimals_are_not_cards() -> None:
    assert _redactor().text("pi is 3.141592653589793 and e 2.718281828459045") == (
        "pi is 3.141592653589793 and e 2.718281828459045",
        0,
    )


#: The JWT expression `_jwts` replaces (it scanned to the end of a run from every `eyJ`).
_JWT_AS_ONE_EXPRESSION = re.compile(r"(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def test_the_one_pass_jwt_finder_finds_what_the_expression_found() -> None:
    import random

    from bastion.proxy._redact import _jwts

    pieces = ["eyJ", "a", "-", "_", ".", " ", "x", "Z9", "..", "eyJhbGciOi", "abcdefghij", "=", "\n"]
    chooser = random.Random(7)  # deterministic: the same 20,000 texts every run
    for _ in range(20_000):
        text = "".join(chooser.choice(pieces) for _ in range(chooser.randint(1, 40)))
        assert _jwts(text) == [m.span() for m in _JWT_AS_ONE_EXPRESSION.finditer(text)], text


@pytest.mark.parametrize("unit", ["-----BEGIN PRIVATE KEY-----", "-eyJ", "_eyJ", "-----BEGIN RSA PRIVATE KEY-----\n"])
def test_text_that_starts_many_secrets_and_ends_none_costs_linear_time(unit: str) -> None:
    # An attacker's probe: one 128 KiB argument of these held the proxy's event loop for
    # 8.5 s (the cost grew with the square of the size). 1 MiB took minutes; now well under
    # a second. The bound is a guard against the square coming back, not a benchmark.
    import time

    text = unit * (1024 * 1024 // len(unit))
    started = time.monotonic()
    redacted, count = Redactor().text(text)
    assert time.monotonic() - started < 20
    assert (redacted, count) == (text, 0)


def test_keys_and_tokens_are_still_found_beside_such_text() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXZhbHVl"
    redacted, count = Redactor().text(f"-eyJ-eyJ x_{jwt} -----BEGIN PRIVATE KEY----- {key} -{jwt}")
    assert count == 3
    assert jwt not in redacted
    assert "MIIEvQ" not in redacted
    assert redacted.count("[REDACTED:jwt:") == 2
    assert redacted.count("[REDACTED:private_key:") == 1


def test_a_body_dense_with_secret_shapes_is_redacted_string_by_string() -> None:
    """200,000 key-shaped tokens in one 4 MiB argument: read one by one, each cost a Python
    call and an HMAC, and every reason was scrubbed of each (1-2 s of the proxy's loop per
    call). Past BULK_CANDIDATES places a body's strings are replaced whole, one placeholder
    each, in the Struct and the JSON copy alike."""
    from bastion.proxy._redact import BULK_CANDIDATES

    redactor = Redactor(secret=b"k" * 32)
    dense = " ".join(f"AKIA{index:016d}" for index in range(BULK_CANDIDATES + 1))
    arguments: dict[str, Any] = {"keys": dense, "note": "no secret here", "nested": [{"token_list": "ghp_" + "a" * 36}]}
    raw = orjson.dumps(arguments)
    bulk = redactor.for_body(raw)
    assert bulk is not None
    assert bulk is not redactor
    assert redactor.for_body(raw) is bulk  # made once
    struct = Struct()
    struct.update(arguments)
    found: list[str] = []
    assert bulk.struct(struct, found) == 2
    copied, count = bulk.json(arguments)
    assert count == 2
    placeholder = copied["keys"]
    assert placeholder.startswith("[REDACTED:bulk:")
    assert struct["keys"] == placeholder
    assert copied["note"] == struct["note"] == "no secret here"
    shown = MessageToDict(struct)
    assert copied["nested"][0]["token_list"] == shown["nested"][0]["token_list"] != "ghp_" + "a" * 36
    assert set(found) == {dense, "ghp_" + "a" * 36}
    # A reason quoting one of the keys is scrubbed by the whole string's placeholder run.
    assert "AKIA0000000000000007" not in bulk.scrub(f"saw {dense[:200]}…", found)


def test_a_body_under_the_bound_is_redacted_secret_by_secret() -> None:
    from bastion.proxy._redact import BULK_CANDIDATES

    redactor = Redactor()
    some = " ".join(f"AKIA{index:016d}" for index in range(BULK_CANDIDATES // 2))
    raw = orjson.dumps({"keys": some})
    assert redactor.for_body(raw) is redactor
    assert redactor.for_body(orjson.dumps({"text": "nothing to see"})) is None
    redacted, count = redactor.text(some)
    assert count == BULK_CANDIDATES // 2
    assert "[REDACTED:bulk:" not in redacted
    # A long run of digits counts once per card's length, not once for the run.
    assert redactor.for_body(orjson.dumps({"digits": "1234 5678 9012 3456 " * BULK_CANDIDATES * 4})) is not redactor


def test_scrubbing_a_long_secret_from_a_reason_quoting_its_start_costs_linear_time() -> None:
    # An attacker's probe: a 400 KB `Bearer …` value under the key `Bearer`; the verifier's
    # reason quoted the key, and scrub tried every cut length of the secret, each a copy:
    # 10 s of the proxy's loop (a 1 MB one, 85 s).
    import time

    redactor = Redactor()
    secret = "Bearer " + "A" * (1 << 20)
    reason = "argument 'Bearer' too large to inspect (1048583 bytes)"
    started = time.monotonic()
    assert redactor.scrub(reason, [secret]) == reason
    cut = redactor.scrub(f"saw {secret[:40]}… and {secret[:9]}...", [secret])
    assert time.monotonic() - started < 5
    shown = redactor.placeholder("quoted", secret)
    assert cut == f"saw {shown} and {shown}"


def test_cut_quotes_are_scrubbed_as_every_cut_length_did() -> None:
    """The one-pass scrub against the loop over every cut length it replaced, on 20,000
    deterministic texts quoting a secret whole, cut with a mark, or cut without one."""
    import random

    from bastion.proxy._redact import _CUT_MARKS, MIN_QUOTED

    redactor = Redactor(secret=b"k" * 32)

    def every_cut_length(text: str, secret: str) -> str:
        shown = redactor.placeholder("quoted", secret)
        text = text.replace(secret, shown)
        for end in range(len(secret) - 1, MIN_QUOTED - 1, -1):
            for mark in _CUT_MARKS:
                text = text.replace(secret[:end] + mark, shown)
        return text

    chooser = random.Random(3)
    for _ in range(20_000):
        secret = "".join(chooser.choice("ab1") for _ in range(chooser.randint(MIN_QUOTED + 1, 14)))
        pieces = []
        for _ in range(chooser.randint(1, 4)):
            cut = secret[: chooser.randint(1, len(secret))]
            pieces.append(chooser.choice(["x", " ", "'", cut, cut + chooser.choice(["…", "...", ""])]))
        text = "".join(pieces)
        assert redactor.scrub(text, [secret]) == every_cut_length(text, secret), (secret, text)


def test_a_jwt_holding_another_secret_shape_is_one_placeholder() -> None:
    # When the other patterns went first, `-sk-…` inside a segment left the header and the
    # signature around an API key's placeholder (an attacker's probe).
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx-sk-ABCDEFGHIJKLMNOPQRSTUVWX.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    redacted, count = Redactor().text(f"token={jwt} and {jwt.replace('-sk-', '_AKIA')}")
    assert count == 2
    assert redacted.count("[REDACTED:jwt:") == 2
    assert "eyJ" not in redacted
    assert "c2ln" not in redacted
