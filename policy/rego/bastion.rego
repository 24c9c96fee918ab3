# Bastion AgentPolicy documents evaluated by OPA: the native engine's semantics in Rego.
#
# Query:  POST /v1/data/bastion/decision  {"input": {"action": {...}, "ctx": {...}}}
# Result: {"effect": "allow|deny|require_approval", "rule_id": "...", "reason": "...", "policy": "..."}
# The policy service queries bastion/answer: {"decision": <the above>, "active": data.bastion.active}.
#
# Data (pushed by bastion.policy._opa.push_policies in one write):
#   data.bastion.policies[name]  the `spec` of policy `name` (an AgentPolicy document's spec)
#   data.bastion.order           policy names in evaluation order (bastion.yaml order)
#   data.bastion.active          {"versions": [[name, version], ...], "digest": "<sha256>"}: the set's name
#
# Semantics, as policy/_engine.py documents them:
#   * kinds TOOL_CALL/TOOL_LIST target a tool, RESOURCE_READ/RESOURCE_SUBSCRIBE/RESOURCE_LIST a
#     resource, PROMPT_GET/PROMPT_LIST a prompt, COMPLETION the prompt if input.action.prompt is set, else the
#     resource, A2A_SEND/A2A_GET/A2A_CANCEL/A2A_PUSH_CONFIG an A2A operation (the A2A 1.0 method
#     name, carried in input.action.tool; the server is the agent's key in bastion.yaml);
#     every other kind is denied (fail closed), as is a missing agent, server or target;
#   * the target is named "<server>__<target>"; a rule's tools/resources/prompts/a2a lists each
#     select one family, a rule naming none of them covers every family; agents default to all;
#   * globs: `*` any run (also empty), `?` exactly one character, everything else literal;
#     agents and resources case-sensitive, tools, prompts and A2A operations case-insensitive;
#   * each policy's first matching rule is its decision and the strictest wins (deny-overrides);
#     with no matching rule in any policy, rule_id "default",
#     deny unless every policy says `default: allow`.
package bastion

# The decision is always defined for an object input: every path below ends in one answer.
default decision := {"effect": "deny", "rule_id": "default", "reason": "opa: bastion.rego reached no decision (fail closed)", "policy": ""}

_family_by_kind := {
	"TOOL_CALL": "tool",
	"TOOL_LIST": "tool",
	"RESOURCE_READ": "resource",
	"RESOURCE_SUBSCRIBE": "resource",
	"PROMPT_GET": "prompt",
	"COMPLETION": "",
	"PROMPT_LIST": "prompt",
	"RESOURCE_LIST": "resource",
	"A2A_SEND": "a2a",
	"A2A_GET": "a2a",
	"A2A_CANCEL": "a2a",
	"A2A_PUSH_CONFIG": "a2a",
}

_list_by_family := {"tool": "tools", "resource": "resources", "prompt": "prompts", "a2a": "a2a"}

# Which input.action field holds each family's target: the proxy carries the A2A method
# name in `tool` (Action has no field of its own for it), as the native engine reads it.
_field_by_family := {"tool": "tool", "resource": "resource", "prompt": "prompt", "a2a": "tool"}

_action := object.get(input, "action", {})

_ctx := object.get(input, "ctx", {})

_kind := object.get(_action, "kind", "")

_agent := object.get(_ctx, "agent_id", "")

_server := object.get(_action, "server", "")

default _order := []

_order := data.bastion.order

default _specs := {}

_specs := data.bastion.policies

_family := _family_by_kind[_kind] if _family_by_kind[_kind] != ""

_family := "prompt" if {
	_family_by_kind[_kind] == ""
	object.get(_action, "prompt", "") != ""
}

_family := "resource" if {
	_family_by_kind[_kind] == ""
	object.get(_action, "prompt", "") == ""
}

_target := object.get(_action, _field_by_family[_family], "")

_name := sprintf("%s__%s", [_server, _target])

# --- refusals, in the native engine's order --------------------------------------------

_refusal := "no policy loaded (default deny)" if count(_order) == 0

_refusal := sprintf("action kind %s is not governed by this policy version", [_kind]) if {
	count(_order) > 0
	not _kind in object.keys(_family_by_kind)
}

_refusal := "the request names no agent (fail closed)" if {
	count(_order) > 0
	_family
	not _is_nonempty_string(_agent)
}

