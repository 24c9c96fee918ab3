"""Parsing and validating AgentPolicy documents, and policy/schema.json."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bastion import ConfigError, PolicyValidationError
from bastion.policy import PolicyDocument, load_policy, parse_policy, validate_policy
from bastion.policy._args import ArgConstraint
from bastion.policy._document import Budget, Limits, Loop, Match, Metadata, Rule, Spec, Taint, Verifier, field_names

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = ROOT / "policy" / "schema.json"
DEMO_PATH = ROOT / "examples" / "policies" / "demo.yaml"

# The full document of DESIGN §5: the schema must know every field of it.
DESIGN_EXAMPLE = (ROOT / "examples" / "policies" / "payments.yaml").read_text()


def _document(**spec: Any) -> dict[str, Any]:
    rule = {"id": "r1", "match": {"agents": ["*"], "tools": ["demo__add"]}, "effect": "allow"}
    return {
        "apiVersion": "bastion.dev/v1",
        "kind": "AgentPolicy",
        "metadata": {"name": "demo", "version": 1},
        "spec": {"default": "deny", "rules": [rule], **spec},
    }


def _rejection(data: object) -> str:
    with pytest.raises(PolicyValidationError) as caught:
        validate_policy(data)
    return str(caught.value)


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


# --- valid documents ------------------------------------------------------------------


def test_valid_document_parses_into_rules_with_defaults_filled_in() -> None:
    document = parse_policy(
        """
        apiVersion: bastion.dev/v1
        kind: AgentPolicy
        metadata: {name: demo, version: 3}
        spec:
          rules:
            - id: allow-add
              description: adding is harmless
              match: {tools: ["demo__add"]}
              effect: allow
            - id: approve-deletes
              match: {agents: ["ops-*"], tools: ["demo__delete_*"]}
              effect: require_approval
        """
    )
    assert (document.metadata.name, document.metadata.version) == ("demo", 3)
    assert document.spec.default == "deny"
    assert [rule.id for rule in document.spec.rules] == ["allow-add", "approve-deletes"]
    assert document.spec.rules[0].match.agents == ("*",)
    assert document.spec.rules[1].effect == "require_approval"


def test_example_demo_policy_allows_add_and_explicitly_denies_delete_file() -> None:
    document = load_policy(DEMO_PATH)
    assert (document.metadata.name, document.metadata.version, document.spec.default) == ("demo", 1, "deny")
    effects = {rule.id: (rule.match.tools, rule.effect) for rule in document.spec.rules}
    assert effects["no-file-deletes"] == (("demo__delete_file",), "deny")
    assert ("demo__add",) in [tools for tools, effect in effects.values() if effect == "allow"]


def test_json_text_is_accepted_as_yaml() -> None:
    assert isinstance(parse_policy(json.dumps(_document())), PolicyDocument)


# --- unknown fields and wrong values ---------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(specs={}), "policy 'demo' v1: unknown field 'specs' (did you mean 'spec'?)"),
        (
            lambda d: d["metadata"].update(nmae="x"),
            "policy 'demo' v1: unknown field 'nmae' in 'metadata' (did you mean 'name'?)",
        ),
        (
            lambda d: d["spec"].update(rule=[]),
            "policy 'demo' v1: unknown field 'rule' in 'spec' (did you mean 'rules'?)",
        ),
        (
            lambda d: d["spec"]["rules"][0].update(efect=d["spec"]["rules"][0].pop("effect")),
            "policy 'demo' v1 rule 'r1': unknown field 'efect' (did you mean 'effect'?)",
        ),
        (
            lambda d: d["spec"]["rules"][0]["match"].update(tool=["demo__x"]),
            "policy 'demo' v1 rule 'r1': unknown field 'tool' in 'match' (did you mean 'tools'?)",
        ),
    ],
    ids=["top", "metadata", "spec", "rule", "match"],
)
def test_unknown_field_at_each_level_names_policy_rule_and_field_with_a_suggestion(mutate: Any, expected: str) -> None:
    document = _document()
    mutate(document)
    assert expected in _rejection(document)


def test_unknown_field_without_a_close_match_lists_the_known_fields() -> None:
    document = _document()
    document["spec"]["rules"][0]["zzz"] = 1
    assert (
        "unknown field 'zzz' (expected one of: id, description, match, when, args, effect, shadow_effect, steer, cost)"
        in _rejection(document)
    )


def test_unknown_field_with_control_characters_is_shown_escaped() -> None:
    document = _document()
    document["spec"]["rules"][0]["\x1b[31mred"] = 1
    message = _rejection(document)
    assert "\x1b" not in message
    assert "unknown field '\\x1b[31mred'" in message


def test_misspelt_effect_value_suggests_the_right_one() -> None:
    document = _document()
    document["spec"]["rules"][0]["effect"] = "alow"
    message = _rejection(document)
    expected = "'allow', 'deny', 'require_approval', 'queue', 'shadow'"
    assert f"rule 'r1': field 'effect' must be one of {expected}, not 'alow'" in message
    assert "(did you mean 'allow'?)" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("apiVersion", "bastion.dev/v2", "field 'apiVersion' must be 'bastion.dev/v1', not 'bastion.dev/v2'"),
        ("kind", "Policy", "field 'kind' must be 'AgentPolicy', not 'Policy'"),
    ],
)
def test_wrong_api_version_or_kind_is_rejected(field: str, value: str, expected: str) -> None:
    document = _document()
    document[field] = value
    assert expected in _rejection(document)


def test_missing_required_fields_are_named() -> None:
    message = _rejection({"apiVersion": "bastion.dev/v1", "kind": "AgentPolicy", "metadata": {"name": "demo"}})
    assert "missing required field 'metadata.version'" in message
    assert "missing required field 'spec'" in message


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"name": "Demo_Policy", "version": 1}, "must be a DNS label"),
        ({"name": "Demo_Policy", "version": 1}, "(e.g. 'demo-policy')"),
        ({"name": "demo", "version": 0}, "field 'metadata.version': input should be greater than or equal to 1"),
        ({"name": "demo", "version": "1"}, "field 'metadata.version': input should be a valid integer"),
        ({"name": "demo", "version": True}, "field 'metadata.version': input should be a valid integer"),
    ],
)
def test_bad_metadata_is_rejected(metadata: dict[str, Any], expected: str) -> None:
    document = _document()
    document["metadata"] = metadata
    assert expected in _rejection(document)


def test_duplicate_rule_ids_are_rejected() -> None:
    document = _document()
    document["spec"]["rules"].append({"id": "r1", "match": {"tools": ["*"]}, "effect": "deny"})
    assert "rule 'r1' (rule #2) reuses the id of rule #1; rule ids must be unique" in _rejection(document)


def test_rule_id_default_is_reserved_for_the_fallthrough() -> None:
    document = _document()
    document["spec"]["rules"][0]["id"] = "default"
    assert "rule id 'default' is reserved" in _rejection(document)


def test_match_must_name_agents_tools_resources_or_prompts() -> None:
    document = _document()
    document["spec"]["rules"][0]["match"] = {}
    assert "rule 'r1': 'match' must list 'agents', 'tools', 'resources', 'prompts' or 'a2a'" in _rejection(document)


@pytest.mark.parametrize("field", ["tools", "resources", "prompts", "a2a"])
def test_a_null_target_list_is_refused_rather_than_read_as_every_action(field: str) -> None:
    document = _document()
    document["spec"]["rules"][0]["match"] = {"agents": ["a"], field: None}
    assert f"'{field}' is null" in _rejection(document)


def test_resource_patterns_may_hold_slashes_but_must_name_a_server() -> None:
    document = _document()
    document["spec"]["rules"][0]["match"] = {"resources": ["docs__file:///public/*"], "prompts": ["demo__greet"]}
    validate_policy(document)
    document["spec"]["rules"][0]["match"] = {"resources": ["file:///public/x"]}
    assert "can never match" in _rejection(document)


def test_empty_pattern_list_is_rejected_because_it_matches_nothing() -> None:
    document = _document()
    document["spec"]["rules"][0]["match"]["agents"] = []
    assert "field 'match.agents': an empty list matches nothing" in _rejection(document)


def test_every_problem_is_reported_at_once() -> None:
    document = _document()
    document["kind"] = "Policy"
    document["spec"]["rules"][0]["effect"] = "maybe"
    assert len(_rejection(document).splitlines()) == 2


# --- the whole language -------------------------------------------------------------


def test_design_example_loads_with_every_stanza_carried() -> None:
    document = parse_policy(DESIGN_EXAMPLE)
    rule = document.spec.rules[0]
    assert rule.when == "args.amount <= 100 && args.currency in ['USD','EUR']"
    assert rule.args is not None
    assert rule.args["*"] == "deny"
    assert document.spec.verifier is not None
    assert document.spec.verifier.fallback == "block"
    assert document.spec.limits is not None
    assert document.spec.limits.rate == "60/m"
    assert document.spec.taint is not None
    assert document.spec.taint.on_tainted_sink == "require_approval"


@pytest.mark.parametrize(
    ("where", "feature", "value", "expected"),
    [
        ("rule", "when", None, "rule 'r1': 'when' is null; write a value or omit the field"),
        ("rule", "when", 5, "field 'when': input should be a valid string"),
        ("rule", "args", None, "rule 'r1': 'args' is null"),
        ("rule", "args", {}, "field 'args': 'args' is empty"),
        ("rule", "args", {"amount": {"max": None}}, "field 'args.amount': 'max' is null"),
        ("spec", "limits", None, "field 'spec': 'limits' is null"),
        ("spec", "limits", {}, "'limits' must set 'rate', 'budget' or 'loop'"),
        ("spec", "verifier", {}, "missing required field 'spec.verifier.name'"),
        ("spec", "taint", {"sinks": ["email__send"]}, "missing required field 'spec.taint.untrusted_sources'"),
    ],
)
def test_stanzas_written_empty_or_null_are_refused_never_ignored(
    where: str, feature: str, value: object, expected: str
) -> None:
    document = _document()
    target = document["spec"]["rules"][0] if where == "rule" else document["spec"]
    target[feature] = value
    assert expected in _rejection(document)


# --- patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "pattern", "expected"),
    [
        ("tools", "", "empty tool pattern"),
        ("agents", "", "empty agent pattern"),
        ("tools", "demo__ add", "contains whitespace at position 6"),
        ("agents", "agent\t1", "contains whitespace"),
        ("tools", "demo/add", "contains '/'"),
        ("tools", "demo\\add", "contains '\\'"),
        ("tools", "demo__add\x00", "control or invisible character U+0000"),
        ("agents", "a\x1b[31m", "control or invisible character U+001B"),
        ("tools", "demo__add\u202e", "control or invisible character U+202E"),
        ("tools", "demo__a\u200bdd", "control or invisible character U+200B"),
        ("tools", "add", "can never match: policies name tools 'server__tool' (e.g. 'demo__add'"),
        ("tools", "d" * 300, "the limit is 256"),
    ],
)
def test_bad_patterns_are_rejected_with_the_reason(field: str, pattern: str, expected: str) -> None:
    document = _document()
    document["spec"]["rules"][0]["match"][field] = ["ok__fine" if field == "tools" else "ok", pattern]
    message = _rejection(document)
    assert f"rule 'r1': field 'match.{field}[1]'" in message
    assert expected in message


@pytest.mark.parametrize("pattern", ["*", "demo__*", "*__delete_file", "demo__?dd", "demo*", "stripe__refund.v2"])
def test_good_tool_patterns_are_accepted(pattern: str) -> None:
    document = _document()
    document["spec"]["rules"][0]["match"]["tools"] = [pattern]
    assert validate_policy(document).spec.rules[0].match.tools == (pattern,)


# --- YAML hazards -------------------------------------------------------------------------


def test_duplicate_yaml_keys_are_rejected_instead_of_last_one_winning() -> None:
    text = yaml.safe_dump(_document()).replace("effect: allow", "effect: deny\n    effect: allow")
    with pytest.raises(PolicyValidationError, match="found duplicate key 'effect'"):
        parse_policy(text)


def test_yaml_aliases_are_rejected() -> None:
    text = "a: &agents ['*']\nb: *agents\n"
    with pytest.raises(PolicyValidationError, match=r"YAML aliases \(\*name\) are not allowed"):
        parse_policy(text)


_NUMBERED = """apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {{name: numbers, version: {version}}}
spec:
  default: deny
  rules: [{{id: r1, match: {{tools: [demo__add]}}, effect: allow}}]
  verifier: {{name: reference, threshold: {threshold}}}
