"""`bastion policy apply|validate|versions|diff|activate`: the policy admin REST from a shell.

    bastion policy apply FILE [--unsigned] [--no-activate] [--key PEM --kid KID] [--ttl 30d]
    bastion policy validate FILE
    bastion policy versions NAME
    bastion policy diff NAME V1 V2
    bastion policy activate NAME V
    bastion policy simulate NAME VERSION (--workflow ID... | --events FILE)
    bastion policy test PACK.yaml [--policy FILE]...   (local: bastion._policy_test)
    bastion policy rollout NAME VERSION --percent P [--stickiness agent|session]
                           [--rollback-on-deny-rate X] [--rollback-on-error-rate X]
                           [--window 5m] [--min-decisions N]
    bastion policy promote ID | rollback ID
    bastion policy rollouts [--policy NAME]

Each talks to the policy service's admin REST at `--addr`, else $BASTION_POLICY_ADDR, else
127.0.0.1:8081, with the bearer token from `--token`, else $BASTION_TOKEN, else one minted
from the stack's dev key under $BASTION_HOME with role operator (as `bastion token issue`
does; issuer and audience from bastion.yaml). `apply` signs the document into a bundle
with the dev key under kid `dev` (or `--key`/`--kid`), valid for `--ttl` (default 30 days:
the signer's approval lifetime; once it has passed the service refuses to activate, roll
out or promote the version, and an alert asks for a re-signed one before that), creates
the version, then activates it unless `--no-activate`; `--unsigned` sends the plain document, which the
service accepts only with BASTION_POLICY_REQUIRE_SIGNED=false. `--json` prints the
service's answer (or, for diff, {name, from, to, diff}) as JSON.

Exit codes (bastion._cli): 0 done; 1 the service refused or failed (invalid document,
refused bundle, version conflict, unknown version, service unreachable, 5xx), or
`validate` found problems; 2 bad usage, configuration or credentials (401/403, a
missing file or key).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ._errors import ConfigError
from ._identity import ensure_dev_key
from ._policy_test import add_test_command, run_test_command
from ._rest_client import TIMEOUT_S
from ._rest_client import CliFailed as _Failed
from ._rest_client import bearer_from as _auth
from ._rest_client import call as _call
from ._rest_client import emit as _print
from ._settings import CommonSettings

DEFAULT_ADDR = "127.0.0.1:8081"
#: bastion.policy._bundles.DEFAULT_TTL_S, not imported: the CLI loads the policy package only to sign.
DEFAULT_SIGN_TTL_S = 30 * 86400


def add_policy_commands(actions: Any, ttl: Any) -> None:
    """Register the admin commands on the `bastion policy` subparsers (`ttl` parses --ttl)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", help=f"admin REST host:port (default: $BASTION_POLICY_ADDR or {DEFAULT_ADDR})")
    common.add_argument("--token", help="operator JWT (default: $BASTION_TOKEN, else minted from the dev key)")
    common.add_argument("--config", type=Path, help="bastion.yaml, for a minted token's issuer and audience")
    common.add_argument("--json", action="store_true", help="print the answer as JSON")

    apply = actions.add_parser("apply", parents=[common], help="sign, create and activate a policy version")
    apply.add_argument("file", type=Path)
    apply.add_argument("--unsigned", action="store_true", help="send the plain document, unsigned")
    apply.add_argument("--no-activate", action="store_true", help="create the version without activating it")
    apply.add_argument("--key", type=Path, help="private key PEM (Ed25519 or P-256) to sign with (default: dev key)")
    apply.add_argument("--kid", default=None, help="key id of --key (default: 'dev')")
    apply.add_argument(
        "--ttl",
        type=ttl,
        default=DEFAULT_SIGN_TTL_S,
        help="how long the signature approves the version, e.g. 7d, 30d (default), 90d",
    )

    validate = actions.add_parser("validate", parents=[common], help="validate a policy file; store nothing")
    validate.add_argument("file", type=Path)

    versions = actions.add_parser("versions", parents=[common], help="list a policy's versions")
    versions.add_argument("name")

    diff = actions.add_parser("diff", parents=[common], help="diff two versions' canonical documents")
    diff.add_argument("name")
    diff.add_argument("v1", type=int)
    diff.add_argument("v2", type=int)

    activate = actions.add_parser("activate", parents=[common], help="make a stored version the active one")
    activate.add_argument("name")
    activate.add_argument("version", type=int)

    simulate = actions.add_parser(
        "simulate", parents=[common], help="replay recorded actions against a stored version; show what changes"
    )
    simulate.add_argument("name")
    simulate.add_argument("version", type=int)
    source = simulate.add_mutually_exclusive_group(required=True)
    source.add_argument("--workflow", action="append", help="a recorded workflow id (repeatable)")
    source.add_argument(
        "--events", type=Path, help="a JSON file: a list of node views, or a /graphs/{wf}/nodes page ({items})"
    )

    add_test_command(actions)
    _add_rollout_commands(actions, common)


