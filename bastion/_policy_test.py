"""`bastion policy test PACK.yaml [--policy FILE]... [--json]`: regression packs, like `opa test`.

A pack is YAML, loaded as strictly as a policy (duplicate keys, aliases and unknown keys
refused, an unknown key with a "did you mean"):

    policies: [demo.yaml]                  # relative to the pack; --policy replaces the list
    cases:
      - name: anyone may add
        agent: agent-1
        action: {kind: TOOL_CALL, server: demo, tool: add, arguments: {a: 1, b: 2}}
        ctx: {tenant: acme, roles: [billing]}          # optional: policy.proto Context
        expect: {effect: allow, rule: allow-add}       # rule optional ('default' = no rule)

Cases are decided locally by the native engine (`PolicySet.evaluate`), against the
policies compiled together in the order given, as the service would with them active;
no service is needed. `kind` defaults to TOOL_CALL; the target is `tool`, `resource` or
`prompt`. Output: a line per failing case, then a summary.

Exit codes: 0 every case passed; 1 a case failed; 2 the pack or a policy cannot be loaded.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from ._errors import ConfigError, PolicyError

_EFFECTS = ("allow", "deny", "require_approval", "queue")
_TOP = ("policies", "cases")
_CASE = ("name", "agent", "action", "ctx", "expect")
_ACTION = ("kind", "server", "tool", "resource", "prompt", "method", "arguments")
_CTX = ("tenant", "session_id", "workflow_id", "task", "roles", "labels", "taint")
_EXPECT = ("effect", "rule")
_MAX_CASES = 10_000


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    agent: str
    action: Mapping[str, Any]
    ctx: Mapping[str, Any]
    effect: str
    rule: str | None


@dataclass(frozen=True, slots=True)
class Pack:
    policies: tuple[Path, ...]
    cases: tuple[Case, ...]


def add_test_command(actions: Any) -> None:
    """Register `bastion policy test` on the `bastion policy` subparsers."""
    test = actions.add_parser("test", help="run a policy regression pack locally (no service needed)")
    test.add_argument("pack", type=Path, help="the pack (YAML: policies, cases)")
    test.add_argument(
        "--policy", type=Path, action="append", default=[], help="policy file (repeatable; replaces the pack's list)"
    )
    test.add_argument("--json", action="store_true", help="print every case's result as JSON")


def run_test_command(args: argparse.Namespace) -> int:
    try:
        pack = load_pack(args.pack, tuple(args.policy))
        results = run_pack(pack)
    except (ConfigError, PolicyError) as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return 2
    failed = [result for result in results if not result["passed"]]
    if args.json:
        summary = {"passed": len(results) - len(failed), "failed": len(failed)}
        print(orjson.dumps({"pack": str(args.pack), "cases": results, **summary}).decode())
    else:
        for result in failed:
            print(_failure_line(result))
        print(f"{len(results)} cases: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def load_pack(path: Path, policies: Sequence[Path] = ()) -> Pack:
    """Load and check a pack; ConfigError names what is wrong (`policies` replaces its list)."""
    from bastion.policy._document import _StrictLoader

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the pack {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader that also refuses duplicates
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    where = str(path)
    data = _mapping(data, _TOP, where, required=("cases",))
    listed = data.get("policies", [])
    if not isinstance(listed, list) or not all(isinstance(item, str) and item for item in listed):
        raise ConfigError(f"{where}: 'policies' must be a list of policy file paths")
    files = tuple(policies) or tuple(path.parent / item for item in listed)
    if not files:
        raise ConfigError(f"{where}: no policies: list them under 'policies:' or pass --policy FILE")
    cases = data["cases"]
    if not isinstance(cases, list) or not cases:
        raise ConfigError(f"{where}: 'cases' must be a non-empty list")
    if len(cases) > _MAX_CASES:
        raise ConfigError(f"{where}: {len(cases)} cases; at most {_MAX_CASES} per pack")
    loaded = tuple(_case(raw, f"{where}: cases[{index}]") for index, raw in enumerate(cases))
    names = [case.name for case in loaded]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"{where}: two cases are named {duplicate!r}; case names must be unique")
    return Pack(files, loaded)


def run_pack(pack: Pack) -> list[dict[str, Any]]:
    """Each case's result: {name, passed, expected: {effect, rule}, got: {effect, rule, reason}}."""
    from bastion.policy import load_policy_set
    from bastion.policy._cel import CallContext

    policies = load_policy_set(pack.policies)
    results = []
    for case in pack.cases:
        ctx = case.ctx
        context = CallContext(
            tenant=ctx.get("tenant", ""),
            session_id=ctx.get("session_id", ""),
            workflow_id=ctx.get("workflow_id", ""),
            task=ctx.get("task", ""),
            roles=tuple(ctx.get("roles", ())),
            labels=dict(ctx.get("labels", {})),
            taint=tuple(ctx.get("taint", ())),
        )
        action = case.action
        decision = policies.evaluate(
            kind=action.get("kind", "TOOL_CALL"),
            agent_id=case.agent,
            server=action["server"],
            tool=action.get("tool", ""),
            resource=action.get("resource", ""),
            prompt=action.get("prompt", ""),
            method=action.get("method", ""),
            arguments=action.get("arguments", {}),
            context=context,
        )
        passed = str(decision.effect) == case.effect and case.rule in (None, decision.rule_id)
        results.append(
            {
                "name": case.name,
                "passed": passed,
                "expected": {"effect": case.effect, "rule": case.rule},
                "got": {"effect": str(decision.effect), "rule": decision.rule_id, "reason": decision.reason},
            }
        )
    return results