"""


@pytest.mark.parametrize(
    ("version", "threshold"),
    [
        ("010", "0.5"),
        ("0x1F", "0.5"),
        ("1_000", "0.5"),
        ("1:30", "0.5"),
        ("9" * 5000, "0.5"),
        ("1", "0_0.5"),
        ("1", "0:0.5"),
        ("1", "1" * 40 + ".5"),
        ("1", ":".join(["1"] * 1000)),
    ],
)
def test_numbers_yaml_readers_disagree_on_are_refused(version: str, threshold: str) -> None:
    """YAML 1.1 read `version: 010` as 8 (stored as v8, its text saying 010), `0x1F` as 31,
    `1:30` as 90; a 5,000-digit one was a 500, and a long sexagesimal cost 50 s of CPU."""
    with pytest.raises(PolicyValidationError, match="not a plain decimal"):
        parse_policy(_NUMBERED.format(version=version, threshold=threshold))


def test_plain_numbers_and_quoted_strings_read_as_written() -> None:
    document = parse_policy(_NUMBERED.format(version="+12", threshold="5.0e-1"))
    assert (document.metadata.version, document.spec.verifier and document.spec.verifier.threshold) == (12, 0.5)
    with pytest.raises(PolicyValidationError, match="valid integer"):
        parse_policy(_NUMBERED.format(version="'010'", threshold="0.5"))


_ENUM_RULE = """\
apiVersion: bastion.dev/v1
kind: AgentPolicy
metadata: {{name: m, version: 1}}
spec:
  default: allow
  rules: [{{id: r1, match: {{tools: [demo__add]}}, args: {{verify: {{enum: [{values}]}}}}, effect: deny}}]
