"""Compile validated policies into an immutable PolicySet and decide actions against it.

Phases 3 and 4 of parse → validate → compile → evaluate. Compiling happens once, when
policies are loaded; `PolicySet.evaluate` parses nothing, compiles nothing, does no I/O
and logs nothing, so a decision costs microseconds.

Decision semantics (this version)
---------------------------------
* Input: the action kind (a `bastion.v1.ActionKind` name), the calling agent's id, and
  the action's target named `server__<name>`: the tool (TOOL_CALL, TOOL_LIST), the
  resource URI (RESOURCE_READ, RESOURCE_SUBSCRIBE) or the prompt (PROMPT_GET);
  COMPLETION targets the prompt or resource being completed.
* Every other kind is DENY, "action kind X is not governed by this policy version":
  fail closed. A request without an agent id, server or target is DENY too.
* A rule's `tools`, `resources` and `prompts` lists each select one family of targets;
  a rule naming none of them applies to every family. Tool and prompt patterns match
  case-insensitively, as tool names are validated (so `demo__getWeather` and a rule
  for `demo__getweather` agree; the proxy forwards only names exactly in the
  upstream's live list); resource patterns match URIs case-sensitively.
* Rules are tried in order: every rule of the first policy (bastion.yaml order), then
  the second policy's, and so on. The first rule whose agent patterns match the agent
  and whose pattern for the action's family matches the target decides, with its
  effect: allow → ALLOW, deny → DENY, require_approval → REQUIRE_APPROVAL (anything but
  ALLOW blocks).
* When no rule matches, rule_id is "default" and the effect is DENY unless every loaded
  policy says `default: allow`; the decision names the first default-deny policy (or,
  when all allow, the first policy). With no policy loaded at all, every action is
  DENY, "no policy loaded (default deny)".
* Patterns are globs: `*` matches any run of characters (also empty), `?` exactly one;
  everything else is literal and case-sensitive. An omitted `agents` or `tools` list
  matches everything.
* `bundle_digest` is the sha256 (hex) of the canonical JSON (sorted keys, no spaces,
  defaults filled in) of the list of validated documents in order: the same policies
  give the same digest however the YAML was written. A policy's own digest is that of
  a bundle holding only it, so with one policy loaded the two agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson

from bastion._errors import PolicyValidationError

from ._document import RESERVED_RULE_ID, Match, PolicyDocument, load_policy


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


#: Action kinds that rules decide, and the family of target each names; every other kind is denied.
FAMILY_BY_KIND = {
    "TOOL_CALL": "tool",
    "TOOL_LIST": "tool",
    "RESOURCE_READ": "resource",
    "RESOURCE_SUBSCRIBE": "resource",
    "PROMPT_GET": "prompt",
    "COMPLETION": "",  # the prompt's or the resource's, whichever is being completed
}
GOVERNED_KINDS = frozenset(FAMILY_BY_KIND)
_FAMILIES = ("tool", "resource", "prompt")

_VERBS = {Effect.ALLOW: "allows", Effect.DENY: "denies", Effect.REQUIRE_APPROVAL: "requires approval for"}


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    #: The deciding rule's id, or "default" when no rule decided.
    rule_id: str
    reason: str
    policy_name: str
    policy_version: int
    bundle_digest: str


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    effect: Effect
    #: None matches every agent without running a regex.
    agents: re.Pattern[str] | None
    #: Family → pattern (None: every target of that family); a family absent here is not matched.
    targets: dict[str, re.Pattern[str] | None]
    policy_name: str
    policy_version: int


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    version: int
    default: Effect
    rules: tuple[CompiledRule, ...]
    #: sha256 of this policy alone, as a bundle of one document.
    digest: str


@dataclass(frozen=True, slots=True)
class _Fallthrough:
    effect: Effect
    policy_name: str
    policy_version: int


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Policies compiled for evaluation, in the order they were given. Immutable."""

    policies: tuple[CompiledPolicy, ...]
    digest: str
    rules: tuple[CompiledRule, ...]
    fallthrough: _Fallthrough

    @classmethod
    def compile(cls, documents: Sequence[PolicyDocument]) -> PolicySet:
        """Compile documents (bastion.yaml order); a policy name may appear only once."""
        seen: dict[str, int] = {}
        for document in documents:
            name, version = document.metadata.name, document.metadata.version
            if name in seen:
                raise PolicyValidationError(
                    f"policy {name!r} is loaded twice (v{seen[name]} and v{version}); list each policy once"
                )
            seen[name] = version
        policies = tuple(_compile_policy(document) for document in documents)
        return cls(
            policies=policies,
            digest=bundle_digest(documents),
            rules=tuple(rule for policy in policies for rule in policy.rules),
            fallthrough=_fallthrough(policies),
        )

    def evaluate(
        self, *, kind: str, agent_id: str, server: str, tool: str = "", resource: str = "", prompt: str = ""
    ) -> Decision:
        """Decide one action; see the module docstring for the rules."""
        if not self.policies:
            return self._refuse("no policy loaded (default deny)")
        family = FAMILY_BY_KIND.get(kind)
        if family is None:
            return self._refuse(f"action kind {kind} is not governed by this policy version")
        if not family:
            family = "prompt" if prompt else "resource"
        target = {"tool": tool, "resource": resource, "prompt": prompt}[family]
        if not agent_id:
            return self._refuse("the request names no agent (fail closed)")
        if not server or not target:
            return self._refuse(f"the action names no server or {family} (fail closed)")
        name = f"{server}__{target}"
        for rule in self.rules:
            if (rule.agents is None or rule.agents.fullmatch(agent_id)) and (
                family in rule.targets and ((pattern := rule.targets[family]) is None or pattern.fullmatch(name))
            ):
                return Decision(
                    effect=rule.effect,
                    rule_id=rule.id,
                    reason=f"rule '{rule.id}' {_VERBS[rule.effect]} {name} for agent {agent_id!r}",
                    policy_name=rule.policy_name,
                    policy_version=rule.policy_version,
                    bundle_digest=self.digest,
                )
        fallthrough = self.fallthrough
        return Decision(
            effect=fallthrough.effect,
            rule_id=RESERVED_RULE_ID,
            reason=f"no rule matched {name} for agent {agent_id!r} (default {fallthrough.effect})",
            policy_name=fallthrough.policy_name,
            policy_version=fallthrough.policy_version,
            bundle_digest=self.digest,
        )

    def _refuse(self, reason: str) -> Decision:
        return Decision(
            effect=Effect.DENY,
            rule_id=RESERVED_RULE_ID,
            reason=reason,
            policy_name=self.fallthrough.policy_name,
            policy_version=self.fallthrough.policy_version,
            bundle_digest=self.digest,
        )


