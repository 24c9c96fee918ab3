"""Compile validated policies into an immutable PolicySet and decide actions against it.

Phases 3 and 4 of parse → validate → compile → evaluate. Compiling happens once, when
policies are loaded; `PolicySet.evaluate` parses nothing, compiles nothing, does no I/O
and logs nothing, so a decision costs microseconds.

Decision semantics
------------------
* Input: the action kind (a `bastion.v1.ActionKind` name), the calling agent's id, the
  action's target named `server__<name>`: the tool (TOOL_CALL, TOOL_LIST), the
  resource URI (RESOURCE_READ, RESOURCE_SUBSCRIBE) or the prompt (PROMPT_GET);
  COMPLETION targets the prompt or resource being completed; the A2A kinds (A2A_SEND,
  A2A_GET, A2A_CANCEL, A2A_PUSH_CONFIG) target `agent__Operation`, the A2A 1.0 method
  name carried in the action's `tool`, matched case-insensitively; the arguments (a plain
  dict of JSON values) and the call's context (`CallContext`).
* Every other kind is DENY, "action kind X is not governed by this policy version":
  fail closed. A request without an agent id, server or target is DENY too.
* A rule's `tools`, `resources`, `prompts` and `a2a` lists each select one family of targets;
  a rule naming none of them applies to every family. Tool and prompt patterns match
  case-insensitively, as tool names are validated (so `demo__getWeather` and a rule
  for `demo__getweather` agree; the proxy forwards only names exactly in the
  upstream's live list); resource patterns match URIs case-sensitively.
* Within a policy, rules are tried in order. A rule matches when its agent patterns
  match the agent, its pattern for the action's family matches the target, its `args`
  constraints hold (policy/_args.py) and its `when` condition is true (policy/_cel.py),
  checked in that order. A policy's first matching rule is that policy's decision, with
  its effect: allow → ALLOW, deny → DENY, require_approval → REQUIRE_APPROVAL, queue →
  QUEUE (anything but ALLOW blocks).
* Across policies, deny-overrides: every policy with a matching rule governs the action,
  and the strictest of their decisions wins (DENY, then REQUIRE_APPROVAL, then QUEUE,
  then ALLOW; the first in bastion.yaml / activation order among equals). A policy with
  no rule matching the action does not govern it, so its default does not apply.
* `args` that do not hold make the rule not match; the next rule is tried, and the
  violation is named in the reason of the final decision unless that is an ALLOW.
* A `when` that errors (missing key, type mismatch, non-boolean result) makes that rule
  decide DENY, naming the rule and the error: never "skip it and try a later allow".
* `effect: shadow` rules decide nothing: the first matching one is recorded as the
  decision's `shadow_effect` (its `shadow_effect`, default deny) and `shadow_rule_id`,
  and evaluation goes on. A shadow rule whose `when` errors records DENY.
* TOOL_LIST, PROMPT_LIST and RESOURCE_LIST ask whether an item of a listing could be
  used (the proxy filters list answers with them), and have no arguments: a rule with
  `args` or `when` is taken to match when its effect is allow, and skipped otherwise
  (the call itself is decided with its arguments).
* A decision carries the deciding policy's `limits`, `verifier` and `taint` stanzas and
  the deciding rule's `steer` message and `cost` (what the call spends of the policy's
  cost budget: the rule's `cost`, 1 when it sets none and when no rule decided).
* When no rule of any policy matches, rule_id is "default" and the effect is DENY unless every loaded
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from bastion._errors import PolicyValidationError
from bastion._globs import compile_patterns
from bastion._verdicts import NO_VERIFIER

from ._args import CompiledArgs, compile_args
from ._cel import EMPTY_CONTEXT, Activation, CallContext, Condition, compile_condition
from ._document import RESERVED_RULE_ID, Limits, Match, PolicyDocument, Rule, Taint, Verifier, load_policy


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"
    QUEUE = "queue"


#: Action kinds that rules decide, and the family of target each names; every other kind is denied.
FAMILY_BY_KIND = {
    "TOOL_CALL": "tool",
    "TOOL_LIST": "tool",
    "RESOURCE_READ": "resource",
    "RESOURCE_SUBSCRIBE": "resource",
    "PROMPT_GET": "prompt",
    "COMPLETION": "",  # the prompt's or the resource's, whichever is being completed
    "PROMPT_LIST": "prompt",
    "RESOURCE_LIST": "resource",
    # A2A (proxy/_a2a_methods.py): Action.tool holds the A2A 1.0 method name.
    "A2A_SEND": "a2a",
    "A2A_GET": "a2a",
    "A2A_CANCEL": "a2a",
    "A2A_PUSH_CONFIG": "a2a",
}
_LIST_KINDS = frozenset({"TOOL_LIST", "PROMPT_LIST", "RESOURCE_LIST"})
#: Deny-overrides: lower is stricter. `min` keeps the first among equals (policy order).
_STRICTNESS = {Effect.DENY: 0, Effect.REQUIRE_APPROVAL: 1, Effect.QUEUE: 2, Effect.ALLOW: 3}
GOVERNED_KINDS = frozenset(FAMILY_BY_KIND)
_FAMILIES = ("tool", "resource", "prompt", "a2a")

_VERBS = {
    Effect.ALLOW: "allows",
    Effect.DENY: "denies",
    Effect.REQUIRE_APPROVAL: "requires approval for",
    Effect.QUEUE: "queues",
}
#: How many skipped rules a reason names.
_MAX_SKIPPED = 3
#: The cost of a call whose deciding rule sets none (or that no rule decided).
DEFAULT_COST = 1.0
_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    #: The deciding rule's id, or "default" when no rule decided.
    rule_id: str
    reason: str
    policy_name: str
    policy_version: int
    bundle_digest: str
    #: What the first matching `shadow` rule would have decided, and its id.
    shadow_effect: Effect | None = None
    shadow_rule_id: str = ""
    #: The deciding rule's `steer` message ("" when none).
    steer: str = ""
    #: The deciding policy's stanzas (None when it has none).
    limits: Limits | None = None
    verifier: Verifier | None = None
    taint: Taint | None = None
    #: True when the deciding rule's `when` failed to evaluate (so it denied): an evaluation
    #: error, counted as such by canary rollouts (bastion.policy._rollouts).
    error: bool = False
    #: What the call spends of the deciding policy's cost budget (the deciding rule's `cost`).
    cost: float = DEFAULT_COST


@dataclass(frozen=True, slots=True)
class TaintCheck:
    """A policy's `taint:` stanza compiled: an allowed call to one of its `sinks` whose
    arguments hold data from one of its `untrusted_sources` (the proxy's `source:` labels
    in ctx.taint) gets `on_tainted_sink` instead. Data the stated task holds is never
    labelled, so a call acting on the user's own words is not tainted."""

    effect: Effect
    sources: re.Pattern[str] | None
    sinks: re.Pattern[str] | None

    @classmethod
    def compile(cls, taint: Taint | None) -> TaintCheck | None:
        if taint is None:
            return None
        sources = compile_patterns(taint.untrusted_sources, ignore_case=True)
        return cls(Effect(taint.on_tainted_sink), sources, compile_patterns(taint.sinks, ignore_case=True))

    def reason(self, name: str, labels: Sequence[str]) -> str:
        """Why `name` is a tainted sink, or "" when it is not."""
        if not labels or not (self.sinks is None or self.sinks.fullmatch(name)):
            return ""
        found = [
            label[7:]
            for label in labels
            if label.startswith("source:") and (self.sources is None or self.sources.fullmatch(label[7:]))
        ]
        if not found:
            return ""
        return f"{name} is a sink and its arguments hold data from untrusted {', '.join(found)}"