_refusal := sprintf("the action names no server or %s (fail closed)", [_family]) if {
	count(_order) > 0
	_family
	_is_nonempty_string(_agent)
	not _names_target
}

_names_target if {
	_is_nonempty_string(_server)
	_is_nonempty_string(_target)
}

_is_nonempty_string(value) if {
	is_string(value)
	value != ""
}

# --- rules -------------------------------------------------------------------------------

# Deny-overrides across policies: each policy's first matching rule is its decision, and
# the strictest of those wins (deny, then require_approval, then queue, then allow), the
# first in policy order among equals. A policy with no matching rule does not govern.
_per_policy := [[name, matches[0]] |
	some name in _order
	matches := [rule |
		some rule in object.get(_specs[name], "rules", [])
		_agent_matches(rule)
		_target_matches(rule)
	]
	count(matches) > 0
]

_strictness := {"deny": 0, "require_approval": 1, "queue": 2, "allow": 3}

_strictest := min([object.get(_strictness, pair[1].effect, 0) | some pair in _per_policy])

_matching := [pair |
	some pair in _per_policy
	object.get(_strictness, pair[1].effect, 0) == _strictest
]

_agent_matches(rule) if {
	some pattern in object.get(rule.match, "agents", ["*"])
	_glob(pattern, _agent, false)
}

# A rule naming none of tools/resources/prompts/a2a covers every family.
_target_matches(rule) if {
	every list in _list_by_family {
		not rule.match[list]
	}
}

_target_matches(rule) if {
	some pattern in rule.match[_list_by_family[_family]]
	_glob(pattern, _name, _family != "resource")
}

# A glob becomes an anchored RE2 regex: `*` → `.*`, `?` → `.`, every other character
# literal. (glob.match would read `[`, `{` and `\` as syntax, and its delimiters default
# to ["."] when given [], so a regex is the faithful translation.)
_glob(pattern, value, ignore_case) if {
	flags := {true: "(?is)", false: "(?s)"}[ignore_case]
	regex.match(sprintf("%s^(?:%s)$", [flags, _glob_regex(pattern)]), value)
}

_glob_regex(pattern) := concat("", [_glob_char(char) | some char in split(pattern, "")])

_regex_meta := {"\\", ".", "+", "*", "?", "(", ")", "|", "[", "]", "{", "}", "^", "$"}

_glob_char("*") := ".*"

_glob_char("?") := "."

_glob_char(char) := concat("", ["\\", char]) if {
	not char in {"*", "?"}
	char in _regex_meta
}

_glob_char(char) := char if not char in _regex_meta

_verbs := {"allow": "allows", "deny": "denies", "require_approval": "requires approval for", "queue": "queues"}

# --- the decision --------------------------------------------------------------------------

_first_default_deny := [name |
	some name in _order
	object.get(_specs[name], "default", "deny") != "allow"
]

_fallthrough := {"effect": "deny", "policy": _first_default_deny[0]} if count(_first_default_deny) > 0

_fallthrough := {"effect": "allow", "policy": _order[0]} if {
	count(_order) > 0
	count(_first_default_deny) == 0
}

decision := {"effect": "deny", "rule_id": "default", "reason": _refusal, "policy": object.get(_fallthrough, "policy", "")} if {
	_refusal
}

decision := {
	"effect": rule.effect,
	"rule_id": rule.id,
	"reason": sprintf("rule '%s' %s %s for agent '%s'", [rule.id, object.get(_verbs, rule.effect, rule.effect), _name, _agent]),
	"policy": name,
} if {
	not _refusal
	[name, rule] := _matching[0]
}

decision := {
	"effect": _fallthrough.effect,
	"rule_id": "default",
	"reason": sprintf("no rule matched %s for agent '%s' (default %s)", [_name, _agent, _fallthrough.effect]),
	"policy": _fallthrough.policy,
} if {
	not _refusal
	count(_matching) == 0
}

# --- what the policy service asks ----------------------------------------------------------

# The decision with the name of the set it was made by. One query is evaluated against one
# snapshot of OPA's data, so `active` names exactly the versions that decided; an OPA that
# lost its data (a restart) leaves this undefined, and the service reloads it.
answer := {"decision": decision, "active": data.bastion.active}