def load_policy_set(paths: Iterable[Path]) -> PolicySet:
    """Load, validate and compile policy files in order (bastion.yaml `policies:`)."""
    return PolicySet.compile([load_policy(path) for path in paths])


def bundle_digest(documents: Sequence[PolicyDocument]) -> str:
    canonical = orjson.dumps([document.canonical() for document in documents], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _compile_policy(document: PolicyDocument) -> CompiledPolicy:
    name, version = document.metadata.name, document.metadata.version
    rules = tuple(
        CompiledRule(
            id=rule.id,
            effect=Effect(rule.effect),
            agents=compile_patterns(rule.match.agents),
            targets=_compile_targets(rule.match),
            policy_name=name,
            policy_version=version,
        )
        for rule in document.spec.rules
    )
    return CompiledPolicy(
        name=name, version=version, default=Effect(document.spec.default), rules=rules, digest=bundle_digest([document])
    )


def _fallthrough(policies: Sequence[CompiledPolicy]) -> _Fallthrough:
    if not policies:
        return _Fallthrough(effect=Effect.DENY, policy_name="", policy_version=0)
    deciding = next((policy for policy in policies if policy.default is Effect.DENY), policies[0])
    return _Fallthrough(effect=deciding.default, policy_name=deciding.name, policy_version=deciding.version)


def _compile_targets(match: Match) -> dict[str, re.Pattern[str] | None]:
    lists = {"tool": match.tools, "resource": match.resources, "prompt": match.prompts}
    if all(patterns is None for patterns in lists.values()):
        return dict.fromkeys(_FAMILIES)
    return {
        family: compile_patterns(patterns, ignore_case=family != "resource")
        for family, patterns in lists.items()
        if patterns is not None
    }


def compile_patterns(patterns: Sequence[str], *, ignore_case: bool = False) -> re.Pattern[str] | None:
    """One regex (use `fullmatch`) for a list of globs; None when they match everything."""
    if any(set(pattern) == {"*"} for pattern in patterns):
        return None
    alternatives = "|".join(f"(?:{_glob_regex(pattern)})" for pattern in dict.fromkeys(patterns))
    return re.compile(alternatives, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _glob_regex(pattern: str) -> str:
    # A naive translation (`*` → `.*`) backtracks polynomially on patterns like
    # `*a*a*a*b`, and both the agent id and the tool name come from callers. Taking the
    # leftmost match of every middle segment is always right for globs (it leaves the
    # most room for the rest), so those segments go in atomic groups that never retry;
    # only the last `.*` backtracks, once, to pin the final segment to the end.
    parts = pattern.split("*")
    if len(parts) == 1:
        return _literal(pattern)
    head, *middle, tail = parts
    segments = "".join(f"(?>.*?{_literal(segment)})" for segment in middle if segment)
    return f"{_literal(head)}{segments}.*{_literal(tail)}"


def _literal(text: str) -> str:
    return "".join("." if char == "?" else re.escape(char) for char in text)