@dataclass(frozen=True, slots=True)
class Stanzas:
    """A policy's `limits`, `verifier` and `taint`, carried into its decisions."""

    limits: Limits | None = None
    verifier: Verifier | None = None
    taint: Taint | None = None
    taint_check: TaintCheck | None = None


_NO_STANZAS = Stanzas()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: str
    #: The deciding effect; for a shadow rule, the effect it records instead.
    effect: Effect
    #: None matches every agent without running a regex.
    agents: re.Pattern[str] | None
    #: Family → pattern (None: every target of that family); a family absent here is not matched.
    targets: dict[str, re.Pattern[str] | None]
    policy_name: str
    policy_version: int
    args: CompiledArgs | None = None
    when: Condition | None = None
    shadow: bool = False
    steer: str = ""
    stanzas: Stanzas = _NO_STANZAS
    #: Family → the exact target names (lowercased where matching ignores case) this rule
    #: can match, when all its patterns for that family are ASCII literals; absent: any.
    literals: Mapping[str, frozenset[str]] = field(default_factory=dict)
    cost: float = DEFAULT_COST

    @property
    def conditional(self) -> bool:
        return self.args is not None or self.when is not None


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    version: int
    default: Effect
    rules: tuple[CompiledRule, ...]
    #: sha256 of this policy alone, as a bundle of one document.
    digest: str
    stanzas: Stanzas = _NO_STANZAS
    #: The agents it can decide calls of, as one regex (`_governs`); None: every agent.
    governed: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class _Fallthrough:
    effect: Effect
    policy_name: str
    policy_version: int
    stanzas: Stanzas = _NO_STANZAS


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Policies compiled for evaluation, in the order they were given. Immutable."""

    policies: tuple[CompiledPolicy, ...]
    digest: str
    rules: tuple[CompiledRule, ...]
    fallthrough: _Fallthrough
    #: Family → (exact name → the rules that may match it, in order; the rules that may
    #: match any other name). Only narrows which rules are tried; each is still matched.
    index: Mapping[str, tuple[Mapping[str, tuple[CompiledRule, ...]], tuple[CompiledRule, ...]]] = field(
        default_factory=dict
    )

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
        rules = tuple(rule for policy in policies for rule in policy.rules)
        return cls(
            policies=policies,
            digest=bundle_digest(documents),
            rules=rules,
            fallthrough=_fallthrough(policies),
            index={family: _index(rules, family) for family in _FAMILIES},
        )

    def evaluate(
        self,
        *,
        kind: str,
        agent_id: str,
        server: str,
        tool: str = "",
        resource: str = "",
        prompt: str = "",
        method: str = "",
        arguments: Mapping[str, Any] | None = None,
        context: CallContext = EMPTY_CONTEXT,
    ) -> Decision:
        """Decide one action; see the module docstring for the rules."""
        if not self.policies:
            return self._refuse("no policy loaded (default deny)")
        family = FAMILY_BY_KIND.get(kind)
        if family is None:
            return self._refuse(f"action kind {kind} is not governed by this policy version")
        if not family:
            family = "prompt" if prompt else "resource"
        target = {"tool": tool, "resource": resource, "prompt": prompt, "a2a": tool}[family]
        if not agent_id:
            return self._refuse("the request names no agent (fail closed)")
        if not server or not target:
            return self._refuse(f"the action names no server or {family} (fail closed)")
        name = f"{server}__{target}"
        args = _EMPTY if arguments is None else arguments
        listing = kind in _LIST_KINDS
        activation: Activation | None = None
        shadow: tuple[Effect, str] | None = None
        skipped: list[str] = []
        # Deny-overrides across policies: each policy's first matching rule is its
        # decision; the strictest wins (the first in policy order among equals).
        decided: list[Decision] = []
        done: set[str] = set()
        for rule in self._candidates(family, name):
            if rule.policy_name in done:
                continue
            if not (rule.agents is None or rule.agents.fullmatch(agent_id)) or not (
                family in rule.targets and ((pattern := rule.targets[family]) is None or pattern.fullmatch(name))
            ):
                continue
            if listing and rule.conditional:
                if rule.effect is not Effect.ALLOW or rule.shadow:
                    continue
                reason = f"rule '{rule.id}' could allow {name} for agent {agent_id!r} (its conditions apply to calls)"
                decided.append(self._decision(rule, Effect.ALLOW, reason, shadow))
                done.add(rule.policy_name)
                continue
            if rule.args is not None and (problem := rule.args.violation(args)) is not None:
                if len(skipped) < _MAX_SKIPPED:
                    skipped.append(f"rule '{rule.id}' did not match: {problem}")
                continue
            if rule.when is not None:
                if activation is None:
                    action = {"kind": kind, "server": server, "tool": tool, "resource": resource}
                    action.update(prompt=prompt, method=method)
                    activation = Activation(args, agent_id, action, context)
                result = activation.evaluate(rule.when, shadow=rule.shadow)
                if result is False:
                    continue
                if result is not True:
                    if rule.shadow:
                        shadow = shadow or (Effect.DENY, rule.id)
                        continue
                    reason = f"rule '{rule.id}' condition failed, so it denies {name} (fail closed): {result}"
                    return self._decision(rule, Effect.DENY, reason, shadow, steer=False, error=True)
            if rule.shadow:
                shadow = shadow or (rule.effect, rule.id)
                continue
            reason = f"rule '{rule.id}' {_VERBS[rule.effect]} {name} for agent {agent_id!r}"
            if rule.effect is not Effect.ALLOW and skipped:
                reason += "; " + "; ".join(skipped)
            if rule.effect is Effect.DENY:
                return self._decision(rule, rule.effect, reason, shadow)  # nothing is stricter
            decided.append(_tainted(self._decision(rule, rule.effect, reason, shadow), rule.stanzas, name, context))
            done.add(rule.policy_name)
        if decided:
            strictest = min(decided, key=lambda decision: _STRICTNESS[decision.effect])
            if shadow is not None and strictest.shadow_effect is None:
                strictest = replace(strictest, shadow_effect=shadow[0], shadow_rule_id=shadow[1])
            return self._unwaived(strictest, agent_id)
        fallthrough = self.fallthrough
        reason = f"no rule matched {name} for agent {agent_id!r} (default {fallthrough.effect})"
        if fallthrough.effect is not Effect.ALLOW and skipped:
            reason += "; " + "; ".join(skipped)
        stanzas = fallthrough.stanzas
        decision = Decision(
            effect=fallthrough.effect,
            rule_id=RESERVED_RULE_ID,
            reason=reason,
            policy_name=fallthrough.policy_name,
            policy_version=fallthrough.policy_version,
            bundle_digest=self.digest,
            shadow_effect=shadow[0] if shadow else None,
            shadow_rule_id=shadow[1] if shadow else "",
            limits=stanzas.limits,
            verifier=stanzas.verifier,
            taint=stanzas.taint,
        )
        return self._unwaived(decision if listing else _tainted(decision, stanzas, name, context), agent_id)

    def _unwaived(self, decision: Decision, agent_id: str) -> Decision:
        """A decision whose policy waives scoring (`verifier: {name: none}`) waives it only
        when every policy of this set governing the agent does: otherwise it carries the
        stanza of the first that does not (None when that one has no stanza), and the
        proxy asks the verifier. The proxy skips the verifier on what Watch told it, which
        knows neither a canary arm's versions nor a version not yet delivered: this is the
        authority it checks that against."""
        verifier = decision.verifier
        if verifier is None or verifier.name != NO_VERIFIER:
            return decision
        for policy in self.policies:
            stanza = policy.stanzas.verifier
            if (stanza is None or stanza.name != NO_VERIFIER) and _governs(policy, agent_id):
                return replace(decision, verifier=stanza)
        return decision

    def _candidates(self, family: str, name: str) -> tuple[CompiledRule, ...]:
        # A 100-rule bundle costs ~60 µs to scan rule by rule; most rules name exact
        # tools, so only those naming this one (and every wildcard rule) are tried. A
        # non-ASCII name is scanned in full: regex case folding (the long s matches 's') and
        # str.lower() disagree there, and a deny rule must never be skipped.
        index = self.index.get(family)
        if index is None or not name.isascii():
            return self.rules
        by_name, wildcard = index
        return by_name.get(name if family == "resource" else name.lower(), wildcard)

    def _decision(
        self,
        rule: CompiledRule,
        effect: Effect,
        reason: str,
        shadow: tuple[Effect, str] | None,
        *,
        steer: bool = True,
        error: bool = False,
    ) -> Decision:
        stanzas = rule.stanzas
        return Decision(
            effect=effect,
            rule_id=rule.id,
            reason=reason,
            policy_name=rule.policy_name,
            policy_version=rule.policy_version,
            bundle_digest=self.digest,
            shadow_effect=shadow[0] if shadow else None,
            shadow_rule_id=shadow[1] if shadow else "",
            steer=rule.steer if steer else "",
            limits=stanzas.limits,
            verifier=stanzas.verifier,
            taint=stanzas.taint,
            error=error,
            cost=rule.cost,
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


def _governs(policy: CompiledPolicy, agent_id: str) -> bool:
    """Whether `policy` can decide calls of `agent_id` (`CompiledPolicy.governed`): one
    regex, so a decision that waives scoring costs no scan of other policies' rules."""
    return policy.governed is None or policy.governed.fullmatch(agent_id) is not None