"""


@pytest.mark.parametrize("word", ["no", "off", "yes", "on", "No", "OFF", "Yes", "ON"])
def test_yaml_1_1_booleans_are_refused_not_read_as_booleans(word: str) -> None:
    """`enum: [no, off]` in a deny rule was stored as [false, false]: the strings "no" and
    "off" were then allowed (an attacker's probe)."""
    with pytest.raises(PolicyValidationError, match=f"'{word}' is read as a boolean by YAML 1.1"):
        parse_policy(_ENUM_RULE.format(values=f"{word}, x"))


def test_true_false_and_quoted_words_read_as_written() -> None:
    document = parse_policy(_ENUM_RULE.format(values="'no', \"off\", false, True"))
    assert document.spec.rules[0].args is not None
    assert document.spec.rules[0].args["verify"].enum == ("no", "off", False, True)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [("<<: {effect: allow}", r"merge keys \(<<\) are not allowed"), ("effect: !!binary YWxsb3c=", "!!binary")],
)
def test_merge_keys_and_binary_values_are_refused(snippet: str, expected: str) -> None:
    text = "apiVersion: bastion.dev/v1\nkind: AgentPolicy\nmetadata: {name: m, version: 1}\n"
    text += f"spec:\n  default: deny\n  rules: [{{id: r1, match: {{tools: [demo__add]}}, {snippet}}}]\n"
    with pytest.raises(PolicyValidationError, match=expected):
        parse_policy(text)