def _add_rollout_commands(actions: Any, common: argparse.ArgumentParser) -> None:
    rollout = actions.add_parser("rollout", parents=[common], help="start a canary rollout of a stored version")
    rollout.add_argument("name")
    rollout.add_argument("version", type=int)
    rollout.add_argument("--percent", type=_finite, required=True, help="share of callers on the candidate, 0-100")
    rollout.add_argument("--stickiness", choices=("agent", "session"), default="agent")
    rollout.add_argument("--rollback-on-deny-rate", type=_finite, help="auto-rollback: canary minus stable deny rate")
    rollout.add_argument("--rollback-on-error-rate", type=_finite, help="auto-rollback: canary minus stable error rate")
    rollout.add_argument("--window", help="auto-rollback window, e.g. 5m (service default 5m)")
    rollout.add_argument("--min-decisions", type=int, help="auto-rollback: canary decisions needed in the window")
    for name, what in (("promote", "make a rollout's candidate the active version"), ("rollback", "end a rollout")):
        step = actions.add_parser(name, parents=[common], help=what)
        step.add_argument("id")
    listing = actions.add_parser("rollouts", parents=[common], help="list canary rollouts")
    listing.add_argument("--policy", help="only this policy's")


def _finite(text: str) -> float:
    # float() takes 'nan' and 'inf', which JSON cannot carry: the request body would fail
    # to encode, a traceback instead of a usage error.
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def run_policy_command(args: argparse.Namespace) -> int:
    if args.action == "test":  # local: no service, no token
        return run_test_command(args)
    try:
        with httpx.Client(base_url=f"http://{_addr(args)}", headers=_auth(args), timeout=TIMEOUT_S) as http:
            return _COMMANDS[args.action](http, args)
    except _Failed as exc:
        print(f"bastion: {exc}", file=sys.stderr)
        return exc.code
    except httpx.HTTPError as exc:
        print(f"bastion: policy service at {_addr(args)} unreachable: {exc}", file=sys.stderr)
        return 1


def _addr(args: argparse.Namespace) -> str:
    return str(args.addr or os.environ.get("BASTION_POLICY_ADDR") or DEFAULT_ADDR)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _apply(http: httpx.Client, args: argparse.Namespace) -> int:
    text = _read(args.file)
    body = {"document": text} if args.unsigned else {"bundle": _sign(text, args)}
    created = _call(http, "POST", "/v1/policies", body)
    name, version = created["name"], created["version"]
    result = {**created, "activated": False, "previous_version": None}
    if not args.no_activate:
        activated = _call(http, "POST", f"/v1/policies/{name}/versions/{version}/activate")
        result.update(activated=True, previous_version=activated["previous_version"])
    what = "created" if created["created"] else "unchanged"
    line = f"{name} v{version} {what} (sha256 {created['digest'][:12]})"
    if result["activated"]:
        previous = result["previous_version"]
        line += f"; active (was {'v' + str(previous) if previous is not None else 'none'})"
    _print(args, result, line)
    return 0


def _sign(text: str, args: argparse.Namespace) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bastion.policy import sign_bundle

    if args.key is None:
        if args.kid not in (None, "dev"):
            raise ConfigError("--kid without --key: the dev key signs under kid 'dev'")
        key: Any = ensure_dev_key(CommonSettings().home.resolve())
        return sign_bundle(text, key, kid="dev", ttl_seconds=args.ttl)
    if not args.kid:
        raise ConfigError("--key needs --kid: the key id the policy service knows the public key by")
    try:
        key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the signing key {args.key}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{args.key} is neither an Ed25519 nor a P-256 private key")
    return sign_bundle(text, key, kid=args.kid, ttl_seconds=args.ttl)


def _validate(http: httpx.Client, args: argparse.Namespace) -> int:
    report = _call(http, "POST", "/v1/policies/validate", {"document": _read(args.file)})
    notes = [f"warning: {warning}" for warning in report.get("warnings", [])]
    if report.get("live_tools"):
        notes.append(report["live_tools"])
    if report["valid"]:
        line = f"{report['name']} v{report['version']} is valid (sha256 {report['digest'][:12]})"
        _print(args, report, "\n".join([line, *notes]))
        return 0
    _print(args, report, "\n".join([*report["problems"], *notes]))
    return 1


def _versions(http: httpx.Client, args: argparse.Namespace) -> int:
    path = f"/v1/policies/{_segment(args.name)}/versions"
    listing = _call(http, "GET", path)
    # Every page: the listing is paged (`next`), as /v1/rollouts is.
    while listing.get("next") is not None:
        following = _call(http, "GET", path, params={"after": str(listing["next"])})
        listing = {**following, "versions": [*listing["versions"], *following["versions"]]}
    lines = [
        f"{'*' if item['active'] else ' '} v{item['version']:<6} {item['digest'][:12]}  {item['created_at']}  "
        f"{item['author']}  {'signed:' + item['signature_kid'] if item['signature_kid'] else 'unsigned'}"
        for item in listing["versions"]
    ]
    _print(args, listing, "\n".join(lines))
    return 0


