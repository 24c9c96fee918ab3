"""Parse and validate AgentPolicy documents: phases 1 and 2 of parse → validate → compile → evaluate.

A document is YAML in the shape of DESIGN §5 (JSON Schema: policy/schema.json). Parsing
is strict: duplicate keys, YAML aliases, unknown fields and wrong types are all errors,
and each error names the policy, the rule and the field and says how to fix it:

    policy 'demo' v1 rule 'r1': unknown field 'efect' (did you mean 'effect'?)

Checks go as far as load time can: a `when` expression must compile as CEL and name only
known variables (policy/_cel.py), argument constraints must be able to match and their
patterns must not backtrack for seconds (policy/_args.py). The `limits`, `verifier` and
`taint` stanzas and a rule's `steer` message and `cost` are validated as strictly and carried
into every decision (docs/policies.md says which of them the proxy enforces today).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from bastion._errors import ConfigError, PolicyValidationError

from ._args import CONSTRAINT_TAG, KEYWORD_TAG, ArgConstraint, ArgMap, depth_problem, refuse_nulls
from ._args import TypeName as ArgTypeName
from ._cel import condition_problem

API_VERSION = "bastion.dev/v1"
KIND = "AgentPolicy"
EffectName = Literal["allow", "deny", "require_approval", "queue", "shadow"]
#: What a `shadow` rule would have decided; it is recorded, never enforced.
ShadowEffectName = Literal["allow", "deny", "require_approval", "queue"]
DefaultName = Literal["allow", "deny"]
FallbackName = Literal["block", "allow", "queue"]
TaintEffectName = Literal["deny", "require_approval", "queue"]

#: Rule ids name the fallthrough decision "default" (policy.proto), so no rule may take it.
RESERVED_RULE_ID = "default"

# A policy is a few kilobytes; the cap keeps a hostile or mistaken file from costing
# memory and time before it is even validated.
MAX_DOCUMENT_CHARS = 1024 * 1024
_MAX_PATTERN_CHARS = 256
_MAX_REPORTED = 20

_POLICY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_STEER_CHARS = 1024
_RATE = re.compile(r"[1-9][0-9]{0,8}/[smhd]")
_DURATION = re.compile(r"[1-9][0-9]{0,8}(?:ms|s|m|h|d)")
_VERIFIER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Limits are counted exactly: costs in millionths, as integers that Redis's Lua (doubles)
# holds exactly up to 2**53, so a cost or a cost budget stays within 10**9 units.
MAX_COST = 1e9
_MAX_BUDGET_CALLS = 10**12
# A loop of more identical calls than this is not what loop detection is for, and every
# proxy keeps that many timestamps per repeated call.
_MAX_SAME_CALL = 10_000


def _check_pattern(value: str, what: str, separators: str = "/\\") -> str:
    if not value:
        raise ValueError(f"empty {what} pattern; use '*' to match every {what}")
    if len(value) > _MAX_PATTERN_CHARS:
        raise ValueError(f"{what} pattern is {len(value)} characters long; the limit is {_MAX_PATTERN_CHARS}")
    for position, char in enumerate(value):
        if char.isspace():
            problem = "whitespace"
        elif char in separators:
            problem = f"'{char}'"
        elif unicodedata.category(char).startswith("C"):
            # Cc (control) but also Cf: zero-width and bidi-override characters make a
            # pattern read differently from what it matches.
            problem = f"the control or invisible character U+{ord(char):04X}"
        else:
            continue
        raise ValueError(f"{what} pattern {value!r} contains {problem} at position {position}; remove it")
    return value


def _check_agent_pattern(value: str) -> str:
    return _check_pattern(value, "agent")


def _check_server_scoped(value: str, what: str, example: str) -> str:
    if "__" not in value and "*" not in value and "?" not in value:
        raise ValueError(
            f"{what} pattern {value!r} can never match: policies name {what}s 'server__{example}' "
            f"(e.g. 'demo__{value}', or '*__{value}' for every server)"
        )
    return value


def _check_tool_pattern(value: str) -> str:
    return _check_server_scoped(_check_pattern(value, "tool"), "tool", "tool")


def _check_prompt_pattern(value: str) -> str:
    return _check_server_scoped(_check_pattern(value, "prompt"), "prompt", "prompt")


def _check_resource_pattern(value: str) -> str:
    # URIs contain '/', so only a backslash is refused as a separator.
    return _check_server_scoped(_check_pattern(value, "resource", "\\"), "resource", "uri")


def _check_a2a_pattern(value: str) -> str:
    # `agent__Operation`: the A2A agent's key in bastion.yaml and the A2A 1.0 method name.
    return _check_server_scoped(_check_pattern(value, "a2a"), "a2a", "SendMessage")


def _check_policy_name(value: str) -> str:
    if _POLICY_NAME.fullmatch(value):
        return value
    suggestion = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63].strip("-")
    hint = f" (e.g. {suggestion!r})" if suggestion and _POLICY_NAME.fullmatch(suggestion) else ""
    raise ValueError(
        f"policy name {value!r} must be a DNS label: 1-63 lowercase letters, digits and '-', "
        f"starting and ending with a letter or digit{hint}"
    )


def _rule_id_key(value: str) -> str:
    """The form under which two rule ids are the same rule: NFKC, casefolded (Unicode's
    NFKC_Casefold, approximately). Decisions, approvals and audit records name a rule by its
    id alone, and a reader, a spreadsheet or a case-insensitive comparison takes
    `Allow-Refunds` and `allow-refunds` for one rule."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def _check_rule_id(value: str) -> str:
    if _rule_id_key(value) == RESERVED_RULE_ID:
        raise ValueError(
            f"rule id {value!r} is reserved for the fallthrough decision ('{RESERVED_RULE_ID}', in any letter case); "
            "choose another id"
        )
    if not _RULE_ID.fullmatch(value):
        raise ValueError(
            f"rule id {value!r} must be 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _check_when(value: str) -> str:
    problem = condition_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_args(value: dict[str, ArgConstraint | str]) -> dict[str, ArgConstraint | str]:
    if not value:
        raise ValueError("'args' is empty; list argument constraints or omit the field")
    problem = depth_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_steer(value: str) -> str:
    if not value.strip():
        raise ValueError("empty steer message; write what the agent should do instead, or omit the field")
    if len(value) > _MAX_STEER_CHARS:
        raise ValueError(f"steer message is {len(value)} characters long; the limit is {_MAX_STEER_CHARS}")
    for position, char in enumerate(value):
        if unicodedata.category(char).startswith("C") and char not in "\n\t":
            raise ValueError(f"steer message contains the control character U+{ord(char):04X} at position {position}")
    return value


def _matching(regex: re.Pattern[str], example: str) -> Any:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{value!r} is not of the form {example}")
        return value

    return AfterValidator(check)


Duration = Annotated[str, Strict(), _matching(_DURATION, "'<number><ms|s|m|h|d>' such as '60s' or '1d'")]


def _non_empty(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise ValueError("an empty list matches nothing; list at least one pattern, or omit the field to match all")
    return values


AgentPatterns = Annotated[tuple[Annotated[str, AfterValidator(_check_agent_pattern)], ...], AfterValidator(_non_empty)]
ToolPatterns = Annotated[tuple[Annotated[str, AfterValidator(_check_tool_pattern)], ...], AfterValidator(_non_empty)]
PromptPatterns = Annotated[
    tuple[Annotated[str, AfterValidator(_check_prompt_pattern)], ...], AfterValidator(_non_empty)
]
ResourcePatterns = Annotated[
    tuple[Annotated[str, AfterValidator(_check_resource_pattern)], ...], AfterValidator(_non_empty)
]
A2aPatterns = Annotated[tuple[Annotated[str, AfterValidator(_check_a2a_pattern)], ...], AfterValidator(_non_empty)]


class _Strict(BaseModel):
    # populate_by_name stays off: `api_version` in a document is a typo, not an alias.
    model_config = ConfigDict(extra="forbid", frozen=True)

    _nulls = model_validator(mode="before")(refuse_nulls)


class Metadata(_Strict):
    name: Annotated[str, AfterValidator(_check_policy_name)]
    # Decisions carry it as an int64 (policy.proto), and the store's canonical JSON as one.
    version: Annotated[int, Strict(), Field(ge=1, le=2**63 - 1)]


class Match(_Strict):
    """Which actions a rule applies to.

    `tools` (`server__tool`), `resources` (`server__<uri>`), `prompts`
    (`server__prompt`) and `a2a` (`agent__Operation`, the A2A 1.0 method name such as
    `billing__SendMessage`) each select one family of actions: a rule that names only
    `tools` never decides a resource read. A rule naming none of the four applies to
    every action of the matched agents. An omitted `agents` list matches every agent.
    """

    agents: AgentPatterns = ("*",)
    tools: ToolPatterns | None = None
    resources: ResourcePatterns | None = None
    prompts: PromptPatterns | None = None
    a2a: A2aPatterns | None = None

    @model_validator(mode="after")
    def _names_something(self) -> Match:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "empty_match",
                "'match' must list 'agents', 'tools', 'resources', 'prompts' or 'a2a' "
                "(write tools: ['*'] to match every tool on purpose)",
            )
        for name in ("tools", "resources", "prompts", "a2a"):
            if name in self.model_fields_set and getattr(self, name) is None:
                # `tools: null` must not quietly turn into "every action".
                raise PydanticCustomError(
                    "null_match", "'{name}' is null; list patterns or omit the field", {"name": name}
                )
        return self


class Rule(_Strict):
    """One rule: it matches when `match`, `args` and `when` all hold (see policy/_engine.py)."""

    id: Annotated[str, AfterValidator(_check_rule_id)]
    description: str | None = None
    match: Match
    when: Annotated[str, Strict(), AfterValidator(_check_when)] | None = None
    args: Annotated[ArgMap, AfterValidator(_check_args)] | None = None
    effect: EffectName
    #: For `effect: shadow` only: the effect recorded as the decision's shadow_effect.
    shadow_effect: ShadowEffectName | None = None
    #: Told to the agent when this rule blocks it (Decision.obligations.steer_message).
    steer: Annotated[str, Strict(), AfterValidator(_check_steer)] | None = None
    #: What one call decided by this rule spends of the policy's cost budget (Decision.cost;
    #: omitted: 1).
    cost: Annotated[float, Strict(), Field(ge=0, le=MAX_COST, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _shadow(self) -> Rule:
        if self.shadow_effect is not None and self.effect != "shadow":
            raise PydanticCustomError(
                "shadow_effect_without_shadow",
                "'shadow_effect' applies only to 'effect: shadow' (this rule's effect is '{effect}'); remove it",
                {"effect": self.effect},
            )
        return self


class Budget(_Strict):
    """Calls and/or cost allowed per `window` (fixed windows aligned to the epoch)."""

    calls: Annotated[int, Strict(), Field(ge=1, le=_MAX_BUDGET_CALLS)] | None = None
    #: The sum of the deciding rules' `cost` allowed per window.
    cost: Annotated[float, Strict(), Field(gt=0, le=MAX_COST, allow_inf_nan=False)] | None = None
    window: Duration

    @model_validator(mode="after")
    def _caps_something(self) -> Budget:
        if self.calls is None and self.cost is None:
            raise PydanticCustomError(
                "empty_budget", "'budget' must set 'calls', 'cost' or both (besides 'window'); or omit it"
            )
        return self


class Loop(_Strict):
    same_call: Annotated[int, Strict(), Field(ge=1, le=_MAX_SAME_CALL)]
    window: Duration


class Limits(_Strict):
    """Per-(tenant, agent) limits of the policy's decisions, enforced by the proxy (proxy/_limits.py)."""

    rate: Annotated[str, Strict(), _matching(_RATE, "'<calls>/<s|m|h|d>' such as '60/m'")] | None = None
    budget: Budget | None = None
    loop: Loop | None = None

    @model_validator(mode="after")
    def _names_something(self) -> Limits:
        if self.rate is None and self.budget is None and self.loop is None:
            raise PydanticCustomError("empty_stanza", "'limits' must set 'rate', 'budget' or 'loop'; or omit it")
        return self


class Verifier(_Strict):
    """Which verifier scores this policy's actions, and what happens when it does not answer."""

    name: Annotated[str, Strict(), _matching(_VERIFIER_NAME, "a lowercase name such as 'reference'")]
    threshold: Annotated[float, Strict(), Field(ge=0, le=1)] | None = None
    timeout_ms: Annotated[int, Strict(), Field(ge=1, le=60_000)] | None = None
    fallback: FallbackName = "block"


class Taint(_Strict):
    """Provenance rules: an allowed call to a sink whose arguments hold data from an
    untrusted source (the proxy's `source:` labels) gets `on_tainted_sink` (policy/_engine.py)."""

    untrusted_sources: ToolPatterns
    sinks: ToolPatterns
    on_tainted_sink: TaintEffectName = "deny"


class Spec(_Strict):
    default: DefaultName = "deny"
    rules: tuple[Rule, ...] = ()
    limits: Limits | None = None
    verifier: Verifier | None = None
    taint: Taint | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> Spec:
        first_seen: dict[str, tuple[int, str]] = {}
        for number, rule in enumerate(self.rules, start=1):
            key = _rule_id_key(rule.id)
            if key not in first_seen:
                first_seen[key] = (number, rule.id)
                continue
            first, first_id = first_seen[key]
            if first_id == rule.id:
                raise PydanticCustomError(
                    "duplicate_rule_id",
                    "rule '{rule}' (rule #{number}) reuses the id of rule #{first}; rule ids must be unique",
                    {"rule": rule.id, "number": number, "first": first},
                )
            raise PydanticCustomError(
                "duplicate_rule_id",
                "rule '{rule}' (rule #{number}) and rule '{other}' (rule #{first}) have ids that differ only in "
                "letter case; rule ids must be unique ignoring case (decisions, approvals and audit records "
                "name a rule by its id alone)",
                {"rule": rule.id, "number": number, "other": first_id, "first": first},
            )
        return self


class PolicyDocument(_Strict):
    """A validated AgentPolicy document; build one with parse_policy / validate_policy / load_policy."""

    api_version: Literal["bastion.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["AgentPolicy"]
    metadata: Metadata
    spec: Spec

    def canonical(self) -> dict[str, Any]:
        """The document as plain JSON data with every default filled in: the input of its digest."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- parse ------------------------------------------------------------------------------


#: Numbers as every YAML and JSON reader reads them alike: plain decimal, bounded in length.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,29})")
_PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][-+]?[0-9]{1,3})?")
#: YAML 1.1's special floats, which the models refuse by name (NaN, Infinity).
_SPECIAL_FLOATS = frozenset({".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"})
_SPECIAL_FLOATS |= {"-" + value[1:] for value in _SPECIAL_FLOATS if value.startswith("+")}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases, and whatever YAML 1.1 reads
    otherwise than a reviewer (or a YAML 1.2 or JSON reader) would.

    PyYAML keeps the last of duplicate keys, so `effect: deny` followed by `effect: allow`
    would silently allow. Aliases are refused because a few of them expand into an
    exponentially large document (the "billion laughs"); policies do not need them.
    Numbers must be plain decimal: YAML 1.1 reads `010` as 8, `0x1F` as 31, `1_000` as
    1000 and `1:30` as 90 (an attacker's probe stored `version: 010` as v8), and a
    sexagesimal of 450,000 fields took 50 s of CPU. Merge keys (`<<`) and `!!binary`
    values are refused: both make a document mean what its text does not show. Booleans
    must be `true` or `false`: YAML 1.1 reads `no`, `off`, `yes` and `on` as booleans too,
    so `enum: [no, off]` in a deny rule stored `[false, false]` and let the strings
    "no" and "off" through (an attacker's probe).
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):  # leaves the peeked event in current_event
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in policies; write the value out",
                self.current_event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<) are not allowed in policies; write the keys out", key_node.start_mark
                )
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _plain_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    if not _PLAIN_INT.fullmatch(text):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{text[:40]!r} is not a plain decimal integer of at most 30 digits (YAML readers disagree on "
            "leading zeros, 0x, 0o, _ and :); write it in decimal, or quote it for a string",
            node.start_mark,
        )
    return int(text)


def _plain_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(node.value)
    if text not in _SPECIAL_FLOATS and not _PLAIN_FLOAT.fullmatch(text):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{text[:40]!r} is not a plain decimal number (YAML readers disagree on _ and :); write it in "
            "decimal, or quote it for a string",
            node.start_mark,
        )
    return float(yaml.SafeLoader.construct_yaml_float(loader, node))


def _plain_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    text = str(node.value)
    if text.lower() not in ("true", "false"):
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{text!r} is read as a boolean by YAML 1.1 and as a string by YAML 1.2 and JSON; write "
            "true or false for a boolean, or quote it for a string",
            node.start_mark,
        )
    return text.lower() == "true"


def _no_binary(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> None:
    raise yaml.constructor.ConstructorError(
        None, None, "!!binary values are not allowed in policies; write the text", node.start_mark
    )


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _plain_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _plain_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _plain_bool)
_StrictLoader.add_constructor("tag:yaml.org,2002:binary", _no_binary)


def _problem(source: str | None, lines: Sequence[str]) -> PolicyValidationError:
    prefix = f"{source}: " if source else ""
    shown = [prefix + line for line in lines[:_MAX_REPORTED]]
    if len(lines) > _MAX_REPORTED:
        shown.append(f"{prefix}... and {len(lines) - _MAX_REPORTED} more problems")
    return PolicyValidationError("\n".join(shown))


def parse_policy(text: str, *, source: str | None = None) -> PolicyDocument:
    """Parse YAML (or JSON) text into a validated document; `source` prefixes error messages."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise _problem(source, [f"policy document is {len(text)} characters; the limit is {MAX_DOCUMENT_CHARS}"])
    try:
        data = _load_yaml(text, source or "<policy>")
    except yaml.YAMLError as exc:
        raise _problem(source, [f"not valid YAML: {exc}"]) from exc
    except RecursionError as exc:
        raise _problem(source, ["not valid YAML: nested too deeply"]) from exc
    return validate_policy(data, source=source)


def _load_yaml(text: str, name: str) -> Any:
    loader = _StrictLoader(text)  # already raises on characters YAML forbids
    loader.name = name  # error marks name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def validate_policy(data: object, *, source: str | None = None) -> PolicyDocument:
    """Validate already-decoded data (e.g. a JSON request body) into a document."""
    if not isinstance(data, Mapping):
        raise _problem(
            source,
            [f"a policy document must be a mapping with apiVersion, kind, metadata and spec (got {_kind_of(data)})"],
        )
    raw = dict(data)
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        # An unknown field is usually a typo that also makes a required one "missing":
        # report the cause first.
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
        problems = [_describe(error, raw) for error in errors]
        raise _problem(source, problems) from exc


def load_policy(path: Path) -> PolicyDocument:
    """Read and validate one policy file; errors are prefixed with the path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"policy file {path} not found (listed under 'policies:' in bastion.yaml)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
    return parse_policy(text, source=str(path))


# --- error messages ---------------------------------------------------------------------

# Object levels of the document, by location with list indexes as "#": used to suggest
# the field the user probably meant.
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): PolicyDocument,
    ("metadata",): Metadata,
    ("spec",): Spec,
    ("spec", "rules", "#"): Rule,
    ("spec", "rules", "#", "match"): Match,
    ("spec", "limits"): Limits,
    ("spec", "limits", "budget"): Budget,
    ("spec", "limits", "loop"): Loop,
    ("spec", "verifier"): Verifier,
    ("spec", "taint"): Taint,
}
# Errors raised by the models above, whose messages already say where and what.
_OWN_MESSAGES = frozenset(
    {"duplicate_rule_id", "empty_match", "shadow_effect_without_shadow", "empty_stanza", "empty_budget"}
)
# Errors whose message needs the field's path in front.
_FIELD_MESSAGES = frozenset({"value_error", "never_matches", "null_field"})
_CHOICES: dict[str, tuple[str, ...]] = {
    "apiVersion": (API_VERSION,),
    "kind": (KIND,),
    "effect": get_args(EffectName),
    "shadow_effect": get_args(ShadowEffectName),
    "default": get_args(DefaultName),
    "fallback": get_args(FallbackName),
    "on_tainted_sink": get_args(TaintEffectName),
    "type": get_args(ArgTypeName),
    KEYWORD_TAG: ("allow", "deny"),
}


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    # Inside `args`, the level is an argument constraint wherever the constraint branch
    # of the constraint-or-keyword union (or an `items`) was being validated.
    if loc and (loc[-1] == CONSTRAINT_TAG or (loc[-1] == "items" and "args" in loc)):
        return ArgConstraint
    return _MODEL_AT.get(_shape(loc))


def field_names(model: type[BaseModel]) -> list[str]:
    """The names a document uses for `model`'s fields (aliases where they differ)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(error: ErrorDetails, raw: Mapping[str, Any]) -> str:
    loc = error["loc"]
    where = _policy_label(raw)
    relative = loc
    if loc[:2] == ("spec", "rules") and len(loc) >= 3 and isinstance(loc[2], int):
        where += " " + _rule_label(raw, loc[2])
        relative = loc[3:]
    return f"{where}: {_detail(error, loc, relative)}"


def _detail(error: ErrorDetails, loc: tuple[int | str, ...], relative: tuple[int | str, ...]) -> str:
    kind = error["type"]
    path = _path(relative)
    if kind == "extra_forbidden":
        parent = _path(relative[:-1])
        inside = f" in '{parent}'" if parent else ""
        model = _model_at(loc[:-1])
        known = field_names(model) if model else []
        # _show, not raw text: the key is the user's, and may hold control characters.
        return f"unknown field {_show(relative[-1])}{inside}{_suggest(str(relative[-1]), known)}"
    if kind == "missing":
        return f"missing required field '{path}'"
    if kind == "literal_error":
        choices = _CHOICES.get(str(loc[-1]), ())
        got = error["input"]
        if len(choices) == 1:
            return f"field '{path}' must be {choices[0]!r}, not {_show(got)}"
        expected = ", ".join(repr(choice) for choice in choices)
        return f"field '{path}' must be one of {expected}, not {_show(got)}{_suggest(str(got), list(choices))}"
    if kind in _FIELD_MESSAGES:
        message = error.get("ctx", {}).get("error", error["msg"]) if kind == "value_error" else error["msg"]
        return f"field '{path}': {message}" if path else str(message)
    if kind in ("model_type", "dict_type") and loc and loc[-1] == CONSTRAINT_TAG:
        got = _show(error["input"])
        return f"field '{path}' must be a constraint such as {{type: string}}, or 'allow' or 'deny' (got {got})"
    if kind == "invalid_key":
        return f"key {_show(loc[-1])} in '{_path(relative[:-1]) or '(top level)'}' must be a string"
    if kind in _OWN_MESSAGES:
        return error["msg"]
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"field '{path}': {message} (got {_show(error['input'])})"


def _policy_label(raw: Mapping[str, Any]) -> str:
    metadata = raw.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    version = metadata.get("version") if isinstance(metadata, Mapping) else None
    label = f"policy {_show(name)}" if isinstance(name, str) and name else "policy (unnamed)"
    if isinstance(version, int) and not isinstance(version, bool) and abs(version) < 10**18:
        label += f" v{version}"
    return label


def _rule_label(raw: Mapping[str, Any], index: int) -> str:
    spec = raw.get("spec")
    rules = spec.get("rules") if isinstance(spec, Mapping) else None
    rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
    rule_id = rule.get("id") if isinstance(rule, Mapping) else None
    return f"rule {_show(rule_id)}" if isinstance(rule_id, str) and rule_id else f"rule #{index + 1}"


def _suggest(got: str, known: list[str]) -> str:
    close = difflib.get_close_matches(got, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (expected one of: {', '.join(known)})" if known else ""


def _shape(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    return tuple("#" if isinstance(part, int) else part for part in loc)


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if part in (CONSTRAINT_TAG, KEYWORD_TAG):
            continue  # the union branch pydantic was trying, not a field the user wrote
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(value: object) -> str:
    return "an empty document" if value is None else type(value).__name__
