"""Parse and validate AgentPolicy documents: phases 1 and 2 of parse → validate → compile → evaluate.

A document is YAML in the shape of DESIGN §5 (JSON Schema: policy/schema.json). Parsing
is strict: duplicate keys, YAML aliases, unknown fields and wrong types are all errors,
and each error names the policy, the rule and the field and says how to fix it:

    policy 'demo' v1 rule 'r1': unknown field 'efect' (did you mean 'effect'?)

The schema knows the whole document, but this version enforces only `spec.default` and
rules made of `match` + `effect`. A document using `when`, `args`, `limits`, `verifier`
or `taint` is refused, never loaded without them: a policy that silently lost a
condition would allow what its author meant to restrict. The refusal is a model
validator, so no `PolicyDocument` carrying those fields can exist at all.
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

API_VERSION = "bastion.dev/v1"
KIND = "AgentPolicy"
EffectName = Literal["allow", "deny", "require_approval"]
DefaultName = Literal["allow", "deny"]

#: Rule ids name the fallthrough decision "default" (policy.proto), so no rule may take it.
RESERVED_RULE_ID = "default"

# A policy is a few kilobytes; the cap keeps a hostile or mistaken file from costing
# memory and time before it is even validated.
MAX_DOCUMENT_CHARS = 1024 * 1024
_MAX_PATTERN_CHARS = 256
_MAX_REPORTED = 20

_POLICY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Known in the schema, enforced by a later version. Values say what the user loses.
_UNSUPPORTED_IN_RULE = {"when": "CEL conditions", "args": "argument constraints"}
_UNSUPPORTED_IN_SPEC = {
    "limits": "rate, budget and loop limits",
    "verifier": "verifier settings",
    "taint": "taint rules",
}


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


def _check_policy_name(value: str) -> str:
    if _POLICY_NAME.fullmatch(value):
        return value
    suggestion = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:63].strip("-")
    hint = f" (e.g. {suggestion!r})" if suggestion and _POLICY_NAME.fullmatch(suggestion) else ""
    raise ValueError(
        f"policy name {value!r} must be a DNS label: 1-63 lowercase letters, digits and '-', "
        f"starting and ending with a letter or digit{hint}"
    )


def _check_rule_id(value: str) -> str:
    if value == RESERVED_RULE_ID:
        raise ValueError(f"rule id {value!r} is reserved for the fallthrough decision; choose another id")
    if not _RULE_ID.fullmatch(value):
        raise ValueError(
            f"rule id {value!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


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


class _Strict(BaseModel):
    # populate_by_name stays off: `api_version` in a document is a typo, not an alias.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Strict):
    name: Annotated[str, AfterValidator(_check_policy_name)]
    version: Annotated[int, Strict(), Field(ge=1)]


class Match(_Strict):
    """Which actions a rule applies to.

    `tools` (`server__tool`), `resources` (`server__<uri>`) and `prompts`
    (`server__prompt`) each select one family of actions: a rule that names only
    `tools` never decides a resource read. A rule naming none of the three applies to
    every action of the matched agents. An omitted `agents` list matches every agent.
    """

    agents: AgentPatterns = ("*",)
    tools: ToolPatterns | None = None
    resources: ResourcePatterns | None = None
    prompts: PromptPatterns | None = None

    @model_validator(mode="after")
    def _names_something(self) -> Match:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "empty_match",
                "'match' must list 'agents', 'tools', 'resources' or 'prompts' "
                "(write tools: ['*'] to match every tool on purpose)",
            )
        for name in ("tools", "resources", "prompts"):
            if name in self.model_fields_set and getattr(self, name) is None:
                # `tools: null` must not quietly turn into "every action".
                raise PydanticCustomError(
                    "null_match", "'{name}' is null; list patterns or omit the field", {"name": name}
                )
        return self


class Rule(_Strict):
    id: Annotated[str, AfterValidator(_check_rule_id)]
    description: str | None = None
    match: Match
    effect: EffectName
    when: Any = None
    args: Any = None

    @model_validator(mode="after")
    def _supported(self) -> Rule:
        _refuse_unsupported(self, _UNSUPPORTED_IN_RULE, where="")
        return self


class Spec(_Strict):
    default: DefaultName = "deny"
    rules: tuple[Rule, ...] = ()
    limits: Any = None
    verifier: Any = None
    taint: Any = None

    @model_validator(mode="after")
    def _supported(self) -> Spec:
        _refuse_unsupported(self, _UNSUPPORTED_IN_SPEC, where="spec.")
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> Spec:
        first_seen: dict[str, int] = {}
        for number, rule in enumerate(self.rules, start=1):
            if rule.id in first_seen:
                raise PydanticCustomError(
                    "duplicate_rule_id",
                    "rule '{rule}' (rule #{number}) reuses the id of rule #{first}; rule ids must be unique",
                    {"rule": rule.id, "number": number, "first": first_seen[rule.id]},
                )
            first_seen[rule.id] = number
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


def _refuse_unsupported(model: BaseModel, features: Mapping[str, str], *, where: str) -> None:
    # Presence counts, even `when: null`: fail closed on anything the author wrote.
    used = [name for name in features if name in model.model_fields_set]
    if used:
        raise PydanticCustomError("unsupported_feature", "{message}", {"message": _unsupported(used, features, where)})


def _unsupported(used: Sequence[str], features: Mapping[str, str], where: str) -> str:
    listed = ", ".join(f"'{where}{name}' ({features[name]})" for name in used)
    verb, them = ("are", "them") if len(used) > 1 else ("is", "it")
    return (
        f"{listed} {verb} not supported by this version of Bastion yet; remove {them} "
        "(a policy is refused rather than enforced without its conditions)"
    )


def _unsupported_problems(raw: Mapping[str, Any]) -> list[str]:
    """Every use of an unsupported feature, found in the raw data.

    The model validators above only run once the rest of their model is valid, so they
    alone would report these one level at a time.
    """
    spec = raw.get("spec")
    if not isinstance(spec, Mapping):
        return []
    label = _policy_label(raw)
    problems = []
    rules = spec.get("rules")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        used = [name for name in _UNSUPPORTED_IN_RULE if isinstance(rule, Mapping) and name in rule]
        if used:
            problems.append(f"{label} {_rule_label(raw, index)}: {_unsupported(used, _UNSUPPORTED_IN_RULE, '')}")
    used = [name for name in _UNSUPPORTED_IN_SPEC if name in spec]
    if used:
        problems.append(f"{label}: {_unsupported(used, _UNSUPPORTED_IN_SPEC, 'spec.')}")
    return problems


# --- parse ------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases.

    PyYAML keeps the last of duplicate keys, so `effect: deny` followed by `effect: allow`
    would silently allow. Aliases are refused because a few of them expand into an
    exponentially large document (the "billion laughs"); policies do not need them.
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
        errors = sorted(
            (error for error in exc.errors() if error["type"] != "unsupported_feature"),
            key=lambda error: error["type"] != "extra_forbidden",
        )
        problems = _unsupported_problems(raw) + [_describe(error, raw) for error in errors]
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
}
# Errors raised by the models above, whose messages already say where and what.
_OWN_MESSAGES = frozenset({"duplicate_rule_id", "empty_match"})
_CHOICES: dict[str, tuple[str, ...]] = {
    "apiVersion": (API_VERSION,),
    "kind": (KIND,),
    "effect": get_args(EffectName),
    "default": get_args(DefaultName),
}


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
        model = _MODEL_AT.get(_shape(loc[:-1]))
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
    if kind == "value_error":
        return f"field '{path}': {error.get('ctx', {}).get('error', error['msg'])}"
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
    if isinstance(version, int) and not isinstance(version, bool):
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
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(value: object) -> str:
    return "an empty document" if value is None else type(value).__name__