def test_yaml_syntax_error_names_the_source_and_line() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy("spec: [\n", source="bad.yaml")
    assert str(caught.value).startswith("bad.yaml: not valid YAML")
    assert "line 2" in str(caught.value)


@pytest.mark.parametrize(("text", "kind"), [("", "an empty document"), ("- 1\n", "list"), ("7", "int")])
def test_document_that_is_not_a_mapping_is_rejected(text: str, kind: str) -> None:
    with pytest.raises(PolicyValidationError, match=f"must be a mapping .* \\(got {kind}\\)"):
        parse_policy(text)


def test_oversized_document_is_rejected_before_parsing() -> None:
    with pytest.raises(PolicyValidationError, match="the limit is"):
        parse_policy("#" * (1024 * 1024 + 1))


def test_deeply_nested_yaml_is_a_validation_error_not_a_crash() -> None:
    with pytest.raises(PolicyValidationError):
        parse_policy("[" * 100_000)


# --- files -------------------------------------------------------------------------------


def test_load_policy_prefixes_every_problem_with_the_file(tmp_path: Path) -> None:
    document = _document()
    document["spec"]["rules"][0]["efect"] = "allow"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(PolicyValidationError) as caught:
        load_policy(path)
    lines = str(caught.value).splitlines()
    assert lines
    assert all(line.startswith(f"{path}: policy 'demo' v1 rule 'r1': ") for line in lines)


def test_missing_policy_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"policy file {path} not found"):
        load_policy(path)


# --- schema.json --------------------------------------------------------------------------


def test_schema_is_valid_json_schema_and_accepts_the_examples() -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    validator.check_schema(_schema())
    assert list(validator.iter_errors(yaml.safe_load(DEMO_PATH.read_text(encoding="utf-8")))) == []
    assert list(validator.iter_errors(yaml.safe_load(DESIGN_EXAMPLE))) == []


def test_schema_accepts_costs_and_a_budget_of_cost_alone() -> None:
    document = _document(limits={"budget": {"cost": 2.5, "window": "1d"}})
    document["spec"]["rules"][0]["cost"] = 0.25
    assert list(jsonschema.Draft202012Validator(_schema()).iter_errors(document)) == []
    assert validate_policy(document).spec.rules[0].cost == 0.25