def _diff(http: httpx.Client, args: argparse.Namespace) -> int:
    from bastion.policy._store import unified_diff

    name = _segment(args.name)
    old = _call(http, "GET", f"/v1/policies/{name}/versions/{args.v1}")
    new = _call(http, "GET", f"/v1/policies/{name}/versions/{args.v2}")
    diff = unified_diff(old["canonical"], new["canonical"], f"{args.name} v{args.v1}", f"{args.name} v{args.v2}")
    _print(args, {"name": args.name, "from": args.v1, "to": args.v2, "diff": diff}, diff.rstrip("\n"))
    return 0


def _activate(http: httpx.Client, args: argparse.Namespace) -> int:
    result = _call(http, "POST", f"/v1/policies/{_segment(args.name)}/versions/{args.version}/activate")
    previous = result["previous_version"]
    was = f"v{previous}" if previous is not None else "none"
    _print(args, result, f"{result['name']} v{result['version']} active (was {was})")
    return 0


def _simulate(http: httpx.Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"policy": args.name, "version": args.version}
    if args.events is not None:
        try:
            events = orjson.loads(_read(args.events))
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{args.events} is not JSON: {exc}") from exc
        body["events"] = events.get("items") if isinstance(events, dict) else events
    else:
        body["workflow_ids"] = args.workflow
    report = _call(http, "POST", "/v1/simulate", body)
    lines = [
        f"{event['action']} by {event['agent_id']} (node {event['node_id'] or '-'}): "
        f"{event['current']['effect']} ({event['current']['rule_id']}) -> "
        f"{event['candidate']['effect']} ({event['candidate']['rule_id']})"
        for event in report["events"]
        if event["changed"]
    ]
    totals = report["totals"]
    lines.append(
        f"{args.name} v{args.version}: {totals['events']} actions replayed, {totals['changed']} changed, "
        f"{totals['newly_denied']} newly denied, {totals['newly_allowed']} newly allowed"
        + (f" (truncated: {report.get('stopped') or 'stopped early'})" if report["truncated"] else "")
    )
    _print(args, report, "\n".join(lines))
    return 0


def _segment(name: str) -> str:
    # The service refuses names that are not DNS labels; quoting keeps a stray '/' or '?'
    # from addressing another route on the way there.
    return quote(name, safe="")


def _rollout(http: httpx.Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "policy": args.name,
        "version": args.version,
        "percent": args.percent,
        "stickiness": args.stickiness,
    }
    rule = {
        "deny_rate": args.rollback_on_deny_rate,
        "error_rate": args.rollback_on_error_rate,
        "window": args.window,
        "min_decisions": args.min_decisions,
    }
    if any(value is not None for value in rule.values()):
        body["rollback_on"] = {key: value for key, value in rule.items() if value is not None}
    started = _call(http, "POST", "/v1/rollouts", body)
    _print(args, started, _rollout_line(started))
    return 0


def _rollout_step(http: httpx.Client, args: argparse.Namespace) -> int:
    ended = _call(http, "POST", f"/v1/rollouts/{_segment(args.id)}/{args.action}")
    _print(args, ended, _rollout_line(ended))
    return 0


#: Rollouts asked for per request of `bastion policy rollouts` (the most GET /v1/rollouts gives).
_PAGE = 1000


def _rollouts(http: httpx.Client, args: argparse.Namespace) -> int:
    # Every page: the command lists every rollout, as it did before the listing was paged.
    query = {"policy": args.policy} if args.policy else {}
    found: list[dict[str, Any]] = []
    while True:
        page = _call(http, "GET", "/v1/rollouts", params={**query, "limit": str(_PAGE)})
        found.extend(page["rollouts"])
        if not page.get("next"):
            break
        query["after"] = page["next"]
    listing = {"rollouts": found, "next": None}
    _print(args, listing, "\n".join(_rollout_line(item) for item in found) or "no rollouts")
    return 0


def _rollout_line(rollout: dict[str, Any]) -> str:
    canary, stable = rollout["counts"]["canary"], rollout["counts"]["stable"]
    line = (
        f"{rollout['id']}  {rollout['policy']} v{rollout['version']} (stable v{rollout['stable_version']}) "
        f"{rollout['percent']:g}% by {rollout['stickiness']}  {rollout['state']}  "
        f"canary {canary['decisions']}/{canary['denies']}/{canary['errors']}  "
        f"stable {stable['decisions']}/{stable['denies']}/{stable['errors']} (decisions/denies/errors)"
    )
    return f"{line}: {rollout['reason']}" if rollout["reason"] else line


_COMMANDS = {
    "rollout": _rollout,
    "promote": _rollout_step,
    "rollback": _rollout_step,
    "rollouts": _rollouts,
    "apply": _apply,
    "validate": _validate,
    "versions": _versions,
    "diff": _diff,
    "activate": _activate,
    "simulate": _simulate,
}