def _failure_line(result: Mapping[str, Any]) -> str:
    expected, got = result["expected"], result["got"]
    wanted = expected["effect"] + (f" by rule '{expected['rule']}'" if expected["rule"] else "")
    return f"FAIL {result['name']}: expected {wanted}, got {got['effect']} by rule '{got['rule']}' ({got['reason']})"


def _case(raw: Any, where: str) -> Case:
    case = _mapping(raw, _CASE, where, required=("name", "agent", "action", "expect"))
    name, agent = case["name"], case["agent"]
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: must be a non-empty string")
    where = f"{where} ({name!r})"
    if not isinstance(agent, str) or not agent:
        raise ConfigError(f"{where}.agent: must be a non-empty string (the calling agent's id)")
    action = _mapping(case["action"], _ACTION, f"{where}.action", required=("server",))
    for key in ("kind", "server", "tool", "resource", "prompt", "method"):
        if key in action and not isinstance(action[key], str):
            raise ConfigError(f"{where}.action.{key}: must be a string")
    if action.get("kind", "TOOL_CALL") not in _kinds():
        raise ConfigError(
            f"{where}.action.kind: {action['kind']!r} is not an action kind (e.g. TOOL_CALL, RESOURCE_READ)"
        )
    if not any(key in action for key in ("tool", "resource", "prompt")):
        raise ConfigError(f"{where}.action: name its target with 'tool', 'resource' or 'prompt'")
    if not isinstance(action.get("arguments", {}), dict):
        raise ConfigError(f"{where}.action.arguments: must be a mapping")
    ctx = _mapping(case.get("ctx", {}), _CTX, f"{where}.ctx")
    for key in ("roles", "taint"):
        if not isinstance(ctx.get(key, []), list) or not all(isinstance(item, str) for item in ctx.get(key, [])):
            raise ConfigError(f"{where}.ctx.{key}: must be a list of strings")
    labels = ctx.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{where}.ctx.labels: must be a mapping of strings")
    for key in ("tenant", "session_id", "workflow_id", "task"):
        if key in ctx and not isinstance(ctx[key], str):
            raise ConfigError(f"{where}.ctx.{key}: must be a string")
    expect = _mapping(case["expect"], _EXPECT, f"{where}.expect", required=("effect",))
    effect, rule = expect["effect"], expect.get("rule")
    if effect not in _EFFECTS:
        raise ConfigError(f"{where}.expect.effect: {effect!r} is not one of {', '.join(_EFFECTS)}")
    if rule is not None and (not isinstance(rule, str) or not rule):
        raise ConfigError(f"{where}.expect.rule: must be a rule id (or 'default')")
    return Case(name, agent, action, ctx, effect, rule)


def _kinds() -> frozenset[str]:
    from bastion.v1 import policy_pb2

    return frozenset(policy_pb2.ActionKind.keys())


def _mapping(value: Any, allowed: Sequence[str], where: str, required: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping with keys {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
            raise ConfigError(f"{where}: unknown key {str(key)!r}{hint}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(repr(key) for key in missing)}")
    return value