_STRUCTURAL_MISTAKES: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown-field": lambda d: d.update(specs={}),
    "bad-effect": lambda d: d["spec"]["rules"][0].update(effect="alow"),
    "reserved-id": lambda d: d["spec"]["rules"][0].update(id="default"),
    "bad-glob": lambda d: d["spec"]["rules"][0]["match"].update(tools=["demo/add"]),
    "bad-name": lambda d: d["metadata"].update(name="Demo_Policy"),
    "empty-match": lambda d: d["spec"]["rules"][0].update(match={}),
    "budget-without-calls-or-cost": lambda d: d["spec"].update(limits={"budget": {"window": "1d"}}),
    "negative-cost": lambda d: d["spec"]["rules"][0].update(cost=-1),
}


@pytest.mark.parametrize("mistake", sorted(_STRUCTURAL_MISTAKES))
def test_schema_rejects_what_the_parser_rejects_structurally(mistake: str) -> None:
    document = _document()
    _STRUCTURAL_MISTAKES[mistake](document)
    assert list(jsonschema.Draft202012Validator(_schema()).iter_errors(document))
    with pytest.raises(PolicyValidationError):
        validate_policy(document)


def test_schema_and_models_know_the_same_fields_at_every_level() -> None:
    schema = _schema()
    rule = schema["$defs"]["rule"]
    levels: list[tuple[dict[str, Any], type[BaseModel]]] = [
        (schema, PolicyDocument),
        (schema["properties"]["metadata"], Metadata),
        (schema["properties"]["spec"], Spec),
        (rule, Rule),
        (rule["properties"]["match"], Match),
        (schema["$defs"]["argConstraint"], ArgConstraint),
        (schema["$defs"]["limits"], Limits),
        (schema["$defs"]["limits"]["properties"]["budget"], Budget),
        (schema["$defs"]["limits"]["properties"]["loop"], Loop),
        (schema["$defs"]["verifier"], Verifier),
        (schema["$defs"]["taint"], Taint),
    ]
    for level, model in levels:
        assert level["additionalProperties"] is False
        assert sorted(level["properties"]) == sorted(field_names(model)), model.__name__
        required = [info.alias or name for name, info in model.model_fields.items() if info.is_required()]
        assert sorted(level.get("required", [])) == sorted(required), model.__name__


# --- properties ---------------------------------------------------------------------------

_FIELD_NAMES = ["apiVersion", "kind", "metadata", "spec", "name", "version", "default", "rules", "id", "match"]
_FIELD_NAMES += ["agents", "tools", "effect", "description", "when", "args", "limits", "verifier", "taint"]
_KEYS = st.sampled_from(_FIELD_NAMES) | st.text(max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["bastion.dev/v1", "AgentPolicy", "allow", "deny", "require_approval", "*", "demo__add", "r1"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS | st.integers(), inner, max_size=5),
    max_leaves=25,
)
_RULES = st.lists(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["r1", "r2", "default"]) | st.text(max_size=6)},
        optional={"match": _VALUES, "effect": _VALUES, "when": _VALUES, "zz": _VALUES},
    )
    | _VALUES,
    max_size=4,
)


def _parses_or_explains(parse: Callable[[Any], PolicyDocument], value: object) -> None:
    outcome: PolicyDocument | str
    try:
        outcome = parse(value)
    except PolicyValidationError as exc:
        outcome = str(exc)
    assert isinstance(outcome, PolicyDocument) or outcome  # an error must explain itself


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_arbitrary_data_never_crashes_the_validator(value: object) -> None:
    _parses_or_explains(validate_policy, value)


@settings(max_examples=300, deadline=None)
@given(rules=_RULES, default=_VALUES, metadata=_VALUES)
def test_arbitrary_rules_in_a_well_formed_envelope_never_crash_the_validator(
    rules: list[object], default: object, metadata: object
) -> None:
    document = _document()
    document["spec"]["rules"] = rules
    variant = copy.deepcopy(document)
    variant["spec"]["default"] = default
    variant["metadata"] = metadata
    _parses_or_explains(validate_policy, document)
    _parses_or_explains(validate_policy, variant)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | _VALUES.map(lambda value: yaml.safe_dump(value, default_flow_style=True)))
def test_arbitrary_text_never_crashes_the_parser(text: str) -> None:
    _parses_or_explains(parse_policy, text)


def test_a_version_beyond_int64_is_refused_not_a_crash_later() -> None:
    document = _document()
    document["metadata"]["version"] = 2**64
    assert "field 'metadata.version': input should be less than or equal to 9223372036854775807" in _rejection(document)