def load_policy_set(paths: Iterable[Path]) -> PolicySet:
    """Load, validate and compile policy files in order (bastion.yaml `policies:`)."""
    return PolicySet.compile([load_policy(path) for path in paths])


def bundle_digest(documents: Sequence[PolicyDocument]) -> str:
    canonical = orjson.dumps([document.canonical() for document in documents], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _compile_policy(document: PolicyDocument) -> CompiledPolicy:
    name, version = document.metadata.name, document.metadata.version
    spec = document.spec
    stanzas = Stanzas(
        limits=spec.limits, verifier=spec.verifier, taint=spec.taint, taint_check=TaintCheck.compile(spec.taint)
    )
    rules = tuple(_compile_rule(rule, name, version, stanzas) for rule in spec.rules)
    return CompiledPolicy(
        name=name,
        version=version,
        default=Effect(spec.default),
        rules=rules,
        digest=bundle_digest([document]),
        stanzas=stanzas,
        # Its default can decide any agent's call with no rules or `default: allow`; else
        # the agents its rules name (as the policy service publishes them on Watch).
        governed=(
            None
            if not spec.rules or spec.default == "allow"
            else compile_patterns([pattern for rule in spec.rules for pattern in rule.match.agents])
        ),
    )


def _compile_rule(rule: Rule, policy_name: str, policy_version: int, stanzas: Stanzas) -> CompiledRule:
    shadow = rule.effect == "shadow"
    effect = Effect(rule.shadow_effect or "deny") if shadow else Effect(rule.effect)
    try:
        when = compile_condition(rule.when) if rule.when is not None else None
    except ValueError as exc:  # validated documents compile; a hand-built model may not
        raise PolicyValidationError(f"policy '{policy_name}' v{policy_version} rule '{rule.id}': {exc}") from exc
    return CompiledRule(
        id=rule.id,
        effect=effect,
        agents=compile_patterns(rule.match.agents),
        targets=_compile_targets(rule.match),
        policy_name=policy_name,
        policy_version=policy_version,
        args=compile_args(rule.args) if rule.args is not None else None,
        when=when,
        shadow=shadow,
        steer=rule.steer or "",
        stanzas=stanzas,
        literals=_literals(rule.match),
        cost=DEFAULT_COST if rule.cost is None else rule.cost,
    )


def _index(
    rules: Sequence[CompiledRule], family: str
) -> tuple[dict[str, tuple[CompiledRule, ...]], tuple[CompiledRule, ...]]:
    names = {name for rule in rules for name in rule.literals.get(family, ())}
    by_name = {
        name: tuple(
            rule
            for rule in rules
            if family in rule.targets and (family not in rule.literals or name in rule.literals[family])
        )
        for name in names
    }
    wildcard = tuple(rule for rule in rules if family in rule.targets and family not in rule.literals)
    return by_name, wildcard


def _literals(match: Match) -> dict[str, frozenset[str]]:
    lists = {"tool": match.tools, "resource": match.resources, "prompt": match.prompts, "a2a": match.a2a}
    literals = {}
    for family, patterns in lists.items():
        if patterns and all(pattern.isascii() and not set(pattern) & {"*", "?"} for pattern in patterns):
            literals[family] = frozenset(p if family == "resource" else p.lower() for p in patterns)
    return literals


def _fallthrough(policies: Sequence[CompiledPolicy]) -> _Fallthrough:
    if not policies:
        return _Fallthrough(effect=Effect.DENY, policy_name="", policy_version=0)
    deciding = next((policy for policy in policies if policy.default is Effect.DENY), policies[0])
    return _Fallthrough(
        effect=deciding.default,
        policy_name=deciding.name,
        policy_version=deciding.version,
        stanzas=deciding.stanzas,
    )


def _compile_targets(match: Match) -> dict[str, re.Pattern[str] | None]:
    lists = {"tool": match.tools, "resource": match.resources, "prompt": match.prompts, "a2a": match.a2a}
    if all(patterns is None for patterns in lists.values()):
        return dict.fromkeys(_FAMILIES)
    return {
        family: compile_patterns(patterns, ignore_case=family != "resource")
        for family, patterns in lists.items()
        if patterns is not None
    }


def _tainted(decision: Decision, stanzas: Stanzas, name: str, context: CallContext) -> Decision:
    """An ALLOW turned into the policy's `on_tainted_sink` when the call is a tainted sink."""
    check = stanzas.taint_check
    if check is None or decision.effect is not Effect.ALLOW:
        return decision
    why = check.reason(name, context.taint)
    if not why:
        return decision
    reason = f"policy '{decision.policy_name}' taint: {why} (on_tainted_sink: {check.effect})"
    return replace(decision, effect=check.effect, reason=reason, steer="")
